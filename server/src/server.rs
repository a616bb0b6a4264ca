//! The composition root of `tailcache serve`: state directory, keys, the metrics registry,
//! the CacheServer and build actors in one actix system, the cache and build-API listeners,
//! and graceful shutdown (a running build is recorded `interrupted`, status and log are
//! flushed, then the listeners stop). Tests call [`run`] with listeners bound to
//! `127.0.0.1:0` and their own shutdown future.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tailcache_actors::fleet::{FleetSettings, TargetSpec, Targets};
use tailcache_actors::{
    ActorsConfig, BranchHead, BuildHandle, Capture, DefaultPipeline, LogLimits, Metrics, Step,
    start_actors,
};
use tailcache_listener::{self as listener, HttpStats, Limits};
use tailcache_store::db::StoreLayout;
use tokio::net::TcpListener;

use crate::api::tailnet::{Allow, LocalApi};
use crate::api::{self, ApiParts, ApiState, ApiStats};
use crate::cache::actor::{CacheHandle, CacheServer, CacheServerParts, CompressionSettings};
use crate::cache::nar_cache::NarDirs;
use crate::cache::stats::CacheStats;
use crate::cache::{self, CacheParts, CacheState, LazyStore};
use crate::config::{BuildConfig, CacheConfig, CaptureConfig, Compression, Config, HostsConfig};
use crate::keys;

/// How long open connections (log followers, downloads) may delay the exit after a shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The two listeners `serve` runs.
#[derive(Debug)]
pub struct Listeners {
    pub cache: TcpListener,
    pub api: TcpListener,
}

/// Prepares everything `serve` needs, prints what a client needs to know, and serves both
/// listeners until `shutdown` completes. Must run inside an actix system.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let nofile = listener::raise_nofile_limit();
    let state_dir = config.state_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let keys = keys::load_or_generate(&config.cache.secret_key_files, &state_dir)?;
    let read_secret =
        |file: &Option<std::path::PathBuf>| file.as_deref().map(keys::read_secret_file).transpose();
    let token = read_secret(&config.api.token_file)?;
    let webhook_secret = read_secret(&config.api.webhook_secret_file)?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let cache = start_cache(&config.cache, &state_dir, &keys, &metrics, &mut registry)?;
    let http_stats = HttpStats::register(&mut registry);
    let api_stats = ApiStats::register(&mut registry);
    // A cache connection may hold a socket and a file (a NAR being streamed).
    let c = &config.cache;
    let cache_limits = Limits::new("cache", &c.connections, nofile, 2.0 / 3.0, 2);
    let api_limits = Limits::new("api", &config.api.connections, nofile, 1.0 / 3.0, 1);
    let (build, build_configured) = start_build(&config, &state_dir, &cache, &keys, metrics)?;
    // Kept alive for the server's life: dropping the last client stops the node.
    let _p2p_node = start_p2p(&config, &state_dir, &cache.dirs).await?;
    let cache_state = cache.state;

    let cache_addr = listeners.cache.local_addr()?;
    let api_addr = listeners.api.local_addr()?;
    print_client_setup(
        &cache_state,
        cache_addr,
        api_addr,
        keys.generated.as_deref(),
    );
    let local_api = LocalApi::new(config.api.tailscale_socket.clone());
    // Says once, in the log, whether callers will be named by the tailnet.
    if local_api.reachable().await {
        tracing::info!(
            "callers of trigger and cancel are identified by tailscaled's whois ({})",
            config.api.tailscale_socket.display()
        );
    }
    let api_state = ApiState::new(ApiParts {
        build: build.clone(),
        cache: cache_state.clone(),
        registry,
        token,
        webhook_secret: webhook_secret.map(String::into_bytes),
        build_configured,
        branch: config.build.branch.clone(),
        cache_url: format!("http://{cache_addr}"),
        local_api,
        allow: Allow::new(config.api.allow.clone()),
        stats: api_stats,
    });
    let apps = Apps {
        cache: (cache::router().with_state(cache_state), cache_limits),
        api: (api::router().with_state(api_state), api_limits),
        stats: http_stats,
    };
    serve_until(listeners, apps, &build, shutdown).await;
    Ok(())
}

/// What the cache side of `serve` is made of.
struct Cache {
    layout: StoreLayout,
    dirs: NarDirs,
    actor: CacheHandle,
    state: CacheState,
}

