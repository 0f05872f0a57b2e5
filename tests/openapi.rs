//! `/openapi.json` documents exactly what the router serves, and every answer carries a request id.

use crate::common;

use std::collections::BTreeSet;

use common::{Bridge, http_client};
use reqwest::{Method, StatusCode};
use scim_bridge::http::ROUTES;
use serde_json::{Value, json};

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

/// The route's path with its parameters filled with ids that exist nowhere.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "no-such-id" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert((method.clone(), path.clone()));
        }
    }
    ops
}

/// Every `$ref` in the document points at a schema it defines.
fn dangling_refs(doc: &Value, node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let pointer = r.trim_start_matches('#');
                if doc.pointer(pointer).is_none() {
                    out.push(r.clone());
                }
            }
            map.values().for_each(|v| dangling_refs(doc, v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| dangling_refs(doc, v, out)),
        _ => {}
    }
}

async fn fetch_document(bridge: &Bridge) -> Value {
    let (status, doc) = bridge.api(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    doc
}

#[tokio::test]
async fn the_document_lists_every_route_of_the_table_and_nothing_else() {
    let bridge = Bridge::start().await;
    let doc = fetch_document(&bridge).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(table.len(), ROUTES.len(), "a route is listed twice in ROUTES");
    assert_eq!(documented(&doc), table);

    let mut dangling = Vec::new();
    dangling_refs(&doc, &doc, &mut dangling);
    assert!(dangling.is_empty(), "references to undefined schemas: {dangling:?}");

    let mut operation_ids = BTreeSet::new();
    for (method, path) in &table {
        let op = &doc["paths"][path][method];
        assert!(
            operation_ids.insert(op["operationId"].as_str().expect("operationId").to_string()),
            "duplicate operationId {}",
            op["operationId"]
        );
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path}: no summary"
        );
        let ok = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .any(|code| code.starts_with('2'));
        assert!(ok, "{method} {path}: no success response");
        let params: BTreeSet<&str> = op["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        assert_eq!(params, in_path, "{method} {path}: path parameters");
    }
}

#[tokio::test]
async fn the_main_bodies_have_schemas() {
    let bridge = Bridge::start().await;
    let doc = fetch_document(&bridge).await;
    let schemas = &doc["components"]["schemas"];
    for name in [
        "App",
        "AppRegistration",
        "LogEntry",
        "Step",
        "LogPage",
        "WebhookAnswer",
        "PimEvent",
        "TokenCreated",
        "Problem",
        "Activation",
        "AuditEntry",
    ] {
        assert!(schemas[name].is_object(), "schema {name} missing");
    }
    let log_entry = schemas["LogEntry"]["properties"]
        .as_object()
        .expect("LogEntry properties");
    for field in [
        "id",
        "time",
        "appId",
        "appName",
        "trigger",
        "cycleId",
        "eventId",
        "principalId",
        "userPrincipalName",
        "groupId",
        "action",
        "status",
        "reason",
        "deferredUntil",
        "targetUserId",
        "targetGroupId",
        "attempt",
        "durationMs",
        "latencyMs",
        "traceId",
        "steps",
    ] {
        assert!(log_entry.contains_key(field), "LogEntry lacks {field}");
    }
    let webhook = &doc["paths"]["/v1/webhooks/pim"]["post"];
    assert_eq!(
        webhook["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/WebhookBody"
    );
    assert_eq!(
        webhook["responses"]["202"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/WebhookAnswer"
    );
    assert_eq!(
        doc["paths"]["/v1/tokens"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TokenCreated"
    );
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([]));
}

#[tokio::test]
async fn every_documented_route_is_served_and_no_other_method_is_with_a_request_id_on_every_answer() {
    let bridge = Bridge::start().await;
    let doc = fetch_document(&bridge).await;
    let ops = documented(&doc);
    let http = http_client();
    let send = |method: &str, path: &str| {
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut request = http
            .request(method.clone(), format!("{}{path}", bridge.url))
            .bearer_auth(&bridge.admin_token);
        if method != Method::GET && method != Method::DELETE {
            request = request.json(&json!({}));
        }
        request.send()
    };

    for (method, path) in &ops {
        let url_path = concrete(path);
        let answer = send(method, &url_path).await.expect("request");
        let status = answer.status();
        let request_id = answer.headers().get("x-request-id").cloned();
        let body = answer.text().await.unwrap_or_default();
        assert!(
            request_id.is_some_and(|v| !v.is_empty()),
            "{method} {url_path}: no x-request-id"
        );
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is documented but not served"
        );
        assert!(
            !body.contains("no route for"),
            "{method} {path} is documented but the router has no route for it: {status} {body}"
        );
    }

    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            if ops.contains(&(method.to_string(), path.clone())) {
                continue;
            }
            let answer = send(method, &concrete(path)).await.expect("request");
            assert_eq!(
                answer.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is served but not documented"
            );
            assert!(answer.headers().contains_key("x-request-id"));
        }
    }

    let answer = send("get", "/v1/not-a-route").await.expect("request");
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert!(answer.headers().contains_key("x-request-id"));
    assert!(
        answer
            .text()
            .await
            .unwrap()
            .contains("no route for GET /v1/not-a-route")
    );

    // A request id the caller sends comes back unchanged.
    let answer = http
        .get(format!("{}/healthz", bridge.url))
        .header("x-request-id", "trace-me-4711")
        .send()
        .await
        .expect("request");
    assert_eq!(answer.headers()["x-request-id"], "trace-me-4711");
}
