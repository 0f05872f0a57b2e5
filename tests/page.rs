//! The operator page at `GET /` in a real headless Chromium (Debian's, driven by playwright-core
//! through `tests/browser/page.mjs`): seeded activity shows up, a status filter narrows the log,
//! an entry shows its steps, an activation can be looked up, the token stays in the tab.
//! Leaves a screenshot at `target/operator-page.png`.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Event, Kind, Principal, SourceGroup, Stack, manifest_dir, node_bin, require};
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

fn texts(rows: &Value) -> Vec<String> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r["cells"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_page_shows_apps_logs_steps_and_an_activation_and_filters_by_status() {
    let browser = manifest_dir().join("tests/browser");
    if !require(&[
        ("node", node_bin()),
        ("chromium", chromium()),
        ("playwright-core", browser.join("node_modules/playwright-core")),
    ]) {
        return;
    }
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &stack.bridge;

    // Two apps with readable names; a group assigned to both.
    let mut app_ids = Vec::new();
    for name in ["Payroll", "Helpdesk"] {
        let (status, app) = bridge
            .admin(Method::POST, "/v1/apps", Some(stack.target.app_registration(name)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        app_ids.push(app["id"].as_str().unwrap().to_string());
    }
    let group = SourceGroup::new();
    for (id, target) in app_ids.iter().zip(["Finance admins", "Finance helpdesk"]) {
        bridge.assign_group(id, &group.id, target).await;
    }
    // Six activations: five pushed to each app, one deferred by each app's window.
    let people: Vec<Principal> = (0..6).map(|_| Principal::new()).collect();
    let events: Vec<Event> = people.iter().map(|p| Event::activation(p, &group)).collect();
    bridge.deliver(&events.iter().collect::<Vec<_>>()).await;
    for e in &events[..5] {
        bridge.wait_for_event_log(e, "success", Some("add_member")).await;
    }
    for id in &app_ids {
        bridge
            .wait_for_log(
                &[("eventId", events[5].id()), ("appId", id)],
                |e| e["status"] == "deferred",
                common::PUSH_TIMEOUT,
            )
            .await;
    }
    // An ownership activation is recorded, not pushed.
    let owner = Event::activation(&Principal::new(), &group).access("owner");
    bridge.deliver(&[&owner]).await;
    // A cycle on Helpdesk; Payroll keeps its deferred activation.
    let (status, _) = bridge
        .admin(Method::POST, &format!("/v1/apps/{}/sync", app_ids[1]), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    bridge
        .wait_for_log(
            &[("appId", &app_ids[1]), ("trigger", "sync")],
            |e| e["status"] == "success" && e["action"] == "add_member",
            common::PUSH_TIMEOUT,
        )
        .await;
    let operator = bridge.create_token("night-shift", "operator").await;

    let screenshot = manifest_dir().join("target/operator-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(node_bin())
            .arg(browser.join("page.mjs"))
            .args([
                &bridge.url,
                operator["token"].as_str().unwrap(),
                events[5].id(),
                screenshot.to_str().unwrap(),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser script finished within 90 s")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "page.mjs failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    // Apps with status, next sync and last cycle.
    let apps = texts(&seen["apps"]);
    assert_eq!(apps.len(), 3, "{apps:?}");
    let payroll = apps.iter().find(|a| a.starts_with("Payroll")).expect("Payroll listed");
    assert!(payroll.contains("active") && payroll.contains("none yet"), "{payroll}");
    let helpdesk = apps
        .iter()
        .find(|a| a.starts_with("Helpdesk"))
        .expect("Helpdesk listed");
    assert!(
        helpdesk.contains("success manual") && helpdesk.contains("1 added"),
        "{helpdesk}"
    );
    assert!(
        helpdesk.contains("\nin 4") || helpdesk.contains("\nin 3"),
        "next sync in about 40 min: {helpdesk}"
    );

    // The log: every seeded user, newest first, with statuses.
    let all = texts(&seen["allLogs"]);
    for p in &people {
        assert!(
            all.iter().any(|r| r.contains(p.upn())),
            "{} missing from {all:#?}",
            p.upn()
        );
    }
    let statuses: Vec<&str> = seen["allLogs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    for s in ["success", "deferred", "skipped"] {
        assert!(statuses.contains(&s), "no {s} entry in {statuses:?}");
    }
    let deferred = texts(&seen["deferredLogs"]);
    assert_eq!(deferred.len(), 2, "one deferred entry per app: {deferred:#?}");
    assert!(
        deferred
            .iter()
            .all(|r| r.contains(people[5].upn()) && r.contains("deferred"))
    );
    assert_eq!(
        seen["csvLines"].as_array().unwrap().len(),
        3,
        "CSV of the filtered view: header + 2"
    );

    // An entry's steps: SCIM calls with method, path and status.
    let steps: Vec<String> = seen["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(
        steps
            .iter()
            .any(|s| s.contains("add_member") && s.contains("PATCH /Groups/") && s.contains("204")),
        "{steps:#?}"
    );
    assert!(seen["entryFields"].as_str().unwrap().contains("target user id"));

    // The activation: Helpdesk pushed it in its cycle, Payroll deferred it.
    let activation = texts(&seen["activation"]["apps"]);
    assert_eq!(activation.len(), 2, "{activation:?}");
    assert!(
        activation.iter().any(|r| r.starts_with("Helpdesk | pushed")),
        "{activation:?}"
    );
    assert!(
        activation
            .iter()
            .any(|r| r.starts_with("Payroll | deferred") && r.contains("window")),
        "{activation:?}"
    );
    assert!(
        seen["activation"]["summary"]
            .as_str()
            .unwrap()
            .contains(people[5].upn())
    );

    // The first app's attribute mapping (the default) and a preview through the page.
    let mapping = seen["mapping"].to_string();
    assert!(
        mapping.contains("userName") && mapping.contains("[userPrincipalName]"),
        "{mapping}"
    );
    let preview = seen["preview"].as_str().unwrap();
    assert!(
        preview.contains("\"userName\": \"Grace@Contoso.com\"") && preview.contains("externalId eq"),
        "{preview}"
    );

    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}
