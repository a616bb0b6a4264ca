//! The build-API listener (default `127.0.0.1:8000`, apart from the cache listener):
//! trigger, cancel, status and logs of builds, health, Prometheus metrics, and a status page.
//!
//! # Layout
//! - [`build`]: `POST /build/trigger|cancel|webhook`, `GET /build/status`, `GET /build/logs`.
//! - [`hosts`]: `GET /hosts`, `GET /hosts/<name>` (generations, signed records, readiness)
//!   and `GET /locks/<hash>` (the lock files builds used).
//! - [`health`]: `GET /health` and `GET /metrics`.
//! - [`page`]: `GET /`, the HTML status page (no external assets).
//! - [`error`]: the one place that maps failures to statuses.
//!
//! Handlers use [`tailcache_actors::BuildHandle`] and the cache's read handle, never actix
//! types.

pub mod build;
pub mod error;
pub mod health;
pub mod hosts;
pub mod page;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tailcache_actors::BuildHandle;

use crate::cache::CacheState;
use error::ApiError;

/// What every API handler reads. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    build: BuildHandle,
    cache: CacheState,
    registry: Registry,
    token: Option<String>,
    webhook_secret: Option<Vec<u8>>,
    build_configured: bool,
    branch: String,
    cache_url: String,
}

/// Everything needed to build an [`ApiState`].
#[derive(Debug)]
pub struct ApiParts {
    pub build: BuildHandle,
    pub cache: CacheState,
    pub registry: Registry,
    pub token: Option<String>,
    pub webhook_secret: Option<Vec<u8>>,
    pub build_configured: bool,
    /// Branch a webhook push must name to trigger a build.
    pub branch: String,
    /// How clients reach the cache (for the nix.conf lines on the status page).
    pub cache_url: String,
}

impl ApiState {
    pub fn new(p: ApiParts) -> Self {
        ApiState {
            inner: Arc::new(Shared {
                build: p.build,
                cache: p.cache,
                registry: p.registry,
                token: p.token,
                webhook_secret: p.webhook_secret,
                build_configured: p.build_configured,
                branch: p.branch,
                cache_url: p.cache_url,
            }),
        }
    }

    pub fn build(&self) -> &BuildHandle {
        &self.inner.build
    }

    pub fn cache(&self) -> &CacheState {
        &self.inner.cache
    }

    /// Refuses a request without the configured bearer token (compared in constant time).
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.inner.token else {
            return Ok(());
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API listener's routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(page::get_status_page))
        .route("/build/trigger", post(build::post_trigger))
        .route("/build/cancel", post(build::post_cancel))
        .route("/build/webhook", post(build::post_webhook))
        .route("/build/status", get(build::get_status))
        .route("/build/logs", get(build::get_logs))
        .route("/hosts", get(hosts::get_hosts))
        .route("/hosts/{name}", get(hosts::get_host))
        .route("/locks/{hash}", get(hosts::get_lock))
        .route("/health", get(health::get_health))
        .route("/metrics", get(health::get_metrics))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
