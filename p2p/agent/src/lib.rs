//! tailcache-agent: `tailcache agent`, the program that runs on each client machine — a Nix
//! substituter on 127.0.0.1 in front of the cache server that fetches NAR files in verified
//! pieces from peers and the server, and (with `reseed`) keeps them and serves them to
//! peers. It shares nothing with the server's code but what both build on: the P2P node,
//! manifests and verification of `tailcache-p2p`, the Nix formats of `tailcache-store`,
//! and the HTTP listener of `tailcache-listener`.
//!
//! With `reseed` the verified files are kept ([`store`]) and announced to the tracker; a
//! download in progress is announced as partial at once and its verified pieces are served
//! to peers (swarming, see [`fetch`]); `metered` never uploads.
//!
//! Nix's connections are served as the server's are: a connection limit, head, idle and send
//! timeouts, `TCP_NODELAY` (`[agent.connections]`).
//!
//! The narinfos it passes on name the file of the NAR that is fastest end to end on this
//! machine's link ([`choose`], from what [`measure`] measured), when the server has several.
//!
//! # Layout
//! - [`config`]: the `[agent]` section of the config file and command-line overrides.
//! - [`substituter`]: the HTTP routes Nix talks to.
//! - [`choose`]: which of a NAR's files to advertise (pure).
//! - [`narinfo`]: the server's narinfo naming another file (pure).
//! - [`measure`]: the link's goodput and this machine's decoding speeds.
//! - [`fetch`]: one download — the pure scheduler ([`fetch::schedule`]) and its driver.
//! - [`prefetch`]: a file's proof asked for with its narinfo, ahead of the NAR request.
//! - [`serve`]: response bodies made only of verified bytes.
//! - [`store`]: the cache of fetched files, and what peers are served of them.
//! - [`http_client`]: requests to the cache server.
//! - [`metrics`]: the agent's Prometheus metrics (and `tailcache_http_*`, the listener's).
//! - [`error`]: the crate's error types.

pub mod choose;
pub mod config;
pub mod error;
pub mod fetch;
pub mod http_client;
pub mod measure;
pub mod metrics;
pub mod narinfo;
pub mod prefetch;
pub mod serve;
pub mod store;
pub mod substituter;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tailcache_listener::{HttpStats, Limits as HttpLimits};
use tailcache_p2p::node::{self, NodeConfig, RateLimit, UploadPolicy};
use tokio::net::TcpListener;

pub use config::{AgentConfig, AgentOverrides};
pub use error::{Error, FetchError, Result};

use fetch::schedule::Limits;
use http_client::Server;
use measure::Measurements;
use metrics::AgentMetrics;
use store::FileStore;
use substituter::{AgentState, Inner};

/// The node's upload policy for a configuration.
fn upload_policy(config: &AgentConfig) -> UploadPolicy {
    if config.reseed && !config.metered {
        UploadPolicy::Enabled {
            slots: config.upload_slots.max(1),
            rate: (config.upload_rate > 0).then_some(RateLimit {
                bytes_per_sec: config.upload_rate,
                burst: config.upload_rate.max(1 << 20),
            }),
        }
    } else {
        UploadPolicy::Disabled
    }
}

/// Creates the cache directory (mode 0700) and opens the file cache in it.
fn open_cache(dir: &std::path::Path, max_bytes: u64) -> Result<Arc<FileStore>> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let store = FileStore::open(dir, max_bytes).map_err(|e| {
        Error::io(
            format!("cannot open the file cache in {}", dir.display()),
            e,
        )
    })?;
    Ok(Arc::new(store))
}

/// Where the agent listens, on stdout (tests and service logs read it).
fn print_addresses(p2p: &[tailcache_p2p::libp2p::Multiaddr], http: std::net::SocketAddr) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for a in p2p {
        let _ = writeln!(out, "agent p2p listening on {a}");
    }
    let _ = writeln!(out, "agent listening on http://{http}");
    let _ = out.flush();
}

/// Starts the agent and serves `listener` until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let nofile = tailcache_listener::raise_nofile_limit();
    if config.trusted_keys.is_empty() {
        tracing::warn!("no trusted_keys: every NAR comes from the server, none from peers");
    }
    let cache_dir = config.cache_dir();
    let store = open_cache(&cache_dir, config.cache_max_bytes)?;
    let keypair = tailcache_p2p::identity::load_or_generate(&cache_dir.join("p2p-key"))?;
    let upload = upload_policy(&config);
    let mut node_config = NodeConfig::new(keypair);
    node_config.upload = upload;
    let node = node::spawn(node_config, store.clone())?;
    let p2p_addrs = node.listen_all(&config.listen).await?;

    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    let http_stats = HttpStats::register(&mut registry);
    // A connection may hold a socket and a file (a NAR being written or read); the third of
    // the descriptors left is the P2P node's (its connections, the files it uploads from).
    let limits = HttpLimits::new("agent", &config.connections, nofile, 2.0 / 3.0, 2);
    let measurements = Measurements::default();
    // What was last measured, kept up to date: the choice of encoding starts from it.
    tokio::spawn(measurements.keep_in(cache_dir.join(measure::MEASUREMENTS_FILE)));
    // Only `auto` uses the decoding speeds: the others spare the half second of CPU.
    if config.encoding == choose::Encoding::Auto {
        let m = measurements.clone();
        tokio::spawn(async move { m.calibrate_when_idle().await });
    }
    let state = AgentState(Arc::new(Inner {
        server: Server::new(&config.server).map_err(Error::HttpClient)?,
        node: node.clone(),
        tracker: config.tracker.clone(),
        trusted: config.trusted_keys.clone(),
        store,
        reseed: config.reseed,
        uploads: matches!(upload, UploadPolicy::Enabled { .. }),
        min_p2p_size: config.min_p2p_size,
        limits: Limits {
            requests_per_peer: config.requests_per_peer.max(1),
            server_requests: config.server_requests.max(1),
            ..Limits::default()
        },
        metrics,
        registry,
        scores: Arc::new(Mutex::new(HashMap::new())),
        encoding: config.encoding,
        measurements,
        prefetched: Default::default(),
    }));
    if let Some(tracker) = &config.tracker {
        match node.dial(tracker.peer, vec![tracker.addr.clone()]).await {
            Ok(()) => {
                let _ = node.keep_connected(tracker.peer, true).await;
                state.announce(state.0.store.list(), true).await;
            }
            Err(e) => tracing::warn!("cannot reach the tracker (will retry per fetch): {e}"),
        }
    }

    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?;
    print_addresses(&p2p_addrs, addr);
    tailcache_listener::serve(
        "agent",
        listener,
        substituter::router(state),
        limits,
        http_stats,
        shutdown,
    )
    .await;
    let _ = node.shutdown().await;
    Ok(())
}
