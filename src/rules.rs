//! What an accepted event does, decided once for every store. The store reads the state a
//! decision needs inside its transaction, calls these pure functions, and writes what they say:
//! so SQLite and PostgreSQL cannot drift apart on which membership wins, which jobs a change
//! queues, or what a skipped event logs.

use serde_json::{Map, Value, json};

use crate::activation::{Action, Effect, Event, MIN_DURATION_MS};
use crate::store::AccessEnd;
use crate::types::{LogEntry, Millis, Principal};

/// The stored membership of one (principal, group, access), as far as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MembershipState {
    pub active: bool,
    pub start_at: Option<Millis>,
    pub end_at: Option<Millis>,
    /// `createdDateTime` of the newest event applied.
    pub event_created: Millis,
    /// The request whose grant the membership holds.
    pub grant_request_id: Option<String>,
}

/// An app the event's group is assigned to.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AssignedApp {
    pub id: String,
    pub name: String,
    pub next_sync_at: Millis,
}

/// How the membership row changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipWrite {
    /// Insert or replace the row.
    Set {
        active: bool,
        source: &'static str,
        start_at: Option<Millis>,
        end_at: Option<Millis>,
        grant_request_id: Option<String>,
    },
    /// Only the end moves (extend, update); a pending expiry is cleared when the end moved past now.
    Extend { end_at: Option<Millis>, clear_expiry: bool },
}

/// A job to queue for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub app_id: String,
    pub kind: &'static str,
    pub trigger: &'static str,
    pub not_before: Millis,
    pub flag: Option<String>,
}

/// Everything one accepted event writes, besides the event itself.
#[derive(Debug, Clone)]
pub struct Intake {
    /// What the bridge made of the event (stored with it): `activate`, `assign`, `extend`,
    /// `remove` or `skipped`.
    pub outcome: &'static str,
    pub reason: Option<String>,
    pub membership: Option<MembershipWrite>,
    pub jobs: Vec<NewJob>,
    pub logs: Vec<LogEntry>,
    /// The access ends the event decides, one per assigned app (SPEC §8), born pending in the
    /// event's commit.
    pub access_ends: Vec<AccessEnd>,
}

/// Which PIM end an event is (`deactivation`, `adminRemove`, `revoked`) and when access should
/// have ended: a deactivation's or an admin removal's request time, never later than its
/// arrival; a revocation's arrival (SPEC §8).
pub fn pim_end_of(event: &Event, now: Millis) -> (&'static str, Millis) {
    if event.status == "Revoked" {
        ("revoked", now)
    } else if event.action == Action::AdminRemove {
        ("adminRemove", event.created_at.min(now))
    } else {
        ("deactivation", event.created_at.min(now))
    }
}

/// A new, pending access-end record of the end of a principal's entitlement through a group at
/// one app. Its `userPrincipalName` and `targetDisplayName`, when not given, are copied by the
/// store when it writes the record.
#[allow(clippy::too_many_arguments)]
pub fn access_end(
    app_id: &str,
    principal_id: &str,
    user_principal_name: Option<String>,
    group_id: &str,
    event_id: Option<String>,
    reason: &str,
    ended_at: Millis,
    now: Millis,
) -> AccessEnd {
    AccessEnd {
        id: uuid::Uuid::now_v7().to_string(),
        app_id: app_id.to_string(),
        principal_id: principal_id.to_string(),
        user_principal_name,
        group_id: group_id.to_string(),
        target_display_name: None,
        event_id,
        reason: reason.to_string(),
        ended_at,
        learned_at: now,
        removed_at: None,
        action: None,
        status: "pending".into(),
        waiting_on: None,
        updated_at: now,
    }
}

/// Whether the event takes membership away (a deactivation, an admin removal or `Revoked`).
pub fn revokes(event: &Event) -> bool {
    matches!(event.action, Action::SelfDeactivate | Action::AdminRemove) || event.status == "Revoked"
}

