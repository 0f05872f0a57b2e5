//! Value types that several layers share: the log step and HTTP trace that the SCIM client
//! produces and the store keeps, a principal's attributes, and time in milliseconds. This module
//! imports nothing of the project, so the SCIM client never needs to know the store exists.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Unix time in milliseconds.
pub type Millis = i64;

/// One HTTP request a step made: what the operator sees in a log entry.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HttpTrace {
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    #[serde(rename = "durationMs")]
    pub duration_ms: i64,
}

/// One step of a push or a cycle (`match_user`, `create_user`, `add_member`, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub step: String,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    #[serde(rename = "userPrincipalName")]
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
}

impl LogEntry {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "time": to_rfc3339(self.time),
            "appId": self.app_id,
            "appName": self.app_name,
            "trigger": self.trigger,
            "cycleId": self.cycle_id,
            "eventId": self.event_id,
            "principalId": self.principal_id,
            "userPrincipalName": self.user_principal_name,
            "groupId": self.group_id,
            "action": self.action,
            "status": self.status,
            "reason": self.reason,
            "deferredUntil": self.deferred_until.map(to_rfc3339),
            "targetUserId": self.target_user_id,
            "targetGroupId": self.target_group_id,
            "attempt": self.attempt,
            "durationMs": self.duration_ms,
            "latencyMs": self.latency_ms,
            "steps": self.steps,
        })
    }
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
