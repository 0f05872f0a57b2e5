//! `GET /v1/activations/{eventId}`: one look at what happened to an activation in every app it
//! went to, against scim2-server.

use crate::common;

use common::{Event, Kind, Principal, SourceGroup, Stack, short_id};
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn outcome_for<'a>(view: &'a Value, app_id: &str) -> &'a Value {
    view["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["appId"] == app_id)
        .unwrap_or_else(|| panic!("no outcome for app {app_id}: {view}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_activation_for_two_apps_shows_one_pushed_with_latency_and_one_deferred_then_pushed_by_the_cycle() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &stack.bridge;
    let app_a = stack.app_id.clone();
    let app_b = bridge.register_app(&stack.target).await;

    // Fill app B's window (5 in 10 s) with activations of a group only B has.
    let busy = SourceGroup::new();
    bridge
        .assign_group(&app_b, &busy.id, &format!("Busy {}", short_id()))
        .await;
    let fillers: Vec<Event> = (0..5).map(|_| Event::activation(&Principal::new(), &busy)).collect();
    bridge.deliver(&fillers.iter().collect::<Vec<_>>()).await;
    for e in &fillers {
        bridge.wait_for_event_log(e, "success", Some("add_member")).await;
    }

    // The group assigned to both apps.
    let shared = SourceGroup::new();
    let target_name = format!("Shared {}", short_id());
    bridge.assign_group(&app_a, &shared.id, &target_name).await;
    bridge.assign_group(&app_b, &shared.id, &target_name).await;
    let ada = Principal::new();
    let event = Event::activation(&ada, &shared);
    let answer = bridge.deliver(&[&event]).await;
    let jobs: Vec<&str> = answer["events"][0]["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["appId"].as_str().unwrap())
        .collect();
    assert_eq!(jobs.len(), 2, "{answer}");

    bridge
        .wait_for_log(
            &[("eventId", event.id()), ("appId", &app_a)],
            |e| e["status"] == "success",
            common::PUSH_TIMEOUT,
        )
        .await;
    bridge
        .wait_for_log(
            &[("eventId", event.id()), ("appId", &app_b)],
            |e| e["status"] == "deferred",
            common::PUSH_TIMEOUT,
        )
        .await;

    let (status, view) = bridge
        .admin(Method::GET, &format!("/v1/activations/{}", event.id()), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["eventId"], event.id());
    let events = view["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["status"], "Provisioned");
    assert_eq!(events[0]["body"]["principalId"], ada.id.as_str());
    assert_eq!(view["apps"].as_array().unwrap().len(), 2, "{view}");

    let a = outcome_for(&view, &app_a);
    assert_eq!(a["state"], "pushed");
    assert_eq!(a["status"], "success");
    assert_eq!(a["action"], "add_member");
    let latency = a["latencyMs"].as_i64().expect("latency of the push");
    assert!((0..5_000).contains(&latency), "{latency}");
    assert!(a["deferredUntil"].is_null());
    assert!(a["entries"][0]["steps"].as_array().is_some_and(|s| !s.is_empty()));

    let b = outcome_for(&view, &app_b);
    assert_eq!(b["state"], "deferred");
    assert!(b["latencyMs"].is_null());
    let (_, app) = bridge.admin(Method::GET, &format!("/v1/apps/{app_b}"), None).await;
    assert_eq!(b["deferredUntil"], app["nextSyncAt"], "deferred until B's next cycle");
    assert!(b["reason"].as_str().unwrap().contains("window"), "{b}");

    // B's cycle provisions it; the view then links the event to the cycle's push.
    let (status, started) = bridge
        .admin(Method::POST, &format!("/v1/apps/{app_b}/sync"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let cycle_id = started["cycleId"].as_str().unwrap();
    bridge
        .wait_for_log(
            &[("eventId", event.id()), ("appId", &app_b), ("trigger", "sync")],
            |e| e["status"] == "success" && e["action"] == "add_member",
            common::PUSH_TIMEOUT,
        )
        .await;
    let (_, view) = bridge
        .admin(Method::GET, &format!("/v1/activations/{}", event.id()), None)
        .await;
    let b = outcome_for(&view, &app_b);
    assert_eq!(b["state"], "pushed", "{b}");
    assert!(b["latencyMs"].as_i64().is_some_and(|l| l >= 0));
    let entries = b["entries"].as_array().unwrap();
    assert_eq!(entries.first().unwrap()["status"], "deferred", "oldest first");
    assert_eq!(entries.last().unwrap()["cycleId"], cycle_id);
    stack.target.assert_members_eventually(&target_name, &[ada.upn()]).await;

    // Operators may look; app owners may not; unknown ids are 404.
    let operator = bridge.create_token("night-shift", "operator").await;
    let owner = bridge.create_token("team-b", "app_owner").await;
    let path = format!("/v1/activations/{}", event.id());
    let (status, _) = bridge.api(Method::GET, &path, operator["token"].as_str(), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = bridge.api(Method::GET, &path, owner["token"].as_str(), None).await;
    assert!(
        status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
        "{status}"
    );
    let (status, _) = bridge.admin(Method::GET, "/v1/activations/no-such-event", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