/// Whether the effect grants or extends membership: what a revoked request id may never do
/// again. (The store asks whether the id was revoked only for these.)
pub fn grants(effect: &Effect) -> bool {
    matches!(
        effect,
        Effect::Activate { .. } | Effect::Assign { .. } | Effect::Extend { .. }
    )
}

/// Whether the event's request id must be remembered as revoked (SPEC §2): a `Revoked` status.
pub fn remembers_revocation(event: &Event) -> bool {
    event.status == "Revoked"
}

/// Until when a revoked request id is remembered: its scheduled end (`None`: no end known, so
/// for as long as the (principal, group) has membership state).
pub fn revocation_remembered_until(event: &Event, state: Option<&MembershipState>) -> Option<Millis> {
    event.end_at.or_else(|| {
        state
            .filter(|s| s.grant_request_id.as_deref() == Some(event.id.as_str()))
            .and_then(|s| s.end_at)
    })
}

/// Decides what one new event does, given the membership as stored, the apps its group is
/// assigned to, and whether its request id was revoked before (`already_revoked`).
pub fn intake(
    event: &Event,
    effect: &Effect,
    state: Option<&MembershipState>,
    apps: &[AssignedApp],
    already_revoked: bool,
    now: Millis,
) -> Intake {
    let newer_seen = state.is_some_and(|s| s.event_created > event.created_at);
    // A `Revoked` keeps its request's id and createdDateTime: it ends what that request granted
    // (with the extensions accepted meanwhile), whatever came in between.
    let ends_own_grant =
        event.status == "Revoked" && state.is_some_and(|s| s.grant_request_id.as_deref() == Some(event.id.as_str()));
    let skip = |reason: String| Intake {
        outcome: "skipped",
        logs: log_for_each(apps, event, "skipped", &reason, false, now),
        reason: Some(reason),
        membership: None,
        jobs: Vec::new(),
        access_ends: Vec::new(),
    };
    match effect {
        Effect::Skip(reason) => skip(reason.clone()),
        // Once a request id is revoked, no status of it that arrives later grants anything (a
        // `Provisioned` delivered after its own `Revoked`).
        _ if grants(effect) && already_revoked => skip("already revoked".into()),
        _ if newer_seen && !ends_own_grant => {
            skip("superseded: a newer event for this membership was already applied".into())
        }
        Effect::Activate { start, end } => Intake {
            outcome: "activate",
            reason: None,
            membership: Some(MembershipWrite::Set {
                active: true,
                source: "activation",
                start_at: Some(*start),
                end_at: *end,
                grant_request_id: Some(event.id.clone()),
            }),
            jobs: apps
                .iter()
                .map(|a| NewJob {
                    app_id: a.id.clone(),
                    kind: "add",
                    trigger: "activation",
                    not_before: (*start).max(now),
                    flag: None,
                })
                .collect(),
            logs: Vec::new(),
            access_ends: Vec::new(),
        },
        Effect::Assign { start, end } => {
            let reason = "assignments are provisioned by the next synchronization cycle";
            Intake {
                outcome: "assign",
                reason: None,
                membership: Some(MembershipWrite::Set {
                    active: true,
                    source: "assignment",
                    start_at: Some(*start),
                    end_at: *end,
                    grant_request_id: Some(event.id.clone()),
                }),
                jobs: Vec::new(),
                logs: log_for_each(apps, event, "deferred", reason, true, now),
                access_ends: Vec::new(),
            }
        }
        Effect::Extend { .. } if !state.is_some_and(|s| s.active) => {
            skip("nothing to extend: the membership is not active".into())
        }
        Effect::Extend { end } => Intake {
            outcome: "extend",
            reason: None,
            membership: Some(MembershipWrite::Extend {
                end_at: *end,
                clear_expiry: end.is_none_or(|e| e > now),
            }),
            jobs: Vec::new(),
            logs: Vec::new(),
            access_ends: Vec::new(),
        },
        Effect::Remove => {
            let start = state.and_then(|s| s.start_at).or(event.start_at);
            // R5: a removal within five minutes of the start is applied anyway, and flagged.
            let flag = start.filter(|s| event.created_at - s < MIN_DURATION_MS).map(|_| {
                "anomaly: removal within five minutes of the start (the source should never send this); applied anyway"
                    .to_string()
            });
            Intake {
                outcome: "remove",
                reason: None,
                membership: Some(MembershipWrite::Set {
                    active: false,
                    source: "activation",
                    start_at: state.and_then(|s| s.start_at),
                    end_at: Some(now),
                    grant_request_id: state.and_then(|s| s.grant_request_id.clone()),
                }),
                jobs: apps
                    .iter()
                    .map(|a| NewJob {
                        app_id: a.id.clone(),
                        kind: "remove",
                        trigger: "deactivation",
                        not_before: now,
                        flag: flag.clone(),
                    })
                    .collect(),
                logs: Vec::new(),
                access_ends: {
                    let (reason, ended_at) = pim_end_of(event, now);
                    let upn = event.principal.as_ref().map(|p| p.user_principal_name.clone());
                    apps.iter()
                        .map(|a| {
                            let (principal, group) = (&event.principal_id, &event.group_id);
                            access_end(
                                &a.id,
                                principal,
                                upn.clone(),
                                group,
                                Some(event.id.clone()),
                                reason,
                                ended_at,
                                now,
                            )
                        })
                        .collect()
                },
            }
        }
    }
}

