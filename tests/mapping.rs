//! Attribute mapping per app (SPEC section 4): the User a target receives is shaped by the app's
//! mapping in Entra's expression syntax; `matching` finds existing users; a changed mapping
//! reaches users already provisioned at the next cycle; bad mappings are refused with the entry
//! and the position. Against scim2-server and SCIMMY (both keep the enterprise extension).

use crate::common;

use std::time::Duration;

use common::{Event, Kind, Principal, SourceGroup, Stack, short_id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn shaped_mapping() -> Value {
    json!([
        {"target": "userName", "source": "ToLower(NormalizeDiacritics([mail]))"},
        {"target": "externalId", "source": "[objectId]"},
        {"target": "displayName", "source": "Join(\" \", [givenName], [surname])"},
        {"target": "title", "source": "Switch([department], \"Staff\", \"IT\", \"Engineer\", \"HR\", \"People\")"},
        {"target": "name.givenName", "source": "[givenName]"},
        {"target": "name.familyName", "source": "[surname]"},
        {"target": "emails[type eq \"work\"].value", "source": "[mail]"},
        {"target": format!("{ENTERPRISE}:employeeNumber"), "source": "[employeeId]", "apply": "onCreate"},
    ])
}

/// An activation whose principal carries these attributes (beyond the UPN).
fn activation_with(principal: &Principal, group: &SourceGroup, attributes: Value) -> Event {
    let mut event = Event::activation(principal, group);
    for (k, v) in attributes.as_object().unwrap() {
        event = event.set(&format!("/principal/{k}"), v.clone());
    }
    event
}

async fn app_with_mapping(stack: &Stack, mapping: Value, matching: Option<Value>) -> (String, SourceGroup, String) {
    let mut settings = json!({"attributeMapping": mapping});
    if let Some(matching) = matching {
        settings["matching"] = matching;
    }
    let app_id = stack
        .bridge
        .register_app_with(&stack.target, &stack.target.base_url, settings)
        .await;
    let group = SourceGroup::new();
    let target_name = format!("Mapped {}", short_id());
    stack.bridge.assign_group(&app_id, &group.id, &target_name).await;
    stack
        .bridge
        .advance_to(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await;
    (app_id, group, target_name)
}

async fn a_user_is_created_exactly_as_the_mapping_says(kind: Kind) {
    let Some(stack) = Stack::start_clocked(kind, |_| {}).await else {
        return;
    };
    let (app_id, group, target_name) = app_with_mapping(&stack, shaped_mapping(), None).await;
    let principal = Principal::new();
    let tag = short_id();
    let mail = format!("José.Núñez.{tag}@Contoso.com");
    let event = activation_with(
        &principal,
        &group,
        json!({"mail": mail, "givenName": "José", "surname": "Núñez", "department": "IT", "employeeId": "4711"}),
    );
    stack.bridge.deliver(&[&event]).await;
    stack
        .bridge
        .wait_for_event_log(&event, "success", Some("add_member"))
        .await;

    let user_name = format!("jose.nunez.{tag}@contoso.com");
    let user = stack
        .target
        .user_by_user_name(&user_name)
        .await
        .unwrap_or_else(|| panic!("a user {user_name} at the target"));
    assert_eq!(user["userName"], user_name.as_str(), "{user}");
    assert_eq!(user["externalId"], principal.id.as_str(), "{user}");
    assert_eq!(user["displayName"], "José Núñez", "{user}");
    assert_eq!(user["title"], "Engineer", "{user}");
    assert_eq!(user["name"]["givenName"], "José", "{user}");
    assert_eq!(user["emails"][0]["value"], mail.as_str(), "{user}");
    assert_eq!(user[ENTERPRISE]["employeeNumber"], "4711", "{user}");
    assert!(
        user["schemas"].as_array().unwrap().iter().any(|s| s == ENTERPRISE),
        "{user}"
    );
    stack
        .target
        .assert_members_eventually(&target_name, &[&user_name])
        .await;

    // The mapping changes (displayName from the surname, upper case) and the principal's
    // employeeId changes: the next cycle updates the user, but never re-sends an onCreate value.
    let mut mapping = shaped_mapping();
    mapping[2] = json!({"target": "displayName", "source": "ToUpper([surname])"});
    let (status, app) = stack
        .bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{app_id}"),
            Some(json!({"attributeMapping": mapping})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{app}");
    assert_eq!(app["attributeMapping"][2]["source"], "ToUpper([surname])", "{app}");
    let again = activation_with(
        &principal,
        &group,
        json!({"mail": mail, "givenName": "José", "surname": "Núñez", "department": "IT", "employeeId": "9999"}),
    )
    .new_id();
    stack.bridge.deliver(&[&again]).await;
    let cycle = stack.bridge.sync_and_wait(&app_id, false).await;
    assert_eq!(cycle["status"], "success", "{cycle}");
    let updated = stack
        .bridge
        .wait_for_log(
            &[("appId", &app_id), ("action", "update_user")],
            |e| e["status"] == "success",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(updated["principalId"], principal.id.as_str(), "{updated}");
    let user = stack.target.user_by_user_name(&user_name).await.unwrap();
    assert_eq!(user["displayName"], "NÚÑEZ", "{user}");
    assert_eq!(
        user[ENTERPRISE]["employeeNumber"], "4711",
        "onCreate is never re-sent: {user}"
    );
    // The change is in the audit trail.
    let (_, audit) = stack.bridge.admin(Method::GET, "/v1/audit", None).await;
    assert!(
        audit["items"].as_array().unwrap().iter().any(
            |e| e["action"] == "app.update" && e["detail"]["attributeMapping"][2]["source"] == "ToUpper([surname])"
        ),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scim2_server_gets_the_user_the_mapping_shapes_and_its_updates() {
    a_user_is_created_exactly_as_the_mapping_says(Kind::Scim2Server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scimmy_gets_the_user_the_mapping_shapes_and_its_updates() {
    a_user_is_created_exactly_as_the_mapping_says(Kind::Scimmy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn matching_on_user_name_finds_a_user_created_at_the_target_beforehand() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let mapping = json!([
        {"target": "userName", "source": "[mail]"},
        {"target": "displayName", "source": "[displayName]"},
    ]);
    let (app_id, group, target_name) = app_with_mapping(&stack, mapping, Some(json!(["userName"]))).await;
    let principal = Principal::new();
    let mail = format!("existing.{}@contoso.test", short_id());
    let existing = stack.target.create_user(&mail, None).await;
    let event = activation_with(&principal, &group, json!({"mail": mail}));
    stack.bridge.deliver(&[&event]).await;
    let log = stack
        .bridge
        .wait_for_event_log(&event, "success", Some("add_member"))
        .await;
    assert_eq!(log["targetUserId"], existing.as_str(), "{log}");
    let steps = log["steps"].to_string();
    assert!(!steps.contains("create_user"), "no user created: {log}");
    assert!(steps.contains("userName eq"), "looked up by userName: {log}");
    assert_eq!(stack.target.users_with_user_name(&mail).await.len(), 1);
    stack.target.assert_members_eventually(&target_name, &[&mail]).await;
    let (_, app) = stack
        .bridge
        .admin(Method::GET, &format!("/v1/apps/{app_id}"), None)
        .await;
    assert_eq!(app["matching"], json!(["userName"]), "{app}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_mappings_are_refused_naming_the_entry_and_the_position() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let cases = [
        (
            json!([{"target": "userName", "source": "Lower([mail])"}]),
            "attributeMapping[0].source",
        ),
        (
            json!([{"target": "userName", "source": "Left([mail])"}]),
            "attributeMapping[0].source",
        ),
        (
            json!([{"target": "userName", "source": "[mail]"}, {"target": "title", "source": "\"unclosed"}]),
            "attributeMapping[1].source",
        ),
        (
            json!([{"target": "userName", "source": "[mail]"}, {"target": "shoeSize", "source": "[mail]"}]),
            "attributeMapping[1].target",
        ),
        (
            json!([{"target": "displayName", "source": "[mail]"}]),
            "attributeMapping",
        ),
    ];
    for (mapping, field) in cases {
        let mut registration = stack.target.app_registration(&format!("bad-{}", short_id()));
        registration["attributeMapping"] = mapping.clone();
        let (status, problem) = stack.bridge.admin(Method::POST, "/v1/apps", Some(registration)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{mapping}: {problem}");
        assert_eq!(problem["field"], field, "{mapping}: {problem}");
    }
    // The position is named.
    let mut registration = stack.target.app_registration("bad-position");
    registration["attributeMapping"] = json!([{"target": "userName", "source": "ToLower([mail]"}]);
    let (_, problem) = stack.bridge.admin(Method::POST, "/v1/apps", Some(registration)).await;
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("character"),
        "{problem}"
    );
    // A PATCH with a bad mapping changes nothing.
    let (status, _) = stack
        .bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{}", stack.app_id),
            Some(json!({"attributeMapping": [{"target": "userName", "source": "Nope()"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapping_that_leaves_user_name_empty_fails_that_push_and_no_other() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let mapping = json!([{"target": "userName", "source": "[employeeId]"}]);
    let (app_id, group, _) = app_with_mapping(&stack, mapping, None).await;
    // The stack's own app (default mapping) gets the same group.
    let default_target = format!("Default {}", short_id());
    stack
        .bridge
        .assign_group(&stack.app_id, &group.id, &default_target)
        .await;
    let principal = Principal::new();
    let event = Event::activation(&principal, &group);
    stack.bridge.deliver(&[&event]).await;
    let failed = stack
        .bridge
        .wait_for_log(
            &[("eventId", event.id()), ("appId", &app_id)],
            |e| e["status"] == "failure",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        failed["reason"].as_str().unwrap_or("").contains("userName is empty"),
        "{failed}"
    );
    stack
        .target
        .assert_members_eventually(&default_target, &[principal.upn()])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_preview_shows_the_user_and_the_filters_without_contacting_the_target() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (app_id, _, _) = app_with_mapping(&stack, shaped_mapping(), Some(json!(["userName", "externalId"]))).await;
    let owner = stack
        .bridge
        .create_token(&format!("owner-{}", short_id()), "app_owner")
        .await;
    // An owner of another app does not see it.
    let (status, _) = stack
        .bridge
        .api(
            Method::POST,
            &format!("/v1/apps/{app_id}/mapping/preview"),
            Some(owner["token"].as_str().unwrap()),
            Some(json!({"principal": {"userPrincipalName": "x@contoso.com"}})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, preview) = stack
        .bridge
        .admin(
            Method::POST,
            &format!("/v1/apps/{app_id}/mapping/preview"),
            Some(json!({"principalId": "p-1", "principal": {"userPrincipalName": "ada@contoso.com", "mail": "Ádá@Contoso.com",
                        "givenName": "Ada", "surname": "Lovelace", "department": "HR", "employeeId": "7"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    let user = &preview["user"];
    assert_eq!(user["userName"], "ada@contoso.com", "{preview}");
    assert_eq!(user["externalId"], "p-1", "{preview}");
    assert_eq!(user["title"], "People", "{preview}");
    assert_eq!(user["active"], true, "{preview}");
    assert_eq!(user[ENTERPRISE]["employeeNumber"], "7", "{preview}");
    assert_eq!(
        preview["matching"],
        json!(["userName eq \"ada@contoso.com\"", "externalId eq \"p-1\""]),
        "{preview}"
    );
    assert!(
        stack.target.user_by_user_name("ada@contoso.com").await.is_none(),
        "nothing sent to the target"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_principal_is_renamed_at_the_target_and_a_late_older_event_never_renames_it_back() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    stack
        .bridge
        .advance_to(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await;
    let principal = Principal::new();
    let first = Event::activation(&principal, &group);
    stack.bridge.deliver(&[&first]).await;
    let pushed = stack
        .bridge
        .wait_for_event_log(&first, "success", Some("add_member"))
        .await;
    let user_id = pushed["targetUserId"].as_str().unwrap().to_string();

    // A later request carries the new UPN; an older one, arriving late, the old UPN.
    let renamed = format!("renamed.{}@contoso.test", short_id());
    let created = chrono::DateTime::parse_from_rfc3339(first.json["createdDateTime"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let newer = Event::activation(&principal, &group)
        .set("/principal/userPrincipalName", json!(renamed))
        .set(
            "/createdDateTime",
            json!(common::rfc3339(created + chrono::Duration::seconds(5))),
        );
    let older = Event::activation(&principal, &group).set(
        "/createdDateTime",
        json!(common::rfc3339(created - chrono::Duration::seconds(60))),
    );
    stack.bridge.deliver(&[&newer]).await;
    stack.bridge.deliver(&[&older]).await;
    let cycle = stack.bridge.sync_and_wait(&stack.app_id, false).await;
    assert_eq!(cycle["status"], "success", "{cycle}");
    let user = stack
        .target
        .user_by_user_name(&renamed)
        .await
        .unwrap_or_else(|| panic!("{renamed} at the target"));
    assert_eq!(user["id"], user_id.as_str(), "the same user, renamed: {user}");
    let updated = stack
        .bridge
        .wait_for_log(
            &[("appId", &stack.app_id), ("action", "update_user")],
            |e| e["status"] == "success",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(updated["targetUserId"], user_id.as_str(), "{updated}");
    stack.target.assert_members_eventually(&target_name, &[&renamed]).await;
}
