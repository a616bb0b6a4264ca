//! `tailcache agent`: a Nix substituter on 127.0.0.1 in front of the
//! cache server. `GET /nix-cache-info` is the server's with a priority 10 better;
//! `GET|HEAD /<hash>.narinfo` is the server's answer byte for byte (Nix checks the
//! server's signature itself); `GET /nar/<filehash>.nar.xz|.zst` is fetched in verified
//! pieces from peers and the server ([`fetch`]) when a manifest signed by a trusted key
//! exists, and proxied from the server otherwise; `GET /metrics` is Prometheus text.
//!
//! With `reseed` the verified files are kept ([`store`]) and announced to the tracker; a
//! download in progress is announced as partial at once and its verified pieces are served
//! to peers (swarming, see [`fetch`]); `metered` never uploads.

pub mod fetch;
pub mod http_client;
pub mod metrics;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use prometheus_client::registry::Registry;
use tailcache_p2p::libp2p::multiaddr::Protocol;
use tailcache_p2p::libp2p::{Multiaddr, PeerId};
use tailcache_p2p::manifest::SignedManifest;
use tailcache_p2p::node::{self, Client, NodeConfig, RateLimit, UploadPolicy};
use tailcache_p2p::tracker::{FileAnnouncement, FileId};
use tailcache_p2p::verify::Outboard;
use tailcache_store::Sha256Hash;
use tailcache_store::signing::PublicKey;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::AgentConfig;
use fetch::{Download, Progress, Scores};
use http_client::ServerUrl;
use metrics::AgentMetrics;
use store::FileStore;
use store::Partial;

/// How much better (lower) the agent's `Priority` is than the server's.
const PRIORITY_LEAD: u32 = 10;

struct Inner {
    server: ServerUrl,
    node: Client,
    tracker: Option<(PeerId, Vec<Multiaddr>)>,
    trusted: Vec<PublicKey>,
    store: Arc<FileStore>,
    reseed: bool,
    uploads: bool,
    min_p2p_size: u64,
    requests_per_peer: usize,
    server_requests: usize,
    metrics: AgentMetrics,
    registry: Registry,
    scores: Scores,
}

#[derive(Clone)]
pub struct AgentState(Arc<Inner>);

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("peer_id", &self.0.node.peer_id())
            .finish_non_exhaustive()
    }
}

/// `<cache>/tailcache-agent` by XDG rules.
fn default_cache_dir() -> PathBuf {
    let env_dir = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = env_dir("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("tailcache-agent");
    }
    if let Some(h) = env_dir("HOME") {
        return PathBuf::from(h).join(".cache/tailcache-agent");
    }
    PathBuf::from("tailcache-agent-cache")
}

/// Splits `<multiaddr>/p2p/<peer id>` into the peer and its address.
pub fn parse_peer_addr(s: &str) -> anyhow::Result<(PeerId, Multiaddr)> {
    let mut addr: Multiaddr = s
        .parse()
        .with_context(|| format!("invalid multiaddr {s:?}"))?;
    match addr.pop() {
        Some(Protocol::P2p(peer)) => Ok((peer, addr)),
        _ => anyhow::bail!("{s:?} does not end in /p2p/<peer id>"),
    }
}

/// Starts the agent and serves `listener` until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server = ServerUrl::parse(&config.server)?;
    let trusted = config
        .trusted_keys
        .iter()
        .map(|k| PublicKey::parse(k).with_context(|| format!("invalid trusted key {k:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if trusted.is_empty() {
        tracing::warn!("no trusted_keys: every NAR comes from the server, none from peers");
    }
    let cache_dir = config.cache_dir.clone().unwrap_or_else(default_cache_dir);
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cache_dir)
            .with_context(|| format!("cannot create {}", cache_dir.display()))?;
    }
    let store = Arc::new(
        FileStore::open(&cache_dir, config.cache_max_bytes)
            .with_context(|| format!("cannot open the file cache in {}", cache_dir.display()))?,
    );
    let keypair = crate::p2p::load_or_generate_identity(&cache_dir.join("p2p-key"))?;
    let uploads = config.reseed && !config.metered;
    let mut node_config = NodeConfig::new(keypair);
    node_config.upload = if uploads {
        UploadPolicy::Enabled {
            slots: config.upload_slots.max(1),
            rate: (config.upload_rate > 0).then_some(RateLimit {
                bytes_per_sec: config.upload_rate,
                burst: config.upload_rate.max(1 << 20),
            }),
        }
    } else {
        UploadPolicy::Disabled
    };
    let node = node::spawn(node_config, store.clone()).context("cannot start the p2p node")?;
    let p2p_addrs = crate::p2p::listen_all(&node, &config.listen).await?;
    let tracker = config
        .tracker
        .as_deref()
        .map(parse_peer_addr)
        .transpose()?
        .map(|(p, a)| (p, vec![a]));

    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    let state = AgentState(Arc::new(Inner {
        server,
        node: node.clone(),
        tracker,
        trusted,
        store,
        reseed: config.reseed,
        uploads,
        min_p2p_size: config.min_p2p_size,
        requests_per_peer: config.requests_per_peer.max(1),
        server_requests: config.server_requests.max(1),
        metrics,
        registry,
        scores: Arc::new(Mutex::new(HashMap::new())),
    }));
    if let Some((peer, addrs)) = &state.0.tracker {
        match node.dial(*peer, addrs.clone()).await {
            Ok(()) => {
                let _ = node.keep_connected(*peer, true).await;
                state.announce(state.0.store.list(), true).await;
            }
            Err(e) => tracing::warn!("cannot reach the tracker (will retry per fetch): {e}"),
        }
    }

    let addr = listener.local_addr()?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for a in &p2p_addrs {
            let _ = writeln!(out, "agent p2p listening on {a}");
        }
        let _ = writeln!(out, "agent listening on http://{addr}");
        let _ = out.flush();
    }
    let app = axum::Router::new().fallback(handle).with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    let _ = node.shutdown().await;
    Ok(())
}

