//! The build-API listener (default `127.0.0.1:8000`, apart from the cache listener):
//! trigger, cancel, status and logs of builds, health, Prometheus metrics, and a status page.
//!
//! # Layout
//! - [`build`]: `POST /build/trigger|cancel|webhook`, `GET /build/status`, `GET /build/logs`.
//! - [`hosts`]: `GET /hosts`, `GET /hosts/<name>` (generations, signed records, readiness)
//!   and `GET /locks/<hash>` (the lock files builds used).
//! - [`health`]: `GET /health` and `GET /metrics`.
//! - [`page`]: `GET /`, the HTML status page (no external assets).
//! - [`tailnet`]: who calls, from tailscaled's `whois`, and `[api] allow`.
//! - [`error`]: the one place that maps failures to statuses.
//!
//! Handlers use [`tailcache_actors::BuildHandle`] and the cache's read handle, never actix
//! types.

pub mod build;
pub mod error;
pub mod health;
pub mod hosts;
pub mod page;
pub mod tailnet;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tailcache_actors::{BuildHandle, RequestedBy};
use tailcache_metrics::Prefixed;

use crate::cache::CacheState;
use error::ApiError;
use tailnet::{Allow, LocalApi, Whois};

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
    local_api: LocalApi,
    allow: Allow,
    stats: ApiStats,
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
    /// tailscaled's LocalAPI, to identify callers.
    pub local_api: LocalApi,
    /// Who may trigger and cancel.
    pub allow: Allow,
    pub stats: ApiStats,
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
                local_api: p.local_api,
                allow: p.allow,
                stats: p.stats,
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
        if bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            token.as_bytes(),
        )) {
            Ok(())
        } else {
            self.inner.stats.refused("token");
            Err(ApiError::Unauthorized)
        }
    }

    /// Who calls a route that changes builds: the token checked, the caller named by the
    /// tailnet when tailscaled can be asked (the headers' `claim` kept beside it), and
    /// `[api] allow` enforced.
    pub async fn caller(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        claim: RequestedBy,
    ) -> Result<RequestedBy, ApiError> {
        self.authorize(headers)?;
        let whois = self.inner.local_api.whois(peer).await;
        let tailnet = match &whois {
            Whois::Known(id) => Some(id.clone()),
            Whois::NotOnTailnet | Whois::Unavailable(_) => None,
        };
        if !self.inner.allow.admits(peer, tailnet.as_ref()) {
            let (reason, message) = match (&whois, &tailnet) {
                (Whois::Unavailable(why), _) => (
                    "unidentified",
                    format!(
                        "cannot tell who {peer} is: tailscaled's LocalAPI did not answer \
                         ({why}); [api] allow admits only callers it names"
                    ),
                ),
                (_, Some(id)) => (
                    "not_allowed",
                    format!(
                        "{} ({peer}) may not trigger or cancel builds: [api] allow lists \
                         neither user:{}, node:{} nor any of its tags",
                        RequestedBy {
                            tailnet: Some(id.clone()),
                            ..claim
                        },
                        id.user,
                        id.node
                    ),
                ),
                (_, None) => (
                    "not_allowed",
                    format!(
                        "{peer} is not a tailnet node, and [api] allow does not admit it \
                         (`local` admits callers on this machine)"
                    ),
                ),
            };
            self.inner.stats.refused(reason);
            return Err(ApiError::NotAllowed(message));
        }
        Ok(RequestedBy { tailnet, ..claim })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// The API's own metrics.
#[derive(Debug, Clone)]
pub struct ApiStats {
    refusals: Family<RefusalLabels, Counter>,
}

impl ApiStats {
    /// Creates the metrics and registers them under `tailcache_api_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let s = ApiStats {
            refusals: Prefixed::new(registry, "tailcache_api").add(
                "refusals",
                "trigger and cancel requests refused, by reason (token: missing or wrong \
                 bearer token; not_allowed: not admitted by [api] allow; unidentified: \
                 tailscaled could not be asked while [api] allow is set)",
                Family::default(),
            ),
        };
        for reason in ["token", "not_allowed", "unidentified"] {
            let _ = s.refusals.get_or_create(&RefusalLabels { reason });
        }
        s
    }

    fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }
}

/// Largest request body of every route but the webhook: triggers and cancels carry none
/// (or an empty JSON object), GET requests none at all.
pub const BODY_LIMIT: usize = 4 << 10;
/// Largest webhook body. A push event to a configuration repository is a few KiB; one
/// that lists thousands of changed files reaches hundreds of KiB (GitHub caps each list at
/// 5000 paths and whole payloads at 25 MB). 1 MiB holds any push such a repository sees,
/// and is what services taking GitHub pushes commonly allow.
pub const WEBHOOK_BODY_LIMIT: usize = 1 << 20;

/// The API listener's routes, each with its body-size limit.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(page::get_status_page))
        .route("/build/trigger", post(build::post_trigger))
        .route("/build/cancel", post(build::post_cancel))
        .route("/build/status", get(build::get_status))
        .route("/build/logs", get(build::get_logs))
        .route("/hosts", get(hosts::get_hosts))
        .route("/hosts/{name}", get(hosts::get_host))
        .route("/locks/{hash}", get(hosts::get_lock))
        .route("/health", get(health::get_health))
        .route("/metrics", get(health::get_metrics))
        .layer(middleware::from_fn_with_state(BODY_LIMIT, limit_body))
        .route(
            "/build/webhook",
            post(build::post_webhook).layer(middleware::from_fn_with_state(
                WEBHOOK_BODY_LIMIT,
                limit_body,
            )),
        )
}

/// Refuses a body larger than `limit` bytes: at once when its `Content-Length` says so,
/// else as a handler reads it (see [`read_body`]).
async fn limit_body(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return axum::response::IntoResponse::into_response(ApiError::BodyTooLarge { limit });
    }
    next.run(req.map(|b| Body::new(http_body_util::Limited::new(b, limit))))
        .await
}

/// A handler's body, read within the route's `limit` (413 beyond it).
pub fn read_body(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge { limit },
        _ => ApiError::BadRequest(e.body_text()),
    })
}
