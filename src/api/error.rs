//! The one error type at the HTTP edge: statuses in one match, `{"error": {"code", "message",
//! "field"}}` bodies (described once in openapi.yaml), internal details logged, not returned.
//! Also the JSON extractor, so malformed bodies get the same shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::infer::DetectError;
use crate::store::StoreError;
use crate::validate::{FieldError, JsonError, from_json};

/// Every error the API returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the request took longer than {0} s (--request-timeout / --upload-timeout)")]
    Timeout(u64),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Validation failure naming the field.
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{message}")]
    Busy { message: String, retry_after: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// The request's `x-request-id` (also in the server's log lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(FieldError::new(field, message))
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "busy"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let request_id = super::guard::REQUEST_ID.try_with(|id| id.clone()).ok();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, request_id = request_id.as_deref().unwrap_or(""), "internal error");
        }
        let field = match &self {
            ApiError::Invalid(f) => Some(f.field.as_str()),
            _ => None,
        };
        let message = match &self {
            ApiError::Invalid(f) => f.to_string(),
            other => other.to_string(),
        };
        let mut resp = (
            status,
            axum::Json(Body {
                error: Detail {
                    code,
                    message,
                    field,
                    request_id,
                },
            }),
        )
            .into_response();
        match self {
            ApiError::Busy { retry_after, .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            ApiError::Unauthorized => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"metafora\""),
                );
            }
            _ => {}
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QueueFull(n) => ApiError::Busy {
                message: format!("job queue is full ({n} waiting)"),
                retry_after: 60,
            },
            StoreError::Conflict(s) => ApiError::Conflict(s),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::jobs::projects::ProjectError> for ApiError {
    fn from(e: crate::jobs::projects::ProjectError) -> Self {
        use crate::jobs::projects::ProjectError as P;
        match e {
            P::Store(s) => s.into(),
            P::Invalid { field, message } => ApiError::invalid(field, message),
            P::NotFound(p) => ApiError::NotFound(format!("project {p:?}")),
            P::Io(m) => ApiError::Internal(m),
        }
    }
}

impl From<crate::jobs::models::ModelsError> for ApiError {
    fn from(e: crate::jobs::models::ModelsError) -> Self {
        use crate::jobs::models::ModelsError as M;
        match e {
            M::Detect(d) => d.into(),
            M::Store(s) => s.into(),
            M::NotDeployed(n) => ApiError::NotFound(format!("model {n:?}")),
            M::NoPrevious(m) | M::Mismatch(m) => ApiError::Conflict(m),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<DetectError> for ApiError {
    fn from(e: DetectError) -> Self {
        match e {
            DetectError::Busy(m) => ApiError::Busy {
                message: format!("too many requests waiting for model {m}"),
                retry_after: 1,
            },
            DetectError::Stopped(m) => ApiError::Unavailable(format!("model {m} is not running")),
            e @ DetectError::Failed { .. } => ApiError::Unavailable(e.to_string()),
            DetectError::Data(d) => ApiError::invalid("text", d.to_string()),
            DetectError::Invalid { field, message } => ApiError::invalid(field, message),
            DetectError::Load(l) => ApiError::invalid("path", l.to_string()),
        }
    }
}

/// `axum::Json` with JSON error bodies for malformed input (the field path when serde knows it).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // JSON bodies must say so: a web page can send a cross-site form or `text/plain`
        // POST without asking the server first, but not an `application/json` one.
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("?"));
        match ct {
            Some(ct) if is_json_content_type(ct) => {}
            Some(ct) => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "expected content-type application/json, got {ct:?}"
                )));
            }
            None => {
                return Err(ApiError::UnsupportedMediaType(
                    "expected content-type application/json, got none".into(),
                ));
            }
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) => return Err(body_rejection(e.status(), e.body_text())),
        };
        parse_json(&bytes).map(ApiJson)
    }
}

/// `application/json`, `application/*+json`, with or without parameters.
fn is_json_content_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Maps a body rejection (too large, unreadable) to an ApiError.
pub fn body_rejection(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge("request body is too large".into())
    } else {
        ApiError::BadRequest(text)
    }
}

/// Parses JSON bytes; errors name the field path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::BadRequest(
            "request body is not valid UTF-8".into(),
        ));
    }
    // Syntax first (trailing bytes included), so malformed JSON is a 400 whatever its shape.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ApiError::BadRequest(format!("malformed JSON: {e}")));
    }
    from_json(bytes).map_err(|e| match e {
        JsonError::Syntax(m) => ApiError::BadRequest(format!("malformed JSON: {m}")),
        JsonError::Field(f) => ApiError::Invalid(f),
    })
}

/// Maps axum's JSON rejection (used by routes that take `axum::Json` directly).
impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        body_rejection(e.status(), e.body_text())
    }
}
