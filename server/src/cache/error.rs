//! The one place that decides the HTTP status of a failed cache request. The match is
//! exhaustive so a new failure forces a decision instead of inheriting 500; only 5xx are
//! logged, and the client always gets a short, true message.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tailcache_store::IoError;

/// Why a cache request failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The URL cannot name anything this cache serves (bad hash, bad name, traversal).
    #[error("{0}")]
    BadRequest(&'static str),
    /// Well-formed, but the store or the NAR directory does not have it.
    #[error("{0}")]
    NotFound(&'static str),
    /// A `Range` that starts past the end of a resource of this many bytes.
    #[error("range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    /// The store database failed (locked for too long, corrupt, I/O).
    #[error("store database error: {0}")]
    Store(#[from] tailcache_store::Error),
    /// A local file could not be read.
    #[error(transparent)]
    Io(#[from] IoError),
}

pub type CacheResult<T> = Result<T, CacheError>;

impl IntoResponse for CacheError {
    fn into_response(self) -> Response {
        let status = match &self {
            CacheError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CacheError::NotFound(_) => StatusCode::NOT_FOUND,
            CacheError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            CacheError::Store(_) | CacheError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status.is_server_error() {
            tracing::error!("{self}");
            "internal error; see the server log\n".to_owned()
        } else {
            format!("{self}\n")
        };
        let mut response = (status, message).into_response();
        if let CacheError::RangeNotSatisfiable { size } = self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        response
    }
}
