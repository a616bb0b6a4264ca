//! tailcache-listener: serving one TCP listener with hyper — connection limit, timeouts,
//! socket options, graceful drain, `tailcache_http_*` metrics — for every HTTP listener of
//! the project (the server's cache and API listeners, the agent's substituter). It knows
//! HTTP connections and nothing of what is served: the caller hands it an axum `Router`.
//!
//! # Layout
//! - [`config`]: a listener's connection settings ([`ConnectionConfig`]) and their checks.
//! - `serve`: the accept loop and each connection's task ([`serve()`], [`Limits`],
//!   [`HttpStats`], [`raise_nofile_limit`]).

pub mod config;
mod serve;

pub use config::{ConnectionConfig, InvalidConnectionConfig};
pub use serve::{HttpStats, Limits, raise_nofile_limit, serve};