/// One log entry per assigned app for an event that queues no push there.
fn log_for_each(
    apps: &[AssignedApp],
    event: &Event,
    status: &str,
    reason: &str,
    deferred: bool,
    now: Millis,
) -> Vec<LogEntry> {
    let action = match (event.access_id.as_str(), revokes(event)) {
        ("owner", false) => "add_owner",
        ("owner", true) => "remove_owner",
        (_, false) => "add_member",
        (_, true) => "remove_member",
    };
    apps.iter()
        .map(|app| LogEntry {
            id: uuid::Uuid::now_v7().to_string(),
            time: now,
            app_id: app.id.clone(),
            app_name: app.name.clone(),
            trigger: if revokes(event) { "deactivation" } else { "activation" }.into(),
            event_id: Some(event.id.clone()),
            principal_id: Some(event.principal_id.clone()),
            user_principal_name: event.principal.as_ref().map(|p| p.user_principal_name.clone()),
            group_id: Some(event.group_id.clone()),
            action: action.into(),
            status: status.into(),
            reason: Some(reason.into()),
            deferred_until: deferred.then_some(app.next_sync_at),
            trace_id: event.trace_id(),
            ..Default::default()
        })
        .collect()
}

/// A principal's attributes as stored: each field with the `createdDateTime` of the newest event
/// that carried it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredAttributes(pub Map<String, Value>);

impl StoredAttributes {
    /// From the stored JSON; rows written before attributes were timed count as oldest.
    pub fn from_stored(json: Option<&str>, legacy: Option<&Principal>) -> Self {
        if let Some(map) = json.and_then(|j| serde_json::from_str::<Map<String, Value>>(j).ok()) {
            return Self(map);
        }
        let mut map = Map::new();
        if let Some(Value::Object(fields)) = legacy.map(|p| serde_json::to_value(p).unwrap_or_default()) {
            for (k, v) in fields {
                map.insert(k, json!({"value": v, "at": Millis::MIN}));
            }
        }
        Self(map)
    }

    /// Takes, field by field, what `principal` (an event's `principal` object) carries, unless
    /// a newer event already set that field.
    pub fn merge(&mut self, principal: &Value, created: Millis) {
        let Some(fields) = principal.as_object() else {
            return;
        };
        for (name, value) in fields {
            if value.is_null() {
                continue;
            }
            let older = self
                .0
                .get(name)
                .and_then(|f| f.get("at"))
                .and_then(Value::as_i64)
                .is_none_or(|at| at <= created);
            if older {
                self.0.insert(name.clone(), json!({"value": value, "at": created}));
            }
        }
    }

