//! The operator page: one self-contained HTML document (no external scripts, fonts or CDNs). It
//! signs in with a token kept in the browser session and reads the same API as everyone else.

use axum::response::Html;

pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
