//! One membership change at one target: match or create the user, resolve or create the group,
//! then add or remove the member. Shared by the immediate path and the cycle.

use serde_json::{Map, Value, json};

use crate::mapping::{self, AppMapping};
use crate::scim::{ScimClient, ScimError, ScimResult, filter_literal, id_of};
use crate::store::{AppRecord, Claim, OnAccessEnd, PatchStyle, Step, TargetUser};

use super::Ctx;

#[derive(Debug, Default, Clone)]
pub struct PushResult {
    pub target_user_id: Option<String>,
    pub target_group_id: Option<String>,
    pub user_created: bool,
    pub user_updated: bool,
    /// Set when nothing had to be sent (already there, already gone).
    pub note: Option<String>,
    /// The target refused the filter-path removal and took the legacy form: remembered per app
    /// in the same commit as the outcome.
    pub legacy_detected: bool,
    /// What the bridge now knows of the principal's user at the target (matched, created or
    /// brought up to date), to be recorded with the outcome (`Outcome::users`); `None`: the
    /// stored record still says it. Kept when a later request of the push fails.
    pub user_record: Option<TargetUser>,
    /// A target group found or created (display name, the target's id), to be recorded with the
    /// outcome (`Outcome::groups`).
    pub group_record: Option<(String, String)>,
}

/// What the mapping makes of one principal: the User to send and the filters that find it.
pub struct MappedUser {
    /// The `always` attributes: compared with what was last sent to notice changes.
    pub always: Value,
    /// Everything, `onCreate` attributes included, with `active`: the User to create.
    pub create: Value,
    /// The app's `matching` targets with their values, as SCIM filters, in order.
    pub filters: Vec<String>,
}

/// Maps a principal's attributes (`objectId` is the principal id) through the app's mapping. A
/// `userName` that comes out empty is an error with that reason.
pub fn map_user(
    mapping: &AppMapping,
    principal_id: &str,
    principal: &Map<String, Value>,
) -> Result<MappedUser, String> {
    let values = mapping::principal_attributes(principal, principal_id);
    let lookup = |name: &str| values.get(name).map(String::as_str);
    let always = mapping.mapping.user(&lookup, false).map_err(|e| e.to_string())?;
    let mut create = mapping.mapping.user(&lookup, true).map_err(|e| e.to_string())?;
    create["active"] = json!(true);
    let filters = mapping
        .matching
        .iter()
        .filter_map(|target| {
            let value = mapping.mapping.value(target, &lookup)?;
            (!value.is_empty()).then(|| target.filter(&filter_literal(&value)))
        })
        .collect();
    Ok(MappedUser {
        always,
        create,
        filters,
    })
}

/// The user as the mapping makes it of the principal's attributes: `read` if the caller has
/// them, else read here.
async fn mapped(
    ctx: &Ctx,
    mapping: &AppMapping,
    principal_id: &str,
    read: Option<serde_json::Map<String, Value>>,
) -> ScimResult<MappedUser> {
    let principal = match read {
        Some(read) => Some(read),
        None => ctx
            .store
            .principal_attributes(principal_id)
            .await
            .map_err(|e| ScimError::Protocol(e.to_string()))?,
    }
    .ok_or_else(|| ScimError::Protocol("no user attributes known for this principal yet".into()))?;
    map_user(mapping, principal_id, &principal).map_err(ScimError::Protocol)
}

