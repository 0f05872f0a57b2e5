//! The API's request and answer bodies as types. Handlers build the answers from these structs and
//! `/openapi.json` derives its schemas from them, so a field cannot be served without being
//! documented. Request bodies are read field by field by the handlers (to name the field a problem
//! is about); their types here describe what the handlers accept, and tests check the two agree.
//!
//! Times are RFC 3339 strings with milliseconds (`crate::clock::to_rfc3339`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::config::RateLimit;
use crate::mapping::MappingEntry;
use crate::store::{
    AppSettings, CycleCounts, DeletionGuard, DriftRepair, OnAccessEnd, OutOfScope, Overflow, Pacing, PatchStyle,
};
use crate::types::{LogEntryView, Principal, Step};

/// RFC 9457 problem details: every error answer, and each refused event of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The field the problem is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// ---- the webhook ----

/// Mirrors Microsoft Graph's privilegedAccessGroupAssignmentScheduleRequest. (`id`, `status`) is
/// the idempotency key. Fields Graph sends besides these are kept with the event and ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PimEvent {
    pub id: String,
    #[schema(
        pattern = "^(selfActivate|selfDeactivate|selfExtend|selfRenew|adminAssign|adminRemove|adminUpdate|adminExtend|adminRenew)$"
    )]
    pub action: String,
    #[schema(pattern = "^(member|owner)$")]
    pub access_id: String,
    pub principal_id: String,
    pub group_id: String,
    #[schema(examples(
        "Provisioned",
        "Revoked",
        "PendingApproval",
        "Granted",
        "Denied",
        "Canceled",
        "Failed"
    ))]
    pub status: String,
    #[schema(format = DateTime)]
    pub created_date_time: String,
    #[schema(nullable = false)]
    pub justification: Option<String>,
    pub schedule_info: ScheduleInfo,
    /// Required the first time a principal is seen: its user attributes.
    #[schema(nullable = false)]
    pub principal: Option<Principal>,
    #[schema(nullable = false)]
    pub group: Option<EventGroup>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInfo {
    #[schema(format = DateTime)]
    #[schema(nullable = false)]
    pub start_date_time: Option<String>,
    #[schema(nullable = false)]
    pub expiration: Option<Expiration>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Expiration {
    #[serde(rename = "type")]
    #[schema(pattern = "^(afterDuration|afterDateTime|noExpiration)$")]
    #[schema(nullable = false)]
    pub kind: Option<String>,
    /// ISO 8601 duration, e.g. `PT2H`.
    #[schema(nullable = false)]
    pub duration: Option<String>,
    #[schema(format = DateTime)]
    #[schema(nullable = false)]
    pub end_date_time: Option<String>,
}

/// The group as the source describes it: rules R6 refuse dynamic and on-premises groups.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventGroup {
    #[schema(nullable = false)]
    pub display_name: Option<String>,
    pub membership_rule: Option<String>,
    pub on_premises_sync_enabled: Option<bool>,
}

/// One event, or a batch of 1 to 100.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum WebhookBody {
    One(Box<PimEvent>),
    Batch(EventBatch),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EventBatch {
    #[schema(min_items = 1, max_items = 100)]
    pub value: Vec<PimEvent>,
}

/// 202 means committed. Each event of a batch is judged alone.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAnswer {
    pub events: Vec<EventAnswer>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventAnswer {
    /// The event's id; null when the event had none.
    pub id: Option<String>,
    #[schema(pattern = "^(accepted|duplicate|conflict|rejected)$")]
    pub status: &'static str,
    /// The pushes the event made, one per app its group is assigned to.
    pub jobs: Vec<JobRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub id: String,
    pub app_id: String,
}

// ---- apps ----

/// Credentials for the target. Never returned.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum Auth {
    #[serde(rename = "bearer")]
    Bearer {
        #[schema(write_only)]
        token: String,
    },
    #[serde(rename = "oauth2ClientCredentials", rename_all = "camelCase")]
    OAuth2ClientCredentials {
        #[schema(format = "uri")]
        token_url: String,
        client_id: String,
        #[schema(write_only)]
        client_secret: String,
        #[schema(nullable = false)]
        scope: Option<String>,
    },
}

/// `POST /v1/apps`. Settings left out take their defaults (SPEC §5).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRegistration {
    #[schema(pattern = "\\S")]
    pub name: String,
    #[schema(format = "uri")]
    pub scim_base_url: String,
    pub auth: Auth,
    /// Admins only: owners besides the caller.
    #[schema(nullable = false)]
    pub owners: Option<Vec<String>>,
    #[serde(flatten)]
    pub settings: AppSettings,
}