/// The store, the compressed-NAR directories, the CacheServer actor and the cache listener's
/// state.
fn start_cache(
    c: &CacheConfig,
    state_dir: &Path,
    keys: &keys::Keys,
    metrics: &Metrics,
    registry: &mut Registry,
) -> anyhow::Result<Cache> {
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
    let store = Arc::new(LazyStore::new(layout.clone()));
    let nar_dir = state_dir.join("nar");
    let dirs = NarDirs::open(&nar_dir)
        .with_context(|| format!("cannot open NAR directory {}", nar_dir.display()))?;
    let stats = CacheStats::register(registry);
    let archive = (c.archive_compression != Compression::None).then(|| CompressionSettings {
        compression: c.archive_compression,
        level: c.archive_level(),
        // One encoder thread, at idle priority: the archive must never compete with serving.
        threads: 1,
    });
    let cache_actor = CacheServer::start(CacheServerParts {
        dirs: dirs.clone(),
        store: store.clone(),
        settings: CompressionSettings {
            compression: c.compression,
            level: c.level(),
            threads: c.compression_threads,
        },
        jobs: c.jobs(),
        archive,
        max_bytes: c.nar_cache_max_bytes,
        queue: c.compression_queue,
        stats: stats.clone(),
        metrics: metrics.actors.clone(),
    })
    .context("cannot start the compression workers")?;
    let cache_state = CacheState::new(CacheParts {
        store,
        keys: keys.secret.clone(),
        priority: c.priority,
        compression: c.compression,
        dirs: dirs.clone(),
        actor: cache_actor.clone(),
        stats,
        read_threads: c.read_threads,
        read_buffer_bytes: c.read_buffer_bytes,
    });
    Ok(Cache {
        layout,
        dirs,
        actor: cache_actor,
        state: cache_state,
    })
}

/// The build actors; also whether a build is configured at all.
fn start_build(
    config: &Config,
    state_dir: &Path,
    cache: &Cache,
    keys: &keys::Keys,
    metrics: Metrics,
) -> anyhow::Result<(BuildHandle, bool)> {
    let (layout, cache_actor) = (&cache.layout, &cache.actor);
    let pipeline = build_pipeline(&config.build, state_dir, layout);
    let build_configured = pipeline.configured;
    if !build_configured {
        tracing::warn!(
            "no build configured (build.repository or build.steps): triggers are refused"
        );
    }
    let b = &config.build;
    let mut actors_config = ActorsConfig::new(state_dir, pipeline.steps);
    actors_config.fleet = pipeline.fleet;
    actors_config.configured_targets = pipeline.configured_targets;
    actors_config.branch_head = pipeline.branch_head;
    actors_config.supersede = b.supersede;
    actors_config.keep_generations = b.keep_generations;
    actors_config.keys = keys.secret.clone();
    actors_config.servable = Arc::new(cache_actor.servable());
    actors_config.store_dir = layout.store_dir.clone();
    actors_config.observer = crate::notify::start(&config.notify)?;
    actors_config.coalesce = b.coalesce;
    actors_config.kill_grace = Duration::from_secs(b.kill_grace_secs);
    actors_config.log = LogLimits {
        ring_lines: b.log_lines,
        files_kept: b.log_files_kept,
        ..LogLimits::default()
    };
    let build = start_actors(actors_config, metrics, Arc::new(cache_actor.clone()))
        .context("cannot start the build actors")?;
    Ok((build, build_configured))
}

/// The tracker/seed node when `[p2p]` enables it; prints its addresses on stdout.
async fn start_p2p(
    config: &Config,
    state_dir: &Path,
    dirs: &NarDirs,
) -> anyhow::Result<Option<tailcache_p2p::node::Client>> {
    if !config.p2p.enable {
        return Ok(None);
    }
    let (node, addrs) = crate::p2p::start_server_node(&config.p2p, state_dir, dirs.clone()).await?;
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for a in &addrs {
        let _ = writeln!(out, "p2p listening on {a}");
    }
    let _ = out.flush();
    Ok(Some(node))
}

/// Each listener's routes and limits, and the counters they share.
struct Apps {
    cache: (axum::Router, Limits),
    api: (axum::Router, Limits),
    stats: HttpStats,
}