/// The target's id for the principal: the stored one, else matched, else created, with the
/// app's attribute mapping. Attributes whose mapped value changed since they were last sent are
/// replaced; an account the bridge disabled is enabled again. `stored`: the stored record, when
/// the caller has read it already (`Store::claim_job`, `Store::user_step`); `None`: read it here.
/// `attributes`: the principal's, when the caller has read them (`Store::user_step`).
#[allow(clippy::too_many_arguments)]
pub async fn ensure_user(
    ctx: &Ctx,
    app: &AppRecord,
    mapping: &AppMapping,
    client: &ScimClient,
    principal_id: &str,
    stored: Option<Option<TargetUser>>,
    attributes: Option<serde_json::Map<String, Value>>,
    steps: &mut Vec<Step>,
    result: &mut PushResult,
) -> ScimResult<String> {
    let user = mapped(ctx, mapping, principal_id, attributes).await?;
    let print = user.always.to_string();
    let stored = match stored {
        Some(stored) => stored,
        None => ctx
            .store
            .target_user(&app.id, principal_id)
            .await
            .map_err(|e| ScimError::Protocol(e.to_string()))?,
    };

    if let Some(mut known) = stored {
        let changed = known.fingerprint != print || known.disabled;
        if known.fingerprint != print {
            // What was last sent (older records hold the principal's attributes: all differ).
            let last: Value = serde_json::from_str(&known.fingerprint).unwrap_or(Value::Null);
            let changes = mapping::changed_attributes(&last, &user.always);
            if !changes.is_empty() {
                client.update_user(&known.target_user_id, &changes, steps).await?;
                result.user_updated = true;
            }
            known.fingerprint = print.clone();
        }
        if known.disabled {
            client.set_user_active(&known.target_user_id, true, steps).await?;
            known.disabled = false;
        }
        let id = known.target_user_id.clone();
        // A record that still says what the target has is not written again.
        if changed {
            result.user_record = Some(known);
        }
        return Ok(id);
    }

    let mut enabled = false;
    let (id, created) = match client.find_user(&user.filters, steps).await? {
        Some(found) => {
            let id = id_of(&found).ok_or_else(|| ScimError::Protocol("matched user has no id".into()))?;
            let changes = mapping::changed_attributes(&found, &user.always);
            if !changes.is_empty() {
                client.update_user(&id, &changes, steps).await?;
                result.user_updated = true;
            }
            // Without groups the account is the entitlement: a matched account found disabled
            // is enabled, and the bridge may disable it again when the entitlement ends.
            if !app.settings.provisions_groups() && found.get("active") == Some(&Value::Bool(false)) {
                client.set_user_active(&id, true, steps).await?;
                enabled = true;
            }
            (id, false)
        }
        None => client.create_user(&user.create, &user.filters, steps).await?,
    };
    result.user_created = created;
    // Recorded with the outcome: a user created here whose outcome is lost (a crash before it
    // is recorded) is matched at the target by the next attempt instead of created twice.
    result.user_record = Some(TargetUser {
        target_user_id: id.clone(),
        fingerprint: print,
        created_by_us: created,
        disabled: false,
        enabled_by_us: enabled,
    });
    Ok(id)
}

/// A known user's attributes brought up to date with the mapping (a changed mapping, a renamed
/// principal). Answers whether anything was sent.
pub async fn update_user(
    ctx: &Ctx,
    app: &AppRecord,
    mapping: &AppMapping,
    client: &ScimClient,
    principal_id: &str,
    steps: &mut Vec<Step>,
) -> ScimResult<Option<String>> {
    let store = &ctx.store;
    let Some(mut known) = store
        .target_user(&app.id, principal_id)
        .await
        .map_err(|e| ScimError::Protocol(e.to_string()))?
    else {
        return Ok(None);
    };
    let user = mapped(ctx, mapping, principal_id, None).await?;
    let print = user.always.to_string();
    if known.fingerprint == print {
        return Ok(None);
    }
    let last: Value = serde_json::from_str(&known.fingerprint).unwrap_or(Value::Null);
    let changes = mapping::changed_attributes(&last, &user.always);
    if !changes.is_empty() {
        client.update_user(&known.target_user_id, &changes, steps).await?;
    }
    let id = known.target_user_id.clone();
    known.fingerprint = print;
    store
        .put_target_user(&app.id, principal_id, &known)
        .await
        .map_err(|e| ScimError::Protocol(e.to_string()))?;
    Ok((!changes.is_empty()).then_some(id))
}

/// The target's id for a target group: stored, else found by displayName, else created (then
/// left in `result.group_record`, for the outcome to record). `stored`: the stored id, when the
/// caller has read it already (`Store::claim_job`); `None`: read it here.
#[allow(clippy::too_many_arguments)]
pub async fn ensure_group(
    ctx: &Ctx,
    app: &AppRecord,
    client: &ScimClient,
    display_name: &str,
    source_group_id: &str,
    stored: Option<Option<String>>,
    steps: &mut Vec<Step>,
    result: &mut PushResult,
) -> ScimResult<String> {
    let stored = match stored {
        Some(stored) => stored,
        None => ctx
            .store
            .target_group(&app.id, display_name)
            .await
            .map_err(|e| ScimError::Protocol(e.to_string()))?,
    };
    if let Some(id) = stored {
        return Ok(id);
    }
    let id = match client.find_group(display_name, steps).await? {
        Some(id) => id,
        None => client.create_group(display_name, source_group_id, steps).await?,
    };
    result.group_record = Some((display_name.to_string(), id.clone()));
    Ok(id)
}