/// `PATCH /v1/apps/{appId}`: only the fields given change. `status` pauses (`paused`) or resumes
/// (`active`; a quarantined app returns to `quarantined`); admins change `owners`. A changed
/// `scimBaseUrl` needs the complete `auth` for it in the same body (else 422 naming `auth`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppUpdate {
    #[schema(pattern = "\\S")]
    #[schema(nullable = false)]
    pub name: Option<String>,
    #[schema(format = "uri")]
    #[schema(nullable = false)]
    pub scim_base_url: Option<String>,
    #[schema(nullable = false)]
    pub auth: Option<Auth>,
    #[schema(nullable = false)]
    pub owners: Option<Vec<String>>,
    #[schema(pattern = "^(active|paused)$")]
    #[schema(nullable = false)]
    pub status: Option<String>,
    #[serde(flatten)]
    pub settings: AppSettings,
}

/// An app as the API shows it: the settings in effect (defaults filled in), never the credentials.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub id: String,
    pub name: String,
    pub scim_base_url: String,
    pub auth: AuthKind,
    pub sync_interval_seconds: i64,
    pub rate_limit: RateLimit,
    pub pacing: Pacing,
    pub overflow: Overflow,
    pub patch_style: PatchStyle,
    pub drift_repair: DriftRepair,
    pub out_of_scope: OutOfScope,
    /// `false`: no groups at the target, the user account is the entitlement (SPEC §8).
    pub provision_groups: bool,
    /// What the end of a user's last entitlement to the app does there.
    pub on_access_end: OnAccessEnd,
    /// How long access may outlive its end here before the end is late (the app's own or the
    /// bridge's `SCIM_BRIDGE_ACCESS_END_SLO`).
    pub access_end_slo_seconds: i64,
    /// The deletion guard in effect; null when turned off.
    pub deletion_guard: Option<DeletionGuard>,
    /// What the deletion guard holds; null when nothing is held.
    pub held_removals: Option<HeldRemovals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members_per_patch: Option<u32>,
    /// What a target receives as a User (the default mapping when none was set).
    pub attribute_mapping: Vec<MappingEntry>,
    /// The mapped targets whose values find an existing user at the target, in order.
    pub matching: Vec<String>,
    pub owners: Vec<String>,
    /// `deleting` while `DELETE ...?deprovision=true` removes what the bridge provisioned.
    #[schema(pattern = "^(active|paused|quarantined|deleting)$")]
    pub status: String,
    pub status_reason: Option<String>,
    /// Quarantined by the bridge (also while paused); only `POST .../quarantine/clear` lifts it.
    pub quarantined: bool,
    #[schema(format = DateTime)]
    pub next_sync_at: String,
    pub last_cycle: Option<Cycle>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// While `deleting` with deprovision: members the bridge provisioned that are still to be removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members_left_to_remove: Option<usize>,
    /// Only in the answer to `POST /v1/apps` or `PATCH`: what was accepted but will not work as it
    /// stands, each naming its field (a `scimBaseUrl` whose name does not resolve).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Removals the deletion guard holds at an app (SPEC §8).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldRemovals {
    pub count: usize,
    /// When the first was held.
    #[schema(format = DateTime)]
    pub since: String,
    /// The cycle that held the first.
    pub cycle_id: String,
}

/// The answer to approving or rejecting held removals.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeldCount {
    /// How many removals were sent (approve) or forgotten (reject).
    pub count: u64,
}

