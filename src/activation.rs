//! The webhook event: a Graph `privilegedAccessGroupAssignmentScheduleRequest`, parsed into a typed
//! event and judged against the rules (R4 to R8) without touching the database.

use serde_json::Value;

use crate::clock::{Millis, parse_rfc3339};

/// Shortest assignment or activation the source allows (R5).
pub const MIN_DURATION_MS: Millis = 5 * 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    SelfActivate,
    SelfDeactivate,
    SelfExtend,
    SelfRenew,
    AdminAssign,
    AdminRemove,
    AdminUpdate,
    AdminExtend,
    AdminRenew,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "selfActivate" => Self::SelfActivate,
            "selfDeactivate" => Self::SelfDeactivate,
            "selfExtend" => Self::SelfExtend,
            "selfRenew" => Self::SelfRenew,
            "adminAssign" => Self::AdminAssign,
            "adminRemove" => Self::AdminRemove,
            "adminUpdate" => Self::AdminUpdate,
            "adminExtend" => Self::AdminExtend,
            "adminRenew" => Self::AdminRenew,
            _ => return None,
        })
    }
}

pub use crate::types::Principal;

#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub status: String,
    pub action: Action,
    pub action_name: String,
    pub access_id: String,
    pub principal_id: String,
    pub group_id: String,
    pub created_at: Millis,
    pub start_at: Option<Millis>,
    /// `None`: no expiration (or no schedule given).
    pub end_at: Option<Millis>,
    pub principal: Option<Principal>,
    pub raw: Value,
    /// The `traceparent` of the event's span (SPEC §10), set at intake: its jobs store it, so
    /// whichever replica pushes them joins the event's trace.
    pub traceparent: Option<String>,
}

impl Event {
    /// The trace id of the event's span, as log entries carry it.
    pub fn trace_id(&self) -> Option<String> {
        trace_id_of(self.traceparent.as_deref())
    }
}

/// The 32 hex digits of a well-formed `traceparent`'s trace id.
pub fn trace_id_of(traceparent: Option<&str>) -> Option<String> {
    traceparent
        .and_then(|tp| tp.get(3..35))
        .filter(|id| id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// What an accepted event means for the membership it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Immediate path (R1, R2): `selfActivate`.
    Activate { start: Millis, end: Option<Millis> },
    /// Standing assignment, provisioned by the next cycle (R3).
    Assign { start: Millis, end: Option<Millis> },
    /// Extend and update: the end time moves, nothing else.
    Extend { end: Option<Millis> },
    /// Removal path: deactivation, admin removal, `Revoked`.
    Remove,
    /// Recorded, never pushed.
    Skip(String),
}

/// A field that is missing or malformed: answered 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub detail: String,
}

/// A rule of the source system the event breaks: answered 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleViolation {
    pub rule: &'static str,
    pub field: String,
    pub detail: String,
}

fn field_err(field: &str, detail: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        detail: detail.into(),
    }
}

fn required_str<'a>(v: &'a Value, field: &str) -> Result<&'a str, FieldError> {
    match v.get(field) {
        None | Some(Value::Null) => Err(field_err(field, "is required")),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(field_err(field, "must be a non-empty string")),
    }
}

fn time_field(v: &Value, path: &str, field: &str) -> Result<Millis, FieldError> {
    let s = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| field_err(path, "is required (an ISO 8601 date-time)"))?;
    let at = parse_rfc3339(s).ok_or_else(|| field_err(path, format!("`{s}` is not an ISO 8601 date-time")))?;
    if at > LAST_END {
        return Err(field_err(path, "is after 9999-12-31T23:59:59Z"));
    }
    Ok(at)
}

/// The latest end an event may have, 9999-12-31T23:59:59Z (SPEC §2): every store and every
/// database a store may move to can hold it.
pub const LAST_END: Millis = 253_402_300_799_000;

/// Parses an ISO 8601 duration such as `PT2H`, `PT5M`, `P1DT12H`, `PT90S`, `P1W`.
pub fn parse_iso_duration(s: &str) -> Option<Millis> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total: f64 = 0.0;
    let mut seen = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
            } else {
                let factor = units.iter().find(|(u, _)| *u == c)?.1;
                total += number.parse::<f64>().ok()? * factor;
                number.clear();
                seen = true;
            }
        }
        number.is_empty().then_some(())
    };
    take(
        date,
        &[
            ('Y', 365.0 * 86_400_000.0),
            ('M', 30.0 * 86_400_000.0),
            ('W', 7.0 * 86_400_000.0),
            ('D', 86_400_000.0),
        ],
    )?;
    if let Some(time) = time {
        if time.is_empty() {
            return None;
        }
        take(time, &[('H', 3_600_000.0), ('M', 60_000.0), ('S', 1_000.0)])?;
    }
    // A duration past what milliseconds can hold is no duration (not a saturated one).
    (seen && total.is_finite() && total < Millis::MAX as f64).then_some(total.round() as Millis)
}