#[allow(clippy::too_many_arguments)]
/// Adds one principal to one target group. `in_doubt`: an earlier attempt may have reached the
/// target, so read the group first (some servers keep a member twice). `claim`: what the claim
/// read of the stored user and group (`None`: read here). Each request goes at most
/// once: one that must be retried (an unknown outcome included) ends the attempt, and the caller
/// reschedules the push on the clock; what succeeded (the user, the group) is in `result`, for
/// the outcome to record, so the next attempt goes on from there.
pub async fn add_member(
    ctx: &Ctx,
    app: &AppRecord,
    mapping: &AppMapping,
    client: &ScimClient,
    principal_id: &str,
    source_group_id: &str,
    target_display_name: &str,
    in_doubt: bool,
    claim: Option<Claim>,
    steps: &mut Vec<Step>,
    result: &mut PushResult,
) -> ScimResult<()> {
    let (stored_user, mut stored_group) = match claim {
        Some(claim) => (Some(claim.user), Some(claim.group_id)),
        None => (None, None),
    };
    let user_id = ensure_user(
        ctx,
        app,
        mapping,
        client,
        principal_id,
        stored_user,
        None,
        steps,
        result,
    )
    .await?;
    result.target_user_id = Some(user_id.clone());
    if !app.settings.provisions_groups() {
        // The account is the entitlement: created, or enabled, is provisioned.
        return Ok(());
    }
    let mut resolved_again = false;
    loop {
        // After a stale id was forgotten, the group is resolved again from the store.
        let stored = stored_group.take();
        let group_id = ensure_group(
            ctx,
            app,
            client,
            target_display_name,
            source_group_id,
            stored,
            steps,
            result,
        )
        .await?;
        result.target_group_id = Some(group_id.clone());
        let outcome = async {
            if in_doubt && client.group_member_ids(&group_id, steps).await?.contains(&user_id) {
                return Ok(Some(
                    "already a member at the target (an earlier attempt reached it)".to_string(),
                ));
            }
            client
                .add_members(&group_id, std::slice::from_ref(&user_id), steps)
                .await
                .map(|_| None)
        }
        .await;
        match outcome {
            Ok(note) => {
                result.note = note;
                return Ok(());
            }
            Err(e) if e.status() == Some(404) && !resolved_again => {
                // The stored group id is stale: resolve once more.
                resolved_again = true;
                result.group_record = None;
                let _ = ctx.store.forget_target_group(&app.id, target_display_name).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the end of a user's last entitlement to the app did to the account (`onAccessEnd`).
#[derive(Debug, Clone, PartialEq)]
pub enum AccountEnd {
    /// `active: false` was confirmed.
    Disabled,
    /// The account was deleted (and its link forgotten).
    Deleted,
    /// Nothing was sent, for this reason (logged `skipped`).
    Left(String),
}

impl AccountEnd {
    /// The action an access-end record names for it.
    pub fn action(&self) -> Option<&'static str> {
        match self {
            Self::Disabled => Some("disable_user"),
            Self::Deleted => Some("delete_user"),
            Self::Left(_) => None,
        }
    }
}

/// Whether the end of the user's last entitlement would act on the account at this app: the app
/// disables or deletes users, and the bridge created or enabled this one, still active.
pub async fn account_to_end(ctx: &Ctx, app: &AppRecord, principal_id: &str) -> ScimResult<bool> {
    if app.settings.on_access_end() == OnAccessEnd::RemoveMember {
        return Ok(false);
    }
    let known = ctx
        .store
        .target_user(&app.id, principal_id)
        .await
        .map_err(|e| ScimError::Protocol(e.to_string()))?;
    Ok(known.is_some_and(|u| !u.disabled && (u.created_by_us || u.enabled_by_us)))
}

/// Applies the app's `onAccessEnd` to the account of a user nothing entitles at the app any more
/// (the caller judged that immediately before): `disableUser` disables an account the bridge
/// created or enabled; `deleteUser` deletes one it created and disables one it only enabled.
/// Any other account is left as it is, with the reason (SPEC §8).
pub async fn end_account(
    ctx: &Ctx,
    app: &AppRecord,
    client: &ScimClient,
    principal_id: &str,
    steps: &mut Vec<Step>,
) -> ScimResult<AccountEnd> {
    let store = &ctx.store;
    let protocol = |e: crate::store::StoreError| ScimError::Protocol(e.to_string());
    let Some(mut known) = store.target_user(&app.id, principal_id).await.map_err(protocol)? else {
        return Ok(AccountEnd::Left(
            "no account of this user is known at the target".into(),
        ));
    };
    let policy = app.settings.on_access_end();
    if policy == OnAccessEnd::RemoveMember {
        return Ok(AccountEnd::Left(
            "onAccessEnd is removeMember: the account stays".into(),
        ));
    }
    if policy == OnAccessEnd::DeleteUser && known.created_by_us {
        client.delete_user(&known.target_user_id, steps).await?;
        store
            .forget_target_user(&app.id, principal_id)
            .await
            .map_err(protocol)?;
        return Ok(AccountEnd::Deleted);
    }
    if known.disabled {
        return Ok(AccountEnd::Left("the account is already disabled".into()));
    }
    if !(known.created_by_us || known.enabled_by_us) {
        return Ok(AccountEnd::Left(
            "the account was neither created nor enabled by the bridge: left as it is".into(),
        ));
    }
    client.set_user_active(&known.target_user_id, false, steps).await?;
    known.disabled = true;
    store
        .put_target_user(&app.id, principal_id, &known)
        .await
        .map_err(protocol)?;
    Ok(AccountEnd::Disabled)
}

/// Removes one principal from one target group. Absent users, groups and members are successes.
/// An app without groups has no membership to remove: its account is ended by `end_account`.
pub async fn remove_member(
    ctx: &Ctx,
    app: &AppRecord,
    mapping: &AppMapping,
    client: &ScimClient,
    principal_id: &str,
    target_display_name: &str,
    steps: &mut Vec<Step>,
) -> ScimResult<PushResult> {
    let store = &ctx.store;
    let mut result = PushResult::default();
    if !app.settings.provisions_groups() {
        return Ok(result);
    }
    let user_id = match store
        .target_user(&app.id, principal_id)
        .await
        .map_err(|e| ScimError::Protocol(e.to_string()))?
    {
        Some(u) => u.target_user_id,
        None => {
            let filters = match mapped(ctx, mapping, principal_id, None).await {
                Ok(user) => user.filters,
                Err(_) => Vec::new(),
            };
            match client.find_user(&filters, steps).await? {
                Some(found) => id_of(&found).ok_or_else(|| ScimError::Protocol("matched user has no id".into()))?,
                None => {
                    result.note = Some("the user does not exist at the target: nothing to remove".into());
                    return Ok(result);
                }
            }
        }
    };
    result.target_user_id = Some(user_id.clone());
    let group_id = match store
        .target_group(&app.id, target_display_name)
        .await
        .map_err(|e| ScimError::Protocol(e.to_string()))?
    {
        Some(id) => id,
        None => match client.find_group(target_display_name, steps).await? {
            Some(id) => id,
            None => {
                result.note = Some("the group does not exist at the target: nothing to remove".into());
                return Ok(result);
            }
        },
    };
    result.target_group_id = Some(group_id.clone());
    let legacy = app.settings.patch_style == PatchStyle::Legacy
        || (app.settings.patch_style == PatchStyle::Auto && app.legacy_remove);
    match client.remove_member(&group_id, &user_id, legacy, steps).await {
        Ok(()) => Ok(result),
        Err(e) if e.status() == Some(404) => {
            // The stored group id is stale: resolve once more before calling the member gone.
            let _ = store.forget_target_group(&app.id, target_display_name).await;
            match client.find_group(target_display_name, steps).await? {
                Some(fresh) if fresh != group_id => {
                    store
                        .put_target_group(&app.id, target_display_name, &fresh)
                        .await
                        .map_err(|e| ScimError::Protocol(e.to_string()))?;
                    client.remove_member(&fresh, &user_id, legacy, steps).await?;
                    result.target_group_id = Some(fresh);
                }
                _ => result.note = Some("the group is gone at the target: nothing to remove".into()),
            }
            Ok(result)
        }
        // 400 (whatever the scimType) or 501 to the filter path: the target may take only the
        // legacy form. Try it once; if it works, the app remembers it.
        Err(e) if matches!(e.status(), Some(400 | 501)) && !legacy && app.settings.patch_style == PatchStyle::Auto => {
            match client.remove_member(&group_id, &user_id, true, steps).await {
                Ok(()) => {
                    result.legacy_detected = true;
                    steps.push(Step::note(
                        "detect_patch_style",
                        "success",
                        format!(
                            "the target answered {} to the filter-path removal and took the legacy form: remembered",
                            e.status().unwrap_or_default()
                        ),
                    ));
                    Ok(result)
                }
                Err(legacy_error) if legacy_error.status() == Some(400) => {
                    absent_or(client, &group_id, &user_id, e, steps, result).await
                }
                Err(legacy_error) => Err(legacy_error),
            }
        }
        Err(e) if e.status() == Some(400) => absent_or(client, &group_id, &user_id, e, steps, result).await,
        Err(e) => Err(e),
    }
}

/// Some targets answer 400 (`noTarget`) to the removal of a member that is not there: read the
/// group, and call the removal done if the member is absent.
async fn absent_or(
    client: &ScimClient,
    group_id: &str,
    user_id: &str,
    error: ScimError,
    steps: &mut Vec<Step>,
    mut result: PushResult,
) -> ScimResult<PushResult> {
    if client.group_member_ids(group_id, steps).await?.contains(user_id) {
        return Err(error);
    }
    result.note = Some("the member was already absent at the target".into());
    Ok(result)
}