/// Which kind of credentials the app has.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthKind {
    #[serde(rename = "type")]
    #[schema(pattern = "^(bearer|oauth2ClientCredentials)$")]
    pub kind: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppList {
    pub items: Vec<App>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentRequest {
    /// The target group's displayName.
    #[schema(pattern = "\\S")]
    pub target_display_name: String,
}

/// A PIM group assigned to an app, and the target group it becomes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    pub group_id: String,
    pub target_display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub assigned_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssignmentList {
    pub items: Vec<Assignment>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionTest {
    pub ok: bool,
    pub error: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MappingPreviewRequest {
    /// The principal's attributes, as an event's `principal` object carries them.
    #[schema(value_type = Object, example = json!({"userPrincipalName": "ada@contoso.com", "givenName": "Ada", "surname": "Lovelace", "mail": "ada@contoso.com", "employeeId": "4711"}))]
    pub principal: Value,
    /// The principal's id (`[objectId]`).
    #[schema(nullable = false)]
    pub principal_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MappingPreview {
    /// The SCIM User the bridge would create.
    #[schema(value_type = Object)]
    pub user: Value,
    /// The filters that would find an existing user, in order.
    pub matching: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CycleStarted {
    /// The cycle that does the work (a request made while one is queued or running joins it).
    pub cycle_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cycle {
    pub id: String,
    pub app_id: String,
    #[schema(pattern = "^(schedule|manual)$")]
    pub trigger: String,
    pub dry_run: bool,
    #[schema(format = DateTime)]
    pub started_at: String,
    #[schema(format = DateTime)]
    pub ended_at: Option<String>,
    #[schema(pattern = "^(running|success|failed|quarantined)$")]
    pub status: String,
    pub counts: CycleCounts,
    /// What a running cycle is doing.
    pub progress: Option<String>,
    /// Changes made (or, dry run, that would be) and drift found.
    #[schema(value_type = Option<Object>)]
    pub report: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CycleList {
    pub items: Vec<Cycle>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnDemandRequest {
    pub principal_id: String,
    pub group_id: String,
}

// ---- sources and the directory ----

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// `webhook`, or `graph:<groupId>`.
    pub id: String,
    #[schema(pattern = "^(webhook|graph)$")]
    pub kind: String,
    pub group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[schema(format = DateTime)]
    pub last_event_at: Option<String>,
    #[schema(format = DateTime)]
    pub last_success_at: Option<String>,
    #[schema(format = DateTime)]
    pub last_attempt_at: Option<String>,
    /// Seconds since the last successful poll.
    pub lag_seconds: Option<i64>,
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub next_poll_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceList {
    pub items: Vec<Source>,
    /// Whether the Graph source is configured.
    pub graph: bool,
}

/// `principal` is required the first time a principal is seen.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DirectoryMemberRequest {
    #[schema(nullable = false)]
    pub principal: Option<Principal>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryMember {
    pub group_id: String,
    pub principal_id: String,
    pub provisioned_by: &'static str,
}

// ---- logs ----

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogPage<'a> {
    /// Newest first.
    pub items: Vec<LogEntryView<'a>>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// An object link (SPEC §8): the target user the bridge knows for a principal at an app.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserLink {
    pub principal_id: String,
    /// The user's id at the target.
    pub target_id: String,
    /// The `userName` last sent.
    pub user_name: Option<String>,
    pub created_by_bridge: bool,
    /// `active` as last sent.
    pub active: bool,
    /// The user's last successful push at this app.
    #[schema(format = DateTime)]
    pub last_push_at: Option<String>,
    /// The target groups the bridge provisioned the user in.
    pub groups: Vec<UserLinkGroup>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserLinkGroup {
    pub target_display_name: String,
    pub target_group_id: Option<String>,
    /// The assigned source groups that make this target group.
    pub source_group_ids: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserLinkPage {
    /// By principal id.
    pub items: Vec<UserLink>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One end of an entitlement at an app and what became of it (SPEC §8).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessEndView {
    pub id: String,
    pub app_id: String,
    pub principal_id: String,
    pub user_principal_name: Option<String>,
    pub group_id: String,
    pub target_display_name: Option<String>,
    pub event_id: Option<String>,
    #[schema(pattern = "^(expiry|deactivation|revoked|adminRemove|directory|unassigned|appDeprovisioned|outOfScope)$")]
    pub reason: String,
    /// When access should have ended (the scheduled end, the request's time, its arrival...).
    #[schema(format = DateTime)]
    pub ended_at: String,
    /// When the bridge learned of the end.
    #[schema(format = DateTime)]
    pub learned_at: String,
    /// The target's confirmation of the first request that ended access.
    #[schema(format = DateTime)]
    pub removed_at: Option<String>,
    /// `removedAt` − `endedAt`, or now − `endedAt` while not removed; null when nothing was to be
    /// removed.
    pub excess_ms: Option<i64>,
    #[schema(pattern = "^(remove_member|disable_user|delete_user)$")]
    pub action: Option<String>,
    #[schema(pattern = "^(pending|failed|removed|kept|notProvisioned|held|rejected)$")]
    pub status: String,
    /// While pending: `window`, `retry`, `paused` or `held`.
    pub waiting_on: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessEndPage {
    /// Newest end first.
    pub items: Vec<AccessEndView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Percentiles of how long access outlived its end, over confirmed ends.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExcessFigures {
    pub count: usize,
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
    pub max_ms: Option<i64>,
}

/// One app's access ends over the summary's period: PIM ends judged against its objective, the
/// other reasons apart.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppAccessEnds {
    pub app_id: String,
    pub app_name: String,
    pub slo_seconds: i64,
    /// Confirmed PIM ends.
    pub count: usize,
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
    pub max_ms: Option<i64>,
    /// PIM ends still waiting for the target (pending or failed).
    pub pending: usize,
    /// How long the oldest of those has outlived its end.
    pub oldest_pending_ms: Option<i64>,
    /// PIM ends confirmed later than the objective, or still pending past it.
    pub over_slo: usize,
    /// The ends with other reasons (directory, unassigned, appDeprovisioned, outOfScope).
    pub other: ExcessFigures,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessEndSummary {
    #[schema(format = DateTime)]
    pub since: String,
    #[schema(format = DateTime)]
    pub until: String,
    pub items: Vec<AppAccessEnds>,
}

/// One activation (event id): each status received for it and, per app it concerns, where it stands.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Activation<'a> {
    pub event_id: String,
    /// Each status received for this id.
    pub events: Vec<ActivationEvent>,
    /// Per app the event went to: its current state.
    pub apps: Vec<ActivationApp<'a>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivationEvent {
    pub id: String,
    pub status: String,
    #[schema(format = DateTime)]
    pub received_at: String,
    /// What the bridge made of it (`activate`, `remove`, `ignored`, ...).
    pub outcome: String,
    pub reason: Option<String>,
    /// The event as received.
    #[schema(value_type = Object)]
    pub body: Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivationApp<'a> {
    pub app_id: String,
    pub app_name: String,
    #[schema(pattern = "^(pushed|deferred|failed|skipped|pending)$")]
    pub state: &'static str,
    pub status: Option<String>,
    pub action: Option<String>,
    pub reason: Option<String>,
    #[schema(format = DateTime)]
    pub deferred_until: Option<String>,
    /// From the webhook's arrival to the target's confirmation.
    pub latency_ms: Option<i64>,
    #[schema(format = DateTime)]
    pub time: Option<String>,
    pub entries: Vec<LogEntryView<'a>>,
}

/// Who changed what through the API.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    #[schema(format = DateTime)]
    pub time: String,
    /// The name of the token used.
    pub actor: String,
    #[schema(examples("app.create", "app.update", "app.delete", "group.assign", "token.create"))]
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub detail: Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    /// Newest first.
    pub items: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

// ---- tokens ----

#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// The person or system holding it; unique among live tokens, and not `admin`.
    #[schema(pattern = "\\S")]
    pub name: String,
    #[schema(pattern = "^(admin|operator|app_owner)$")]
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    pub id: String,
    pub name: String,
    pub role: String,
    /// Shown this once; stored hashed.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<Token>,
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::json;

    use super::super::apps::{CREATE_FIELDS, PREVIEW_FIELDS, SETTINGS_KEYS, UPDATE_FIELDS};
    use super::*;

    /// The property names a body type documents, through `allOf` and references.
    fn properties<T: ToSchema>() -> BTreeSet<String> {
        fn collect(v: &Value, refs: &BTreeMap<String, Value>, out: &mut BTreeSet<String>) {
            if let Some(name) = v["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
                collect(&refs[name], refs, out);
            }
            if let Some(props) = v["properties"].as_object() {
                out.extend(props.keys().cloned());
            }
            for part in v["allOf"].as_array().into_iter().flatten() {
                collect(part, refs, out);
            }
        }
        let mut refs = Vec::new();
        T::schemas(&mut refs);
        let refs: BTreeMap<String, Value> = refs
            .into_iter()
            .map(|(name, schema)| (name, serde_json::to_value(schema).unwrap()))
            .collect();
        let mut out = BTreeSet::new();
        collect(&serde_json::to_value(T::schema()).unwrap(), &refs, &mut out);
        out
    }

    fn names(lists: &[&[&str]]) -> BTreeSet<String> {
        lists.iter().flat_map(|l| l.iter().map(|s| s.to_string())).collect()
    }

    #[test]
    fn request_types_document_exactly_the_fields_the_handlers_accept() {
        assert_eq!(properties::<AppSettings>(), names(&[SETTINGS_KEYS]));
        assert_eq!(properties::<AppRegistration>(), names(&[CREATE_FIELDS, SETTINGS_KEYS]));
        assert_eq!(properties::<AppUpdate>(), names(&[UPDATE_FIELDS, SETTINGS_KEYS]));
        assert_eq!(properties::<MappingPreviewRequest>(), names(&[PREVIEW_FIELDS]));
    }

    #[test]
    fn an_event_the_parser_accepts_is_one_the_document_describes() {
        let event = json!({
            "id": "req-1", "action": "selfActivate", "accessId": "member",
            "principalId": "p1", "groupId": "g1", "status": "Provisioned",
            "createdDateTime": "2026-11-22T09:00:00Z",
            "scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z",
                             "expiration": {"type": "afterDuration", "duration": "PT2H"}},
            "principal": {"userPrincipalName": "ada@contoso.com", "mail": "ada@contoso.com"},
            "group": {"displayName": "Exchange L3", "membershipRule": null, "onPremisesSyncEnabled": false}
        });
        crate::activation::parse(&event).expect("the parser accepts it");
        assert!(matches!(
            serde_json::from_value::<WebhookBody>(event.clone()).unwrap(),
            WebhookBody::One(_)
        ));
        let batch = json!({"value": [event]});
        assert!(matches!(
            serde_json::from_value::<WebhookBody>(batch).unwrap(),
            WebhookBody::Batch(_)
        ));
    }

    #[test]
    fn a_log_entry_shows_every_field_its_schema_names_and_no_other() {
        let entry = crate::types::LogEntry {
            id: "l1".into(),
            app_id: "a1".into(),
            ..Default::default()
        };
        let shown: BTreeSet<String> = entry.to_json().as_object().unwrap().keys().cloned().collect();
        assert_eq!(shown, properties::<LogEntryView>());
    }
}

// ---- configuration as code (SPEC §9) ----

/// `GET /v1/config` and the body of `PUT /v1/config`: every app as configuration. Its `ETag`
/// header names the state it was read from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDocument {
    pub apps: Vec<ConfigApp>,
}

/// One app of a configuration document. Settings left out take their defaults; `auth` holds
/// `${SCIM_BRIDGE_APP_<NAME>_TOKEN}` (or `_CLIENT_SECRET`) where the export leaves a secret out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigApp {
    /// Matches the app with this id (a new `name` renames it); without it the entry matches by
    /// `name`, or is a new app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub id: Option<String>,
    pub name: String,
    pub scim_base_url: String,
    /// `{"type": "bearer", "token"}` or `{"type": "oauth2ClientCredentials", "tokenUrl",
    /// "clientId", "clientSecret", "scope"}`.
    #[schema(value_type = Object)]
    pub auth: Value,
    #[serde(flatten)]
    pub settings: AppSettings,
    #[serde(default)]
    pub owners: Vec<String>,
    #[serde(default)]
    pub groups: Vec<ConfigGroup>,
}

/// A group assigned to the app, and the target group it becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigGroup {
    pub group_id: String,
    #[serde(default)]
    pub target_display_name: String,
}

/// The answer of `PUT /v1/config`: what the document changes, per app.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigPlan {
    /// `true` when the plan was written (not a dry run, and something to write).
    pub applied: bool,
    pub dry_run: bool,
    pub apps: Vec<PlannedApp>,
    /// Names that more than one stored app has (stored before names were unique): an entry
    /// without `id` that would match one is refused until one of them is renamed.
    pub shared_names: Vec<String>,
    pub warnings: Vec<String>,
}

/// One app in a plan.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedApp {
    /// `create`, `update`, `unchanged`, `delete` (prune), `kept` (managed, in no entry, no
    /// prune asked) or `unmanaged` (registered through `POST /v1/apps` and in no entry: never
    /// pruned).
    pub action: String,
    /// The app's id (a new app's once applied).
    #[schema(nullable = false)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    /// The fields an update changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub groups: Option<GroupChanges>,
    /// The app was registered through the API and this document matches it: once applied, the
    /// document manages it (a later prune may delete it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// A pruned app's provisioned members: removed at the target before it goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub provisioned_members: Option<usize>,
}

/// A changed field: its value before and after, or for a secret only that it changed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    pub field: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, nullable = false)]
    pub from: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, nullable = false)]
    pub to: Option<Value>,
}

/// The groups an update or a create assigns, unassigns and renames.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupChanges {
    pub added: Vec<ConfigGroup>,
    pub removed: Vec<RemovedGroup>,
    pub renamed: Vec<RenamedGroup>,
}

/// An unassigned group and how many members it provisioned (their access ends, reason
/// `unassigned`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemovedGroup {
    pub group_id: String,
    pub target_display_name: String,
    pub provisioned_members: usize,
}

/// A group whose target group name changes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenamedGroup {
    pub group_id: String,
    pub from: String,
    pub to: String,
}
