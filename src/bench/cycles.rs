//! Cycle throughput: many apps' cycles against the benchmark's responder, from a `serve` child
//! (its CPU time is its own), beside the responder's ceiling with the benchmark's client alone;
//! and one app's cycle against scim2-server beside a sequential client sending the same requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};

use super::responder::{self, Responder};
use super::serve::ServeChild;
use super::{Row, Scale, cpu_seconds, cycle_ended, register_app, start_cycle};

/// Pacing high enough that it never bounds the figure (the responder or the bridge does); no drift
/// reading, which the responder does not answer as a target would.
fn unpaced() -> Value {
    json!({"pacing": {"requestsPerSecond": 1_000_000}, "driftRepair": "off"})
}

/// The principal of membership `i` of the throughput figure.
fn member(i: usize) -> String {
    format!("m-{i}")
}

/// Puts `memberships` standing members, spread evenly over the groups `g-0`, `g-1`, ..., straight
/// into the child's database in one transaction (the directory API commits one at a time and
/// would take longer than the figure); their principals as the directory feed would record them.
async fn seed_memberships(serve: &ServeChild, groups: usize, memberships: usize) -> anyhow::Result<()> {
    let mut conn = serve.connect().await?;
    let per_group = memberships.div_ceil(groups.max(1)) as i64;
    let now = chrono::Utc::now().timestamp_millis();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
         INSERT INTO principals (principal_id, user_principal_name, display_name, updated_at)
         SELECT 'm-' || i, 'm-' || i || '@bench.test', 'Bench User', ?2 FROM n",
    )
    .bind(memberships as i64)
    .bind(now)
    .execute(&mut conn)
    .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
         INSERT INTO standing_members (group_id, principal_id, created_at)
         SELECT 'g-' || (i / ?2), 'm-' || i, ?3 FROM n",
    )
    .bind(memberships as i64)
    .bind(per_group)
    .bind(now)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Memberships reconciled per second across many apps' cycles, the SCIM requests per second the
