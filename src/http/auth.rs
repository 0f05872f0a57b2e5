//! Who is calling: a bearer token with a role and a name.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::ApiContext;
use super::error::ApiError;
use crate::store::AppRecord;

/// The name the bootstrap admin token (SCIM_BRIDGE_ADMIN_TOKEN) acts under.
pub const BOOTSTRAP_ADMIN: &str = "admin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Operator,
    AppOwner,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "operator" => Some(Self::Operator),
            "app_owner" => Some(Self::AppOwner),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("the {:?} role may not do this", self.role)))
        }
    }

    /// Admins and operators see every app; an owner only its own (others are 404, as if absent).
    pub fn sees(&self, app: &AppRecord) -> bool {
        match self.role {
            Role::Admin | Role::Operator => true,
            Role::AppOwner => app.owners.contains(&self.name),
        }
    }

    pub fn owns(&self, app: &AppRecord) -> bool {
        self.role == Role::Admin || (self.role == Role::AppOwner && app.owners.contains(&self.name))
    }
}

impl FromRequestParts<ApiContext> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization", "an Authorization: Bearer <token> header is required")
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization", "the Authorization header must be `Bearer <token>`")
            })?;
        let admin = ctx.engine.ctx.config.admin_token.expose().as_bytes();
        if bool::from(admin.ct_eq(token.as_bytes())) {
            return Ok(Caller {
                name: BOOTSTRAP_ADMIN.into(),
                role: Role::Admin,
            });
        }
        let hash = crate::crypto::hash_token(token);
        match ctx.engine.ctx.store.token_by_hash(&hash).await? {
            Some(t) => Ok(Caller {
                name: t.name,
                role: Role::parse(&t.role).ok_or_else(|| ApiError::unauthorized("Authorization", "unknown role"))?,
            }),
            None => Err(ApiError::unauthorized("Authorization", "the token is not valid")),
        }
    }
}
