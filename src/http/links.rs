//! Object links (SPEC §8): which target user is which principal at an app, seen and cleared.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use super::ApiContext;
use super::apps::visible_app;
use super::auth::{Caller, Role};
use super::error::{ApiError, ApiResult, Path, Query};
use super::model::{UserLink, UserLinkGroup, UserLinkPage};
use crate::clock::to_rfc3339;
use crate::store::{Assignment, LinkRecord};

/// The page of `GET /v1/apps/{appId}/users`, by principal id.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LinkQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

fn encode_cursor(principal_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("p{principal_id}"))
}

fn decode_cursor(c: &str) -> ApiResult<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix('p').map(str::to_string))
        .filter(|p| !p.is_empty() && encode_cursor(p) == c)
        .ok_or_else(|| ApiError::bad("cursor", "is not a cursor this API gave out"))
}

fn view(link: &LinkRecord, assignments: &[Assignment]) -> UserLink {
    let sent: Value = serde_json::from_str(&link.fingerprint).unwrap_or(Value::Null);
    UserLink {
        principal_id: link.principal_id.clone(),
        target_id: link.target_user_id.clone(),
        user_name: sent["userName"].as_str().map(str::to_string),
        created_by_bridge: link.created_by_us,
        active: !link.disabled,
        last_push_at: link.last_push_at.map(to_rfc3339),
        groups: link
            .groups
            .iter()
            .map(|g| {
                let mut sources: Vec<String> = assignments
                    .iter()
                    .filter(|a| a.target_display_name == g.target_display_name)
                    .map(|a| a.group_id.clone())
                    .chain(g.group_id.clone())
                    .collect();
                sources.sort();
                sources.dedup();
                UserLinkGroup {
                    target_display_name: g.target_display_name.clone(),
                    target_group_id: g.target_group_id.clone(),
                    source_group_ids: sources,
                }
            })
            .collect(),
    }
}

pub async fn list(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(app_id): Path<String>,
    Query(q): Query<LinkQuery>,
) -> ApiResult<Json<UserLinkPage>> {
    // Admins and operators see every app's links, owners their own apps' (visible_app).
    let app = visible_app(&ctx, &caller, &app_id).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad("limit", "must be between 1 and 500"));
    }
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let store = &ctx.engine.ctx.store;
    let mut links = store.list_links(&app.id, after.as_deref(), limit + 1).await?;
    let more = links.len() as i64 > limit;
    links.truncate(limit as usize);
    let assignments = store.list_assignments(&app.id).await?;
    Ok(Json(UserLinkPage {
        next_cursor: more
            .then(|| links.last().map(|l| encode_cursor(&l.principal_id)))
            .flatten(),
        items: links.iter().map(|l| view(l, &assignments)).collect(),
    }))
}

pub async fn get(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path((app_id, principal_id)): Path<(String, String)>,
) -> ApiResult<Json<UserLink>> {
    // Admins and operators see every app's links, owners their own apps' (visible_app).
    let app = visible_app(&ctx, &caller, &app_id).await?;
    let store = &ctx.engine.ctx.store;
    let link = store
        .get_link(&app.id, &principal_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let assignments = store.list_assignments(&app.id).await?;
    Ok(Json(view(&link, &assignments)))
}

/// Forgets a stale link (the user was deleted and recreated at the target, or merged): only
/// while the app is paused, so that no push of the user runs meanwhile.
pub async fn delete(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path((app_id, principal_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let app = visible_app(&ctx, &caller, &app_id).await?;
    caller.require(&[Role::Admin, Role::Operator])?;
    if app.status != "paused" {
        return Err(ApiError::Conflict(
            "a link is forgotten only while the app is paused (PATCH {\"status\": \"paused\"}): no push of the user may run meanwhile"
                .into(),
        ));
    }
    let store = &ctx.engine.ctx.store;
    let forgotten = ctx
        .audited(
            &caller,
            "app.forget_link",
            &app.id,
            json!({"principalId": principal_id}),
            store.forget_link(&app.id, &principal_id),
        )
        .await?;
    if !forgotten {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}
