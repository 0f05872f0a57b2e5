//! Configuration as code (SPEC §9): `GET /v1/config` answers every app as one document, and
//! `PUT /v1/config` plans a document against the stored apps, then applies the whole plan in one
//! transaction. The document holds configuration only: status, quarantine, the next cycle, held
//! removals and links are never read or written here.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::IntoParams;

use super::ApiContext;
use super::apps::{SETTINGS_KEYS, check_target_url, new_app, same_target, settings_from};
use super::auth::{Caller, Role};
use super::error::{ApiError, ApiResult, JsonBody, Query};
use super::model::{
    ConfigApp, ConfigDocument, ConfigGroup, ConfigPlan, FieldChange, GroupChanges, PlannedApp, RemovedGroup,
    RenamedGroup,
};
use crate::store::{
    AppChanges, AppRecord, AppSettings, Assignment, AuditEntry, ConfigDelete, ConfigUpdate, ConfigWrite, OnAccessEnd,
};

/// The largest document `PUT /v1/config` takes.
pub const MAX_DOCUMENT: usize = 16 * 1024 * 1024;

/// The fields of an entry besides the settings.
const ENTRY_FIELDS: &[&str] = &["id", "name", "scimBaseUrl", "auth", "owners", "groups"];
/// The fields of `auth` that are secrets: never answered, compared here.
const SECRET_FIELDS: &[(&str, &str)] = &[("token", "TOKEN"), ("clientSecret", "CLIENT_SECRET")];
/// The fields of `auth` that are not secrets: the only ones a document answers. (Anything else
/// stored in `auth` counts as a secret.)
const PLAIN_AUTH_FIELDS: &[&str] = &["type", "tokenUrl", "clientId", "scope"];

/// The apps and assignments as one consistent read, with the fingerprint they have.
struct Stored {
    fingerprint: String,
    apps: Vec<AppRecord>,
    groups: HashMap<String, Vec<Assignment>>,
}

impl Stored {
    async fn read(ctx: &ApiContext) -> ApiResult<Self> {
        let store = &ctx.engine.ctx.store;
        for _ in 0..5 {
            let fingerprint = store.config_fingerprint().await?;
            let apps = store.list_apps().await?;
            let mut groups = HashMap::new();
            for app in &apps {
                groups.insert(app.id.clone(), store.list_assignments(&app.id).await?);
            }
            // The same fingerprint after the reads: nothing changed between them.
            if store.config_fingerprint().await? == fingerprint {
                return Ok(Self {
                    fingerprint,
                    apps,
                    groups,
                });
            }
        }
        Err(ApiError::Conflict(
            "the apps kept changing while they were read: send the request again".into(),
        ))
    }

    /// The apps a document describes: every app not being deleted.
    fn live(&self) -> impl Iterator<Item = &AppRecord> {
        self.apps.iter().filter(|a| a.status != "deleting")
    }

    fn etag(&self) -> HeaderValue {
        etag(&self.fingerprint)
    }
}

fn etag(fingerprint: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{fingerprint}\"")).expect("a hex fingerprint is a header value")
}

/// The environment variable each app's secrets are exported as: `SCIM_BRIDGE_APP_<NAME>`, the
/// name upper-cased and every other character `_`, numbered from 2 where two names collide.
fn secret_variables<'a>(apps: impl Iterator<Item = &'a AppRecord>) -> HashMap<String, String> {
    let mut used = HashSet::new();
    let mut out = HashMap::new();
    for app in apps {
        let stem: String = app
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        let mut base = format!("SCIM_BRIDGE_APP_{stem}");
        let mut n = 2;
        while !used.insert(base.clone()) {
            base = format!("SCIM_BRIDGE_APP_{stem}_{n}");
            n += 1;
        }
        out.insert(app.id.clone(), base);
    }
    out
}

