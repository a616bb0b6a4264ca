//! The one place that decides the HTTP status of a failed build-API request (exhaustive, so
//! a new failure forces a decision). Bodies are JSON `{"status": …, "message": …}` so the CLI
//! can show the message as it is; only 5xx are logged.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why a build-API request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotAllowed(String),
    #[error("webhook signature missing or invalid")]
    BadSignature,
    #[error("no build is configured: set build.repository (or build.steps) in the config file")]
    NotConfigured,
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("no host named {name:?}; the server builds: {known}")]
    UnknownHost { name: String, known: String },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Actors(#[from] tailcache_actors::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, tag) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotAllowed(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BadSignature => (StatusCode::UNAUTHORIZED, "bad_signature"),
            ApiError::NotConfigured => (StatusCode::CONFLICT, "not_configured"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::UnknownHost { .. } => (StatusCode::NOT_FOUND, "unknown_host"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Actors(_) => (StatusCode::INTERNAL_SERVER_ERROR, "error"),
        };
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        let body = serde_json::json!({ "status": tag, "message": self.to_string() });
        let mut response = (status, Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
