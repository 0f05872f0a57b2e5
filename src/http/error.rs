//! One error type for the API, rendered as `application/problem+json` (RFC 9457). Internals are
//! logged; the client sees only what it should.

use axum::extract::FromRequestParts;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::model::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {detail}")]
    BadRequest { field: String, detail: String },
    /// A missing or refused credential, naming the header that carries it (`Authorization`,
    /// `X-Bridge-Signature`).
    #[error("{detail}")]
    Unauthorized { field: &'static str, detail: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// A conflict about one field's value (a name already taken).
    #[error("{field}: {detail}")]
    FieldConflict { field: String, detail: String },
    #[error("{field}: {detail}")]
    Unprocessable { field: String, detail: String },
    #[error("the body is larger than 1 MiB")]
    PayloadTooLarge,
    #[error("the body did not arrive in time")]
    RequestTimeout,
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// `If-Match` named a state that changed since.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("the database cannot commit right now")]
    Unavailable,
    /// A store error that a retry cannot fix: logged with its cause, shown as a plain 500.
    #[error("the database refused the request; see the bridge's log")]
    StoreFailed,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad(field: &str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            field: field.into(),
            detail: detail.into(),
        }
    }
    pub fn unauthorized(header: &'static str, detail: impl Into<String>) -> Self {
        Self::Unauthorized {
            field: header,
            detail: detail.into(),
        }
    }
    pub fn unprocessable(field: &str, detail: impl Into<String>) -> Self {
        Self::Unprocessable {
            field: field.into(),
            detail: detail.into(),
        }
    }
    pub fn conflict_on(field: &str, detail: impl Into<String>) -> Self {
        Self::FieldConflict {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// A request body that could not be read: too large, or too slow to arrive.
    pub fn body_unreadable(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if e.is::<crate::server::BodyTimedOut>() {
                return Self::RequestTimeout;
            }
            cause = e.source();
        }
        Self::PayloadTooLarge
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) | Self::FieldConflict { .. } => StatusCode::CONFLICT,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::StoreFailed | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    /// Only an error that a retry can fix asks the client to retry (503 with `Retry-After`);
    /// any other is a 500, so that a sender does not retry forever what can never commit.
    fn from(e: crate::store::StoreError) -> Self {
        if let crate::store::StoreError::NameTaken(name) = &e {
            return Self::conflict_on("name", format!("{name:?} is the name of another app: names are unique"));
        }
        // A moved store (SPEC §6, "Moving stores") is transient too: the sender retries, and
        // reaches the bridge that runs on the new store once traffic goes there.
        if e.is_transient() {
            tracing::warn!(error = %e, "store unavailable");
            Self::Unavailable
        } else {
            tracing::error!(error = %e, "store error");
            Self::StoreFailed
        }
    }
}

/// The body of a problem answer; also used inside batch answers.
pub fn problem_body(status: StatusCode, detail: &str, field: Option<&str>) -> Problem {
    Problem {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").into(),
        status: status.as_u16(),
        detail: detail.into(),
        field: field.map(Into::into),
    }
}

impl Problem {
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(self).expect("a problem serializes")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (detail, field) = match &self {
            Self::BadRequest { field, detail }
            | Self::Unprocessable { field, detail }
            | Self::FieldConflict { field, detail } => (format!("{field}: {detail}"), Some(field.as_str())),
            // The detail names the header already.
            Self::Unauthorized { field, detail } => (detail.clone(), Some(*field)),
            Self::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                ("internal error; see the bridge's log".to_string(), None)
            }
            other => (other.to_string(), None),
        };
        let body = problem_body(status, &detail, field);
        let mut response = (status, body.to_json_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a slow body is not waited for: the connection ends with this answer.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON request body whose errors are answered as problem+json like every other error.
/// An empty body is `None`.
pub struct JsonBody(pub Option<serde_json::Value>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::body_unreadable(&e))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        serde_json::from_slice(&bytes)
            .map(|v| Self(Some(v)))
            .map_err(|e| ApiError::bad("(body)", format!("malformed JSON: {e}")))
    }
}

/// `axum::extract::Query`, whose errors are problems naming the parameter.
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(Self).map_err(|e| {
            let path = e.path().to_string();
            let detail = e.inner().to_string();
            let field = if path == "." {
                // A missing parameter has no path; its name is in the message.
                detail.split('`').nth(1).unwrap_or("(query)").to_string()
            } else {
                path
            };
            ApiError::BadRequest { field, detail }
        })
    }
}

/// `axum::extract::Path`, whose errors are problems naming the path segment.
pub struct Path<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::DeserializeError { key, .. } => key.clone(),
                    _ => "(path)".to_string(),
                };
                Err(ApiError::BadRequest {
                    field,
                    detail: e.body_text(),
                })
            }
            Err(other) => Err(ApiError::Internal(anyhow::anyhow!(
                "path parameters: {}",
                other.body_text()
            ))),
        }
    }
}
