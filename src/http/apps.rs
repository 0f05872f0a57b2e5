//! Apps, their group assignments, connection tests, cycles, on-demand provisioning, quarantine.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::IntoParams;

use super::ApiContext;
use super::auth::{Caller, Role};
use super::error::{ApiError, ApiResult, JsonBody, Path, Query};
use super::model::{
    App, AppList, Assignment, AssignmentList, AuthKind, ConnectionTest, Cycle, CycleList, CycleStarted, HeldRemovals,
    MappingPreview,
};
use crate::clock::to_rfc3339;
use crate::provisioning::DEPROVISIONING;
use crate::store::{AppChanges, AppRecord, AppSettings, Job, LogFilter, OnAccessEnd, OutOfScope, TargetMember};

/// The fields each body may hold besides the settings (`model::AppRegistration`, `model::AppUpdate`,
/// `model::MappingPreviewRequest` describe them; a test checks they agree).
pub(super) const CREATE_FIELDS: &[&str] = &["name", "scimBaseUrl", "auth", "owners"];
pub(super) const UPDATE_FIELDS: &[&str] = &["name", "scimBaseUrl", "auth", "owners", "status"];
pub(super) const PREVIEW_FIELDS: &[&str] = &["principal", "principalId"];

pub(super) const SETTINGS_KEYS: &[&str] = &[
    "syncIntervalSeconds",
    "rateLimit",
    "pacing",
    "overflow",
    "patchStyle",
    "driftRepair",
    "outOfScope",
    "membersPerPatch",
    "attributeMapping",
    "matching",
    "provisionGroups",
    "onAccessEnd",
    "accessEndSloSeconds",
    "deletionGuard",
];

pub(super) fn settings_from(base: &AppSettings, input: &Map<String, Value>) -> ApiResult<AppSettings> {
    let mut merged = serde_json::to_value(base).expect("settings serialize");
    for key in SETTINGS_KEYS {
        if let Some(v) = input.get(*key) {
            merged[*key] = v.clone();
        }
    }
    let settings: AppSettings = serde_json::from_value(merged).map_err(|e| {
        // Name the field: try each given setting alone on top of the defaults.
        let field = SETTINGS_KEYS
            .iter()
            .find(|k| {
                input.get(**k).is_some_and(|v| {
                    let mut alone = serde_json::to_value(AppSettings::default()).expect("settings serialize");
                    alone[**k] = v.clone();
                    serde_json::from_value::<AppSettings>(alone).is_err()
                })
            })
            .copied()
            .unwrap_or("settings");
        ApiError::bad(field, e.to_string())
    })?;
    if settings.sync_interval_seconds == Some(0) {
        return Err(ApiError::bad("syncIntervalSeconds", "must be at least 1"));
    }
    if let Some(r) = settings.rate_limit
        && (r.requests == 0 || r.window_seconds == 0)
    {
        return Err(ApiError::bad(
            "rateLimit",
            "requests and windowSeconds must be at least 1",
        ));
    }
    if settings.pacing.requests_per_second == 0 {
        return Err(ApiError::bad("pacing.requestsPerSecond", "must be at least 1"));
    }
    if settings.access_end_slo_seconds == Some(0) {
        return Err(ApiError::bad("accessEndSloSeconds", "must be at least 1"));
    }
    if !settings.provisions_groups() && settings.on_access_end == Some(OnAccessEnd::RemoveMember) {
        return Err(ApiError::unprocessable(
            "onAccessEnd",
            "removeMember needs groups: with provisionGroups false the account is the entitlement (disableUser or deleteUser)",
        ));
    }
    if settings.out_of_scope == OutOfScope::Disable && settings.on_access_end() != OnAccessEnd::RemoveMember {
        return Err(ApiError::unprocessable(
            "outOfScope",
            "outOfScope disable is the cycle-time disable of removeMember apps: with onAccessEnd disableUser or deleteUser the end already acts on the account",
        ));
    }
    // Parsed once here, when it is saved: a mapping that does not compile is never stored.
    settings
        .compiled_mapping()
        .map_err(|e| ApiError::unprocessable(&e.field, e.message))?;
    Ok(settings)
}

