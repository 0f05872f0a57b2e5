//! Apps kept as code (SPEC §9): `GET`/`PUT /v1/config` and the `apply` and `export` commands,
//! against real bridges and real SCIM targets.

use std::path::Path;

use crate::common;

use common::{Bridge, Event, Kind, Principal, SourceGroup, Target};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `PUT /v1/config` (with `If-Match` when given): status, `ETag`, body.
async fn put_config(
    bridge: &Bridge,
    document: &Value,
    query: &str,
    if_match: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = scim_bridge::http_client()
        .put(format!("{}/v1/config{query}", bridge.url))
        .bearer_auth(&bridge.admin_token)
        .json(document);
    if let Some(etag) = if_match {
        request = request.header("if-match", etag);
    }
    let answer = request.send().await.expect("PUT /v1/config");
    let status = answer.status();
    let etag = answer
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (status, etag, answer.json().await.unwrap_or(Value::Null))
}

/// `GET /v1/config`: `ETag` and the document.
async fn get_config(bridge: &Bridge) -> (String, Value) {
    let answer = scim_bridge::http_client()
        .get(format!("{}/v1/config", bridge.url))
        .bearer_auth(&bridge.admin_token)
        .send()
        .await
        .expect("GET /v1/config");
    assert_eq!(answer.status(), StatusCode::OK);
    let etag = answer.headers()["etag"].to_str().unwrap().to_string();
    (etag, answer.json().await.unwrap())
}

