//! Provisioning logs for operators (SPEC section 3): the entry and its steps, filters, cursor
//! paging while new entries arrive, and the CSV and JSON lines export, against scim2-server.

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Event, Kind, Principal, SourceGroup, Stack, batch, http_client};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

const CSV_COLUMNS: &str = "id,time,appId,appName,trigger,cycleId,eventId,principalId,userPrincipalName,groupId,\
action,status,reason,deferredUntil,targetUserId,targetGroupId,attempt,durationMs,latencyMs,traceId";

/// An ownership activation: recorded and logged `skipped` for every app of the group at once,
/// without a SCIM call, so a test can make many entries quickly.
fn ownership(group: &SourceGroup) -> Event {
    Event::activation(&Principal::new(), group).access("owner")
}

async fn deliver_ownerships(stack: &Stack, group: &SourceGroup, n: usize) {
    let events: Vec<Event> = (0..n).map(|_| ownership(group)).collect();
    for chunk in events.chunks(100) {
        let refs: Vec<&Event> = chunk.iter().collect();
        stack.bridge.deliver(&refs).await;
    }
}

fn path_with(path: &str, query: &[(&str, &str)]) -> String {
    let url = Url::parse_with_params(&format!("http://x{path}"), query).unwrap();
    url.as_str()["http://x".len()..].to_string()
}

