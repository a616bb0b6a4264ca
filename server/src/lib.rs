//! tailcache-server: the build server and Nix binary cache for a person's machines on a tailnet.
//!
//! # Layout
//! - [`config`]: the TOML configuration, command-line overrides and defaults.
//! - [`cache`]: the binary cache — HTTP routes and the CacheServer actor.
//! - [`api`]: the build-API listener — builds, logs, health, metrics, status page.
//! - [`keys`]: loading the signing keys, or generating the default one on first start.
//! - [`notify`]: POSTing a summary of each finished build (`[notify]`).
//! - [`p2p`]: the server's libp2p tracker/seed node.
//! - [`server`]: the composition root — starts the actors and the listeners (each served
//!   by `tailcache-listener`).

pub mod api;
pub mod cache;
pub mod config;
pub mod keys;
pub mod notify;
pub mod p2p;
pub mod server;
