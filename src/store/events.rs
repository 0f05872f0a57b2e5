//! Webhook events: each (id, status) stored once with what the bridge made of it. Taking one in
//! merges its principal, updates its membership and queues its jobs.
//!
//! A batch of events (SQLite's webhooks committed together, one PostgreSQL `accept_events` call)
//! is read and written with set-based statements: the state every event of the batch needs is
//! read at once (`read_state`), `rules::intake` decides event by event, in order, against that
//! state as the earlier events of the batch left it, and what they write goes in one statement
//! per table (`Plan::write`), whatever the number of events, apps and jobs. Each event is
//! answered as if it had been taken in alone.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tracing::instrument;

use super::dialect::{RowsConn, db_run, execute_chunked, json_rows, read, sql};
use super::logs::insert_logs;
use super::principals::{PrincipalRow, principal_object, write_principals};
use super::*;
use crate::rules::{self, AssignedApp, MembershipState, MembershipWrite, NewJob, StoredAttributes};
use serde::Deserialize;

/// One event of a batch, with the time its webhook arrived.
pub(super) struct Item<'a> {
    pub event: &'a Event,
    pub effect: &'a Effect,
    pub now: Millis,
}

/// What a batch answers, and whether it wrote log entries (PostgreSQL numbers them after the
/// commit).
pub(super) struct Written {
    pub answers: Vec<Acceptance>,
    pub logged: bool,
}

/// What a batch's events need to be judged, in one read of one row: the events stored before
/// (`$1`: id and status) and their jobs, the principals merged into (`$2`), the memberships
/// (`$3`: principal, group, access id), the apps their groups are assigned to (`$4`) and which of
/// the request ids were revoked (`$5`). Each a JSON array of objects (`{json_agg ...}`).
///
/// The principal and membership rows are locked as they are read (PostgreSQL), in that order:
/// the expiry (`expire_due`, which claims rows with row locks) and the batch then take turns on
/// them, so an extension is judged against the state the expiry left, never applied to a row
/// the expiry ended meanwhile.
const STATE: &str = concat!(
    "SELECT
      (SELECT {json_agg q.o} FROM (SELECT {object}('seq', seq, 'id', id, 'status', status, 'body', {text body}) AS o
         FROM events WHERE (id, status) IN (SELECT {field 0 text}, {field 1 text} FROM {rows $1})) q) AS events,
      (SELECT {json_agg q.o} FROM (SELECT {object}('seq', j.seq, 'event_seq', j.event_seq, 'id', j.id,
           'app_id', {text j.app_id}) AS o
         FROM jobs j WHERE j.event_seq IN (SELECT e.seq FROM events e
           WHERE (e.id, e.status) IN (SELECT {field 0 text}, {field 1 text} FROM {rows $1}))) q) AS jobs,
      (SELECT {json_agg q.o} FROM (SELECT {object}(",
    principal_object!(),
    ") AS o FROM principals
         WHERE principal_id IN (SELECT {field 0 text} FROM {rows $2}) {for_update}) q) AS principals,
      (SELECT {json_agg q.o} FROM (SELECT {object}('principal_id', principal_id, 'group_id', group_id,
           'access_id', access_id, 'active', active, 'source', source,
           'start_at', {ms start_at}, 'end_at', {ms end_at}, 'event_created', {ms event_created},
           'expired_at', {ms expired_at}, 'grant_request_id', grant_request_id) AS o
         FROM memberships WHERE (principal_id, group_id, access_id) IN
           (SELECT {field 0 text}, {field 1 text}, {field 2 text} FROM {rows $3}) {for_update}) q) AS memberships,
      (SELECT {json_agg q.o} FROM (SELECT {object}('group_id', ga.group_id, 'id', {text a.id}, 'name', a.name,
           'next_sync_at', {ms a.next_sync_at}) AS o
         FROM group_assignments ga JOIN apps a ON a.id = ga.app_id
         WHERE ga.group_id IN (SELECT {field 0 text} FROM {rows $4}) AND a.deleted_at IS NULL
           AND a.status != 'deleting') q) AS apps,
      (SELECT {json_agg q.o} FROM (SELECT {object}('id', request_id) AS o FROM revoked_requests
         WHERE request_id IN (SELECT {field 0 text} FROM {rows $5})) q) AS revoked"
);

/// What `STATE` reads.
#[derive(sqlx::FromRow)]
struct StateRead {
    #[sqlx(json)]
    events: Vec<StoredKey>,
    #[sqlx(json)]
    jobs: Vec<EventJob>,
    #[sqlx(json)]
    principals: Vec<PrincipalRow>,
    #[sqlx(json)]
    memberships: Vec<MembershipRow>,
    #[sqlx(json)]
    apps: Vec<AppOfGroup>,
    #[sqlx(json)]
    revoked: Vec<RevokedId>,
}

const INSERT_REVOKED: &str = "INSERT INTO revoked_requests (request_id, principal_id, group_id, end_at, revoked_at)
    SELECT {field 0 text}, {field 1 text}, {field 2 text}, {field 3 ts}, {field 4 ts} FROM {rows $1} WHERE true
    ON CONFLICT (request_id) DO NOTHING";

const INSERT_EVENTS: &str = "INSERT INTO events (id, status, body, action, access_id, principal_id, group_id,
      created_at, received_at, start_at, end_at, outcome, reason)
    SELECT {field 0 text}, {field 1 text}, {field 2 jsonb}, {field 3 text}, {field 4 text}, {field 5 text},
      {field 6 text}, {field 7 ts}, {field 8 ts}, {field 9 ts}, {field 10 ts}, {field 11 text}, {field 12 text}
    FROM {rows $1} ORDER BY r.key
    RETURNING id, status, seq";