/// One page of `GET /v1/provisioning-logs`: (items, nextCursor).
async fn page(stack: &Stack, query: &[(&str, &str)]) -> (Vec<Value>, Option<String>) {
    let (status, body) = stack
        .bridge
        .admin(Method::GET, &path_with("/v1/provisioning-logs", query), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = body["items"].as_array().cloned().expect("items");
    (items, body["nextCursor"].as_str().map(String::from))
}

/// Every entry matching the filters, following the cursor.
async fn all_pages(stack: &Stack, filters: &[(&str, &str)], limit: usize) -> Vec<Value> {
    let limit = limit.to_string();
    let mut cursor: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let mut query: Vec<(&str, &str)> = filters.to_vec();
        query.push(("limit", &limit));
        if let Some(c) = &cursor {
            query.push(("cursor", c));
        }
        let (items, next) = page(stack, &query).await;
        all.extend(items);
        match next {
            Some(c) => cursor = Some(c),
            None => return all,
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

async fn export(stack: &Stack, query: &[(&str, &str)]) -> (String, String, String) {
    let response = http_client()
        .get(format!(
            "{}{}",
            stack.bridge.url,
            path_with("/v1/provisioning-logs/export", query)
        ))
        .bearer_auth(&stack.bridge.admin_token)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (content_type, disposition) = (header("content-type"), header("content-disposition"));
    (content_type, disposition, response.text().await.unwrap())
}

/// A minimal RFC 4180 reader: quoted fields may hold commas, quotes (doubled) and newlines.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && row.is_empty(),
        "the export does not end with a newline"
    );
    rows
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pushed_activation_logs_every_field_and_its_scim_calls_but_no_credential() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, _) = stack.assigned_group().await;
    let principal = Principal::new();
    let event = Event::activation(&principal, &group);
    stack.bridge.deliver(&[&event]).await;
    let listed = stack
        .bridge
        .wait_for_event_log(&event, "success", Some("add_member"))
        .await;

    let id = listed["id"].as_str().unwrap();
    let (status, entry) = stack
        .bridge
        .admin(Method::GET, &format!("/v1/provisioning-logs/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(entry, listed, "the list and the single entry agree");
    assert_eq!(entry["appId"], stack.app_id.as_str());
    assert!(entry["appName"].as_str().is_some_and(|n| n.starts_with("app-")));
    assert_eq!(entry["trigger"], "activation");
    assert_eq!(entry["eventId"], event.id());
    assert_eq!(entry["principalId"], principal.id.as_str());
    assert_eq!(entry["userPrincipalName"], principal.upn());
    assert_eq!(entry["groupId"], group.id.as_str());
    assert_eq!(entry["status"], "success");
    assert_eq!(entry["attempt"], 1);
    assert!(entry["cycleId"].is_null() && entry["deferredUntil"].is_null());
    assert!(entry["targetUserId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(entry["targetGroupId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(entry["durationMs"].as_i64().is_some_and(|d| d >= 0));
    let latency = entry["latencyMs"].as_i64().expect("latencyMs");
    assert!((0..5_000).contains(&latency), "latency {latency} ms");
    assert!(chrono::DateTime::parse_from_rfc3339(entry["time"].as_str().unwrap()).is_ok());

    // The target user is looked up, created, the group resolved, and the member added.
    let steps = entry["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    for expected in ["match_user", "create_user", "resolve_group", "add_member"] {
        assert!(names.contains(&expected), "steps {names:?} lack {expected}");
    }
    for step in steps {
        assert!(step["status"].is_string());
        let http = step["http"].as_object().expect("each of these steps is one SCIM call");
        let keys: HashSet<&str> = http.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            HashSet::from(["method", "path", "status", "durationMs"]),
            "{step}"
        );
        assert!(
            http["path"].as_str().unwrap().starts_with('/'),
            "a path, not a URL: {step}"
        );
    }
    let add = steps.iter().find(|s| s["step"] == "add_member").unwrap();
    assert_eq!(add["http"]["method"], "PATCH");
    assert_eq!(add["http"]["status"], 204);

    // Nothing the bridge was given as a secret appears in the entry, the list or the export.
    let (_, _, jsonl) = export(&stack, &[("format", "jsonl")]).await;
    let (_, _, csv) = export(&stack, &[("format", "csv")]).await;
    for text in [entry.to_string(), jsonl, csv] {
        for secret in [
            stack.target.credential(),
            &stack.bridge.admin_token,
            &stack.bridge.secret,
            &stack.bridge.previous_secret,
        ] {
            assert!(!text.contains(secret), "a credential is in the logs: {text}");
        }
        assert!(!text.to_lowercase().contains("bearer"), "{text}");
    }

    let (status, _) = stack
        .bridge
        .admin(Method::GET, "/v1/provisioning-logs/no-such-entry", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_filter_narrows_the_log_and_bad_parameters_are_refused() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, _) = stack.assigned_group().await;
    let (other_group, _) = stack.assigned_group().await;
    let ada = Principal::new();
    let pushed = Event::activation(&ada, &group);
    stack.bridge.deliver(&[&pushed]).await;
    stack
        .bridge
        .wait_for_event_log(&pushed, "success", Some("add_member"))
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    deliver_ownerships(&stack, &other_group, 3).await;
    let pending = Event::activation(&Principal::new(), &group).status("PendingApproval");
    stack.bridge.deliver(&[&pending]).await;

    let count = |query: Vec<(&'static str, String)>| {
        let stack = &stack;
        async move {
            let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            all_pages(stack, &q, 500).await
        }
    };
    let everything = count(vec![]).await;
    assert!(everything.len() >= 5, "{everything:?}");

    let by_event = count(vec![("eventId", pushed.id().into())]).await;
    assert!(!by_event.is_empty() && by_event.iter().all(|e| e["eventId"] == pushed.id()));
    let by_principal = count(vec![("principalId", ada.id.clone())]).await;
    assert_eq!(ids(&by_principal), ids(&by_event));
    let by_group = count(vec![("groupId", other_group.id.clone())]).await;
    assert_eq!(by_group.len(), 3);
    let owners = count(vec![("action", "add_owner".into())]).await;
    assert_eq!(ids(&owners), ids(&by_group));
    let skipped = count(vec![("status", "skipped".into())]).await;
    assert_eq!(skipped.len(), 4, "three ownerships and one pending approval");
    let successes = count(vec![("status", "success".into()), ("trigger", "activation".into())]).await;
    assert_eq!(ids(&successes), ids(&by_event));
    assert!(count(vec![("trigger", "sync".into())]).await.is_empty());
    assert_eq!(
        count(vec![("appId", stack.app_id.clone())]).await.len(),
        everything.len()
    );
    assert!(count(vec![("appId", "another-app".into())]).await.is_empty());
    let before = count(vec![("until", middle.clone())]).await;
    let after = count(vec![("since", middle.clone())]).await;
    assert_eq!(before.len() + after.len(), everything.len());
    assert!(ids(&before).contains(&by_event[0]["id"].as_str().unwrap().to_string()));

    // Newest first.
    let times: Vec<&str> = everything.iter().map(|e| e["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);

    for (name, value) in [
        ("limit", "0"),
        ("limit", "501"),
        ("cursor", "not-a-cursor"),
        ("since", "yesterday"),
        ("until", "2026-13-01"),
    ] {
        let path = path_with("/v1/provisioning-logs", &[(name, value)]);
        let (status, problem) = stack.bridge.admin(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}={value}: {problem}");
        assert_eq!(problem["field"], name);
    }
    let (status, _) = stack
        .bridge
        .admin(Method::GET, "/v1/provisioning-logs/export?format=xml", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn cursor_paging_neither_skips_nor_repeats_while_new_entries_arrive() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, _) = stack.assigned_group().await;
    deliver_ownerships(&stack, &group, 60).await;
    let before: HashSet<String> = ids(&all_pages(&stack, &[], 500).await).into_iter().collect();
    assert_eq!(before.len(), 60);

    let stack = Arc::new(stack);
    let delivered = Arc::new(AtomicUsize::new(0));
    let inserter = {
        let (stack, group, delivered) = (stack.clone(), group.clone(), delivered.clone());
        tokio::spawn(async move {
            for _ in 0..40 {
                stack.bridge.deliver(&[&ownership(&group)]).await;
                delivered.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // Page by 7; before each next page, at least one more entry has arrived.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![("limit", "7".to_string())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (items, next) = page(&stack, &q).await;
        pages += 1;
        seen.extend(ids(&items));
        let Some(next) = next else { break };
        cursor = Some(next);
        let wanted = pages.min(40);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while delivered.load(Ordering::SeqCst) < wanted && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    inserter.await.expect("inserter");
    assert!(pages >= 9, "{pages} pages");
    assert!(delivered.load(Ordering::SeqCst) >= 8, "entries arrived while paging");

    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an entry was repeated across pages");
    let missing: Vec<&String> = before.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "entries skipped: {missing:?}");
    // Entries that arrived after the first page never show on later pages.
    let first_page: HashSet<&String> = seen.iter().take(7).collect();
    for id in &seen[7..] {
        assert!(
            before.contains(id) || first_page.contains(id),
            "a new entry appeared mid-way: {id}"
        );
    }

    let after = all_pages(&stack, &[], 13).await;
    let after_ids: HashSet<String> = ids(&after).into_iter().collect();
    assert_eq!(after.len(), 100);
    assert_eq!(after_ids.len(), 100);
    assert!(before.is_subset(&after_ids));

    // Only an older page gets a cursor: 100 entries by 10 are exactly ten full pages.
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "10")];
        if let Some(c) = &cursor {
            query.push(("cursor", c));
        }
        let (items, next) = page(&stack, &query).await;
        sizes.push(items.len());
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(sizes, vec![10; 10]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_export_streams_every_matching_entry_as_csv_and_json_lines() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, _) = stack.assigned_group().await;
    // More than two export pages (500 each) of skipped entries, one with a name CSV must quote.
    deliver_ownerships(&stack, &group, 1_050).await;
    let awkward = ownership(&group).set(
        "/principal/userPrincipalName",
        json!("ada \"the countess\", lovelace@contoso.test"),
    );
    stack.bridge.deliver(&[&awkward]).await;
    // Six activations: five pushed, one deferred (default window 5 in 10 s).
    let activations: Vec<Event> = (0..6).map(|_| Event::activation(&Principal::new(), &group)).collect();
    let body = serde_json::to_vec(&batch(&activations.iter().collect::<Vec<_>>())).unwrap();
    assert_eq!(stack.bridge.webhook(body).await.status(), StatusCode::ACCEPTED);
    for e in &activations[..5] {
        stack.bridge.wait_for_event_log(e, "success", Some("add_member")).await;
    }
    stack
        .bridge
        .wait_for_event_log(&activations[5], "deferred", Some("add_member"))
        .await;
    let listed = all_pages(&stack, &[], 500).await;
    assert_eq!(listed.len(), 1_057);

    let (content_type, disposition, jsonl) = export(&stack, &[("format", "jsonl")]).await;
    assert!(content_type.starts_with("application/x-ndjson"), "{content_type}");
    assert!(disposition.contains("provisioning-logs.jsonl"), "{disposition}");
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON entry"))
        .collect();
    assert_eq!(
        lines, listed,
        "the JSON lines export holds exactly the listed entries, newest first"
    );
    assert!(lines.iter().all(|e| e["steps"].is_array()));

    let (content_type, disposition, csv) = export(&stack, &[("format", "csv")]).await;
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    assert!(disposition.contains("provisioning-logs.csv"), "{disposition}");
    let rows = parse_csv(&csv);
    assert_eq!(rows[0].join(","), CSV_COLUMNS);
    assert_eq!(rows.len() - 1, listed.len());
    let columns: Vec<&str> = CSV_COLUMNS.split(',').collect();
    for (row, entry) in rows[1..].iter().zip(&listed) {
        assert_eq!(row.len(), columns.len());
        for (column, cell) in columns.iter().zip(row) {
            assert_eq!(*cell, text_of(&entry[*column]), "column {column} of {}", entry["id"]);
        }
    }
    assert!(csv.contains("\"ada \"\"the countess\"\", lovelace@contoso.test\""));

    // The filters apply to the export too.
    let (_, _, deferred) = export(&stack, &[("format", "csv"), ("status", "deferred")]).await;
    let rows = parse_csv(&deferred);
    assert_eq!(rows.len(), 2, "{deferred}");
    assert_eq!(
        rows[1][0],
        listed.iter().find(|e| e["status"] == "deferred").unwrap()["id"]
            .as_str()
            .unwrap()
    );
    let (_, _, one_event) = export(&stack, &[("eventId", activations[0].id())]).await;
    let entries: Vec<Value> = one_event.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["status"], "success");
    assert!(entries[0]["latencyMs"].is_i64());
}
