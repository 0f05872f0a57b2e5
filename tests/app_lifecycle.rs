//! Deleting apps (with and without deprovisioning) and on-demand provisioning, against a real
//! target; and the command-line helpers.

use crate::common;

use common::{Bridge, Event, Kind, Principal, Stack};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_app_leaves_the_target_as_it_is_unless_deprovision_is_asked() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let principal = Principal::new();
    stack.bridge.deliver(&[&Event::activation(&principal, &group)]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;

    let (status, _) = stack
        .bridge
        .admin(Method::DELETE, &format!("/v1/apps/{}", stack.app_id), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = stack
        .bridge
        .admin(Method::GET, &format!("/v1/apps/{}", stack.app_id), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;

    // A second app for the same group, deleted with deprovision=true, removes what it provisioned.
    let app_id = stack.bridge.register_app(&stack.target).await;
    let second_target = format!("Second {}", common::short_id());
    stack.bridge.assign_group(&app_id, &group.id, &second_target).await;
    let other = Principal::new();
    stack.bridge.deliver(&[&Event::activation(&other, &group)]).await;
    stack
        .target
        .assert_members_eventually(&second_target, &[other.upn()])
        .await;
    let (status, app) = stack
        .bridge
        .admin(Method::DELETE, &format!("/v1/apps/{app_id}?deprovision=true"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{app}");
    assert_eq!(app["status"], "deleting", "{app}");
    stack.target.assert_members_eventually(&second_target, &[]).await;
    let gone = common::wait_until(common::PUSH_TIMEOUT, || async {
        let (status, _) = stack
            .bridge
            .admin(Method::GET, &format!("/v1/apps/{app_id}"), None)
            .await;
        status == StatusCode::NOT_FOUND
    })
    .await;
    assert!(gone, "the app goes once every member it provisioned is removed");
    let removal = stack
        .bridge
        .wait_for_log(
            &[("appId", &app_id), ("trigger", "deprovision")],
            |e| e["status"] == "success",
            common::PUSH_TIMEOUT,
        )
        .await;
    assert_eq!(removal["principalId"], other.id.as_str(), "{removal}");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_demand_provisioning_answers_with_its_log_entry() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let principal = Principal::new();
    let (status, _) = stack
        .bridge
        .admin(
            Method::PUT,
            &format!("/v1/groups/{}/members/{}", group.id, principal.id),
            Some(json!({"principal": {"userPrincipalName": principal.upn()}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, entry) = stack
        .bridge
        .admin(
            Method::POST,
            &format!("/v1/apps/{}/provision-on-demand", stack.app_id),
            Some(json!({"principalId": principal.id, "groupId": group.id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{entry}");
    assert_eq!(entry["trigger"], "on_demand");
    assert_eq!(entry["status"], "success", "{entry}");
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;

    let (status, body) = stack
        .bridge
        .admin(
            Method::POST,
            &format!("/v1/apps/{}/provision-on-demand", stack.app_id),
            Some(json!({"principalId": principal.id, "groupId": "not-assigned"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

fn cli(bridge: &Bridge, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_scim-bridge"))
        .args(args)
        .env("SCIM_BRIDGE_DATA_DIR", &bridge.data_dir)
        .env("SCIM_BRIDGE_WEBHOOK_SECRET", &bridge.secret)
        .env("SCIM_BRIDGE_ADMIN_TOKEN", &bridge.admin_token)
        .envs(bridge.store_env.clone())
        .output()
        .expect("run scim-bridge")
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_prints_the_header_and_send_delivers_a_signed_event() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;

    let payload = stack.bridge.data_dir.join("payload.json");
    std::fs::write(&payload, br#"{"hello":"world"}"#).unwrap();
    let out = cli(
        &stack.bridge,
        &["sign", payload.to_str().unwrap(), "--timestamp", "1700000000"],
    );
    assert!(out.status.success());
    let expected = Bridge::sign(&stack.bridge.secret, 1_700_000_000, br#"{"hello":"world"}"#);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("X-Bridge-Signature: {expected}")
    );

    let url = stack.bridge.url.clone();
    let send = [
        "send",
        "--url",
        &url,
        "--group-id",
        &group.id,
        "--event-id",
        "cli-1",
        "--upn",
        "cli.user@contoso.test",
    ];
    let out = cli(&stack.bridge, &send);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("202"));
    stack
        .target
        .assert_members_eventually(&target_name, &["cli.user@contoso.test"])
        .await;

    // The same command a second later is the same event (its time is remembered per event id):
    // answered `duplicate`, not 409.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let again = cli(&stack.bridge, &send);
    let printed = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{printed}");
    assert!(
        printed.contains("202") && printed.contains("\"duplicate\""),
        "{printed}"
    );
}

/// Without `--principal-id`, `send` derives the principal from `--upn` (case aside): another UPN
/// is another user at the target, not the first one renamed; the same UPN in other case ends the
/// first user's membership. The attribute flags reach the event's principal.
#[tokio::test(flavor = "multi_thread")]
async fn send_derives_the_principal_id_from_the_upn_so_two_upns_are_two_users() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let (status, app) = stack
        .bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{}", stack.app_id),
            Some(json!({"attributeMapping": [
                {"target": "userName", "source": "[userPrincipalName]"},
                {"target": "externalId", "source": "[objectId]"},
                {"target": "name.givenName", "source": "[givenName]"},
                {"target": "name.familyName", "source": "[surname]"},
                {"target": "emails[type eq \"work\"].value", "source": "[mail]"},
                {"target": format!("{enterprise}:department"), "source": "[department]"},
                {"target": format!("{enterprise}:employeeNumber"), "source": "[employeeId]"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{app}");
    let url = stack.bridge.url.clone();
    let send = |event_id: &'static str, upn: &'static str, extra: &'static [&'static str]| {
        let mut args = vec![
            "send",
            "--url",
            &url,
            "--group-id",
            &group.id,
            "--event-id",
            event_id,
            "--upn",
            upn,
        ];
        args.extend_from_slice(extra);
        let out = cli(&stack.bridge, &args);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    send(
        "derive-1",
        "first.user@contoso.test",
        &[
            "--mail",
            "first.mail@contoso.test",
            "--given-name",
            "First",
            "--surname",
            "User",
            "--department",
            "IT",
            "--employee-id",
            "4711",
        ],
    );
    send("derive-2", "second.user@contoso.test", &[]);
    stack
        .target
        .assert_members_eventually(&target_name, &["first.user@contoso.test", "second.user@contoso.test"])
        .await;
    let principal_of = |event_id: &'static str| {
        let bridge = &stack.bridge;
        async move {
            let entry = bridge
                .wait_for_log(
                    &[("eventId", event_id)],
                    |e| e["status"] == "success",
                    common::PUSH_TIMEOUT,
                )
                .await;
            entry["principalId"].as_str().expect("principalId").to_string()
        }
    };
    let (first, second) = (principal_of("derive-1").await, principal_of("derive-2").await);
    assert_ne!(first, second);
    let user = stack
        .target
        .user_by_user_name("first.user@contoso.test")
        .await
        .expect("the first user at the target");
    assert_eq!(user["emails"][0]["value"], "first.mail@contoso.test", "{user}");
    assert_eq!(user["name"]["givenName"], "First", "{user}");
    assert_eq!(user["name"]["familyName"], "User", "{user}");
    assert_eq!(user[enterprise]["department"], "IT", "{user}");
    assert_eq!(user[enterprise]["employeeNumber"], "4711", "{user}");

    // The same UPN in capitals is the same principal: its deactivation ends the first membership.
    send("derive-3", "FIRST.User@contoso.test", &["--action", "selfDeactivate"]);
    stack
        .target
        .assert_members_eventually(&target_name, &["second.user@contoso.test"])
        .await;
    assert_eq!(principal_of("derive-3").await, first);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_create_prints_a_token_the_api_accepts() {
    let bridge = Bridge::start().await;
    let out = cli(
        &bridge,
        &["token", "create", "--name", "ops-oncall", "--role", "operator"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON line");
    assert_eq!(printed["role"], "operator");
    let token = printed["token"].as_str().unwrap();
    let (status, _) = bridge.api(Method::GET, "/v1/apps", Some(token), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = bridge
        .api(
            Method::POST,
            "/v1/tokens",
            Some(token),
            Some(json!({"name": "x", "role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
