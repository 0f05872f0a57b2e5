//! What one push costs the store, counted (`scim_bridge::store::store_counts`): the commits and
//! statements from a webhook's activation to the member added at a real target. A change that
//! adds a round trip to the push path fails here; one that must, raises the constant and says why.
//!
//! The bridge runs in this process (nextest runs each test in a process of its own, so the
//! counts are this test's), on a manual clock: nothing runs on a timer meanwhile, and on
//! PostgreSQL the leases are renewed every 100 s, not during the push.

use std::time::Duration;

use scim_bridge::store::store_counts;

use crate::common::{self, Event, Kind, Principal, SourceGroup, Stack};

/// A push costs three commits (issue 20): the event's at intake, the claim's (SPEC §1: the
/// admission is committed before anything is sent) and the outcome's, which carries the job's
/// state, the membership, the user and group the push found or created, and the log entry.
const COMMITS_PER_PUSH: u64 = 3;

/// The statements of one activation's push, intake included, when the push creates both the
/// user and the group at the target, measured. The intake (one commit): one read of what the
/// batch needs (stored events, their jobs, principals, memberships, assigned apps, revoked ids)
/// and its writes (principal, event, membership, jobs), one statement each however many events
/// the batch holds. The dispatcher's pass reads the app with its due jobs and whether a cycle was
/// asked for (one read); the add's target group and checks (the group's assignment, membership
/// active, member provisioned, confirmed) are one read; the claim, which answers the stored user
/// and group; the outcome writes the job, the user, the group, the membership with its source
/// group, and the log entry; then the pass's next job time. (The expiry timer learns the
/// event's end from the intake's answer, without a read.) PostgreSQL adds the lease fence of
/// each write transaction done under the app's lease (the claim's is part of its one statement:
/// `PostgresDb::fenced`), the
/// intake's principal locks and its notification (of the work other replicas hold: this one wakes
/// its own), and the numbering of committed log entries. (Before, a pass read its jobs, then the
/// app again and its assignments in reads of their own, the intake's five reads were five
/// statements, the claim's fence was a statement of its own, and on PostgreSQL the replica's own
/// notification woke a second, empty pass and a second read of the next end: 24 and 32; until
/// the intake told the timer the end, the timer read it: 17 and 21.)
const SQLITE_STATEMENTS_FIRST_PUSH: u64 = 16;
const POSTGRES_STATEMENTS_FIRST_PUSH: u64 = 20;
/// The same for a second principal: the group is known (one write fewer), only the user is
/// created.
const SQLITE_STATEMENTS_NEXT_PUSH: u64 = 15;
const POSTGRES_STATEMENTS_NEXT_PUSH: u64 = 19;

/// The bridge's log, shown if a test fails (a push that never came says why there).
fn show_the_bridges_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("scim_bridge=info")
        .with_test_writer()
        .try_init();
}