/// The app's stored `auth` object, opened; `None` when no key opens it.
fn stored_auth(ctx: &ApiContext, app: &AppRecord) -> Option<Map<String, Value>> {
    let opened = ctx.engine.ctx.sealer.open(&app.id, &app.auth_sealed)?;
    match serde_json::from_slice(&opened).ok()? {
        Value::Object(auth) => Some(auth),
        _ => None,
    }
}

/// The settings as a plan compares them: the defaults that do not depend on the bridge's own
/// configuration filled in, so that naming a default and leaving it out are the same.
fn comparable(settings: &AppSettings) -> Map<String, Value> {
    let mut s = with_mapping(settings);
    s.provision_groups = Some(s.provisions_groups());
    s.on_access_end = Some(s.on_access_end());
    s.deletion_guard = Some(s.deletion_guard());
    match serde_json::to_value(s).expect("settings serialize") {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The settings with the mapping and matching in effect written out (the document holds them).
fn with_mapping(settings: &AppSettings) -> AppSettings {
    let mut s = settings.clone();
    s.attribute_mapping.get_or_insert_with(crate::mapping::default_mapping);
    s.matching
        .get_or_insert_with(|| crate::mapping::DEFAULT_MATCHING.iter().map(|t| t.to_string()).collect());
    s
}

fn export(ctx: &ApiContext, stored: &Stored) -> ConfigDocument {
    let variables = secret_variables(stored.live());
    let apps = stored
        .live()
        .map(|app| {
            let base = &variables[&app.id];
            let mut auth = stored_auth(ctx, app).unwrap_or_default();
            auth.retain(|field, _| PLAIN_AUTH_FIELDS.contains(&field.as_str()));
            auth.entry("type").or_insert_with(|| json!(app.auth_type));
            for (field, suffix) in SECRET_FIELDS {
                let wanted = match app.auth_type.as_str() {
                    "bearer" => *field == "token",
                    _ => *field == "clientSecret",
                };
                if wanted {
                    auth.insert((*field).into(), json!(format!("${{{base}_{suffix}}}")));
                }
            }
            let settings = with_mapping(&app.settings);
            ConfigApp {
                id: Some(app.id.clone()),
                name: app.name.clone(),
                scim_base_url: app.scim_base_url.clone(),
                auth: Value::Object(auth),
                settings,
                owners: app.owners.clone(),
                groups: stored.groups[&app.id]
                    .iter()
                    .map(|g| ConfigGroup {
                        group_id: g.group_id.clone(),
                        target_display_name: g.target_display_name.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    ConfigDocument { apps }
}

/// `GET /v1/config`: every app as one document, secrets as `${...}` placeholders.
pub async fn get_config(State(ctx): State<ApiContext>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Admin])?;
    let stored = Stored::read(&ctx).await?;
    let document = export(&ctx, &stored);
    let mut response = Json(document).into_response();
    response.headers_mut().insert(header::ETAG, stored.etag());
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConfigQuery {
    /// Only plan: nothing is written.
    #[serde(default, rename = "dryRun")]
    #[param(default = false)]
    dry_run: bool,
    /// Also delete the apps an earlier applied document created or matched and this one no
    /// longer holds (with deprovisioning).
    #[serde(default)]
    #[param(default = false)]
    prune: bool,
}

/// An entry of the document, checked.
struct Entry {
    index: usize,
    id: Option<String>,
    name: String,
    url: String,
    auth: Map<String, Value>,
    settings: AppSettings,
    owners: Vec<String>,
    groups: Vec<ConfigGroup>,
}

impl Entry {
    fn path(&self, field: &str) -> String {
        path(self.index, field)
    }
}

fn path(index: usize, field: &str) -> String {
    if field.is_empty() {
        format!("apps[{index}]")
    } else {
        format!("apps[{index}].{field}")
    }
}

/// An error about an entry's field, named by its path in the document; always a 422 (SPEC §9).
fn at(index: usize, e: ApiError) -> ApiError {
    match e {
        ApiError::BadRequest { field, detail }
        | ApiError::Unprocessable { field, detail }
        | ApiError::FieldConflict { field, detail } => {
            let field = if field.starts_with("apps[") {
                field
            } else {
                path(index, &field)
            };
            ApiError::Unprocessable { field, detail }
        }
        other => other,
    }
}

fn text(input: &Map<String, Value>, index: usize, field: &str) -> ApiResult<Option<String>> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(_) => Err(ApiError::unprocessable(
            &path(index, field),
            "must be a non-empty string",
        )),
    }
}

fn parse_entry(index: usize, value: &Value) -> ApiResult<Entry> {
    let input = value
        .as_object()
        .ok_or_else(|| ApiError::unprocessable(&path(index, ""), "must be an object"))?;
    for key in input.keys() {
        if !ENTRY_FIELDS.contains(&key.as_str()) && !SETTINGS_KEYS.contains(&key.as_str()) {
            return Err(ApiError::unprocessable(&path(index, key), "is not a known field"));
        }
    }
    let id = text(input, index, "id")?;
    let name =
        text(input, index, "name")?.ok_or_else(|| ApiError::unprocessable(&path(index, "name"), "is required"))?;
    let url = text(input, index, "scimBaseUrl")?
        .ok_or_else(|| ApiError::unprocessable(&path(index, "scimBaseUrl"), "is required"))?;
    let auth = match input.get("auth") {
        Some(Value::Object(auth)) => auth.clone(),
        Some(_) => return Err(ApiError::unprocessable(&path(index, "auth"), "must be an object")),
        None => return Err(ApiError::unprocessable(&path(index, "auth"), "is required")),
    };
    for (field, value) in &auth {
        if !PLAIN_AUTH_FIELDS.contains(&field.as_str()) && !SECRET_FIELDS.iter().any(|(f, _)| f == field) {
            return Err(ApiError::unprocessable(
                &path(index, &format!("auth.{field}")),
                "is not a known field of auth",
            ));
        }
        if value.as_str().is_some_and(|s| s.contains("${")) {
            return Err(ApiError::unprocessable(
                &path(index, &format!("auth.{field}")),
                "is still a ${...} placeholder: `scim-bridge apply` replaces it from its environment",
            ));
        }
    }
    crate::provisioning::parse_auth(&Value::Object(auth.clone()))
        .map_err(|(field, detail)| ApiError::unprocessable(&path(index, &field), detail))?;
    let settings = settings_from(&AppSettings::default(), input).map_err(|e| at(index, e))?;
    let owners = match input.get("owners") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value::<Vec<String>>(v.clone())
            .map_err(|_| ApiError::unprocessable(&path(index, "owners"), "must be an array of names"))?,
    };
    let mut groups: Vec<ConfigGroup> = Vec::new();
    match input.get("groups") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (g, item) in items.iter().enumerate() {
                let field = |f: &str| path(index, &format!("groups[{g}]{f}"));
                let item = item
                    .as_object()
                    .ok_or_else(|| ApiError::unprocessable(&field(""), "must be an object"))?;
                if let Some(key) = item.keys().find(|k| *k != "groupId" && *k != "targetDisplayName") {
                    return Err(ApiError::unprocessable(
                        &field(&format!(".{key}")),
                        "is not a known field",
                    ));
                }
                let group_id = match item.get("groupId") {
                    Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
                    _ => {
                        return Err(ApiError::unprocessable(
                            &field(".groupId"),
                            "is required: a non-empty string",
                        ));
                    }
                };
                let target = match item.get("targetDisplayName") {
                    Some(Value::String(s)) => s.trim().to_string(),
                    None | Some(Value::Null) => String::new(),
                    Some(_) => {
                        return Err(ApiError::unprocessable(
                            &field(".targetDisplayName"),
                            "must be a string",
                        ));
                    }
                };
                if target.is_empty() && settings.provisions_groups() {
                    return Err(ApiError::unprocessable(
                        &field(".targetDisplayName"),
                        "is required (the app provisions groups)",
                    ));
                }
                if groups.iter().any(|other| other.group_id == group_id) {
                    return Err(ApiError::unprocessable(&field(".groupId"), "is assigned twice"));
                }
                groups.push(ConfigGroup {
                    group_id,
                    // Without groups the target group's name is ignored (SPEC §8), and kept as
                    // given, as `PUT /v1/apps/{id}/groups/{groupId}` keeps it.
                    target_display_name: target,
                });
            }
        }
        Some(_) => return Err(ApiError::unprocessable(&path(index, "groups"), "must be an array")),
    }
    Ok(Entry {
        index,
        id,
        name,
        url,
        auth,
        settings,
        owners,
        groups,
    })
}

/// The document's entries, checked one by one (the first error is answered).
fn parse_document(body: JsonBody) -> ApiResult<Vec<Entry>> {
    let document = match body.0 {
        Some(Value::Object(m)) => m,
        _ => return Err(ApiError::unprocessable("(body)", "must be a JSON object with `apps`")),
    };
    if let Some(key) = document.keys().find(|k| *k != "apps") {
        return Err(ApiError::unprocessable(
            key,
            "is not a known field (a document holds `apps`)",
        ));
    }
    let apps = match document.get("apps") {
        Some(Value::Array(apps)) => apps,
        _ => return Err(ApiError::unprocessable("apps", "is required: an array of apps")),
    };
    apps.iter().enumerate().map(|(i, v)| parse_entry(i, v)).collect()
}

/// The auth fields that differ between the stored credentials and the entry's: secrets only by
/// whether they changed.
fn auth_changes(stored: Option<&Map<String, Value>>, new: &Map<String, Value>) -> Vec<FieldChange> {
    let Some(stored) = stored else {
        // Credentials no key opens: whatever the document gives replaces them.
        return vec![FieldChange {
            field: "auth".into(),
            secret: true,
            from: None,
            to: None,
        }];
    };
    let keys: std::collections::BTreeSet<&String> = stored.keys().chain(new.keys()).collect();
    let mut changes = Vec::new();
    for key in keys {
        let (before, after) = (stored.get(key), new.get(key));
        let secret = !PLAIN_AUTH_FIELDS.contains(&key.as_str());
        let same = if secret {
            // Compared in constant time: the answer must not time the secret out.
            let bytes = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().as_bytes().to_vec();
            bool::from(subtle::ConstantTimeEq::ct_eq(
                bytes(before).as_slice(),
                bytes(after).as_slice(),
            )) && before.is_some() == after.is_some()
        } else {
            before == after
        };
        if !same {
            changes.push(FieldChange {
                field: format!("auth.{key}"),
                secret,
                from: if secret { None } else { before.cloned() },
                to: if secret { None } else { after.cloned() },
            });
        }
    }
    changes
}

fn change(field: &str, from: Value, to: Value) -> FieldChange {
    FieldChange {
        field: field.into(),
        secret: false,
        from: Some(from),
        to: Some(to),
    }
}

/// How many members the bridge provisioned at the app, per target group.
async fn provisioned(ctx: &ApiContext, app_id: &str) -> ApiResult<HashMap<String, usize>> {
    let mut counts = HashMap::new();
    for m in ctx.engine.ctx.store.provisioned_members(app_id).await? {
        *counts.entry(m.target_display_name).or_insert(0) += 1;
    }
    Ok(counts)
}

fn if_match(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::bad("If-Match", "must be an ETag of GET /v1/config"))?
        .trim();
    Ok(Some(value.trim_start_matches("W/").trim_matches('"').to_string()))
}