fn plain(status: StatusCode, msg: &'static str) -> Response {
    (status, msg).into_response()
}

async fn handle(State(state): State<AgentState>, method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
    }
    if path == "/nix-cache-info" {
        return state.cache_info().await;
    }
    if path == "/metrics" {
        return state.metrics_text();
    }
    if path.starts_with('/') && path.ends_with(".narinfo") && !path[1..].contains('/') {
        return state.proxy(&method, path, false).await;
    }
    if let Some(file) = path.strip_prefix("/nar/") {
        if !head && let Some(id) = compressed_file_id(file) {
            return state.get_nar(file, id).await;
        }
        return state.proxy(&method, path, true).await;
    }
    plain(StatusCode::NOT_FOUND, "not found\n")
}

/// The file id (FileHash) of `<nix32 sha256>.nar.xz|.nar.zst`.
fn compressed_file_id(file: &str) -> Option<FileId> {
    let stem = file
        .strip_suffix(".nar.xz")
        .or_else(|| file.strip_suffix(".nar.zst"))?;
    Sha256Hash::from_nix32(stem).ok().map(|h| h.0)
}

fn bad_gateway(e: impl std::fmt::Display) -> Response {
    tracing::warn!("cache server: {e}");
    plain(StatusCode::BAD_GATEWAY, "the cache server is unreachable\n")
}

impl AgentState {
    /// Tells the tracker this agent holds `files` (wholly, or `complete == false`: a
    /// download in progress). Only when it uploads.
    async fn announce(&self, files: Vec<FileId>, complete: bool) {
        let Some((tracker, _)) = &self.0.tracker else {
            return;
        };
        if !self.0.uploads || files.is_empty() {
            return;
        }
        let addrs = self.0.node.listen_addrs().await.unwrap_or_default();
        let files = files
            .into_iter()
            .map(|file| FileAnnouncement { file, complete })
            .collect();
        if let Err(e) = self.0.node.announce(*tracker, files, addrs).await {
            tracing::warn!("announce to the tracker: {e}");
        }
    }

