//! What the store knows of targets (`store::targets`): an outcome's member changes.

use super::*;

fn member(principal: &str) -> TargetMember {
    TargetMember {
        target_display_name: "Target".into(),
        principal_id: principal.into(),
    }
}

/// An outcome's membership changes, written set-based, leave each member as applying them one
/// by one in order would: the last confirmation or removal decides, and an in-doubt add after
/// a removal adds the member back unconfirmed.
#[tokio::test]
async fn an_outcomes_member_changes_leave_what_applying_them_in_order_would() {
    use MemberChange::{Confirmed, Gone, InDoubt};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    Store::migrate(&store).await.unwrap();
    let app_id = uuid::Uuid::now_v7().to_string();
    store
        .insert_app(&AppRecord::new(
            &app_id,
            "app",
            "http://127.0.0.1:9/scim/v2",
            ("bearer".into(), vec![0]),
            AppSettings::default(),
            0,
            0,
        ))
        .await
        .unwrap();
    let record = |members: Vec<(TargetMember, MemberChange)>| Outcome {
        app_id: app_id.clone(),
        time: 1,
        members,
        ..Default::default()
    };
    // Before: p-confirmed confirmed, p-doubt in doubt.
    let before = record(vec![(member("p-confirmed"), Confirmed), (member("p-doubt"), InDoubt)]);
    Store::record(&store, &before).await.unwrap();

    let changes = vec![
        (member("p-new"), InDoubt),
        (member("p-new"), Confirmed),
        (member("p-confirmed"), InDoubt),
        (member("p-doubt"), Confirmed),
        (member("p-doubt"), Gone),
        (member("p-back"), Confirmed),
        (member("p-back"), Gone),
        (member("p-back"), InDoubt),
        (member("p-doubt-only"), InDoubt),
    ];
    Store::record(&store, &record(changes)).await.unwrap();
    let state = |p: &'static str| {
        let store = &store;
        let app_id = app_id.clone();
        async move {
            match (
                store.is_provisioned(&app_id, &member(p)).await.unwrap(),
                store.is_confirmed(&app_id, &member(p)).await.unwrap(),
            ) {
                (false, _) => "absent",
                (true, false) => "in doubt",
                (true, true) => "confirmed",
            }
        }
    };
    assert_eq!(state("p-new").await, "confirmed");
    assert_eq!(
        state("p-confirmed").await,
        "confirmed",
        "an in-doubt add leaves a confirmed member"
    );
    assert_eq!(state("p-doubt").await, "absent");
    assert_eq!(state("p-back").await, "in doubt");
    assert_eq!(state("p-doubt-only").await, "in doubt");
}