/// The counts once the bridge has settled: unchanged over a quarter of a second.
async fn settled_counts() -> (u64, u64) {
    let counts = || {
        let c = store_counts();
        (c.commits, c.statements)
    };
    let mut last = counts();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = counts();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Delivers the activation and answers what it cost once the member is at the target (read
/// there, not through the bridge, whose API reads would be counted).
async fn push_cost(stack: &Stack, event: &Event, target_name: &str, expected: &[&str]) -> (u64, u64) {
    let before = settled_counts().await;
    stack.bridge.deliver(&[event]).await;
    stack.target.assert_members_eventually(target_name, expected).await;
    let after = settled_counts().await;
    (after.0 - before.0, after.1 - before.1)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_push_costs_three_commits_and_a_counted_number_of_statements() {
    show_the_bridges_log();
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |c| c.lease_ttl_ms = 300_000).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    // Past the app's first cycle (due at once; the group has no members yet).
    stack
        .bridge
        .advance_to(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await;

    let first = Principal::new();
    let (commits, statements) =
        push_cost(&stack, &Event::activation(&first, &group), &target_name, &[first.upn()]).await;
    let postgres = common::postgres_under_test();
    let expected = if postgres {
        POSTGRES_STATEMENTS_FIRST_PUSH
    } else {
        SQLITE_STATEMENTS_FIRST_PUSH
    };
    assert_eq!(
        (commits, statements),
        (COMMITS_PER_PUSH, expected),
        "the first push (user and group created): commits and statements"
    );

    let second = Principal::new();
    let (commits, statements) = push_cost(
        &stack,
        &Event::activation(&second, &group),
        &target_name,
        &[first.upn(), second.upn()],
    )
    .await;
    let expected = if postgres {
        POSTGRES_STATEMENTS_NEXT_PUSH
    } else {
        SQLITE_STATEMENTS_NEXT_PUSH
    };
    assert_eq!(
        (commits, statements),
        (COMMITS_PER_PUSH, expected),
        "the next push (user created, group known): commits and statements"
    );
}

/// A cycle's bookkeeping goes by chunk, not by member (issue 20): the user steps before a chunk's
/// PATCH commit nothing of their own (the users they matched or created ride the chunk's
/// in-flight mark), so a cycle that adds six members to a target group in one chunk commits as
/// often as one that adds one: the request, its claim, the cycle's record, the chunk's in-flight
/// mark and outcome, the drift check, the user check, the look for a merged request and the end.
/// (Before, each member's user step committed twice: 12 commits for one member, 22 for six.)
/// Nor do its statements: the chunk's user steps are read at once, with the first (for an app
/// with groups, whose PATCH checks the chunk again before it is sent), and the dispatcher's pass
/// before a user step keeps the read of the pass before it (the app, no job due), which a user
/// step cannot change, with the first queued job's time, read once when the read is first kept.
/// (Before, each member cost one statement, its user step's read; before that three: the pass
/// read the app and the next job's time again, and the user check read each user on its own.)
#[tokio::test(flavor = "multi_thread")]
async fn a_cycles_commits_do_not_grow_with_the_members_of_a_chunk() {
    show_the_bridges_log();
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |c| c.lease_ttl_ms = 300_000).await else {
        return;
    };
    let mut costs = Vec::new();
    for members in [1, 6] {
        let app_id = stack.bridge.register_app(&stack.target).await;
        // Its first scheduled cycle is a sync interval away on the bridge's (manual) clock.
        // Standing members of a group not assigned yet: nothing is pushed until the cycle.
        let group = SourceGroup::new();
        let principals: Vec<Principal> = (0..members).map(|_| Principal::new()).collect();
        for p in &principals {
            stack.bridge.put_standing_member(&group, p).await;
        }
        let target_name = format!("Chunk {}", common::short_id());
        stack.bridge.assign_group(&app_id, &group.id, &target_name).await;

        // Counted from the request to the cycle's end, read at the target and then by the
        // counts settling, not through the bridge's API (whose reads would be counted).
        let before = settled_counts().await;
        let (status, answer) = stack
            .bridge
            .admin(reqwest::Method::POST, &format!("/v1/apps/{app_id}/sync"), None)
            .await;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "POST sync: {answer}");
        let upns: Vec<&str> = principals.iter().map(Principal::upn).collect();
        stack.target.assert_members_eventually(&target_name, &upns).await;
        let after = settled_counts().await;
        let cycle_id = answer["cycleId"].as_str().expect("cycleId").to_string();
        let cycle = stack
            .bridge
            .wait_for_cycle(&app_id, |c| c["id"] == cycle_id.as_str())
            .await;
        assert_eq!(cycle["counts"]["added"], members, "{cycle}");
        costs.push((members, after.0 - before.0, after.1 - before.1));
    }
    assert_eq!(
        costs[0].1, costs[1].1,
        "commits of a cycle adding (members, commits, statements): {costs:?}"
    );
    assert_eq!(
        costs[0].1, CYCLE_COMMITS_ONE_CHUNK,
        "commits of a cycle adding one chunk: {costs:?}"
    );
    assert_eq!(
        costs[0].2, costs[1].2,
        "statements of a cycle adding (members, commits, statements): {costs:?}"
    );
}

/// See `a_cycles_commits_do_not_grow_with_the_members_of_a_chunk`.
const CYCLE_COMMITS_ONE_CHUNK: u64 = 9;
