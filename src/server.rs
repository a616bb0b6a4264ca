//! The composition root of `tailcache serve`: state directory, keys, the CacheServer actor
//! and the cache listener, run until a shutdown signal. Tests call [`run`] with a listener
//! bound to `127.0.0.1:0` and their own shutdown future.

use std::future::Future;
use std::os::unix::fs::DirBuilderExt as _;
use std::sync::Arc;

use anyhow::Context as _;
use tailcache_store::db::StoreLayout;
use tokio::net::TcpListener;

use crate::cache::actor::{CacheServer, CompressionSettings};
use crate::cache::nar_cache::NarCache;
use crate::cache::{self, CacheParts, CacheState, CacheStats};
use crate::config::Config;
use crate::keys;

/// Prepares everything `serve` needs, prints what a client needs to know, and serves the
/// cache on `listener` until `shutdown` completes. Must run inside an actix system.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state_dir = config.state_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let keys = keys::load_or_generate(&config.cache.secret_key_files, &state_dir)?;
    let c = &config.cache;
    let layout = StoreLayout {
        store_dir: c.store_dir.clone(),
        root: c.store_root.clone(),
    };
    if !layout.db_path().exists() {
        tracing::warn!(
            "no store database found at {}: is Nix installed? Every narinfo request will be \
             answered 404 until it exists.",
            layout.db_path().display()
        );
    }
    let nar_dir = state_dir.join("nar");
    let nars = Arc::new(
        NarCache::open(&nar_dir)
            .with_context(|| format!("cannot open NAR directory {}", nar_dir.display()))?,
    );
    let stats = Arc::new(CacheStats::default());
    let settings = CompressionSettings {
        compression: c.compression,
        level: c.compression_level,
        threads: c.compression_threads,
    };
    let actor = CacheServer::start(
        nars.clone(),
        settings,
        c.nar_cache_max_bytes,
        c.compression_queue,
        stats.clone(),
    );
    let state = CacheState::new(CacheParts {
        layout,
        keys: keys.secret,
        priority: c.priority,
        compression: c.compression,
        nars,
        actor,
        stats,
    });

    let addr = listener.local_addr()?;
    print_client_setup(&state, addr, keys.generated.as_deref());
    let app = cache::router().with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Prints the listening address (tests read this line) and the nix.conf lines a client needs.
fn print_client_setup(
    state: &CacheState,
    addr: std::net::SocketAddr,
    generated: Option<&std::path::Path>,
) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "cache listening on http://{addr}");
    for key in state.keys() {
        if let Some(path) = generated {
            let _ = writeln!(
                out,
                "generated signing key {} in {}",
                key.name(),
                path.display()
            );
        }
        let _ = writeln!(out, "public key: {}", key.public().to_nix_string());
    }
    let publics: Vec<String> = state
        .keys()
        .iter()
        .map(|k| k.public().to_nix_string())
        .collect();
    let _ = writeln!(out, "add to a client's nix.conf:");
    let _ = writeln!(out, "  extra-substituters = http://{addr}");
    let _ = writeln!(out, "  extra-trusted-public-keys = {}", publics.join(" "));
    let _ = out.flush();
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
