//! The Graph-shaped server of `scim-fixtures/graph-server.mjs`, and PIM request objects for it.

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::process::Command;

use super::{
    Principal, Proc, SourceGroup, TARGET_START_TIMEOUT, fixtures_dir, http_client, node_bin, require, rfc3339,
};

pub struct GraphServer {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    http: reqwest::Client,
    _proc: Proc,
}

pub const TENANT: &str = "contoso-test";

impl GraphServer {
    /// Starts the server (pages of `page_size`), or answers `None` when node is missing.
    pub async fn start(page_size: u32) -> Option<GraphServer> {
        if !require(&[
            ("node", node_bin()),
            ("Graph-shaped server", fixtures_dir().join("graph-server.mjs")),
        ]) {
            return None;
        }
        let client_id = format!("bridge-{}", super::short_id());
        let client_secret = format!("graph-secret-{}", super::random_hex());
        let mut command = Command::new("node");
        command.current_dir(fixtures_dir()).args([
            "graph-server.mjs",
            "--port",
            "0",
            "--tenant",
            TENANT,
            "--client-id",
            &client_id,
            "--client-secret",
            &client_secret,
            "--page-size",
            &page_size.to_string(),
        ]);
        let mut proc = Proc::spawn("graph-server", command);
        let line = proc.wait_for_line("listening on", TARGET_START_TIMEOUT).await;
        let port = line.trim().rsplit(' ').next().expect("port").to_string();
        Some(GraphServer {
            url: format!("http://127.0.0.1:{port}"),
            client_id,
            client_secret,
            http: http_client(),
            _proc: proc,
        })
    }

    /// The bridge's settings to read from this server, polling every second.
    pub fn bridge_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SCIM_BRIDGE_GRAPH_TENANT_ID", TENANT.to_string()),
            ("SCIM_BRIDGE_GRAPH_CLIENT_ID", self.client_id.clone()),
            ("SCIM_BRIDGE_GRAPH_CLIENT_SECRET", self.client_secret.clone()),
            ("SCIM_BRIDGE_GRAPH_AUTHORITY", self.url.clone()),
            ("SCIM_BRIDGE_GRAPH_URL", format!("{}/v1.0", self.url)),
            ("SCIM_BRIDGE_GRAPH_POLL_INTERVAL", "1s".to_string()),
        ]
    }

    pub async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method.clone(), format!("{}/__graph{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (status, body) = super::read_answer(response).await;
        assert!(
            status.is_success() || status == StatusCode::NOT_FOUND,
            "{method} {path}: {status} {body}"
        );
        body
    }

    /// A user and a group in the directory.
    pub async fn add_user(&self, p: &Principal) {
        let user = json!({"id": p.id, "userPrincipalName": p.user_principal_name, "displayName": p.display_name,
            "givenName": p.given_name, "surname": p.surname, "mail": p.user_principal_name});
        self.control(Method::POST, "/users", Some(user)).await;
    }

    pub async fn put_group(&self, g: &SourceGroup, membership_rule: Option<&str>) {
        let group =
            json!({"displayName": g.display_name, "membershipRule": membership_rule, "onPremisesSyncEnabled": false});
        self.control(Method::PUT, &format!("/groups/{}", g.id), Some(group))
            .await;
    }

    pub async fn put_request(&self, request: &Value) {
        self.control(Method::POST, "/requests", Some(request.clone())).await;
    }

    pub async fn add_member(&self, g: &SourceGroup, p: &Principal) {
        self.control(Method::PUT, &format!("/groups/{}/members/{}", g.id, p.id), None)
            .await;
    }

    /// An active instance of an activation (what PIM lists while the activation lasts).
    pub async fn add_activated_instance(&self, g: &SourceGroup, p: &Principal) {
        self.control(Method::POST, "/instances", Some(activated_instance(g, p)))
            .await;
    }

    /// Once, right after the server answers the next read whose path holds `path_contains`:
    /// `then` (`requests`, `instances`, `members` as `[groupId, userId]`) lands in the directory,
    /// before the bridge's next read.
    pub async fn after_read(&self, path_contains: &str, then: Value) {
        self.control(
            Method::POST,
            "/after-read",
            Some(json!({"pathContains": path_contains, "then": then})),
        )
        .await;
    }

    /// Requests seen (method and decoded path with query), the control API's excluded.
    pub async fn log(&self) -> Vec<(String, String, Option<u64>)> {
        let log = self.control(Method::GET, "/log", None).await;
        log.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e["method"].as_str().unwrap_or_default().to_string(),
                    e["path"].as_str().unwrap_or_default().to_string(),
                    e["status"].as_u64(),
                )
            })
            .collect()
    }
}

/// An active `privilegedAccessGroupAssignmentScheduleInstance` of an activation of `p` in `g`.
pub fn activated_instance(g: &SourceGroup, p: &Principal) -> Value {
    let now = Utc::now();
    json!({"id": uuid::Uuid::new_v4().to_string(), "groupId": g.id, "principalId": p.id,
        "accessId": "member", "assignmentType": "activated", "memberType": "direct",
        "startDateTime": rfc3339(now - chrono::Duration::minutes(1)),
        "endDateTime": rfc3339(now + chrono::Duration::hours(2))})
}

/// A PIM for Groups `privilegedAccessGroupAssignmentScheduleRequest` as Graph lists it.
pub fn pim_request(action: &str, status: &str, p: &Principal, g: &SourceGroup, created: DateTime<Utc>) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.privilegedAccessGroupAssignmentScheduleRequest",
        "id": uuid::Uuid::new_v4().to_string(),
        "action": action,
        "accessId": "member",
        "principalId": p.id,
        "groupId": g.id,
        "status": status,
        "createdDateTime": rfc3339(created),
        "justification": "incident 4711",
        "memberType": "direct",
        "scheduleInfo": {
            "startDateTime": rfc3339(created),
            "expiration": {"type": "afterDuration", "duration": "PT2H"}
        }
    })
}