fn actions(plan: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = plan["apps"]
        .as_array()
        .unwrap_or_else(|| panic!("a plan: {plan}"))
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn entry(name: &str, target: &Target, groups: &[(&str, &str)]) -> Value {
    json!({
        "name": name,
        "scimBaseUrl": target.base_url,
        "auth": target.app_auth(),
        "rateLimit": {"requests": 5, "windowSeconds": 10},
        "groups": groups.iter().map(|(g, t)| json!({"groupId": g, "targetDisplayName": t})).collect::<Vec<_>>(),
    })
}

/// Runs `scim-bridge <args>` as a client of the bridge; answers (exit code, stdout, stderr).
async fn cli(bridge: &Bridge, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_scim-bridge"))
        .args(args)
        .env("SCIM_BRIDGE_URL", &bridge.url)
        .env("SCIM_BRIDGE_TOKEN", &bridge.admin_token)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("scim-bridge runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_dry_runs_applies_and_applies_again_as_unchanged() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let document = json!({"apps": [
        entry("hr", &target, &[("g-hr-1", "HR Admins"), ("g-hr-2", "HR Readers")]),
        entry("payroll", &target, &[("g-pay", "Payroll Admins")]),
    ]});

    // A dry run plans two creates and writes nothing.
    let (status, dry_etag, plan) = put_config(&bridge, &document, "?dryRun=true", None).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        actions(&plan),
        vec![("hr".into(), "create".into()), ("payroll".into(), "create".into())]
    );
    assert_eq!(plan["applied"], false, "{plan}");
    let (_, apps) = bridge.admin(Method::GET, "/v1/apps", None).await;
    assert_eq!(apps["items"], json!([]), "a dry run writes nothing");

    // Applied with the dry run's ETag.
    let (status, _, plan) = put_config(&bridge, &document, "", dry_etag.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["applied"], true, "{plan}");
    let (_, apps) = bridge.admin(Method::GET, "/v1/apps", None).await;
    assert_eq!(apps["items"].as_array().unwrap().len(), 2, "{apps}");
    let hr = apps["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "hr")
        .unwrap()
        .clone();
    let hr_id = hr["id"].as_str().unwrap().to_string();
    let (_, groups) = bridge
        .admin(Method::GET, &format!("/v1/apps/{hr_id}/groups"), None)
        .await;
    assert_eq!(groups["items"].as_array().unwrap().len(), 2, "{groups}");
    let (_, audit) = bridge.admin(Method::GET, "/v1/audit?limit=10", None).await;
    let creates = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "app.create" && e["detail"]["source"] == "config")
        .count();
    assert_eq!(creates, 2, "one audit entry per app: {audit}");

    // The same document again: unchanged, nothing written.
    let (status, _, plan) = put_config(&bridge, &document, "", None).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        actions(&plan),
        vec![
            ("hr".into(), "unchanged".into()),
            ("payroll".into(), "unchanged".into())
        ]
    );
    assert_eq!(plan["applied"], false, "{plan}");

    // The export, secrets as placeholders; applied again with them set: unchanged.
    let (etag, exported) = get_config(&bridge).await;
    let text = exported.to_string();
    assert!(
        !text.contains(target.credential()),
        "the export holds no secret: {text}"
    );
    assert_eq!(
        exported["apps"][0]["auth"]["token"], "${SCIM_BRIDGE_APP_HR_TOKEN}",
        "{exported}"
    );
    assert_eq!(exported["apps"][1]["auth"]["token"], "${SCIM_BRIDGE_APP_PAYROLL_TOKEN}");
    let dir = tempfile::tempdir().unwrap();
    let (code, yaml, stderr) = cli(&bridge, &["export"], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let file = write(dir.path(), "apps.yaml", &yaml);
    let (code, json_text, stderr) = cli(&bridge, &["export", "--format", "json"], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let as_json: Value = serde_json::from_str(&json_text).expect("export --format json prints JSON");
    assert_eq!(as_json, exported, "the same document as GET /v1/config");
    let secrets = [
        ("SCIM_BRIDGE_APP_HR_TOKEN", target.credential()),
        ("SCIM_BRIDGE_APP_PAYROLL_TOKEN", target.credential()),
    ];
    let (code, out, stderr) = cli(&bridge, &["apply", &file, "--dry-run"], &secrets).await;
    assert_eq!(code, 0, "exported and applied again changes nothing: {out}{stderr}");
    assert!(out.contains("unchanged"), "{out}");
    let (etag_again, _) = get_config(&bridge).await;
    assert_eq!(etag, etag_again, "nothing changed");

    // A changed rateLimit is one update of that field.
    let mut changed = exported.clone();
    changed["apps"][0]["rateLimit"] = json!({"requests": 2, "windowSeconds": 10});
    changed["apps"][0]["auth"]["token"] = json!(target.credential());
    changed["apps"][1]["auth"]["token"] = json!(target.credential());
    let (status, _, plan) = put_config(&bridge, &changed, "?dryRun=true", None).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        actions(&plan),
        vec![("hr".into(), "update".into()), ("payroll".into(), "unchanged".into())]
    );
    let hr_plan = plan["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "hr")
        .unwrap();
    assert_eq!(hr_plan["changes"].as_array().unwrap().len(), 1, "{hr_plan}");
    assert_eq!(hr_plan["changes"][0]["field"], "rateLimit", "{hr_plan}");
    assert_eq!(hr_plan["changes"][0]["to"]["requests"], 2, "{hr_plan}");

    // A changed secret shows as changed, without its value.
    changed["apps"][1]["auth"]["token"] = json!("a-new-secret-value");
    let (_, _, plan) = put_config(&bridge, &changed, "?dryRun=true", None).await;
    let pay_plan = plan["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "payroll")
        .unwrap();
    assert_eq!(pay_plan["action"], "update", "{plan}");
    assert_eq!(
        pay_plan["changes"],
        json!([{"field": "auth.token", "secret": true}]),
        "{plan}"
    );
    assert!(!plan.to_string().contains("a-new-secret-value"), "{plan}");
    assert!(!plan.to_string().contains(target.credential()), "{plan}");

    // A renamed app (the entry keeps its id) is an update, not a create and a delete.
    changed["apps"][1]["auth"]["token"] = json!(target.credential());
    changed["apps"][0]["name"] = json!("human-resources");
    let (status, _, plan) = put_config(&bridge, &changed, "?prune=true", None).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        actions(&plan),
        vec![
            ("human-resources".into(), "update".into()),
            ("payroll".into(), "unchanged".into())
        ]
    );
    let (_, app) = bridge.admin(Method::GET, &format!("/v1/apps/{hr_id}"), None).await;
    assert_eq!(app["name"], "human-resources", "{app}");
    assert_eq!(app["rateLimit"]["requests"], 2, "{app}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_applied_app_provisions_and_a_prune_deprovisions_it_but_leaves_an_api_app_alone() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let unmanaged = bridge.register_app(&target).await;
    let group = SourceGroup::new();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "apps.json",
        &json!({"apps": [{
            "name": "crm",
            "scimBaseUrl": target.base_url,
            "auth": {"type": "bearer", "token": "${CRM_TOKEN}"},
            "groups": [{"groupId": group.id, "targetDisplayName": "CRM Admins"}],
        }]})
        .to_string(),
    );
    let secret = [("CRM_TOKEN", target.credential())];
    let (code, out, stderr) = cli(&bridge, &["apply", &file, "--dry-run"], &secret).await;
    assert_eq!(code, 2, "a dry run that finds changes exits 2: {out}{stderr}");
    assert!(out.contains("create") && out.contains("crm"), "{out}");
    let (code, out, stderr) = cli(&bridge, &["apply", &file], &secret).await;
    assert_eq!(code, 0, "{out}{stderr}");
    assert!(out.contains("applied"), "{out}");

    // The applied app provisions an activation.
    let principal = Principal::new();
    let activation = Event::activation(&principal, &group);
    bridge.deliver(&[&activation]).await;
    target.assert_members_eventually("CRM Admins", &[principal.upn()]).await;
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;

    // A document without it, pruned: the managed app is deleted with its members removed at the
    // target first; the app registered through the API is listed and left alone.
    let empty = write(dir.path(), "empty.yaml", "apps: []\n");
    let (code, out, stderr) = cli(&bridge, &["apply", &empty, "--dry-run", "--prune"], &[]).await;
    assert_eq!(code, 2, "{out}{stderr}");
    assert!(out.contains("delete") && out.contains("1 provisioned members"), "{out}");
    assert!(out.contains("unmanaged"), "{out}");
    let (code, out, stderr) = cli(&bridge, &["apply", &empty, "--prune"], &[]).await;
    assert_eq!(code, 0, "{out}{stderr}");
    target.assert_members_eventually("CRM Admins", &[]).await;
    let gone = common::wait_until(std::time::Duration::from_secs(30), || async {
        let (_, apps) = bridge.admin(Method::GET, "/v1/apps", None).await;
        apps["items"].as_array().is_some_and(|items| items.len() == 1)
    })
    .await;
    assert!(gone, "the pruned app goes once its members are removed");
    let (status, app) = bridge.admin(Method::GET, &format!("/v1/apps/{unmanaged}"), None).await;
    assert_eq!(status, StatusCode::OK, "the API's app stays: {app}");
    let (_, ends) = bridge
        .admin(
            Method::GET,
            &format!("/v1/access-ends?principalId={}", principal.id),
            None,
        )
        .await;
    assert_eq!(ends["items"][0]["reason"], "appDeprovisioned", "{ends}");

    // Nothing differs now: 0.
    let (code, out, stderr) = cli(&bridge, &["apply", &empty, "--prune"], &[]).await;
    assert_eq!(code, 0, "{out}{stderr}");
    assert!(out.contains("nothing to apply"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_document_is_refused_whole_naming_the_path_and_a_missing_variable_sends_nothing() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let mut bad = entry("second", &target, &[]);
    bad["attributeMapping"] = json!([
        {"target": "userName", "source": "[userPrincipalName]"},
        {"target": "title", "source": "\"unclosed"},
    ]);
    let document = json!({"apps": [entry("first", &target, &[("g1", "G1")]), bad]});
    let (status, _, problem) = put_config(&bridge, &document, "", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "apps[1].attributeMapping[1].source", "{problem}");
    let (_, apps) = bridge.admin(Method::GET, "/v1/apps", None).await;
    assert_eq!(
        apps["items"],
        json!([]),
        "nothing applied, not even the good entry: {apps}"
    );

    // A document larger than other bodies' 1 MiB is taken.
    let mut large = entry("first", &target, &[]);
    large["owners"] = json!(
        (0..40_000)
            .map(|i| format!("owner-{i:08}-of-a-large-document"))
            .collect::<Vec<_>>()
    );
    let (status, _, plan) = put_config(&bridge, &json!({"apps": [large]}), "?dryRun=true", None).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["apps"][0]["action"], "create", "{plan}");

    // Only the known fields of auth: anything else could be a secret the export would answer.
    let mut unknown = entry("first", &target, &[]);
    unknown["auth"]["password"] = json!("hunter2");
    let (status, _, problem) = put_config(&bridge, &json!({"apps": [unknown]}), "", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "apps[0].auth.password", "{problem}");
    assert!(!problem.to_string().contains("hunter2"), "{problem}");

    // A secret still shaped ${...} is refused.
    let mut placeholder = entry("first", &target, &[]);
    placeholder["auth"]["token"] = json!("${NOT_REPLACED}");
    let (status, _, problem) = put_config(&bridge, &json!({"apps": [placeholder]}), "", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "apps[0].auth.token", "{problem}");

    // `apply` with a variable the environment lacks fails before sending anything.
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "apps.yaml",
        &format!(
            "apps:\n  - name: first\n    scimBaseUrl: {}\n    auth:\n      type: bearer\n      token: ${{FIRST_TOKEN_NOT_SET}}\n",
            target.base_url
        ),
    );
    let (code, out, stderr) = cli(&bridge, &["apply", &file], &[]).await;
    assert_eq!(code, 1, "{out}{stderr}");
    assert!(
        stderr.contains("FIRST_TOKEN_NOT_SET"),
        "the error names the variable: {stderr}"
    );
    let (_, audit) = bridge.admin(Method::GET, "/v1/audit?limit=5", None).await;
    assert_eq!(audit["items"], json!([]), "nothing reached the bridge: {audit}");
    let (code, _, stderr) = cli(
        &bridge,
        &["apply", &file],
        &[("FIRST_TOKEN_NOT_SET", target.credential())],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etag_after_a_concurrent_change_is_412_and_names_are_unique() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let document = json!({"apps": [entry("ops", &target, &[])]});
    let (status, etag, plan) = put_config(&bridge, &document, "?dryRun=true", None).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    // Someone registers an app meanwhile.
    let other = bridge.register_app(&target).await;
    let (status, _, problem) = put_config(&bridge, &document, "", etag.as_deref()).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{problem}");
    let (_, apps) = bridge.admin(Method::GET, "/v1/apps", None).await;
    assert_eq!(apps["items"].as_array().unwrap().len(), 1, "nothing applied: {apps}");
    let (status, etag, _) = put_config(&bridge, &document, "?dryRun=true", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, plan) = put_config(&bridge, &document, "", etag.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["applied"], true, "{plan}");

    // Names are unique from now on: through the API too.
    let (status, answer) = bridge
        .admin(Method::POST, "/v1/apps", Some(target.app_registration("ops")))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["field"], "name", "{answer}");
    let (status, answer) = bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{other}"),
            Some(json!({"name": "ops"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");

    // Two apps named alike from before names were unique: listed, and an entry without id that
    // would match them is refused until one is renamed.
    bridge
        .store_execute("UPDATE apps SET name = 'ops', name_key = NULL WHERE name <> 'ops'", &[])
        .await;
    let (status, _, problem) = put_config(&bridge, &document, "?dryRun=true", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "apps[0].name", "{problem}");
    let (_, exported) = get_config(&bridge).await;
    assert_eq!(exported["apps"][0]["auth"]["token"], "${SCIM_BRIDGE_APP_OPS_TOKEN}");
    assert_eq!(
        exported["apps"][1]["auth"]["token"], "${SCIM_BRIDGE_APP_OPS_2_TOKEN}",
        "collisions numbered"
    );
    let mut by_id = exported.clone();
    for app in by_id["apps"].as_array_mut().unwrap() {
        app["auth"]["token"] = json!(target.credential());
    }
    let (status, _, plan) = put_config(&bridge, &by_id, "?dryRun=true", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the export holds the ids, so it matches them: {plan}"
    );
    assert_eq!(plan["sharedNames"], json!(["ops"]), "{plan}");
    assert_eq!(
        actions(&plan),
        vec![("ops".into(), "unchanged".into()), ("ops".into(), "unchanged".into())]
    );
    // Renamed apart, the name is one app's own again.
    by_id["apps"][1]["name"] = json!("ops-2");
    let (status, _, plan) = put_config(&bridge, &by_id, "", None).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        actions(&plan),
        vec![("ops".into(), "unchanged".into()), ("ops-2".into(), "update".into())]
    );
    assert_eq!(
        plan["sharedNames"],
        json!(["ops"]),
        "the plan was made before the rename: {plan}"
    );
    assert_eq!(
        bridge
            .store_count("SELECT COUNT(*) FROM apps WHERE name_key = 'ops'", &[])
            .await,
        1
    );

    // Names swapped in one document, and a renamed app's old name given to a new one: written in
    // whatever order, no name is ever two apps'.
    by_id["apps"][0]["name"] = json!("ops-2");
    by_id["apps"][1]["name"] = json!("ops");
    let (status, _, plan) = put_config(&bridge, &by_id, "", None).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        actions(&plan),
        vec![("ops".into(), "update".into()), ("ops-2".into(), "update".into())]
    );
    by_id["apps"][0]["name"] = json!("ops-old");
    let mut new_ops = entry("ops-2", &target, &[]);
    new_ops["auth"]["token"] = json!(target.credential());
    by_id["apps"].as_array_mut().unwrap().push(new_ops);
    let (status, _, plan) = put_config(&bridge, &by_id, "", None).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        actions(&plan),
        vec![
            ("ops".into(), "unchanged".into()),
            ("ops-2".into(), "create".into()),
            ("ops-old".into(), "update".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_registered_through_the_api_is_managed_once_a_document_matching_it_is_applied() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let app = bridge.register_app(&target).await;
    let (_, exported) = get_config(&bridge).await;
    let placeholder = exported["apps"][0]["auth"]["token"].as_str().unwrap().to_string();
    let variable = placeholder.trim_start_matches("${").trim_end_matches('}').to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "apps.json", &exported.to_string());
    let secret = [(variable.as_str(), target.credential())];

    // Nothing to change, but the app is not managed yet: a dry run reports no change (0), the
    // apply adopts it.
    let (code, out, stderr) = cli(&bridge, &["apply", &file, "--dry-run"], &secret).await;
    assert_eq!(code, 0, "{out}{stderr}");
    assert!(
        out.contains("unchanged") && out.contains("manages it once applied"),
        "{out}"
    );
    let empty = write(dir.path(), "empty.json", r#"{"apps": []}"#);
    let (code, out, _) = cli(&bridge, &["apply", &empty, "--dry-run", "--prune"], &[]).await;
    assert_eq!(code, 0, "not managed yet, so not pruned: {out}");
    assert!(out.contains("unmanaged"), "{out}");
    let (code, out, stderr) = cli(&bridge, &["apply", &file], &secret).await;
    assert_eq!(code, 0, "{out}{stderr}");
    assert!(out.contains("1 more now managed"), "{out}");

    // Managed now: a prune deletes it (nothing provisioned, so at once).
    let (code, out, stderr) = cli(&bridge, &["apply", &empty, "--prune"], &[]).await;
    assert_eq!(code, 0, "{out}{stderr}");
    assert!(out.contains("delete"), "{out}");
    let gone = common::wait_until(std::time::Duration::from_secs(30), || async {
        bridge.admin(Method::GET, &format!("/v1/apps/{app}"), None).await.0 == StatusCode::NOT_FOUND
    })
    .await;
    assert!(gone, "a pruned app with nothing provisioned goes at once");
}