/// Whole rows: the batch read each one it changes (under its lock on PostgreSQL), so a changed
/// row is written as it now stands.
const PUT_MEMBERSHIPS: &str = "INSERT INTO memberships (principal_id, group_id, access_id, active, source,
      start_at, end_at, event_seq, event_created, expired_at, grant_request_id)
    SELECT {field 0 text}, {field 1 text}, {field 2 text}, {field 3 bool}, {field 4 text}, {field 5 ts},
      {field 6 ts}, {field 7 bigint}, {field 8 ts}, {field 9 ts}, {field 10 text}
    FROM {rows $1} WHERE true
    ON CONFLICT (principal_id, group_id, access_id) DO UPDATE SET active = excluded.active,
      source = excluded.source, start_at = excluded.start_at, end_at = excluded.end_at,
      event_seq = excluded.event_seq, event_created = excluded.event_created, expired_at = excluded.expired_at,
      grant_request_id = excluded.grant_request_id";

const INSERT_JOBS: &str = "INSERT INTO jobs (id, app_id, event_seq, event_id, principal_id, group_id, kind,
      trigger, state, not_before, received_at, flag, updated_at, trace_context)
    SELECT {field 0 text}, {field 1 uuid}, {field 2 bigint}, {field 3 text}, {field 4 text}, {field 5 text},
      {field 6 text}, {field 7 text}, 'pending', {field 8 ts}, {field 9 ts}, {field 10 text}, {field 9 ts},
      {field 11 text}
    FROM {rows $1} ORDER BY r.key";

/// The access ends of a batch's events, pending (SPEC §8): the user's name as the event gave it or
/// as stored, the target group as the group's assignment names it now.
const INSERT_ACCESS_ENDS: &str = "INSERT INTO access_ends (id, app_id, principal_id, user_principal_name, group_id,
      target_display_name, event_id, reason, ended_at, learned_at, removed_at, action, status, waiting_on, updated_at)
    SELECT {field 0 text}, {field 1 uuid}, {field 2 text},
      COALESCE({field 3 text}, (SELECT p.user_principal_name FROM principals p WHERE p.principal_id = {field 2 text})),
      {field 4 text},
      (SELECT ga.target_display_name FROM group_assignments ga
         WHERE ga.app_id = {field 1 uuid} AND ga.group_id = {field 4 text}),
      {field 5 text}, {field 6 text}, {field 7 ts}, {field 8 ts}, NULL, NULL, 'pending', NULL, {field 8 ts}
    FROM {rows $1} ORDER BY r.key";

impl Store {
    /// Records the events of one webhook in one transaction (events, principals, membership
    /// state, jobs, log entries, as `crate::rules` decides); answers each one's verdict.
    #[instrument(skip_all, fields(events = items.len()))]
    pub async fn accept_events(&self, items: &[(Event, Effect)], now: Millis) -> StoreResult<Vec<Acceptance>> {
        // Both group the webhooks that arrive while a commit is made (`group_commit`).
        db_run!(self, db => db.accept_grouped(items, now).await)
    }

    pub async fn get_event(&self, id: &str) -> StoreResult<Vec<StoredEvent>> {
        Ok(read!(self, query_as fetch_all,
            "SELECT seq, id, status, body, {ms received_at} AS received_at, outcome, reason FROM events
             WHERE id = $1 ORDER BY seq",
            id))
    }
}