/// The path of the first key or string value holding a NUL character.
fn nul_in(value: &Value, path: String) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(if path.is_empty() { "(body)".into() } else { path }),
        Value::Object(fields) => fields.iter().find_map(|(k, v)| {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') { Some(here) } else { nul_in(v, here) }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in(v, format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Parses one event object. Errors name the field (answered 400).
pub fn parse(raw: &Value) -> Result<Event, FieldError> {
    if !raw.is_object() {
        return Err(field_err("(body)", "each event must be a JSON object"));
    }
    // No store keeps a NUL in text (PostgreSQL refuses it): refuse it here, naming where it is.
    if let Some(field) = nul_in(raw, String::new()) {
        return Err(field_err(&field, "must not contain a NUL character (\\u0000)"));
    }
    let id = required_str(raw, "id")?.to_string();
    let action_name = required_str(raw, "action")?.to_string();
    let action = Action::parse(&action_name)
        .ok_or_else(|| field_err("action", format!("`{action_name}` is not a known action")))?;
    let access_id = required_str(raw, "accessId")?.to_string();
    if access_id != "member" && access_id != "owner" {
        return Err(field_err("accessId", "must be `member` or `owner`"));
    }
    let principal_id = required_str(raw, "principalId")?.to_string();
    let group_id = required_str(raw, "groupId")?.to_string();
    let status = required_str(raw, "status")?.to_string();
    let created_at = time_field(raw, "createdDateTime", "createdDateTime")?;

    let principal = match raw.get("principal") {
        None | Some(Value::Null) => None,
        Some(p) => {
            let principal: Principal = serde_json::from_value(p.clone())
                .map_err(|e| field_err("principal", format!("must be an object with userPrincipalName: {e}")))?;
            if principal.user_principal_name.trim().is_empty() {
                return Err(field_err("principal.userPrincipalName", "must not be empty"));
            }
            Some(principal)
        }
    };

    let grants = matches!(
        action,
        Action::SelfActivate | Action::AdminAssign | Action::AdminRenew | Action::SelfRenew
    );
    let extends = matches!(action, Action::SelfExtend | Action::AdminExtend | Action::AdminUpdate);
    // A missing end must never turn a time-bound grant into a standing one: only an explicit
    // `noExpiration` means "no end".
    let needs_end = (grants || extends) && status != "Revoked";
    let (start_at, end_at) = match raw.get("scheduleInfo") {
        None | Some(Value::Null) if needs_end => {
            return Err(field_err(
                "scheduleInfo",
                "is required for an activation, assignment or extension",
            ));
        }
        None | Some(Value::Null) => (None, None),
        Some(schedule) => {
            let start = time_field(schedule, "scheduleInfo.startDateTime", "startDateTime")?;
            let end = match schedule.get("expiration") {
                None | Some(Value::Null) if needs_end => {
                    return Err(field_err(
                        "scheduleInfo.expiration",
                        "is required (use type noExpiration for no end)",
                    ));
                }
                None | Some(Value::Null) => None,
                Some(exp) => match exp.get("type").and_then(Value::as_str) {
                    Some("afterDuration") => {
                        let d = exp.get("duration").and_then(Value::as_str).ok_or_else(|| {
                            field_err("scheduleInfo.expiration.duration", "is required for afterDuration")
                        })?;
                        let ms = parse_iso_duration(d).ok_or_else(|| {
                            field_err(
                                "scheduleInfo.expiration.duration",
                                format!("`{d}` is not an ISO 8601 duration"),
                            )
                        })?;
                        let end = start.checked_add(ms).filter(|end| *end <= LAST_END).ok_or_else(|| {
                            field_err(
                                "scheduleInfo.expiration.duration",
                                format!("`{d}` ends after 9999-12-31T23:59:59Z"),
                            )
                        })?;
                        Some(end)
                    }
                    Some("afterDateTime") => {
                        Some(time_field(exp, "scheduleInfo.expiration.endDateTime", "endDateTime")?)
                    }
                    Some("noExpiration") => None,
                    _ => {
                        return Err(field_err(
                            "scheduleInfo.expiration.type",
                            "must be afterDuration, afterDateTime or noExpiration",
                        ));
                    }
                },
            };
            (Some(start), end)
        }
    };

    Ok(Event {
        id,
        status,
        action,
        action_name,
        access_id,
        principal_id,
        group_id,
        created_at,
        start_at,
        end_at,
        principal,
        raw: raw.clone(),
        traceparent: None,
    })
}

fn violation(rule: &'static str, field: &str, detail: impl Into<String>) -> RuleViolation {
    RuleViolation {
        rule,
        field: field.into(),
        detail: detail.into(),
    }
}

/// Judges an event against the rules; `now` decides "already expired".
pub fn judge(event: &Event, now: Millis) -> Result<Effect, RuleViolation> {
    let removal = matches!(event.action, Action::SelfDeactivate | Action::AdminRemove);
    let grants = matches!(
        event.action,
        Action::SelfActivate | Action::AdminAssign | Action::AdminRenew | Action::SelfRenew
    );
    let extends = matches!(
        event.action,
        Action::SelfExtend | Action::AdminExtend | Action::AdminUpdate
    );
    let revokes = removal || event.status == "Revoked";

    // R6 refuses what would grant membership of an unmanageable group; revocation is never refused.
    let group = event.raw.get("group");
    if !revokes
        && let Some(rule) = group.and_then(|g| g.get("membershipRule")).filter(|r| !r.is_null())
        && rule.as_str().is_none_or(|r| !r.trim().is_empty())
    {
        return Err(violation(
            "R6",
            "group.membershipRule",
            "dynamic groups can't be managed: their membership comes from a rule",
        ));
    }
    if !revokes
        && group
            .and_then(|g| g.get("onPremisesSyncEnabled"))
            .and_then(Value::as_bool)
            == Some(true)
    {
        return Err(violation(
            "R6",
            "group.onPremisesSyncEnabled",
            "groups synchronized from on-premises can't be managed",
        ));
    }

    // Revocation is never refused (R5): check durations only on what grants or extends.
    if (grants || extends)
        && event.status != "Revoked"
        && let (Some(start), Some(end)) = (event.start_at, event.end_at)
        && end - start < MIN_DURATION_MS
    {
        return Err(violation(
            "R5",
            "scheduleInfo.expiration",
            "an assignment or activation can't last less than five minutes",
        ));
    }

    // R4 first: ownership is never pushed, not even its revocation.
    if event.access_id == "owner" {
        return Ok(Effect::Skip(
            "ownership is recorded but never pushed: SCIM groups have no owners".into(),
        ));
    }
    if event.status == "Revoked" {
        return Ok(Effect::Remove);
    }
    if event.status != "Provisioned" {
        return Ok(Effect::Skip(format!(
            "status `{}` does not change membership",
            event.status
        )));
    }
    if removal {
        return Ok(Effect::Remove);
    }
    if extends {
        return Ok(Effect::Extend { end: event.end_at });
    }
    let start = match event.start_at {
        Some(start) => start,
        None => {
            return Err(violation(
                "R1",
                "scheduleInfo",
                "an activation or assignment needs scheduleInfo",
            ));
        }
    };
    if event.end_at.is_some_and(|end| end <= now) {
        return Ok(Effect::Skip("already expired".into()));
    }
    debug_assert!(grants);
    if event.action == Action::SelfActivate {
        Ok(Effect::Activate {
            start,
            end: event.end_at,
        })
    } else {
        Ok(Effect::Assign {
            start,
            end: event.end_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(overrides: Value) -> Value {
        let mut base = json!({
            "id": "req-1", "action": "selfActivate", "accessId": "member",
            "principalId": "p1", "groupId": "g1", "status": "Provisioned",
            "createdDateTime": "2026-11-22T09:00:00Z",
            "scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z",
                             "expiration": {"type": "afterDuration", "duration": "PT2H"}},
            "principal": {"userPrincipalName": "ada@contoso.com"},
            "group": {"displayName": "Exchange L3", "membershipRule": null, "onPremisesSyncEnabled": false}
        });
        for (k, v) in overrides.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn at(s: &str) -> Millis {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn a_nul_character_anywhere_is_a_field_error_naming_it() {
        let raw = serde_json::json!({"id": "e1", "principal": {"displayName": "A\u{0}B"}});
        let error = parse(&raw).unwrap_err();
        assert_eq!(error.field, "principal.displayName");
    }

    #[test]
    fn iso_durations_parse() {
        assert_eq!(parse_iso_duration("PT2H"), Some(7_200_000));
        assert_eq!(parse_iso_duration("PT5M"), Some(300_000));
        assert_eq!(parse_iso_duration("P1DT1H30M"), Some(91_800_000));
        assert_eq!(parse_iso_duration("PT0.5S"), Some(500));
        assert_eq!(parse_iso_duration("2H"), None);
        assert_eq!(parse_iso_duration("PT"), None);
        assert_eq!(parse_iso_duration("P"), None);
    }

    #[test]
    fn an_activation_ends_at_start_plus_duration() {
        let e = parse(&event(json!({}))).unwrap();
        let effect = judge(&e, at("2026-11-22T09:00:30Z")).unwrap();
        assert_eq!(
            effect,
            Effect::Activate {
                start: at("2026-11-22T09:00:00Z"),
                end: Some(at("2026-11-22T11:00:00Z"))
            }
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let mut raw = event(json!({}));
        raw.as_object_mut().unwrap().remove("principalId");
        assert_eq!(parse(&raw).unwrap_err().field, "principalId");
        let raw = event(json!({"createdDateTime": "yesterday"}));
        assert_eq!(parse(&raw).unwrap_err().field, "createdDateTime");
    }

    #[test]
    fn rules_r5_r6_refuse_and_r4_r8_skip() {
        let now = at("2026-11-22T09:01:00Z");
        let short = event(json!({"scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z",
            "expiration": {"type": "afterDuration", "duration": "PT4M"}}}));
        assert_eq!(judge(&parse(&short).unwrap(), now).unwrap_err().rule, "R5");
        let dynamic = event(json!({"group": {"membershipRule": "user.dept -eq \"x\""}}));
        assert_eq!(
            judge(&parse(&dynamic).unwrap(), now).unwrap_err().field,
            "group.membershipRule"
        );
        let onprem = event(json!({"group": {"onPremisesSyncEnabled": true}}));
        assert_eq!(judge(&parse(&onprem).unwrap(), now).unwrap_err().rule, "R6");
        let owner = event(json!({"accessId": "owner"}));
        assert!(matches!(judge(&parse(&owner).unwrap(), now).unwrap(), Effect::Skip(_)));
        let pending = event(json!({"status": "PendingApproval"}));
        assert!(matches!(
            judge(&parse(&pending).unwrap(), now).unwrap(),
            Effect::Skip(_)
        ));
        let expired = judge(&parse(&event(json!({}))).unwrap(), at("2026-11-22T12:00:00Z")).unwrap();
        assert_eq!(expired, Effect::Skip("already expired".into()));
    }

    #[test]
    fn revocations_of_unmanageable_groups_and_ownership_revocations_are_not_refused_or_pushed() {
        let now = at("2026-11-22T09:10:00Z");
        let revoked_dynamic = event(json!({"status": "Revoked", "group": {"membershipRule": "x"}}));
        assert_eq!(judge(&parse(&revoked_dynamic).unwrap(), now).unwrap(), Effect::Remove);
        let deactivate_onprem = event(json!({"action": "selfDeactivate", "group": {"onPremisesSyncEnabled": true}}));
        assert_eq!(judge(&parse(&deactivate_onprem).unwrap(), now).unwrap(), Effect::Remove);
        let owner_revoked = event(json!({"status": "Revoked", "accessId": "owner"}));
        assert!(matches!(
            judge(&parse(&owner_revoked).unwrap(), now).unwrap(),
            Effect::Skip(_)
        ));
    }

    #[test]
    fn a_grant_or_extension_without_an_end_is_a_field_error() {
        let no_expiration = event(json!({"scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z"}}));
        assert_eq!(parse(&no_expiration).unwrap_err().field, "scheduleInfo.expiration");
        let mut extend = event(json!({"action": "adminUpdate"}));
        extend.as_object_mut().unwrap().remove("scheduleInfo");
        assert_eq!(parse(&extend).unwrap_err().field, "scheduleInfo");
        let forever = event(json!({"scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z",
            "expiration": {"type": "noExpiration"}}}));
        assert_eq!(parse(&forever).unwrap().end_at, None);
    }

    #[test]
    fn an_end_after_the_year_9999_is_a_field_error_naming_the_field() {
        let far = event(json!({"scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z",
            "expiration": {"type": "afterDuration", "duration": "P1000000Y"}}}));
        assert_eq!(parse(&far).unwrap_err().field, "scheduleInfo.expiration.duration");
        let past_9999 = event(json!({"scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z",
            "expiration": {"type": "afterDateTime", "endDateTime": "9999-12-31T23:59:59-01:00"}}}));
        assert_eq!(
            parse(&past_9999).unwrap_err().field,
            "scheduleInfo.expiration.endDateTime"
        );
        let last = event(json!({"scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z",
            "expiration": {"type": "afterDateTime", "endDateTime": "9999-12-31T23:59:59Z"}}}));
        assert_eq!(parse(&last).unwrap().end_at, Some(LAST_END));
    }

    #[test]
    fn a_short_removal_is_never_refused() {
        let raw = event(
            json!({"action": "selfDeactivate", "scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z",
            "expiration": {"type": "afterDuration", "duration": "PT1M"}}}),
        );
        assert_eq!(
            judge(&parse(&raw).unwrap(), at("2026-11-22T09:01:00Z")).unwrap(),
            Effect::Remove
        );
        let revoked = event(json!({"status": "Revoked"}));
        assert_eq!(
            judge(&parse(&revoked).unwrap(), at("2026-11-22T09:01:00Z")).unwrap(),
            Effect::Remove
        );
    }
}
