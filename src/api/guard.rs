//! What every request passes before a handler: a request id (logs and error bodies), a
//! panic turned into a 500, the Host/Origin checks that stop DNS-rebinding and cross-site
//! requests, CORS for the origins an operator allows, the API key, and the request timeout.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::AppState;
use super::error::ApiError;

tokio::task_local! {
    /// The id of the request being handled (error bodies quote it).
    pub static REQUEST_ID: String;
}

/// `x-request-id`: the client's when it is a short token, else a fresh UUID; echoed on the
/// response and available to the handler's task (error bodies, logs).
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let value = HeaderValue::from_str(&id).expect("request ids are header-safe: this is a bug");
    req.headers_mut().insert("x-request-id", value.clone());
    let mut resp = REQUEST_ID.scope(id, next.run(req)).await;
    resp.headers_mut().insert("x-request-id", value);
    resp
}

/// The tracing span of a request, with its id (debug level, as tower-http's default: at
/// `info` a request costs no span; errors log the id themselves).
pub fn request_span(req: &Request) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::debug_span!("request", method = %req.method(), uri = %req.uri().path(), request_id = %id)
}

/// A panic in a handler: a 500 JSON error (the connection stays usable).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}

/// The host part of a `Host` header or an origin's authority (no port, lower case).
fn host_name(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if let Some(rest) = a.strip_prefix('[') {
        // [v6]:port
        return format!("[{}]", rest.split(']').next().unwrap_or(""));
    }
    a.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h.to_string())
        .unwrap_or(a)
}

/// A `Host` a DNS-rebinding page cannot produce: an IP literal, `localhost`, or a name the
/// operator listed (`--public-host`). A rebinding attack reaches the server under the
/// attacker's own domain name.
fn host_allowed(host: &str, public: &[String]) -> bool {
    let name = host_name(host);
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || bare.parse::<std::net::IpAddr>().is_ok()
        || public
            .iter()
            .any(|p| p.eq_ignore_ascii_case(host.trim()) || host_name(p) == name)
}

/// Refuses what a web page in a user's browser could send on its own: a request whose
/// `Origin` is another site (unless `--cors-origin` allows it), and — without an API key — a
/// request whose `Host` is a name the server does not answer to (DNS rebinding).
pub async fn same_site(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if let Some(public) = &state.settings.public_hosts
        && !host_allowed(&host, public)
    {
        return Err(ApiError::Forbidden(
            "the Host header names a host this server does not answer to (start it with --public-host NAME, or use an API key)".into(),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let same = origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(&host));
        let listed = state.settings.cors_origins.iter().any(|o| o == origin);
        if !same && !listed {
            return Err(ApiError::Forbidden(format!(
                "cross-origin request from {origin:?} refused (allow it with --cors-origin)"
            )));
        }
    }
    Ok(next.run(req).await)
}

/// CORS for the listed origins (none: no CORS headers, browsers keep other sites out).
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
                header::HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                header::HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// With `--api-key`: a Bearer token (scheme case-insensitive) or Basic with the key as
/// password (as Label Studio sends it) on every route but `GET`/`HEAD /health` and the
/// dashboard's pages (`/`, `/ui/...`: static files without data, which ask for the key and
/// send it with every API call), unknown routes and wrong methods included (they answer 401
/// before 404/405).
pub async fn auth(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(key) = &state.settings.api_key else {
        return Ok(next.run(req).await);
    };
    let open = (req.method() == Method::GET || req.method() == Method::HEAD)
        && req
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|p| matches!(p.as_str(), "/health" | "/" | "/ui" | "/ui/{*path}"));
    if open || credentials_match(req.headers().get(header::AUTHORIZATION), key) {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn credentials_match(given: Option<&HeaderValue>, key: &str) -> bool {
    let Some((scheme, value)) = given
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        constant_time_eq(value.as_bytes(), key.as_bytes())
    } else if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|s| s.split_once(':').map(|(_, p)| p.to_string()))
            .is_some_and(|p| constant_time_eq(p.as_bytes(), key.as_bytes()))
    } else {
        false
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Bounds the time to read the request and produce the response head (`--request-timeout`,
/// `--upload-timeout` for uploads): a client that trickles its body, or work that never ends,
/// gets 408 and the connection is freed. Event streams start at once and are not bounded
/// after.
pub async fn timeout(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let upload = req.method() == Method::POST
        && req
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|p| matches!(p.as_str(), "/v1/datasets" | "/v1/projects/{id}/import"));
    let limit = if upload {
        state.settings.upload_timeout
    } else {
        state.settings.request_timeout
    };
    tokio::time::timeout(limit, next.run(req))
        .await
        .map_err(|_| ApiError::Timeout(limit.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebinding_hosts_are_refused() {
        let public = vec!["metafora.lab.example".to_string()];
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "10.1.2.3",
            "metafora.lab.example:8080",
        ] {
            assert!(host_allowed(ok, &public), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "",
            "localhost.evil",
        ] {
            assert!(!host_allowed(bad, &public), "{bad}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(credentials_match(Some(&v("Bearer k")), "k"));
        assert!(credentials_match(Some(&v("bearer k")), "k"));
        assert!(credentials_match(Some(&v("BEARER  k ")), "k"));
        // Basic with any user and the key as password ("u:k").
        assert!(credentials_match(Some(&v("basic dTpr")), "k"));
        assert!(!credentials_match(Some(&v("Bearer x")), "k"));
        assert!(!credentials_match(Some(&v("Token k")), "k"));
        assert!(!credentials_match(None, "k"));
    }
}