/// Takes in a batch of events inside the caller's transaction; answers each.
pub(super) async fn write_batch(conn: &mut impl RowsConn, items: &[Item<'_>]) -> StoreResult<Written> {
    let mut state = read_state(conn, items).await?;
    let mut plan = Plan::default();
    let answers: Vec<Acceptance> = items.iter().map(|item| state.decide(item, &mut plan)).collect();
    plan.write(conn, &state).await?;
    Ok(Written {
        answers,
        logged: !plan.logs.is_empty(),
    })
}

/// An event stored before the batch.
#[derive(Deserialize)]
struct StoredKey {
    seq: i64,
    id: String,
    status: String,
    body: String,
}

#[derive(Deserialize)]
struct EventJob {
    seq: i64,
    event_seq: i64,
    id: String,
    app_id: String,
}

#[derive(Deserialize)]
struct AppOfGroup {
    group_id: String,
    #[serde(flatten)]
    app: AssignedApp,
}

#[derive(Deserialize)]
struct RevokedId {
    id: String,
}

/// A boolean as either database writes it in JSON: `true` and `false`, or SQLite's 1 and 0.
fn boolean<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::Number(n) => n.as_i64() != Some(0),
        _ => false,
    })
}

/// A membership row as it stands.
#[derive(Debug, Clone, Deserialize)]
struct MembershipRow {
    principal_id: String,
    group_id: String,
    access_id: String,
    #[serde(deserialize_with = "boolean")]
    active: bool,
    source: String,
    start_at: Option<Millis>,
    end_at: Option<Millis>,
    event_created: Millis,
    expired_at: Option<Millis>,
    grant_request_id: Option<String>,
}

type MembershipKey = (String, String, String);

struct Membership {
    row: MembershipRow,
    /// The event of the batch that last wrote it (its `seq` is known once the events are
    /// written); `None`: not changed by the batch.
    written_by: Option<usize>,
}

impl Membership {
    fn state(&self) -> MembershipState {
        MembershipState {
            active: self.row.active,
            start_at: self.row.start_at,
            end_at: self.row.end_at,
            event_created: self.row.event_created,
            grant_request_id: self.row.grant_request_id.clone(),
        }
    }
}

/// An event already known: stored before, or taken in earlier in the batch.
struct Known<'a> {
    body: Cow<'a, Value>,
    jobs: Vec<(String, String)>,
}

/// What the batch's events need to be judged, as the events judged so far left it.
struct State<'a> {
    events: HashMap<(String, String), Known<'a>>,
    principals: BTreeMap<String, StoredAttributes>,
    memberships: BTreeMap<MembershipKey, Membership>,
    apps: HashMap<String, Vec<AssignedApp>>,
    revoked: HashSet<String>,
}

