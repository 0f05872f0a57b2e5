//! API tokens: created by admins with a role and a name, shown once, stored hashed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::ApiContext;
use super::auth::{BOOTSTRAP_ADMIN, Caller, Role};
use super::error::{ApiError, ApiResult, JsonBody, Path};
use super::model::{Token, TokenCreated, TokenList};
use crate::clock::to_rfc3339;
use crate::store::{AuditEntry, StoreError, TokenRecord};

/// Creates a token; answers the record and the token value (the only time it is shown).
pub async fn issue(
    store: &crate::store::SharedStore,
    name: &str,
    role: &str,
    now: i64,
    audit_actor: Option<&str>,
) -> ApiResult<(TokenRecord, String)> {
    if Role::parse(role).is_none() {
        return Err(ApiError::bad("role", "must be admin, operator or app_owner"));
    }
    let name = name.trim();
    if name.is_empty() {
        return Err(ApiError::bad("name", "is required"));
    }
    // App owners are names: one name must mean one holder.
    if name.eq_ignore_ascii_case(BOOTSTRAP_ADMIN) {
        return Err(ApiError::conflict_on(
            "name",
            "`admin` is reserved for the bootstrap admin token",
        ));
    }
    let taken = || ApiError::conflict_on("name", format!("a token named `{name}` exists: token names are unique"));
    if store.list_tokens().await?.iter().any(|t| t.name == name) {
        return Err(taken());
    }
    let token = format!("sbt_{}", crate::crypto::random_hex(24));
    let record = TokenRecord {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.into(),
        role: role.into(),
        created_at: now,
    };
    let hash = crate::crypto::hash_token(&token);
    let insert = store.insert_token(&record, &hash);
    // The API's creations are audited in the same commit; the command line's are not.
    let inserted = match audit_actor {
        Some(actor) => {
            let entry = AuditEntry {
                seq: 0,
                time: now,
                actor: actor.into(),
                action: "token.create".into(),
                target: record.id.clone(),
                detail: json!({"name": record.name, "role": record.role}),
            };
            crate::store::audited(store.as_ref(), entry, insert).await
        }
        None => insert.await,
    };
    match inserted {
        Ok(()) => Ok((record, token)),
        // Two creations of one name at once: the unique index lets one through.
        Err(StoreError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => Err(taken()),
        Err(e) => Err(e.into()),
    }
}

pub async fn create(
    State(ctx): State<ApiContext>,
    caller: Caller,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
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
    let (record, token) = issue(
        &ctx.engine.ctx.store,
        name,
        role,
        ctx.engine.ctx.now(),
        Some(&caller.name),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: record.id,
            name: record.name,
            role: record.role,
            token,
        }),
    ))
}

pub async fn list(State(ctx): State<ApiContext>, caller: Caller) -> ApiResult<Json<TokenList>> {
    caller.require(&[Role::Admin])?;
    let items = ctx
        .engine
        .ctx
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(|t| Token {
            id: t.id,
            name: t.name,
            role: t.role,
            created_at: to_rfc3339(t.created_at),
        })
        .collect();
    Ok(Json(TokenList { items }))
}

pub async fn revoke(State(ctx): State<ApiContext>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let revoked = ctx
        .audited(
            &caller,
            "token.revoke",
            &id,
            json!({}),
            ctx.engine.ctx.store.revoke_token(&id, ctx.engine.ctx.now()),
        )
        .await?;
    if !revoked {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}