/// `PUT /v1/config`: the plan of a document, applied in one transaction unless `dryRun`.
pub async fn put_config(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Query(q): Query<ConfigQuery>,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<Response> {
    caller.require(&[Role::Admin])?;
    let entries = parse_document(body)?;
    let expected = if_match(&headers)?;
    let stored = Stored::read(&ctx).await?;
    if let Some(expected) = &expected
        && expected != "*"
        && *expected != stored.fingerprint
    {
        return Err(ApiError::PreconditionFailed(
            "the apps changed since that ETag was read: plan again (a dry run) and review".into(),
        ));
    }
    let engine = &ctx.engine.ctx;
    let now = engine.now();

    // Names stored twice (before names were unique).
    let mut name_count: BTreeMap<&str, usize> = BTreeMap::new();
    for app in stored.live() {
        *name_count.entry(app.name.as_str()).or_insert(0) += 1;
    }
    let shared_names: Vec<String> = name_count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(name, _)| name.to_string())
        .collect();

    // Each entry's app: by id first (so that a rename frees its old name for a new entry), then
    // by name among the apps no id took, else a new one.
    let mut matched: Vec<Option<&AppRecord>> = vec![None; entries.len()];
    let mut taken: HashMap<&str, usize> = HashMap::new();
    for entry in entries.iter().filter(|e| e.id.is_some()) {
        let id = entry.id.as_deref().unwrap_or_default();
        let app = stored.apps.iter().find(|a| a.id == id).ok_or_else(|| {
            ApiError::unprocessable(&entry.path("id"), "no app has this id (leave it out to create one)")
        })?;
        if let Some(first) = taken.insert(app.id.as_str(), entry.index) {
            return Err(ApiError::unprocessable(
                &entry.path("id"),
                format!("matches the same app as apps[{first}]"),
            ));
        }
        matched[entry.index] = Some(app);
    }
    for entry in entries.iter().filter(|e| e.id.is_none()) {
        let same: Vec<&AppRecord> = stored
            .apps
            .iter()
            .filter(|a| a.name == entry.name && !taken.contains_key(a.id.as_str()))
            .collect();
        if same.len() > 1 {
            return Err(ApiError::unprocessable(
                &entry.path("name"),
                format!(
                    "{} apps are named {:?} (stored before names were unique): give the entry the `id` of one, or rename all but one",
                    same.len(),
                    entry.name
                ),
            ));
        }
        if let Some(app) = same.first() {
            taken.insert(app.id.as_str(), entry.index);
            matched[entry.index] = Some(app);
        }
    }
    for (entry, app) in entries.iter().zip(&matched) {
        if let Some(app) = app
            && app.status == "deleting"
        {
            return Err(ApiError::unprocessable(
                &entry.path(if entry.id.is_some() { "id" } else { "name" }),
                format!("the app {} is being deleted", app.id),
            ));
        }
    }
    // Names are unique once the document applies: a name an entry gives (a new app's, a
    // rename's) is no other entry's and no other app's. An app that keeps a name it shared
    // before names were unique keeps it.
    let pruned = |app: &AppRecord| q.prune && app.managed;
    let others: Vec<&AppRecord> = stored
        .apps
        .iter()
        .filter(|a| !taken.contains_key(a.id.as_str()))
        .collect();
    let keeps_name = |i: usize| matched[i].is_some_and(|app| app.name == entries[i].name);
    let mut names: HashMap<&str, usize> = HashMap::new();
    for entry in &entries {
        if let Some(first) = names.insert(entry.name.as_str(), entry.index)
            && !(keeps_name(first) && keeps_name(entry.index))
        {
            return Err(ApiError::unprocessable(
                &entry.path("name"),
                format!("is also the name of apps[{first}]: names are unique"),
            ));
        }
        if keeps_name(entry.index) {
            continue;
        }
        if let Some(other) = others.iter().find(|a| a.name == entry.name) {
            return Err(ApiError::unprocessable(
                &entry.path("name"),
                format!(
                    "is the name of an app no entry holds ({}){}: names are unique",
                    other.id,
                    if pruned(other) {
                        ", which a prune removes, but only after this document applies"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }

    // Two apps on one target: neither may disable or delete users (SPEC §8).
    let acts_on_users = |s: &AppSettings| s.on_access_end() != OnAccessEnd::RemoveMember;
    let finals: Vec<(&str, &AppSettings, String)> = others
        .iter()
        .filter(|a| !pruned(a) && a.status != "deleting")
        .map(|a| {
            (
                a.scim_base_url.as_str(),
                &a.settings,
                format!("the app {} ({})", a.name, a.id),
            )
        })
        .chain(
            entries
                .iter()
                .map(|e| (e.url.as_str(), &e.settings, format!("apps[{}] ({})", e.index, e.name))),
        )
        .collect();
    for entry in &entries {
        let me = format!("apps[{}] ({})", entry.index, entry.name);
        for (url, settings, who) in &finals {
            if *who == me || !same_target(url, &entry.url) {
                continue;
            }
            if acts_on_users(&entry.settings) {
                return Err(ApiError::unprocessable(
                    &entry.path("onAccessEnd"),
                    format!(
                        "{} disables or deletes users at {}, which {who} also uses: its users would be touched too",
                        me, entry.url
                    ),
                ));
            }
            if acts_on_users(settings) {
                return Err(ApiError::unprocessable(
                    &entry.path("scimBaseUrl"),
                    format!(
                        "{who} uses this scimBaseUrl and disables or deletes users at its access end: two apps on one target cannot share it then"
                    ),
                ));
            }
        }
    }

    // The plan, and what applying it writes.
    let mut plan = Vec::new();
    let mut warnings = Vec::new();
    let mut write = ConfigWrite {
        expected: stored.fingerprint.clone(),
        now,
        ..Default::default()
    };
    let mut changed_auth = Vec::new();
    let audit = |action: &str, target: &str, detail: Value| AuditEntry {
        seq: 0,
        time: now,
        actor: caller.name.clone(),
        action: action.into(),
        target: target.into(),
        detail,
    };
    for (entry, app) in entries.iter().zip(&matched) {
        let Some(app) = app else {
            // A new app.
            warnings.extend(
                check_target_url(&ctx, &entry.path("scimBaseUrl"), &entry.url)
                    .await
                    .map_err(|e| at(entry.index, e))?,
            );
            if let Some(token_url) = entry.auth.get("tokenUrl").and_then(Value::as_str) {
                warnings.extend(
                    check_target_url(&ctx, &entry.path("auth.tokenUrl"), token_url)
                        .await
                        .map_err(|e| at(entry.index, e))?,
                );
            }
            let id = uuid::Uuid::now_v7().to_string();
            let auth = Value::Object(entry.auth.clone());
            let auth_type = auth["type"].as_str().unwrap_or_default().to_string();
            let sealed = engine.sealer.seal(&id, auth.to_string().as_bytes());
            let mut record = new_app(
                &ctx,
                &id,
                &entry.name,
                &entry.url,
                (auth_type, sealed),
                &entry.settings,
                now,
            );
            record.owners = entry.owners.clone();
            record.managed = true;
            let groups: Vec<Assignment> = entry
                .groups
                .iter()
                .map(|g| Assignment {
                    app_id: id.clone(),
                    group_id: g.group_id.clone(),
                    target_display_name: g.target_display_name.clone(),
                    created_at: now,
                })
                .collect();
            write.audit.push(audit(
                "app.create",
                &id,
                json!({"source": "config", "name": entry.name, "scimBaseUrl": entry.url,
                       "groups": entry.groups.iter().map(|g| &g.group_id).collect::<Vec<_>>()}),
            ));
            write.creates.push((record, groups));
            plan.push(PlannedApp {
                action: "create".into(),
                id: (!q.dry_run).then_some(id),
                name: entry.name.clone(),
                changes: Vec::new(),
                groups: (!entry.groups.is_empty()).then(|| GroupChanges {
                    added: entry.groups.clone(),
                    ..Default::default()
                }),
                adopted: false,
                provisioned_members: None,
            });
            continue;
        };
        let mut changes = Vec::new();
        let mut app_changes = AppChanges::default();
        if app.name != entry.name {
            changes.push(change("name", json!(app.name), json!(entry.name)));
            app_changes.name = Some(entry.name.clone());
        }
        if app.scim_base_url != entry.url {
            warnings.extend(
                check_target_url(&ctx, &entry.path("scimBaseUrl"), &entry.url)
                    .await
                    .map_err(|e| at(entry.index, e))?,
            );
            changes.push(change("scimBaseUrl", json!(app.scim_base_url), json!(entry.url)));
            app_changes.scim_base_url = Some(entry.url.clone());
        }
        let auth_diff = auth_changes(stored_auth(&ctx, app).as_ref(), &entry.auth);
        if !auth_diff.is_empty() {
            if let Some(token_url) = entry.auth.get("tokenUrl").and_then(Value::as_str) {
                warnings.extend(
                    check_target_url(&ctx, &entry.path("auth.tokenUrl"), token_url)
                        .await
                        .map_err(|e| at(entry.index, e))?,
                );
            }
            let auth = Value::Object(entry.auth.clone());
            app_changes.auth = Some((
                auth["type"].as_str().unwrap_or_default().to_string(),
                engine.sealer.seal(&app.id, auth.to_string().as_bytes()),
            ));
            changed_auth.push(app.id.clone());
            changes.extend(auth_diff);
        }
        let (before, after) = (comparable(&app.settings), comparable(&entry.settings));
        let mut settings_changed = false;
        for key in SETTINGS_KEYS {
            let (b, a) = (
                before.get(*key).cloned().unwrap_or(Value::Null),
                after.get(*key).cloned().unwrap_or(Value::Null),
            );
            if b != a {
                settings_changed = true;
                changes.push(change(key, b, a));
            }
        }
        if settings_changed {
            if app.settings.provisions_groups() != entry.settings.provisions_groups()
                && !engine.store.provisioned_members(&app.id).await?.is_empty()
            {
                return Err(ApiError::unprocessable(
                    &entry.path("provisionGroups"),
                    "changes only while the app has no provisioned users: deprovision them first",
                ));
            }
            app_changes.settings = Some(entry.settings.clone());
        }
        if app.owners != entry.owners {
            changes.push(change("owners", json!(app.owners), json!(entry.owners)));
            app_changes.owners = Some(entry.owners.clone());
        }
        let stored_groups: BTreeMap<&str, &str> = stored.groups[&app.id]
            .iter()
            .map(|g| (g.group_id.as_str(), g.target_display_name.as_str()))
            .collect();
        let mut group_changes = GroupChanges::default();
        let mut update = ConfigUpdate {
            id: app.id.clone(),
            ..Default::default()
        };
        for g in &entry.groups {
            let put = Assignment {
                app_id: app.id.clone(),
                group_id: g.group_id.clone(),
                target_display_name: g.target_display_name.clone(),
                created_at: now,
            };
            match stored_groups.get(g.group_id.as_str()) {
                None => group_changes.added.push(g.clone()),
                Some(before) if *before != g.target_display_name => group_changes.renamed.push(RenamedGroup {
                    group_id: g.group_id.clone(),
                    from: before.to_string(),
                    to: g.target_display_name.clone(),
                }),
                Some(_) => continue,
            }
            update.put_groups.push(put);
        }
        let removed: Vec<(&str, &str)> = stored_groups
            .iter()
            .filter(|(group_id, _)| !entry.groups.iter().any(|g| g.group_id == **group_id))
            .map(|(g, t)| (*g, *t))
            .collect();
        // Read only when a group goes: most updates unassign nothing.
        let counts = if removed.is_empty() {
            HashMap::new()
        } else {
            provisioned(&ctx, &app.id).await?
        };
        for (group_id, target) in removed {
            group_changes.removed.push(RemovedGroup {
                group_id: group_id.to_string(),
                target_display_name: target.to_string(),
                provisioned_members: counts.get(target).copied().unwrap_or(0),
            });
            update.remove_groups.push(group_id.to_string());
        }
        let groups_changed =
            !(group_changes.added.is_empty() && group_changes.removed.is_empty() && group_changes.renamed.is_empty());
        let action = if changes.is_empty() && !groups_changed {
            "unchanged"
        } else {
            "update"
        };
        if action == "update" || !app.managed {
            let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
            let mut detail = json!({"source": "config", "fields": fields, "managed": true,
                   "groupsAdded": group_changes.added.iter().map(|g| &g.group_id).collect::<Vec<_>>(),
                   "groupsRemoved": group_changes.removed.iter().map(|g| &g.group_id).collect::<Vec<_>>(),
                   "groupsRenamed": group_changes.renamed.iter().map(|g| &g.group_id).collect::<Vec<_>>()});
            for c in changes
                .iter()
                .filter(|c| c.field == "attributeMapping" || c.field == "matching")
            {
                // What a target receives changed: the new mapping is in the audit trail (as a
                // PATCH puts it there).
                detail[c.field.as_str()] = c.to.clone().unwrap_or_default();
            }
            write.audit.push(audit("app.update", &app.id, detail));
            update.changes = app_changes;
            write.updates.push(update);
        }
        plan.push(PlannedApp {
            action: action.into(),
            id: Some(app.id.clone()),
            name: entry.name.clone(),
            changes,
            groups: groups_changed.then_some(group_changes),
            adopted: !app.managed,
            provisioned_members: None,
        });
    }
    for app in others {
        if app.status == "deleting" {
            continue;
        }
        if !app.managed || !q.prune {
            plan.push(PlannedApp {
                action: if app.managed { "kept" } else { "unmanaged" }.into(),
                id: Some(app.id.clone()),
                name: app.name.clone(),
                changes: Vec::new(),
                groups: None,
                adopted: false,
                provisioned_members: None,
            });
            continue;
        }
        let members = engine.store.provisioned_members(&app.id).await?.len();
        write.deletes.push(ConfigDelete { id: app.id.clone() });
        write.audit.push(audit(
            "app.delete",
            &app.id,
            json!({"source": "config", "prune": true, "deprovision": true, "provisionedMembers": members}),
        ));
        plan.push(PlannedApp {
            action: "delete".into(),
            id: Some(app.id.clone()),
            name: app.name.clone(),
            changes: Vec::new(),
            groups: None,
            adopted: false,
            provisioned_members: Some(members),
        });
    }

    let writes = !(write.creates.is_empty() && write.updates.is_empty() && write.deletes.is_empty());
    let mut fingerprint = stored.fingerprint.clone();
    let applied = writes && !q.dry_run;
    if applied {
        if !engine.store.apply_config(&write).await? {
            return Err(if expected.is_some() {
                ApiError::PreconditionFailed("the apps changed while the document was applied: plan again".into())
            } else {
                ApiError::Conflict("the apps changed while the document was planned: send it again".into())
            });
        }
        for (app, _) in &write.creates {
            ctx.engine.ensure_dispatcher(&app.id);
        }
        for update in &write.updates {
            ctx.engine.wake(&update.id);
        }
        for id in &changed_auth {
            // New credentials: removals waiting for a retry go now (SPEC §8).
            let moved = engine.store.retry_removals_now(id, now).await?;
            if moved > 0 {
                tracing::info!(app_id = %id, removals = moved, "removals waiting for a retry are sent now");
            }
        }
        for delete in &write.deletes {
            // Its dispatcher removes the provisioned members, then deletes it.
            ctx.engine.wake(&delete.id);
        }
        fingerprint = engine.store.config_fingerprint().await?;
        tracing::info!(
            created = write.creates.len(),
            updated = write.updates.len(),
            deleted = write.deletes.len(),
            "configuration document applied"
        );
    }
    let answer = ConfigPlan {
        applied,
        dry_run: q.dry_run,
        apps: plan,
        shared_names,
        warnings,
    };
    let mut response = Json(answer).into_response();
    response.headers_mut().insert(header::ETAG, etag(&fingerprint));
    Ok(response)
}