/// The checks of an app's access-end settings against the other apps and what it provisioned
/// (SPEC §8): an app that disables or deletes users must be the only one on its `scimBaseUrl`
/// (another app's users would be disabled or deleted with its own), and `provisionGroups` only
/// changes while nothing is provisioned.
async fn check_access_end(
    ctx: &ApiContext,
    app_id: &str,
    url: &str,
    settings: &AppSettings,
    before: Option<&AppSettings>,
) -> ApiResult<()> {
    let store = &ctx.engine.ctx.store;
    let acts_on_users = |s: &AppSettings| s.on_access_end() != OnAccessEnd::RemoveMember;
    // Only the apps on this target (an index), and of those only the ones that act on users when
    // this one does not: registering 10,000 apps on one target read every app each time.
    for other in store.apps_on_target(url, !acts_on_users(settings)).await? {
        if other.id == app_id || !same_target(&other.scim_base_url, url) {
            continue;
        }
        if acts_on_users(settings) {
            return Err(ApiError::unprocessable(
                "onAccessEnd",
                format!(
                    "{} users at {url}, which the app {} ({}) also uses: its users would be touched too",
                    if settings.on_access_end() == OnAccessEnd::DeleteUser {
                        "deleteUser deletes"
                    } else {
                        "disableUser disables"
                    },
                    other.name,
                    other.id
                ),
            ));
        }
        if acts_on_users(&other.settings) {
            return Err(ApiError::unprocessable(
                "scimBaseUrl",
                format!(
                    "the app {} ({}) uses this scimBaseUrl with onAccessEnd {}: two apps on one target cannot share it then",
                    other.name,
                    other.id,
                    serde_json::to_value(other.settings.on_access_end())
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(before) = before
        && before.provisions_groups() != settings.provisions_groups()
        && !store.provisioned_members(app_id).await?.is_empty()
    {
        return Err(ApiError::Conflict(
            "provisionGroups changes only while the app has no provisioned users: deprovision them first (DELETE ?deprovision=true, or end their entitlements)".into(),
        ));
    }
    Ok(())
}

/// Names are unique (SPEC §9): 409 when another app has `name`. (The store refuses it too, when
/// two requests race.)
async fn name_is_free(ctx: &ApiContext, name: &str, except: Option<&str>) -> ApiResult<()> {
    let named = ctx.engine.ctx.store.app_named(name).await?;
    match named.iter().find(|id| Some(id.as_str()) != except) {
        // Not which app: the caller may not see it.
        Some(_) => Err(ApiError::conflict_on(
            "name",
            "is the name of another app: names are unique",
        )),
        None => Ok(()),
    }
}

/// Two `scimBaseUrl`s name the same target: the same URL, compared without a trailing slash
/// and with the scheme and host in lower case.
pub(super) fn same_target(a: &str, b: &str) -> bool {
    crate::store::target_key(a) == crate::store::target_key(b)
}

/// Refuses URLs that are not http(s), ones that reach a cloud metadata address, and (unless
/// allowed) ones that resolve to private addresses. Where private targets are allowed, a host
/// that does not resolve is accepted with a warning (for the answer): it may not exist yet.
pub(super) async fn check_target_url(ctx: &ApiContext, field: &str, raw: &str) -> ApiResult<Option<String>> {
    let url = url::Url::parse(raw).map_err(|_| ApiError::bad(field, "is not a URL"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(ApiError::bad(field, "must be an http or https URL"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ApiError::bad(field, "has no host"))?
        .to_string();
    let allow_private = ctx.engine.ctx.config.allow_private_targets;
    let port = url.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let mut warning = None;
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => addrs.map(|a| a.ip()).collect(),
            // Allowed private targets may not resolve yet (a local quickstart); the connect-time
            // resolver still refuses metadata addresses then.
            Err(e) if allow_private => {
                warning = Some(format!(
                    "{field}: the name {host} did not resolve ({e}); accepted, but nothing reaches the target until \
                     it does (POST /v1/apps/{{id}}/test-connection checks)"
                ));
                Vec::new()
            }
            Err(_) => {
                return Err(ApiError::unprocessable(
                    field,
                    format!("the name {host} does not resolve"),
                ));
            }
        },
    };
    if addrs.iter().any(|ip| crate::scim::is_metadata_address(*ip)) {
        return Err(ApiError::unprocessable(
            field,
            "resolves to a cloud metadata address, which is always refused",
        ));
    }
    if !allow_private && addrs.iter().any(|ip| crate::scim::is_private_address(*ip)) {
        return Err(ApiError::unprocessable(
            field,
            "resolves to a loopback, private or other special-purpose address (set SCIM_BRIDGE_ALLOW_PRIVATE_TARGETS=true to allow)",
        ));
    }
    Ok(warning)
}

pub(super) async fn app_body(ctx: &ApiContext, app: &AppRecord) -> ApiResult<App> {
    let engine = &ctx.engine.ctx;
    let last_cycle = engine
        .store
        .list_cycles(&app.id, 1)
        .await?
        .into_iter()
        .next()
        .map(|c| cycle_body(&c));
    let members_left_to_remove = if app.status == "deleting" {
        Some(engine.store.provisioned_members(&app.id).await?.len())
    } else {
        None
    };
    let settings = &app.settings;
    Ok(App {
        id: app.id.clone(),
        name: app.name.clone(),
        scim_base_url: app.scim_base_url.clone(),
        auth: AuthKind {
            kind: app.auth_type.clone(),
        },
        sync_interval_seconds: engine.sync_interval_ms(app) / 1000,
        rate_limit: engine.window(app),
        pacing: settings.pacing,
        overflow: settings.overflow,
        patch_style: settings.patch_style,
        drift_repair: settings.drift_repair,
        out_of_scope: settings.out_of_scope,
        provision_groups: settings.provisions_groups(),
        on_access_end: settings.on_access_end(),
        access_end_slo_seconds: engine.access_end_slo_ms(app) / 1000,
        deletion_guard: settings.deletion_guard(),
        held_removals: held_summary(&engine.store.held_removals(&app.id).await?),
        members_per_patch: settings.members_per_patch,
        attribute_mapping: settings
            .attribute_mapping
            .clone()
            .unwrap_or_else(crate::mapping::default_mapping),
        matching: settings
            .matching
            .clone()
            .unwrap_or_else(|| crate::mapping::DEFAULT_MATCHING.iter().map(|t| t.to_string()).collect()),
        owners: app.owners.clone(),
        status: app.status.clone(),
        status_reason: app.status_reason.clone(),
        quarantined: app.quarantine_level > 0,
        next_sync_at: to_rfc3339(app.next_sync_at),
        last_cycle,
        created_at: to_rfc3339(app.created_at),
        members_left_to_remove,
        warnings: Vec::new(),
    })
}

/// What the deletion guard holds at an app: how many, since when, by which cycle (the first).
fn held_summary(held: &[crate::store::HeldRemoval]) -> Option<HeldRemovals> {
    let first = held.first()?;
    Some(HeldRemovals {
        count: held.len(),
        since: to_rfc3339(first.held_at),
        cycle_id: first.cycle_id.clone(),
    })
}

/// Sends the removals the deletion guard holds (SPEC §8): each goes as a removal of its own,
/// re-checked when it is sent and paced as a cycle's step.
pub async fn approve_held(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    caller.require(&[Role::Admin, Role::Operator])?;
    let engine = &ctx.engine.ctx;
    let count = ctx
        .audited(
            &caller,
            "app.approve_held_removals",
            &app.id,
            json!({}),
            engine.store.approve_held(&app.id, engine.now()),
        )
        .await?;
    if count == 0 {
        return Err(ApiError::Conflict(
            "the deletion guard holds no removal at this app".into(),
        ));
    }
    ctx.engine.wake(&app.id);
    Ok(Json(json!({"count": count})))
}

/// Forgets the removals the deletion guard holds: the members stay at the target, and the bridge
/// no longer counts those memberships as its own (SPEC §8).
pub async fn reject_held(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    caller.require(&[Role::Admin, Role::Operator])?;
    let engine = &ctx.engine.ctx;
    let count = ctx
        .audited(
            &caller,
            "app.reject_held_removals",
            &app.id,
            json!({}),
            engine.store.reject_held(&app.id, engine.now()),
        )
        .await?;
    if count == 0 {
        return Err(ApiError::Conflict(
            "the deletion guard holds no removal at this app".into(),
        ));
    }
    Ok(Json(json!({"count": count})))
}

pub(super) fn cycle_body(c: &crate::store::CycleRecord) -> Cycle {
    Cycle {
        id: c.id.clone(),
        app_id: c.app_id.clone(),
        trigger: c.trigger.clone(),
        dry_run: c.dry_run,
        started_at: to_rfc3339(c.started_at),
        ended_at: c.ended_at.map(to_rfc3339),
        status: c.status.clone(),
        counts: c.counts.clone(),
        progress: c.progress.clone(),
        report: c.report.clone(),
    }
}

/// The app if the caller may see it; 404 otherwise, as if it did not exist.
pub(super) async fn visible_app(ctx: &ApiContext, caller: &Caller, id: &str) -> ApiResult<AppRecord> {
    match ctx.engine.ctx.store.get_app(id).await? {
        Some(app) if caller.sees(&app) => Ok(app),
        _ => Err(ApiError::NotFound),
    }
}

fn object(body: JsonBody) -> ApiResult<Map<String, Value>> {
    match body.0 {
        Some(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::bad("(body)", "must be a JSON object")),
    }
}

fn check_keys(input: &Map<String, Value>, allowed: &[&str]) -> ApiResult<()> {
    for key in input.keys() {
        if !allowed.contains(&key.as_str()) && !SETTINGS_KEYS.contains(&key.as_str()) {
            return Err(ApiError::bad(key, "is not a known field"));
        }
    }
    Ok(())
}

fn text_field(input: &Map<String, Value>, field: &str) -> ApiResult<Option<String>> {
    match input.get(field) {
        None => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(_) => Err(ApiError::bad(field, "must be a non-empty string")),
    }
}

/// Checks an `auth` object and seals it for the app `app_id` (bound to it: see `crypto::Sealer`).
async fn seal_auth(
    ctx: &ApiContext,
    app_id: &str,
    auth: &Value,
    warnings: &mut Vec<String>,
) -> ApiResult<(String, Vec<u8>)> {
    crate::provisioning::parse_auth(auth).map_err(|(field, detail)| ApiError::bad(&field, detail))?;
    // The token endpoint receives the client secret: it is held to the same rule as the SCIM URL.
    if let Some(token_url) = auth.get("tokenUrl").and_then(Value::as_str) {
        warnings.extend(check_target_url(ctx, "auth.tokenUrl", token_url).await?);
    }
    let kind = auth["type"].as_str().unwrap_or_default().to_string();
    Ok((kind, ctx.engine.ctx.sealer.seal(app_id, auth.to_string().as_bytes())))
}

fn owners_field(input: &Map<String, Value>) -> ApiResult<Option<Vec<String>>> {
    match input.get("owners") {
        None => Ok(None),
        Some(v) => serde_json::from_value::<Vec<String>>(v.clone())
            .map(Some)
            .map_err(|_| ApiError::bad("owners", "must be an array of names")),
    }
}

pub async fn create(
    State(ctx): State<ApiContext>,
    caller: Caller,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<App>)> {
    caller.require(&[Role::Admin, Role::AppOwner])?;
    let input = object(body)?;
    check_keys(&input, CREATE_FIELDS)?;
    let name = text_field(&input, "name")?.ok_or_else(|| ApiError::bad("name", "is required"))?;
    name_is_free(&ctx, &name, None).await?;
    let url = text_field(&input, "scimBaseUrl")?.ok_or_else(|| ApiError::bad("scimBaseUrl", "is required"))?;
    let mut warnings: Vec<String> = check_target_url(&ctx, "scimBaseUrl", &url).await?.into_iter().collect();
    let auth = input.get("auth").ok_or_else(|| ApiError::bad("auth", "is required"))?;
    let id = uuid::Uuid::now_v7().to_string();
    let (auth_type, sealed) = seal_auth(&ctx, &id, auth, &mut warnings).await?;
    let settings = settings_from(&AppSettings::default(), &input)?;
    check_access_end(&ctx, &id, &url, &settings, None).await?;
    let mut owners = vec![caller.name.clone()];
    if caller.role == Role::Admin {
        for o in owners_field(&input)?.unwrap_or_default() {
            if !owners.contains(&o) {
                owners.push(o);
            }
        }
    }
    let engine = &ctx.engine.ctx;
    let mut app = new_app(&ctx, &id, &name, &url, (auth_type, sealed), &settings, engine.now());
    app.owners = owners;
    ctx.audited(
        &caller,
        "app.create",
        &app.id,
        json!({"name": app.name, "scimBaseUrl": app.scim_base_url}),
        engine.store.insert_app(&app),
    )
    .await?;
    ctx.engine.ensure_dispatcher(&app.id);
    let mut body = app_body(&ctx, &app).await?;
    body.warnings = warnings;
    Ok((StatusCode::CREATED, Json(body)))
}

/// A new app (`AppRecord::new`), its first cycle an interval away (spread so that many apps
/// registered together do not fire at once).
pub(super) fn new_app(
    ctx: &ApiContext,
    id: &str,
    name: &str,
    url: &str,
    (auth_type, auth_sealed): (String, Vec<u8>),
    settings: &AppSettings,
    now: crate::clock::Millis,
) -> AppRecord {
    let mut app = AppRecord::new(id, name, url, (auth_type, auth_sealed), settings.clone(), now, 0);
    let interval = ctx.engine.ctx.sync_interval_ms(&app);
    let jitter = i64::from(u16::from_le_bytes(crate::crypto::random_bytes::<2>())) * (interval / 8) / 65_535;
    app.next_sync_at = now + interval + jitter;
    app
}

pub async fn list(State(ctx): State<ApiContext>, caller: Caller) -> ApiResult<Json<AppList>> {
    let mut items = Vec::new();
    for app in ctx.engine.ctx.store.list_apps().await? {
        if caller.sees(&app) {
            items.push(app_body(&ctx, &app).await?);
        }
    }
    Ok(Json(AppList { items }))
}

pub async fn get(State(ctx): State<ApiContext>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<App>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    Ok(Json(app_body(&ctx, &app).await?))
}

pub async fn update(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<App>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    if !caller.owns(&app) {
        return Err(ApiError::Forbidden("only the app's owners and admins change it".into()));
    }
    let input = object(body)?;
    check_keys(&input, UPDATE_FIELDS)?;
    let mut changed: Vec<&str> = input.keys().map(String::as_str).collect();
    changed.sort();
    // Only what the request sends is written: a PATCH never undoes what the engine committed
    // meanwhile (a quarantine, the next cycle's time).
    let mut changes = AppChanges {
        // The same name again changes nothing (it may be one stored twice before names were
        // unique).
        name: text_field(&input, "name")?.filter(|name| *name != app.name),
        ..Default::default()
    };
    if let Some(name) = &changes.name {
        name_is_free(&ctx, name, Some(&app.id)).await?;
    }
    let mut warnings = Vec::new();
    if let Some(url) = text_field(&input, "scimBaseUrl")? {
        // Stored credentials never follow a changed URL: whoever points the app elsewhere gives
        // the credentials for that place too (an OAuth tokenUrl only changes with a whole auth).
        if url != app.scim_base_url && !input.contains_key("auth") {
            return Err(ApiError::unprocessable(
                "auth",
                "a changed scimBaseUrl needs the complete auth for it in the same request: stored credentials never follow a URL change",
            ));
        }
        warnings.extend(check_target_url(&ctx, "scimBaseUrl", &url).await?);
        changes.scim_base_url = Some(url);
    }
    if let Some(auth) = input.get("auth") {
        changes.auth = Some(seal_auth(&ctx, &app.id, auth, &mut warnings).await?);
    } else if ctx.engine.ctx.sealer.is_unbound(&app.id, &app.auth_sealed) {
        // Credentials sealed before they were bound to their app are sealed again, bound, at
        // the app's next write.
        let sealer = &ctx.engine.ctx.sealer;
        changes.auth = sealer
            .reseal(&app.id, &app.auth_sealed)
            .map(|sealed| (app.auth_type.clone(), sealed));
    }
    if let Some(owners) = owners_field(&input)? {
        if caller.role != Role::Admin {
            return Err(ApiError::Forbidden("only admins change owners".into()));
        }
        changes.owners = Some(owners);
    }
    if SETTINGS_KEYS.iter().any(|k| input.contains_key(*k)) {
        changes.settings = Some(settings_from(&app.settings, &input)?);
    }
    if changes.settings.is_some() || changes.scim_base_url.is_some() {
        let url = changes.scim_base_url.as_deref().unwrap_or(&app.scim_base_url);
        let settings = changes.settings.as_ref().unwrap_or(&app.settings);
        check_access_end(&ctx, &app.id, url, settings, Some(&app.settings)).await?;
    }
    // `paused` and `active` are the owner's switch; a quarantine is the bridge's verdict and
    // only `quarantine/clear` lifts it. While quarantined (`quarantine_level > 0`) the status
    // reason stays the quarantine's, paused or not.
    let quarantined = app.quarantine_level > 0;
    let status = text_field(&input, "status")?;
    if status.is_some() && app.status == "deleting" {
        return Err(ApiError::Conflict(
            "the app is being deleted: DELETE without deprovision abandons the deletion".into(),
        ));
    }
    changes.status = match status.as_deref() {
        None => None,
        Some("paused") if quarantined => Some(("paused".into(), app.status_reason.clone())),
        Some("paused") => Some(("paused".into(), Some(format!("paused by {}", caller.name)))),
        Some("active") if app.status == "paused" && quarantined => {
            Some(("quarantined".into(), app.status_reason.clone()))
        }
        Some("active") if app.status == "paused" => Some(("active".into(), None)),
        Some("active") => None,
        Some(_) => {
            return Err(ApiError::bad(
                "status",
                "can be set to `paused` or `active` (quarantine is cleared with POST .../quarantine/clear)",
            ));
        }
    };
    let status_after = changes.status.as_ref().map_or(&app.status, |(s, _)| s);
    let mut detail = json!({"fields": changed, "status": status_after});
    for key in ["attributeMapping", "matching"] {
        // What a target receives changed: the new mapping is in the audit trail.
        if let Some(value) = input.get(key) {
            detail[key] = value.clone();
        }
    }
    ctx.audited(
        &caller,
        "app.update",
        &app.id,
        detail,
        ctx.engine.ctx.store.change_app(&app.id, &changes),
    )
    .await?;
    if changes.auth.is_some() {
        // New credentials: removals waiting for a retry go now (SPEC §8).
        retry_removals_now(&ctx, &app.id).await?;
    }
    let app = visible_app(&ctx, &caller, &id).await?;
    ctx.engine.wake(&app.id);
    let mut body = app_body(&ctx, &app).await?;
    body.warnings = warnings;
    Ok(Json(body))
}

/// The app's removals waiting for a retry are sent at once.
async fn retry_removals_now(ctx: &ApiContext, app_id: &str) -> ApiResult<()> {
    let engine = &ctx.engine.ctx;
    let moved = engine.store.retry_removals_now(app_id, engine.now()).await?;
    if moved > 0 {
        tracing::info!(app_id, removals = moved, "removals waiting for a retry are sent now");
    }
    Ok(())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// First remove what the bridge provisioned: the app is `deleting` (202) until every member
    /// it provisioned is removed.
    #[serde(default)]
    #[param(default = false)]
    deprovision: bool,
}

pub async fn delete(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Response> {
    let app = visible_app(&ctx, &caller, &id).await?;
    if !caller.owns(&app) {
        return Err(ApiError::Forbidden("only the app's owners and admins delete it".into()));
    }
    let engine = &ctx.engine.ctx;
    if q.deprovision {
        // Durable: the app turns `deleting` and its dispatcher removes, one job at a time with
        // retries and a log entry each, every member the bridge provisioned; the app goes only
        // when none is left. Asking again retries a failing removal at once.
        let changes = AppChanges {
            status: Some(("deleting".into(), Some(DEPROVISIONING.into()))),
            deprovision_at: Some(engine.now()),
            ..Default::default()
        };
        ctx.audited(
            &caller,
            "app.delete",
            &app.id,
            json!({"deprovision": true}),
            engine.store.change_app(&app.id, &changes),
        )
        .await?;
        ctx.engine.wake(&app.id);
        let app = visible_app(&ctx, &caller, &id).await?;
        return Ok((StatusCode::ACCEPTED, Json(app_body(&ctx, &app).await?)).into_response());
    }
    // Delete first (no new work is taken), then wait for the push in flight: after that nothing
    // else writes to the target for this app. A `deleting` app is abandoned as it is.
    ctx.audited(
        &caller,
        "app.delete",
        &app.id,
        json!({"deprovision": false}),
        engine.store.delete_app(&app.id, engine.now()),
    )
    .await?;
    ctx.engine.stop_dispatcher(&app.id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn put_group(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path((id, group_id)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<Json<Assignment>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    caller.require(&[Role::Admin])?;
    let input = object(body)?;
    // Without groups the target group's name is optional and ignored (SPEC §8).
    let target = match text_field(&input, "targetDisplayName")? {
        Some(target) => target,
        None if !app.settings.provisions_groups() => String::new(),
        None => return Err(ApiError::bad("targetDisplayName", "is required")),
    };
    let engine = &ctx.engine.ctx;
    let a = crate::store::Assignment {
        app_id: app.id.clone(),
        group_id: group_id.clone(),
        target_display_name: target.clone(),
        created_at: engine.now(),
    };
    ctx.audited(
        &caller,
        "group.assign",
        &app.id,
        json!({"groupId": group_id, "targetDisplayName": target}),
        engine.store.put_assignment(&a),
    )
    .await?;
    // A new target group's name ends the entitlement to the old one: a running cycle reads again.
    ctx.engine.wake(&app.id);
    Ok(Json(Assignment {
        app_id: Some(app.id),
        group_id,
        target_display_name: target,
        assigned_at: None,
    }))
}

pub async fn list_groups(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<AssignmentList>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    let items = ctx
        .engine
        .ctx
        .store
        .list_assignments(&app.id)
        .await?
        .into_iter()
        .map(|a| Assignment {
            app_id: None,
            group_id: a.group_id,
            target_display_name: a.target_display_name,
            assigned_at: Some(to_rfc3339(a.created_at)),
        })
        .collect();
    Ok(Json(AssignmentList { items }))
}

pub async fn delete_group(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path((id, group_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let app = visible_app(&ctx, &caller, &id).await?;
    caller.require(&[Role::Admin])?;
    let deleted = ctx
        .audited(
            &caller,
            "group.unassign",
            &app.id,
            json!({"groupId": group_id}),
            ctx.engine
                .ctx
                .store
                .delete_assignment(&app.id, &group_id, ctx.engine.ctx.now()),
        )
        .await?;
    if !deleted {
        return Err(ApiError::NotFound);
    }
    // The group's members may no longer be entitled: a running cycle reads again.
    ctx.engine.wake(&app.id);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/apps/{appId}/mapping/preview`: the User the bridge would send for a principal and
/// the filters it would look the user up with, without contacting the target.
pub async fn preview_mapping(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<MappingPreview>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    if caller.role == Role::AppOwner && !caller.owns(&app) {
        return Err(ApiError::NotFound);
    }
    let input = object(body)?;
    check_keys(&input, PREVIEW_FIELDS)?;
    let principal = input.get("principal").and_then(Value::as_object).ok_or_else(|| {
        ApiError::bad(
            "principal",
            "is required: the principal's attributes, as an event carries them",
        )
    })?;
    let principal_id =
        text_field(&input, "principalId")?.unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into());
    let mapping = app
        .settings
        .compiled_mapping()
        .map_err(|e| ApiError::unprocessable(&e.field, e.message))?;
    let user = crate::provisioning::map_user(&mapping, &principal_id, principal)
        .map_err(|reason| ApiError::unprocessable("principal", reason))?;
    Ok(Json(MappingPreview {
        user: user.create,
        matching: user.filters,
    }))
}

pub async fn test_connection(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ConnectionTest>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    if caller.role == Role::AppOwner && !caller.owns(&app) {
        return Err(ApiError::NotFound);
    }
    // Credentials that do not open (sealed with another key, or for another app) are what
    // failed: said as the probe's answer, not as a server error.
    let client = match ctx.engine.ctx.client_for(&app) {
        Ok(client) => client,
        Err(e) => {
            return Ok(Json(ConnectionTest {
                ok: false,
                error: Some(e.to_string()),
                steps: Vec::new(),
            }));
        }
    };
    let mut steps = Vec::new();
    let outcome = client.test_connection(&mut steps).await;
    Ok(Json(ConnectionTest {
        ok: outcome.is_ok(),
        error: outcome.err().map(|e| e.to_string()),
        steps,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SyncQuery {
    /// Report what the cycle would do without writing to the target.
    #[serde(default, rename = "dryRun")]
    #[param(default = false)]
    dry_run: bool,
}

pub async fn sync_now(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SyncQuery>,
) -> ApiResult<(StatusCode, Json<CycleStarted>)> {
    let app = visible_app(&ctx, &caller, &id).await?;
    if app.status == "paused" && !q.dry_run {
        return Err(ApiError::Conflict(
            "the app is paused: no pushes until it is active again (a dryRun cycle is allowed)".into(),
        ));
    }
    let engine = &ctx.engine.ctx;
    // A writing cycle asked for while one runs (or is queued) is merged into it: the answer
    // names the cycle that does the work.
    // The audit entry gets the id of the cycle that does the work, in the same commit.
    let requested = uuid::Uuid::now_v7().to_string();
    let cycle_id = ctx
        .audited(
            &caller,
            "app.sync",
            &app.id,
            json!({"cycleId": requested, "dryRun": q.dry_run}),
            engine.store.request_cycle(&app.id, &requested, q.dry_run, engine.now()),
        )
        .await?;
    ctx.engine.wake(&app.id);
    Ok((StatusCode::ACCEPTED, Json(CycleStarted { cycle_id })))
}

pub async fn cycles(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<CycleList>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    let items = ctx
        .engine
        .ctx
        .store
        .list_cycles(&app.id, 100)
        .await?
        .iter()
        .map(cycle_body)
        .collect();
    Ok(Json(CycleList { items }))
}

pub async fn provision_on_demand(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Response> {
    let app = visible_app(&ctx, &caller, &id).await?;
    caller.require(&[Role::Admin, Role::Operator])?;
    let input = object(body)?;
    let principal_id = text_field(&input, "principalId")?.ok_or_else(|| ApiError::bad("principalId", "is required"))?;
    let group_id = text_field(&input, "groupId")?.ok_or_else(|| ApiError::bad("groupId", "is required"))?;
    let engine = &ctx.engine.ctx;
    let target = engine
        .assignment(&app.id, &group_id)
        .await?
        .map(|a| a.target_display_name)
        .ok_or_else(|| ApiError::unprocessable("groupId", "the group is not assigned to this app"))?;
    if engine.store.principal(&principal_id).await?.is_none() {
        return Err(ApiError::unprocessable(
            "principalId",
            "no user attributes are known for this principal",
        ));
    }
    let now = engine.now();
    let entitled = engine
        .store
        .entitled_via(&app.id, &target, &principal_id, now)
        .await?
        .is_some();
    let member = TargetMember {
        target_display_name: target,
        principal_id: principal_id.clone(),
    };
    if !entitled && !engine.store.is_provisioned(&app.id, &member).await? {
        return Err(ApiError::unprocessable(
            "principalId",
            "the principal is not entitled to this group, and the bridge provisioned nothing to remove",
        ));
    }
    let kind = if entitled { "add" } else { "remove" };
    let job = Job {
        trace_context: crate::trace::current_traceparent(),
        ..Job::pending(&app.id, &principal_id, &group_id, kind, "on_demand", now, now)
    };
    ctx.audited(
        &caller,
        "app.provision_on_demand",
        &app.id,
        json!({"principalId": job.principal_id, "groupId": job.group_id, "jobId": job.id}),
        engine.store.insert_job(&job, now),
    )
    .await?;
    ctx.engine.wake(&app.id);
    // The app's dispatcher makes the push (one pusher per app); wait for its log entry.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let filter = LogFilter {
            app_id: Some(app.id.clone()),
            principal_id: Some(job.principal_id.clone()),
            limit: 20,
            ..Default::default()
        };
        let entries = engine.store.query_logs(&filter).await?;
        if let Some(entry) = entries.iter().find(|e| e.job_id.as_deref() == Some(job.id.as_str())) {
            return Ok(Json(entry.view()).into_response());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the push did not finish within 60 s; see the provisioning logs"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

pub async fn clear_quarantine(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<App>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    caller.require(&[Role::Admin, Role::Operator])?;
    let engine = &ctx.engine.ctx;
    let clear = async {
        if app.status == "quarantined" {
            engine.store.set_app_status(&app.id, "active", None, 0).await?;
            // Deferred work goes at the next cycle; bring it forward to now.
            engine.store.set_next_sync(&app.id, engine.now()).await?;
        } else if app.quarantine_level > 0 {
            // Paused while quarantined: the quarantine ends, the owner's pause stays.
            let reason = format!("paused (quarantine cleared by {})", caller.name);
            engine.store.set_app_status(&app.id, "paused", Some(&reason), 0).await?;
        }
        Ok(())
    };
    ctx.audited(
        &caller,
        "app.quarantine_clear",
        &app.id,
        json!({"previousStatus": app.status}),
        clear,
    )
    .await?;
    retry_removals_now(&ctx, &app.id).await?;
    ctx.engine.wake(&app.id);
    let app = visible_app(&ctx, &caller, &id).await?;
    Ok(Json(app_body(&ctx, &app).await?))
}

pub async fn list_groups_one(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path((id, group_id)): Path<(String, String)>,
) -> ApiResult<Json<Assignment>> {
    let app = visible_app(&ctx, &caller, &id).await?;
    let a = ctx
        .engine
        .ctx
        .assignment(&app.id, &group_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(Assignment {
        app_id: Some(app.id),
        group_id: a.group_id,
        target_display_name: a.target_display_name,
        assigned_at: None,
    }))
}
