//! The directory feed: standing (non-activation) memberships, provisioned by the next cycle.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use super::ApiContext;
use super::auth::{Caller, Role};
use super::error::{ApiError, ApiResult, JsonBody, Path};
use super::model::DirectoryMember;
use crate::activation::Principal;

pub async fn put_member(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path((group_id, principal_id)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<Json<DirectoryMember>> {
    caller.require(&[Role::Admin])?;
    let principal = match body.0.as_ref().and_then(|b| b.get("principal")) {
        Some(p) => Some(
            serde_json::from_value::<Principal>(p.clone())
                .map_err(|e| ApiError::bad("principal", format!("must hold userPrincipalName: {e}")))?,
        ),
        None => None,
    };
    // As for a webhook: a standing member without a userName would fail at every cycle.
    if principal
        .as_ref()
        .is_some_and(|p| p.user_principal_name.trim().is_empty())
    {
        return Err(ApiError::bad("principal.userPrincipalName", "must not be empty"));
    }
    let engine = &ctx.engine.ctx;
    if principal.is_none() && engine.store.principal(&principal_id).await?.is_none() {
        return Err(ApiError::bad(
            "principal",
            "is required the first time a principal is seen",
        ));
    }
    ctx.audited(
        &caller,
        "directory.put_member",
        &group_id,
        json!({"principalId": principal_id}),
        engine
            .store
            .put_standing_member(&group_id, &principal_id, principal.as_ref(), engine.now()),
    )
    .await?;
    Ok(Json(DirectoryMember {
        group_id,
        principal_id,
        provisioned_by: "next synchronization cycle",
    }))
}

pub async fn delete_member(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path((group_id, principal_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let deleted = ctx
        .audited(
            &caller,
            "directory.delete_member",
            &group_id,
            json!({"principalId": principal_id}),
            ctx.engine
                .ctx
                .store
                .delete_standing_member(&group_id, &principal_id, ctx.engine.ctx.now()),
        )
        .await?;
    if !deleted {
        return Err(ApiError::NotFound);
    }
    // In a task of its own: the removal is committed, and a caller gone now does not lose it.
    let engine = ctx.engine.clone();
    tokio::spawn(async move { engine.wake_group(&group_id).await });
    Ok(StatusCode::NO_CONTENT)
}