/// Serves both listeners until `shutdown`; then stops the build, and lets open connections
/// drain for at most [`DRAIN_TIMEOUT`].
async fn serve_until(
    listeners: Listeners,
    apps: Apps,
    build: &BuildHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (cache_app, cache_limits) = apps.cache;
    let (api_app, api_limits) = apps.api;
    let cache_server = listener::serve(
        "cache",
        listeners.cache,
        cache_app,
        cache_limits,
        apps.stats.clone(),
        stopped(),
    );
    let api_server = listener::serve(
        "api",
        listeners.api,
        api_app,
        api_limits,
        apps.stats,
        stopped(),
    );
    let servers = async { tokio::join!(cache_server, api_server) };
    tokio::pin!(servers);

    tokio::select! {
        _ = &mut servers => return,
        () = shutdown => {}
    }
    stop_build(build).await;
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, servers).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; exiting");
    }
}

/// Cancels a running build (recorded `interrupted`) and flushes status and log.
async fn stop_build(build: &BuildHandle) {
    if let Err(e) = build.shutdown().await {
        tracing::error!("stopping the build actors: {e}");
    }
}

/// What the build actors run.
struct Pipeline {
    steps: Vec<Step>,
    fleet: Option<FleetSettings>,
    configured_targets: Vec<TargetSpec>,
    branch_head: Option<BranchHead>,
    /// Whether builds are configured at all.
    configured: bool,
}

/// The configured steps, or the default pipeline and its targets.
fn build_pipeline(b: &BuildConfig, state_dir: &Path, store: &StoreLayout) -> Pipeline {
    let timeout = Duration::from_secs(b.step_timeout_secs);
    if !b.steps.is_empty() {
        let steps = b
            .steps
            .iter()
            .map(|s| {
                let mut step = Step::new(&s.name, &s.program, &[]);
                step.args = s.args.clone();
                step.env = s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                step.cwd = s.cwd.clone();
                step.timeout = Some(s.timeout_secs.map_or(timeout, Duration::from_secs));
                step.capture = match (s.capture, &s.cwd) {
                    (CaptureConfig::Commit, Some(dir)) => Capture::Commit(dir.clone()),
                    (CaptureConfig::OutPaths, _) => Capture::OutPaths,
                    // `validate` refuses capture = "commit" without a cwd.
                    (CaptureConfig::Commit, None) | (CaptureConfig::Nothing, _) => Capture::Nothing,
                };
                step
            })
            .collect();
        return Pipeline {
            steps,
            fleet: None,
            configured_targets: Vec::new(),
            branch_head: None,
            configured: true,
        };
    }
    let Some(repository) = &b.repository else {
        return Pipeline {
            steps: Vec::new(),
            fleet: None,
            configured_targets: Vec::new(),
            branch_head: None,
            configured: false,
        };
    };
    let checkout = b
        .checkout_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("checkout"));
    let mut pipeline =
        DefaultPipeline::new(repository, &b.branch, checkout, &b.attribute, state_dir);
    pipeline.targets = match (b.hosts, b.targets.is_empty()) {
        (Some(HostsConfig::Auto), _) => Targets::Auto,
        (None, false) => Targets::List(
            b.targets
                .iter()
                .map(|t| TargetSpec {
                    name: t.name.clone(),
                    attribute: t.attribute.clone(),
                    kind: t.kind,
                })
                .collect(),
        ),
        (None, true) => pipeline.targets,
    };
    pipeline.store = store.clone();
    pipeline.builders = b.builders.clone();
    pipeline.build_timeout = timeout;
    pipeline.fetch_timeout = pipeline.fetch_timeout.min(timeout);
    pipeline.nix_args = b.nix_args.clone();
    Pipeline {
        steps: pipeline.steps(),
        configured_targets: pipeline.targets.listed().to_vec(),
        fleet: Some(pipeline.fleet()),
        branch_head: Some(pipeline.branch_head()),
        configured: true,
    }
}

/// Prints the nix.conf lines a client needs and then the listening addresses (tests wait
/// for these lines).
fn print_client_setup(
    state: &CacheState,
    cache: SocketAddr,
    api: SocketAddr,
    generated: Option<&Path>,
) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
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
    let _ = writeln!(out, "  extra-substituters = http://{cache}");
    let _ = writeln!(out, "  extra-trusted-public-keys = {}", publics.join(" "));
    // Last, so that whoever waits for these lines has everything above as well.
    let _ = writeln!(out, "cache listening on http://{cache}");
    let _ = writeln!(out, "api listening on http://{api}");
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