    /// The attributes as a `principal` object.
    pub fn values(&self) -> Map<String, Value> {
        self.0
            .iter()
            .filter_map(|(k, f)| f.get("value").map(|v| (k.clone(), v.clone())))
            .collect()
    }

    pub fn principal(&self) -> Option<Principal> {
        serde_json::from_value(Value::Object(self.values())).ok()
    }

    pub fn to_json(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: &str, id: &str, created: Millis) -> Event {
        let raw = json!({
            "id": id, "action": "selfDeactivate", "accessId": "member", "principalId": "p", "groupId": "g",
            "status": status, "createdDateTime": crate::types::to_rfc3339(created),
        });
        crate::activation::parse(&raw).expect("event parses")
    }

    fn state(created: Millis, grant: &str) -> MembershipState {
        MembershipState {
            active: true,
            start_at: Some(0),
            end_at: None,
            event_created: created,
            grant_request_id: Some(grant.into()),
        }
    }

    #[test]
    fn a_revoked_request_ends_its_own_grant_even_after_a_newer_extension() {
        let revoked = event("Revoked", "req-1", 1_000_000);
        let after_extend = state(2_000_000, "req-1");
        assert_eq!(
            intake(&revoked, &Effect::Remove, Some(&after_extend), &[], false, 3_000_000).outcome,
            "remove"
        );
        // It never ends the grant of a later request.
        let later_grant = state(2_000_000, "req-2");
        assert_eq!(
            intake(&revoked, &Effect::Remove, Some(&later_grant), &[], false, 3_000_000).outcome,
            "skipped"
        );
    }

    #[test]
    fn a_grant_of_a_request_already_revoked_is_skipped() {
        let provisioned = event("Provisioned", "req-1", 1_000_000).clone();
        let activate = Effect::Activate {
            start: 1_000_000,
            end: Some(9_000_000),
        };
        let apps = [AssignedApp {
            id: "a".into(),
            name: "A".into(),
            next_sync_at: 0,
        }];
        // The `Revoked` came first and left the membership inactive, with the same createdDateTime.
        let revoked_first = MembershipState {
            active: false,
            start_at: None,
            end_at: Some(1_500_000),
            event_created: 1_000_000,
            grant_request_id: None,
        };
        let plan = intake(&provisioned, &activate, Some(&revoked_first), &apps, true, 2_000_000);
        assert_eq!(plan.outcome, "skipped");
        assert_eq!(plan.reason.as_deref(), Some("already revoked"));
        assert!(plan.jobs.is_empty() && plan.membership.is_none());
        assert_eq!(plan.logs[0].status, "skipped");
        // Without the memory the same event would grant.
        assert_eq!(
            intake(&provisioned, &activate, Some(&revoked_first), &apps, false, 2_000_000).outcome,
            "activate"
        );
    }

    #[test]
    fn a_late_older_event_never_overwrites_newer_attributes() {
        let mut attrs = StoredAttributes::default();
        attrs.merge(
            &json!({"userPrincipalName": "new@contoso.com", "mail": "new@contoso.com"}),
            2_000,
        );
        attrs.merge(
            &json!({"userPrincipalName": "old@contoso.com", "displayName": "Ada"}),
            1_000,
        );
        let p = attrs.principal().unwrap();
        assert_eq!(p.user_principal_name, "new@contoso.com");
        assert_eq!(p.mail.as_deref(), Some("new@contoso.com"));
        // A field only the older event carried is still taken.
        assert_eq!(p.display_name.as_deref(), Some("Ada"));
    }

    #[test]
    fn a_skipped_removal_is_logged_as_a_removal() {
        let ev = event("Provisioned", "req-1", 1_000);
        let apps = [AssignedApp {
            id: "a".into(),
            name: "A".into(),
            next_sync_at: 0,
        }];
        let plan = intake(&ev, &Effect::Skip("why".into()), None, &apps, false, 2_000);
        assert_eq!(plan.logs[0].action, "remove_member");
    }
}
