//! The operator page: one self-contained HTML document (no external scripts, fonts or CDNs). It
//! signs in with a token kept in the browser session and reads the same API as everyone else.

use axum::http::header;
use axum::response::{Html, IntoResponse};

/// Nothing but this document and the bridge's own API may be loaded or called from the page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(include_str!("page.html")),
    )
}