    async fn cache_info(&self) -> Response {
        let resp = match http_client::request(&self.0.server, "GET", "/nix-cache-info", None).await
        {
            Ok(r) => r,
            Err(e) => return bad_gateway(e),
        };
        let status = resp.status;
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return bad_gateway(e),
        };
        if status != 200 {
            return plain(
                StatusCode::BAD_GATEWAY,
                "the cache server has no nix-cache-info\n",
            );
        }
        let out = rewrite_cache_info(&String::from_utf8_lossy(&body));
        ([(header::CONTENT_TYPE, "text/x-nix-cache-info")], out).into_response()
    }

    fn metrics_text(&self) -> Response {
        let m = &self.0.metrics;
        let known = self
            .0
            .scores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        m.peers_known.set(known as i64);
        m.uploaded_bytes
            .set(i64::try_from(self.0.node.stats().uploaded_bytes).unwrap_or(i64::MAX));
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.0.registry) {
            tracing::error!("encoding metrics: {e}");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "metrics\n");
        }
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    }

    /// The server's answer to the same request; `count` adds the body to the server bytes.
    async fn proxy(&self, method: &Method, path: &str, count: bool) -> Response {
        let resp = match http_client::request(&self.0.server, method.as_str(), path, None).await {
            Ok(r) => r,
            Err(e) => return bad_gateway(e),
        };
        let mut builder = Response::builder()
            .status(StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY));
        for name in ["content-type", "content-length"] {
            if let Some(v) = resp.header(name)
                && let Ok(v) = HeaderValue::from_str(v)
            {
                builder = builder.header(name, v);
            }
        }
        let metrics = self.0.metrics.clone();
        let body = resp.into_stream().map(move |chunk| {
            if count && let Ok(c) = &chunk {
                metrics.server_bytes.inc_by(c.len() as u64);
            }
            chunk
        });
        builder
            .body(Body::from_stream(body))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response\n"))
    }

    async fn get_json_bytes(&self, target: &str) -> Option<Vec<u8>> {
        let resp = http_client::request(&self.0.server, "GET", target, None)
            .await
            .ok()?;
        if resp.status != 200 {
            return None;
        }
        resp.bytes().await.ok()
    }

    /// A compressed NAR: from the local cache, in verified pieces, or proxied.
    async fn get_nar(&self, file: &str, id: FileId) -> Response {
        let target = format!("/nar/{file}");
        if self.0.reseed
            && let Some(path) = self.0.store.get(&id)
            && let Ok(f) = tokio::fs::File::open(&path).await
            && let Ok(meta) = f.metadata().await
        {
            let size = meta.len();
            let (_tx, rx) = watch::channel(Progress::Verified(size));
            return nar_response(size, stream_verified(f, size, rx));
        }
        match self.prepare(file, id).await {
            Some(download) => self.start(download, &target, id).await,
            None => self.proxy(&Method::GET, &target, true).await,
        }
    }

    /// Manifest (trusted signer only) and outboard (against the signed root); `None` means:
    /// fetch from the server alone. Peers are found by the download itself.
    async fn prepare(&self, file: &str, id: FileId) -> Option<Download> {
        if self.0.trusted.is_empty() {
            return None;
        }
        let bytes = self
            .get_json_bytes(&format!("/p2p/manifest/{file}"))
            .await?;
        let signed = SignedManifest::from_bytes(&bytes).ok()?;
        let manifest = match signed.verify(&self.0.trusted) {
            Ok(m) if m.file_hash.0 == id => m.clone(),
            Ok(_) => {
                self.0.metrics.manifests_refused.inc();
                tracing::warn!("manifest for {file} names another file; fetching from the server");
                return None;
            }
            Err(e) => {
                self.0.metrics.manifests_refused.inc();
                tracing::warn!("manifest for {file} refused ({e}); fetching from the server");
                return None;
            }
        };
        if manifest.file_size < self.0.min_p2p_size {
            return None;
        }
        let ob = self
            .get_json_bytes(&format!("/p2p/outboard/{file}"))
            .await?;
        let outboard = match Outboard::from_bytes(manifest.file_size, manifest.block_log, ob)
            .verify_against(&manifest.blake3_root)
        {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("outboard for {file} refused: {e}");
                return None;
            }
        };
        Some(Download {
            node: self.0.node.clone(),
            server: self.0.server.clone(),
            target: format!("/nar/{file}"),
            file: id,
            manifest,
            outboard: Arc::new(outboard),
            tracker: self.0.tracker.clone(),
            scores: self.0.scores.clone(),
            metrics: self.0.metrics.clone(),
            requests_per_peer: self.0.requests_per_peer,
            server_requests: self.0.server_requests,
            partial: None,
        })
    }

    async fn start(&self, mut download: Download, target: &str, id: FileId) -> Response {
        let size = download.manifest.file_size;
        let partial = self.0.store.partial_path(&id);
        let opened = (|| -> std::io::Result<(std::fs::File, std::fs::File)> {
            let w = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&partial)?;
            w.set_len(size)?;
            let r = std::fs::File::open(&partial)?;
            Ok((w, r))
        })();
        let (w, r) = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot create {}: {e}; proxying", partial.display());
                return self.proxy(&Method::GET, target, true).await;
            }
        };
        let (tx, rx) = watch::channel(Progress::Verified(0));
        // Peers are served the verified pieces while the download runs.
        let shared = self.0.uploads.then(|| {
            let p = Arc::new(Partial::new(
                partial.clone(),
                u64::from(download.manifest.piece_size),
                size,
            ));
            self.0.store.register(&id, p.clone());
            p
        });
        download.partial = shared.clone();
        let this = self.clone();
        tokio::spawn(async move {
            if shared.is_some() {
                this.announce(vec![id], false).await;
            }
            let ok = download.run(Arc::new(w), &tx).await;
            let mut kept = false;
            if ok && this.0.reseed {
                match this.0.store.insert(&id, &partial) {
                    Ok(evicted) => {
                        kept = true;
                        this.announce(vec![id], true).await;
                        if !evicted.is_empty()
                            && let Some((tracker, _)) = &this.0.tracker
                        {
                            let _ = this.0.node.withdraw(*tracker, evicted).await;
                        }
                    }
                    Err(e) => tracing::warn!("keeping {}: {e}", partial.display()),
                }
            }
            if let Some(p) = &shared {
                this.0.store.unregister(&id, p);
            }
            if !kept {
                // The response holds its own handle; unlinking is safe.
                let _ = std::fs::remove_file(&partial);
                if shared.is_some()
                    && let Some((tracker, _)) = &this.0.tracker
                {
                    let _ = this.0.node.withdraw(*tracker, vec![id]).await;
                }
            }
            // Only now: a client that saw the whole file may rely on it being announced.
            if ok {
                let _ = tx.send(Progress::Verified(size));
            }
        });
        nar_response(
            size,
            stream_verified(tokio::fs::File::from_std(r), size, rx),
        )
    }
}

