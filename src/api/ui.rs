//! The web dashboard: `GET /` and `/ui/...` serve the pages, embedded in the binary at compile
//! time (no CDN, works offline). The pages hold no data: everything they show comes from the
//! API with the key the viewer typed (sent as a Bearer token), so they are served without it.
//! `METAFORA_UI_DIR` serves the files from a folder instead, for working on them.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// (name, content type, bytes) of every file of the dashboard.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("ui/style.css"),
    ),
];

/// Content-Security-Policy of the pages: nothing from elsewhere, no inline script.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(name: &str) -> Option<(&'static str, Vec<u8>)> {
    let (_, ctype, bytes) = FILES.iter().find(|(n, _, _)| *n == name)?;
    if let Some(dir) = std::env::var_os("METAFORA_UI_DIR") {
        return std::fs::read(std::path::Path::new(&dir).join(name))
            .ok()
            .map(|b| (*ctype, b));
    }
    Some((*ctype, bytes.to_vec()))
}

fn serve(name: &str) -> Response {
    match file(name) {
        Some((ctype, body)) => {
            let mut r = (StatusCode::OK, body).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => super::error::ApiError::NotFound("page".into()).into_response(),
    }
}

/// GET / — the dashboard.
pub async fn index() -> Response {
    serve("index.html")
}

/// GET /ui/{*path} — a file of the dashboard, or the dashboard itself for its page paths
/// (`/ui/jobs/<id>`), which the page routes in the browser.
pub async fn asset(Path(path): Path<String>) -> Response {
    if FILES.iter().any(|(n, _, _)| *n == path) {
        serve(&path)
    } else if !path.contains('.') {
        serve("index.html")
    } else {
        super::error::ApiError::NotFound(format!("file {path:?}")).into_response()
    }
}