/// bridge sent and its CPU time per request, beside the responder's ceiling.
pub(super) async fn throughput(scale: Scale, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let (responder, target) = Responder::start().await?;
    responder.record(false);
    let serve = ServeChild::start("cycles").await?;
    let http = crate::http_client();
    let apps = scale.cycle_apps;
    let per_group = scale.memberships.div_ceil(apps.max(1));
    let registering = Instant::now();
    let app_ids: Vec<anyhow::Result<String>> = futures::stream::iter(0..apps)
        .map(|i| {
            let (http, serve, target) = (&http, &serve, &target);
            async move {
                register_app(
                    http,
                    &serve.url,
                    &serve.admin,
                    target,
                    unpaced(),
                    &format!("g-{i}"),
                    &format!("G{i}"),
                )
                .await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let app_ids = app_ids.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    seed_memberships(&serve, apps, scale.memberships).await?;
    responder.know((0..scale.memberships).map(|i| responder::bench_user(&member(i))));
    println!(
        "{apps} apps registered and {} memberships seeded in {:.1} s",
        scale.memberships,
        registering.elapsed().as_secs_f64()
    );

    let (requests_before, added_before) = responder.counts();
    let cpu_before = cpu_seconds(serve.pid)?;
    let started = Instant::now();
    let cycle_ids: Vec<anyhow::Result<(String, String)>> = futures::stream::iter(&app_ids)
        .map(|app| {
            let (http, serve) = (&http, &serve);
            async move { Ok((app.clone(), start_cycle(http, &serve.url, &serve.admin, app).await?)) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let cycle_ids = cycle_ids.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let limit = Duration::from_secs(600);
    loop {
        let (_, added) = responder.counts();
        if added - added_before >= scale.memberships as u64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "the cycles added {} of {} memberships in {limit:?}",
            added - added_before,
            scale.memberships
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(serve.pid)? - cpu_before;
    let (requests_after, _) = responder.counts();
    let requests = requests_after - requests_before;
    for (app, cycle) in &cycle_ids {
        cycle_ended(&http, &serve.url, &serve.admin, app, cycle, Duration::from_secs(120)).await?;
    }
    drop(serve);

    let ceiling = responder_ceiling(&target, scale, per_group).await?;
    let memberships_per_s = scale.memberships as f64 / elapsed;
    let requests_per_s = requests as f64 / elapsed;
    let cpu_per_request = cpu / requests.max(1) as f64 * 1e6;
    println!(
        "cycles of {apps} apps, {} memberships: {elapsed:.1} s, {memberships_per_s:.0} memberships/s, {requests} SCIM requests \
         ({requests_per_s:.0}/s); the bridge's CPU {cpu:.1} s, {cpu_per_request:.0} µs per request; the responder alone \
         with the bench's client: {ceiling:.0} requests/s",
        scale.memberships
    );
    rows.push(Row::new(
        format!(
            "cycle throughput, {apps} apps, {} memberships (users found at the target, pacing unbounded)",
            scale.memberships
        ),
        format!("{memberships_per_s:.0} memberships/s, {requests_per_s:.0} SCIM requests/s"),
        format!("the responder with the bench's client alone: {ceiling:.0} requests/s"),
        format!("{:.2}", requests_per_s / ceiling),
    ));
    rows.push(Row::alone(
        "the bridge's CPU time per SCIM request of those cycles (user + system, `serve` child)",
        format!(
            "{cpu_per_request:.0} µs ({cpu:.1} s for {requests} requests: {:.2} cores busy)",
            cpu / elapsed
        ),
    ));
    Ok(())
}

/// The responder's requests per second with the benchmark's client alone, sending the cycles' mix
/// (one user look-up per member, one PATCH adding `per_patch` members per that many look-ups)
/// from as many concurrent senders as the machine serves well.
async fn responder_ceiling(target: &str, scale: Scale, per_patch: usize) -> anyhow::Result<f64> {
    let http = crate::http_client_builder().pool_max_idle_per_host(64).build()?;
    let time = Duration::from_secs(scale.seconds);
    let done = Arc::new(AtomicU64::new(0));
    let senders = 64;
    let per_patch = per_patch.clamp(1, 100);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (http, target, done) = (http.clone(), target.to_string(), done.clone());
        let members = scale.memberships;
        tasks.push(tokio::spawn(async move {
            let mut i = s;
            let mut chunk = Vec::new();
            while started.elapsed() < time {
                let p = member(i % members.max(1));
                let ok = http
                    .get(format!("{target}/Users"))
                    .query(&[("filter", format!("externalId eq \"{p}\""))])
                    .bearer_auth("bench")
                    .send()
                    .await
                    .is_ok_and(|a| a.status().is_success());
                done.fetch_add(u64::from(ok), Ordering::Relaxed);
                chunk.push(json!({"value": responder::user_id(&p)}));
                if chunk.len() == per_patch {
                    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "add", "path": "members", "value": std::mem::take(&mut chunk)}]});
                    let ok = http
                        .patch(format!("{target}/Groups/bench-group"))
                        .bearer_auth("bench")
                        .header("content-type", "application/scim+json")
                        .body(body.to_string())
                        .send()
                        .await
                        .is_ok_and(|a| a.status().is_success());
                    done.fetch_add(u64::from(ok), Ordering::Relaxed);
                }
                i += senders;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// scim2-server from `scripts/test-deps.sh`, looked for in the working directory and the checkout
/// the binary was built from.
/// One app's cycle of `real_target_members` memberships against scim2-server (users already there),
/// beside a sequential client sending the same requests to the same server in the same run.
/// Answers why it was skipped, if it was.
pub(super) async fn real_target(scale: Scale, rows: &mut Vec<Row>) -> anyhow::Result<Option<String>> {
    let Some((_server, base)) = super::start_scim2_server().await? else {
        let why =
            "the cycle against scim2-server: .venv/bin/scim2-server is missing (scripts/test-deps.sh installs it)";
        println!("skipped: {why}");
        return Ok(Some(why.to_string()));
    };
    let scim = crate::http_client();
    let n = scale.real_target_members;
    let principals: Vec<String> = (0..n).map(|i| format!("real-{i}")).collect();
    // The users already exist there, as the bridge would send them: found, nothing to update.
    let mut ids = Vec::with_capacity(n);
    for p in &principals {
        let mut user = responder::bench_user(p);
        if let Some(u) = user.as_object_mut() {
            u.remove("id");
        }
        let created: Value = scim
            .post(format!("{base}/Users"))
            .bearer_auth("bench")
            .header("content-type", "application/scim+json")
            .body(user.to_string())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(created["id"].as_str().context("a created user's id")?.to_string());
    }

    let serve = ServeChild::start("real-target").await?;
    let http = crate::http_client();
    let settings = json!({"pacing": {"requestsPerSecond": 10_000}, "driftRepair": "off"});
    let app = register_app(
        &http,
        &serve.url,
        &serve.admin,
        &base,
        settings,
        "real-group",
        "Bench real",
    )
    .await?;
    for p in &principals {
        super::admin_call(
            &http,
            reqwest::Method::PUT,
            format!("{}/v1/groups/real-group/members/{p}", serve.url),
            &serve.admin,
            Some(json!({"principal": {"userPrincipalName": format!("{p}@bench.test"), "displayName": "Bench User"}})),
        )
        .await?;
    }
    let cycle_id = start_cycle(&http, &serve.url, &serve.admin, &app).await?;
    let cycle = cycle_ended(
        &http,
        &serve.url,
        &serve.admin,
        &app,
        &cycle_id,
        Duration::from_secs(300),
    )
    .await?;
    drop(serve);
    let millis = |v: &Value| v.as_str().and_then(crate::clock::parse_rfc3339);
    let bridge_ms = match (millis(&cycle["startedAt"]), millis(&cycle["endedAt"])) {
        (Some(a), Some(b)) => (b - a).max(1) as f64,
        _ => anyhow::bail!("the cycle has no start or end: {cycle}"),
    };

    // The same sequence from one sequential client: the group looked up and created, one look-up
    // per member, one PATCH per 100 members (into a group of its own, so no member is added twice).
    let started = Instant::now();
    let mut requests = 0usize;
    scim.get(format!("{base}/Groups"))
        .query(&[
            ("filter", "displayName eq \"Bench sequential\""),
            ("excludedAttributes", "members"),
        ])
        .bearer_auth("bench")
        .send()
        .await?
        .error_for_status()?;
    let group: Value = scim
        .post(format!("{base}/Groups"))
        .bearer_auth("bench")
        .header("content-type", "application/scim+json")
        .body(
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Bench sequential",
            "externalId": "bench-sequential"})
            .to_string(),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    requests += 2;
    let group_id = group["id"].as_str().context("the group's id")?;
    for chunk in principals.iter().zip(&ids).collect::<Vec<_>>().chunks(100) {
        for (p, _) in chunk {
            scim.get(format!("{base}/Users"))
                .query(&[("filter", format!("externalId eq \"{p}\""))])
                .bearer_auth("bench")
                .send()
                .await?
                .error_for_status()?;
            requests += 1;
        }
        let value: Vec<Value> = chunk.iter().map(|(_, id)| json!({"value": id})).collect();
        scim.patch(format!("{base}/Groups/{group_id}"))
            .bearer_auth("bench")
            .header("content-type", "application/scim+json")
            .body(
                json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "add", "path": "members", "value": value}]})
                .to_string(),
            )
            .send()
            .await?
            .error_for_status()?;
        requests += 1;
    }
    let sequential_ms = started.elapsed().as_secs_f64() * 1000.0;
    let bridge_rate = requests as f64 / (bridge_ms / 1000.0);
    let sequential_rate = requests as f64 / (sequential_ms / 1000.0);
    println!(
        "one app's cycle, {n} memberships against scim2-server: {:.2} s ({bridge_rate:.0} requests/s, counts {}); \
         the same {requests} requests from a sequential client: {:.2} s ({sequential_rate:.0}/s)",
        bridge_ms / 1000.0,
        cycle["counts"],
        sequential_ms / 1000.0
    );
    rows.push(Row::new(
        format!("one app's cycle, {n} memberships, scim2-server (users there), pacing 10,000/s"),
        format!(
            "{:.2} s: {:.0} memberships/s, about {bridge_rate:.0} SCIM requests/s",
            bridge_ms / 1000.0,
            n as f64 / (bridge_ms / 1000.0)
        ),
        format!(
            "the same {requests} requests from a sequential client: {:.2} s, {sequential_rate:.0}/s",
            sequential_ms / 1000.0
        ),
        format!("{:.2}×", bridge_rate / sequential_rate),
    ));
    Ok(None)
}
