//! Value types that several layers share: the log step and HTTP trace that the SCIM client
//! produces and the store keeps, a principal's attributes, and time in milliseconds. This module
//! imports nothing of the project, so the SCIM client never needs to know the store exists.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Unix time in milliseconds.
pub type Millis = i64;

/// One HTTP request a step made: what the operator sees in a log entry.
#[derive(Debug, Clone, Serialize, Deserialize, Default, ToSchema)]
pub struct HttpTrace {
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    #[serde(rename = "durationMs")]
    pub duration_ms: i64,
}

/// One step of a push or a cycle. `http` holds the SCIM call's method, path, status and duration
/// only: never a credential or a body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Step {
    #[schema(examples("match_user", "create_user", "resolve_group", "add_member", "remove_member"))]
    pub step: String,
    #[schema(examples("success", "failure", "retry"))]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTrace>,
}

impl Step {
    /// A step that made no HTTP request (a decision, a note).
    pub fn note(step: &str, status: &str, detail: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            status: status.into(),
            detail: Some(detail.into()),
            http: None,
        }
    }
}

/// The user attributes a source sends for a principal (the `principal` object of an event).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Principal {
    #[serde(rename = "userPrincipalName")]
    #[schema(pattern = "\\S")]
    pub user_principal_name: String,
    #[serde(rename = "displayName", default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(rename = "givenName", default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
}

/// One line of the provisioning log: what was done for one membership at one app.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct LogEntry {
    pub seq: i64,
    pub id: String,
    pub time: Millis,
    pub app_id: String,
    pub app_name: String,
    pub trigger: String,
    pub cycle_id: Option<String>,
    pub event_id: Option<String>,
    pub job_id: Option<String>,
    pub principal_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub group_id: Option<String>,
    pub action: String,
    pub status: String,
    pub reason: Option<String>,
    pub deferred_until: Option<Millis>,
    pub target_user_id: Option<String>,
    pub target_group_id: Option<String>,
    pub attempt: i64,
    pub duration_ms: Option<i64>,
    pub latency_ms: Option<i64>,
    #[sqlx(json)]
    pub steps: Vec<Step>,
    /// The trace the entry's work ran in (SPEC §10); `None` for entries from before traces.
    #[sqlx(default)]
    pub trace_id: Option<String>,
}

impl LogEntry {
    /// The entry as the API and the export show it.
    pub fn view(&self) -> LogEntryView<'_> {
        LogEntryView {
            id: &self.id,
            time: to_rfc3339(self.time),
            app_id: &self.app_id,
            app_name: &self.app_name,
            trigger: &self.trigger,
            cycle_id: self.cycle_id.as_deref(),
            event_id: self.event_id.as_deref(),
            principal_id: self.principal_id.as_deref(),
            user_principal_name: self.user_principal_name.as_deref(),
            group_id: self.group_id.as_deref(),
            action: &self.action,
            status: &self.status,
            reason: self.reason.as_deref(),
            deferred_until: self.deferred_until.map(to_rfc3339),
            target_user_id: self.target_user_id.as_deref(),
            target_group_id: self.target_group_id.as_deref(),
            attempt: self.attempt,
            duration_ms: self.duration_ms,
            latency_ms: self.latency_ms,
            trace_id: self.trace_id.as_deref(),
            steps: &self.steps,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.view()).expect("a log entry serializes")
    }
}

/// One line of the provisioning log, as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = LogEntry)]
pub struct LogEntryView<'a> {
    pub id: &'a str,
    #[schema(format = DateTime)]
    pub time: String,
    pub app_id: &'a str,
    pub app_name: &'a str,
    #[schema(pattern = "^(activation|deactivation|expiry|sync|on_demand|directory|deprovision)$")]
    pub trigger: &'a str,
    pub cycle_id: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub principal_id: Option<&'a str>,
    pub user_principal_name: Option<&'a str>,
    pub group_id: Option<&'a str>,
    #[schema(examples("add_member", "remove_member", "create_user", "update_user", "disable_user"))]
    pub action: &'a str,
    #[schema(pattern = "^(success|failure|skipped|deferred)$")]
    pub status: &'a str,
    pub reason: Option<&'a str>,
    #[schema(format = DateTime)]
    pub deferred_until: Option<String>,
    pub target_user_id: Option<&'a str>,
    pub target_group_id: Option<&'a str>,
    pub attempt: i64,
    pub duration_ms: Option<i64>,
    /// From the webhook's arrival to the target's confirmation.
    pub latency_ms: Option<i64>,
    /// The OpenTelemetry trace id (32 hex digits) of the work behind the entry; the `traceparent`
    /// its SCIM requests carried names the same trace.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub trace_id: Option<&'a str>,
    pub steps: &'a [Step],
}

pub fn to_rfc3339(t: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(t)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}