/// The server's `nix-cache-info` with a priority [`PRIORITY_LEAD`] better (lower), so Nix
/// asks the agent first.
fn rewrite_cache_info(text: &str) -> String {
    let mut out = String::new();
    let mut priority_seen = false;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Priority:") {
            let p: u32 = v.trim().parse().unwrap_or(50);
            out.push_str(&format!("Priority: {}\n", p.saturating_sub(PRIORITY_LEAD)));
            priority_seen = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !priority_seen {
        // Nix's default for a cache that states none is 50.
        out.push_str(&format!("Priority: {}\n", 50 - PRIORITY_LEAD));
    }
    out
}

fn nar_response(
    size: u64,
    body: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::CONTENT_LENGTH, size)
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response\n"))
}

/// The bytes of `file` as the verified prefix (from `progress`) grows, in order.
fn stream_verified(
    file: tokio::fs::File,
    size: u64,
    progress: watch::Receiver<Progress>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    const CHUNK: u64 = 256 * 1024;
    futures::stream::try_unfold(
        (file, 0u64, progress),
        move |(mut file, pos, mut progress)| async move {
            loop {
                if pos >= size {
                    return Ok(None);
                }
                let verified = match &*progress.borrow_and_update() {
                    Progress::Verified(n) => *n,
                    Progress::Failed(e) => return Err(std::io::Error::other(e.clone())),
                };
                if pos < verified {
                    let n = (verified - pos).min(CHUNK) as usize;
                    let mut buf = vec![0u8; n];
                    file.seek(std::io::SeekFrom::Start(pos)).await?;
                    file.read_exact(&mut buf).await?;
                    return Ok(Some((Bytes::from(buf), (file, pos + n as u64, progress))));
                }
                if progress.changed().await.is_err() {
                    // The download ended: the last value is final.
                    if let Progress::Verified(n) = &*progress.borrow()
                        && *n > pos
                    {
                        continue;
                    }
                    return Err(std::io::Error::other("download ended before the file did"));
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_info_priority_is_ahead_of_the_servers() {
        let out = rewrite_cache_info("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n");
        assert_eq!(
            out,
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 20\n"
        );
        assert_eq!(
            rewrite_cache_info("StoreDir: /nix/store\n"),
            "StoreDir: /nix/store\nPriority: 40\n"
        );
        assert_eq!(rewrite_cache_info("Priority: 5\n"), "Priority: 0\n");
    }

    #[test]
    fn tracker_addresses_need_a_peer_id() {
        let peer = PeerId::random();
        let (p, a) = parse_peer_addr(&format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")).unwrap();
        assert_eq!(p, peer);
        assert_eq!(a.to_string(), "/ip4/127.0.0.1/tcp/4001");
        assert!(parse_peer_addr("/ip4/127.0.0.1/tcp/4001").is_err());
        assert!(parse_peer_addr("not a multiaddr").is_err());
    }

    #[test]
    fn only_compressed_file_names_are_fetched_in_pieces() {
        let h = Sha256Hash::digest(b"x");
        let n = h.to_nix32();
        assert_eq!(compressed_file_id(&format!("{n}.nar.xz")), Some(h.0));
        assert_eq!(compressed_file_id(&format!("{n}.nar.zst")), Some(h.0));
        assert_eq!(compressed_file_id(&format!("{n}.nar")), None);
        assert_eq!(compressed_file_id("zzz.nar.xz"), None);
    }
}
