//! API tokens: created by admins with a role and a name, shown once, stored hashed.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::ApiContext;
use super::auth::{Caller, Role};
use super::error::{ApiError, ApiResult, JsonBody};
use crate::clock::to_rfc3339;
use crate::store::TokenRecord;

/// Creates a token; answers the record and the token value (the only time it is shown).
pub async fn issue(
    store: &crate::store::SharedStore,
    name: &str,
    role: &str,
    now: i64,
) -> ApiResult<(TokenRecord, String)> {
    if Role::parse(role).is_none() {
        return Err(ApiError::bad("role", "must be admin, operator or app_owner"));
    }
    if name.trim().is_empty() {
        return Err(ApiError::bad("name", "is required"));
    }
    let token = format!("sbt_{}", crate::crypto::random_hex(24));
    let record = TokenRecord {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.trim().into(),
        role: role.into(),
        created_at: now,
    };
    store.insert_token(&record, &crate::crypto::hash_token(&token)).await?;
    Ok((record, token))
}

pub async fn create(
    State(ctx): State<ApiContext>,
    caller: Caller,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(&[Role::Admin])?;
    let JsonBody(Some(body)) = body else {
        return Err(ApiError::bad("(body)", "must be a JSON object"));
    };
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("name", "is required"))?;
    let role = body
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("role", "is required"))?;
    let (record, token) = issue(&ctx.engine.ctx.store, name, role, ctx.engine.ctx.now()).await?;
    ctx.audit(
        &caller,
        "token.create",
        &record.id,
        json!({"name": record.name, "role": record.role}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": record.id, "name": record.name, "role": record.role, "token": token})),
    ))
}

pub async fn list(State(ctx): State<ApiContext>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(&[Role::Admin])?;
    let items: Vec<Value> = ctx
        .engine
        .ctx
        .store
        .list_tokens()
        .await?
        .iter()
        .map(|t| json!({"id": t.id, "name": t.name, "role": t.role, "createdAt": to_rfc3339(t.created_at)}))
        .collect();
    Ok(Json(json!({"items": items})))
}

pub async fn revoke(State(ctx): State<ApiContext>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    if !ctx.engine.ctx.store.revoke_token(&id, ctx.engine.ctx.now()).await? {
        return Err(ApiError::NotFound);
    }
    ctx.audit(&caller, "token.revoke", &id, json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}