/// What the batch writes.
#[derive(Default)]
struct Plan<'a> {
    /// The principals merged into, each with the time of its last merge.
    principals: BTreeMap<String, Millis>,
    /// Request ids to remember as revoked, with until when.
    revoked: Vec<(&'a Event, Option<Millis>, Millis)>,
    events: Vec<(&'a Item<'a>, &'static str, Option<String>)>,
    /// Each with the index of its event in `events`, and its id.
    jobs: Vec<(usize, String, NewJob)>,
    logs: Vec<LogEntry>,
    /// The access ends the events decide (SPEC §8), born with them.
    access_ends: Vec<AccessEnd>,
}

/// A list of keys as the JSON rows `{rows $1}` reads (reads take their keys in one statement).
fn keys<T: serde::Serialize>(keys: impl IntoIterator<Item = T>) -> String {
    serde_json::to_string(&keys.into_iter().collect::<Vec<T>>()).expect("keys serialize")
}

async fn read_state<'a>(conn: &mut impl RowsConn, items: &'a [Item<'a>]) -> StoreResult<State<'a>> {
    let event_keys: BTreeSet<(&str, &str)> = items
        .iter()
        .map(|i| (i.event.id.as_str(), i.event.status.as_str()))
        .collect();
    let merged: BTreeSet<[&str; 1]> = items
        .iter()
        .filter(|i| i.event.raw.get("principal").is_some_and(Value::is_object))
        .map(|i| [i.event.principal_id.as_str()])
        .collect();
    let membership_keys: BTreeSet<[&str; 3]> = items
        .iter()
        .map(|i| {
            [
                i.event.principal_id.as_str(),
                i.event.group_id.as_str(),
                i.event.access_id.as_str(),
            ]
        })
        .collect();
    let groups: BTreeSet<[&str; 1]> = items.iter().map(|i| [i.event.group_id.as_str()]).collect();
    // Only what grants asks whether its request id was revoked.
    let revocable: BTreeSet<[&str; 1]> = items
        .iter()
        .filter(|i| rules::grants(i.effect))
        .map(|i| [i.event.id.as_str()])
        .collect();
    let read: StateRead = conn
        .fetch_one_with(
            sql!(conn, STATE),
            vec![
                keys(&event_keys),
                keys(&merged),
                keys(&membership_keys),
                keys(&groups),
                keys(&revocable),
            ],
        )
        .await?;

    let mut jobs_of: HashMap<i64, Vec<(i64, String, String)>> = HashMap::new();
    for j in read.jobs {
        jobs_of.entry(j.event_seq).or_default().push((j.seq, j.id, j.app_id));
    }
    let mut events = HashMap::with_capacity(items.len());
    for s in read.events {
        let body: Value = serde_json::from_str(&s.body).map_err(|e| StoreError::Corrupt(format!("event body: {e}")))?;
        let mut jobs = jobs_of.remove(&s.seq).unwrap_or_default();
        jobs.sort();
        let jobs = jobs.into_iter().map(|(_, id, app_id)| (id, app_id)).collect();
        events.insert(
            (s.id, s.status),
            Known {
                body: Cow::Owned(body),
                jobs,
            },
        );
    }
    let principals = read
        .principals
        .into_iter()
        .map(|r| (r.principal_id.clone(), r.attributes()))
        .collect();
    let memberships = read
        .memberships
        .into_iter()
        .map(|row| {
            let key = (row.principal_id.clone(), row.group_id.clone(), row.access_id.clone());
            (key, Membership { row, written_by: None })
        })
        .collect();
    let mut apps: HashMap<String, Vec<AssignedApp>> = HashMap::new();
    for a in read.apps {
        apps.entry(a.group_id).or_default().push(a.app);
    }
    for assigned in apps.values_mut() {
        assigned.sort_by(|a, b| a.id.cmp(&b.id));
    }
    Ok(State {
        events,
        principals,
        memberships,
        apps,
        revoked: read.revoked.into_iter().map(|r| r.id).collect(),
    })
}

impl<'a> State<'a> {
    /// Judges one event against the state as the events before it left it, and plans its writes.
    fn decide(&mut self, item: &'a Item<'a>, plan: &mut Plan<'a>) -> Acceptance {
        let event = item.event;
        let key = (event.id.clone(), event.status.clone());
        if let Some(known) = self.events.get(&key) {
            return if *known.body != event.raw {
                Acceptance::Conflict
            } else {
                Acceptance::Duplicate {
                    jobs: known.jobs.clone(),
                }
            };
        }

        if let Some(given) = event.raw.get("principal").filter(|p| p.is_object()) {
            self.principals
                .entry(event.principal_id.clone())
                .or_default()
                .merge(given, event.created_at);
            plan.principals.insert(event.principal_id.clone(), item.now);
        }
        let membership_key = (
            event.principal_id.clone(),
            event.group_id.clone(),
            event.access_id.clone(),
        );
        let state = self.memberships.get(&membership_key).map(Membership::state);
        let apps = self.apps.get(&event.group_id).map(Vec::as_slice).unwrap_or_default();
        let already_revoked = rules::grants(item.effect) && self.revoked.contains(&event.id);
        let intake = rules::intake(event, item.effect, state.as_ref(), apps, already_revoked, item.now);
        if rules::remembers_revocation(event) && self.revoked.insert(event.id.clone()) {
            let until = rules::revocation_remembered_until(event, state.as_ref());
            plan.revoked.push((event, until, item.now));
        }

        let index = plan.events.len();
        plan.events.push((item, intake.outcome, intake.reason));
        // The end the event wrote, as the expiry reads ends (`next_expiry`): of an active
        // membership not expired.
        let mut ends_at = None;
        match intake.membership {
            None => {}
            Some(MembershipWrite::Set {
                active,
                source,
                start_at,
                end_at,
                grant_request_id,
            }) => {
                let row = MembershipRow {
                    principal_id: event.principal_id.clone(),
                    group_id: event.group_id.clone(),
                    access_id: event.access_id.clone(),
                    active,
                    source: source.to_string(),
                    start_at,
                    end_at,
                    event_created: event.created_at,
                    expired_at: None,
                    grant_request_id,
                };
                ends_at = row.end_at.filter(|_| row.active);
                self.memberships.insert(
                    membership_key,
                    Membership {
                        row,
                        written_by: Some(index),
                    },
                );
            }
            // Only a row that exists moves (the rules extend an active membership only).
            Some(MembershipWrite::Extend { end_at, clear_expiry }) => {
                if let Some(m) = self.memberships.get_mut(&membership_key) {
                    m.row.end_at = end_at;
                    m.row.event_created = event.created_at;
                    if clear_expiry {
                        m.row.expired_at = None;
                    }
                    m.written_by = Some(index);
                    ends_at = end_at.filter(|_| m.row.active && m.row.expired_at.is_none());
                }
            }
        }
        let jobs: Vec<(String, String)> = intake
            .jobs
            .into_iter()
            .map(|job| {
                let id = uuid::Uuid::now_v7().to_string();
                let answer = (id.clone(), job.app_id.clone());
                plan.jobs.push((index, id, job));
                answer
            })
            .collect();
        plan.logs.extend(intake.logs);
        plan.access_ends.extend(intake.access_ends);
        self.events.insert(
            key,
            Known {
                body: Cow::Borrowed(&event.raw),
                jobs: jobs.clone(),
            },
        );
        Acceptance::Accepted { jobs, ends_at }
    }
}

impl Plan<'_> {
    /// Writes the batch: a statement per table (per chunk of rows), in an order that gives the
    /// events their `seq` before the rows that point to them.
    async fn write(&self, conn: &mut impl RowsConn, state: &State<'_>) -> StoreResult<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let principals: Vec<(&str, &StoredAttributes, Millis)> = self
            .principals
            .iter()
            .map(|(id, now)| (id.as_str(), &state.principals[id], *now))
            .collect();
        write_principals(conn, &principals).await?;

        let revoked: Vec<_> = self
            .revoked
            .iter()
            .map(|(e, until, now)| (&e.id, &e.principal_id, &e.group_id, until, now))
            .collect();
        execute_chunked(conn, |d| sql!(d, INSERT_REVOKED), &revoked).await?;

        let events: Vec<Value> = self
            .events
            .iter()
            .map(|(item, outcome, reason)| {
                let e = item.event;
                serde_json::json!([
                    e.id,
                    e.status,
                    e.raw.to_string(),
                    e.action_name,
                    e.access_id,
                    e.principal_id,
                    e.group_id,
                    e.created_at,
                    item.now,
                    e.start_at,
                    e.end_at,
                    outcome,
                    reason,
                ])
            })
            .collect();
        let mut seq_of: HashMap<(String, String), i64> = HashMap::with_capacity(events.len());
        for chunk in json_rows(&events) {
            let written: Vec<(String, String, i64)> = conn.fetch_rows(sql!(conn, INSERT_EVENTS), chunk).await?;
            seq_of.extend(written.into_iter().map(|(id, status, seq)| ((id, status), seq)));
        }
        let seqs: Vec<i64> =
            self.events
                .iter()
                .map(|(item, ..)| {
                    let key = (item.event.id.clone(), item.event.status.clone());
                    seq_of.get(&key).copied().ok_or_else(|| {
                        StoreError::Corrupt(format!("event {} was written without a seq", item.event.id))
                    })
                })
                .collect::<StoreResult<_>>()?;

        let memberships: Vec<_> = state
            .memberships
            .values()
            .filter_map(|m| {
                let r = &m.row;
                let event_seq = seqs[m.written_by?];
                Some((
                    &r.principal_id,
                    &r.group_id,
                    &r.access_id,
                    r.active,
                    &r.source,
                    r.start_at,
                    r.end_at,
                    event_seq,
                    r.event_created,
                    r.expired_at,
                    &r.grant_request_id,
                ))
            })
            .collect();
        execute_chunked(conn, |d| sql!(d, PUT_MEMBERSHIPS), &memberships).await?;

        let jobs: Vec<_> = self
            .jobs
            .iter()
            .map(|(index, id, job)| {
                let (item, ..) = self.events[*index];
                let e = item.event;
                (
                    id,
                    &job.app_id,
                    seqs[*index],
                    &e.id,
                    &e.principal_id,
                    &e.group_id,
                    job.kind,
                    job.trigger,
                    job.not_before,
                    item.now,
                    &job.flag,
                    // The event's span: the push joins its trace (SPEC §10).
                    &e.traceparent,
                )
            })
            .collect();
        execute_chunked(conn, |d| sql!(d, INSERT_JOBS), &jobs).await?;

        if !self.logs.is_empty() {
            insert_logs(conn, &self.logs).await?;
        }
        let ends: Vec<_> = self
            .access_ends
            .iter()
            .map(|e| {
                (
                    &e.id,
                    &e.app_id,
                    &e.principal_id,
                    &e.user_principal_name,
                    &e.group_id,
                    &e.event_id,
                    &e.reason,
                    e.ended_at,
                    e.learned_at,
                )
            })
            .collect();
        execute_chunked(conn, |d| sql!(d, INSERT_ACCESS_ENDS), &ends).await?;
        Ok(())
    }
}
