//! The operator page: one self-contained HTML document (no external scripts, fonts or CDNs). It
//! signs in with a token kept in the browser session and reads the same API as everyone else.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};

use super::ApiContext;

/// Nothing but this document and the bridge's own API may be loaded or called from the page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page, told where traces are shown (SCIM_BRIDGE_TRACE_URL) if anywhere.
pub async fn page(State(ctx): State<ApiContext>) -> impl IntoResponse {
    // JSON inside a script element: `<` escaped, so no value can close the element.
    let trace_url = serde_json::to_string(&ctx.engine.ctx.config.trace_url)
        .expect("a string serializes")
        .replace('<', "\\u003c");
    let html =
        include_str!("page.html").replacen("const TRACE_URL = null;", &format!("const TRACE_URL = {trace_url};"), 1);
    (
        [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(html),
    )
}
