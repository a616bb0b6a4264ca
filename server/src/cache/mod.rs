//! The Nix binary cache (HTTP substituter protocol, as served by harmonia and nix-serve):
//! `nix-cache-info`, signed narinfos, NARs (streamed on the fly or precompressed), build logs
//! and the public key, over a store read through `tailcache-store`.
//!
//! # Layout
//! - [`actor`]: the CacheServer actor — owns keys, the compressed-NAR directory, the
//!   compression queue and counters — and its typed handle.
//! - [`nar_cache`]: the on-disk directories of compressed NARs (primary and archive files)
//!   and their indexes.
//! - [`compress`]: one compression job (NAR dump → xz/zstd file), run on a worker thread.
//! - [`queue`]: the order of compression jobs (a build's closure before narinfo requests).
//! - [`priority`]: the archive worker's idle priority.
//! - [`narinfo`], [`nar`], [`build_log`]: the HTTP resources.
//! - [`p2p`]: the files of each NAR (`/p2p/files`), and the signed P2P manifest and the
//!   BLAKE3 outboard of each compressed file.
//! - [`body`]: streaming a blocking reader into a response body, memory and threads bounded.
//! - [`stats`]: the cache's Prometheus counters.
//! - [`signatures`]: the bounded cache of our narinfo signatures.
//! - [`rendered`]: the bounded cache of rendered, signed narinfos (the hit path).
//! - [`error`]: the one place that maps failures to HTTP statuses.
//!
//! The request path never waits on the actor's mailbox: handlers read an `Arc`ed snapshot
//! ([`CacheState`]) and a pool of read-only DB connections; they only *tell* the actor
//! things (queue this path for compression), never ask it.

pub mod actor;
pub mod body;
pub mod build_log;
pub mod compress;
pub mod error;
pub mod nar;
pub mod nar_cache;
pub mod narinfo;
pub mod p2p;
pub mod priority;
pub mod queue;
pub mod rendered;
pub mod signatures;
pub mod stats;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::routing::get;
use tailcache_store::db::{StoreDb, StoreLayout};
use tailcache_store::signing::SecretKey;

use crate::config::Compression;
use actor::CacheHandle;
use nar_cache::{NarCache, NarDirs};
use stats::CacheStats;

/// What every cache request handler reads. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CacheState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<LazyStore>,
    keys: Vec<SecretKey>,
    signatures: signatures::SignatureCache,
    rendered: rendered::RenderedNarinfos,
    cache_info: String,
    compression: Compression,
    dirs: NarDirs,
    actor: CacheHandle,
    stats: CacheStats,
    reads: body::ReadPool,
}

/// The store database, opened on first use so that a server started before Nix was
/// installed begins serving once the database exists.
#[derive(Debug)]
pub struct LazyStore {
    layout: StoreLayout,
    db: OnceLock<StoreDb>,
}

impl LazyStore {
    pub fn new(layout: StoreLayout) -> Self {
        LazyStore {
            layout,
            db: OnceLock::new(),
        }
    }

    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    /// The database, or `None` while the store has none.
    pub fn db(&self) -> Option<&StoreDb> {
        if let Some(db) = self.db.get() {
            return Some(db);
        }
        if !self.layout.db_path().exists() {
            return None;
        }
        match StoreDb::open(&self.layout) {
            Ok(db) => Some(self.db.get_or_init(|| db)),
            Err(e) => {
                tracing::warn!("cannot open the store database: {e}");
                None
            }
        }
    }
}

/// Everything needed to build a [`CacheState`].
#[derive(Debug)]
pub struct CacheParts {
    pub store: Arc<LazyStore>,
    pub keys: Vec<SecretKey>,
    pub priority: u32,
    pub compression: Compression,
    pub dirs: NarDirs,
    pub actor: CacheHandle,
    pub stats: CacheStats,
    /// Blocking reads of response bodies at once (`cache.read_threads`).
    pub read_threads: usize,
    /// Bytes of big body chunks at once (`cache.read_buffer_bytes`).
    pub read_buffer_bytes: usize,
}

impl CacheState {
    pub fn new(p: CacheParts) -> Self {
        let cache_info = format!(
            "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
            p.store.layout().store_dir,
            p.priority
        );
        CacheState {
            inner: Arc::new(Shared {
                store: p.store,
                keys: p.keys,
                signatures: signatures::SignatureCache::default(),
                rendered: rendered::RenderedNarinfos::default(),
                cache_info,
                compression: p.compression,
                dirs: p.dirs,
                actor: p.actor,
                stats: p.stats,
                reads: body::ReadPool::new(p.read_threads, p.read_buffer_bytes),
            }),
        }
    }

    pub fn store(&self) -> &LazyStore {
        &self.inner.store
    }

    pub fn store_dir(&self) -> &str {
        &self.inner.store.layout.store_dir
    }

    pub fn keys(&self) -> &[SecretKey] {
        &self.inner.keys
    }

    pub fn signatures(&self) -> &signatures::SignatureCache {
        &self.inner.signatures
    }

    pub fn rendered(&self) -> &rendered::RenderedNarinfos {
        &self.inner.rendered
    }

    pub fn stats(&self) -> &CacheStats {
        &self.inner.stats
    }

    /// The primary files' directory: what narinfos advertise.
    pub fn nars(&self) -> &NarCache {
        &self.inner.dirs.primary
    }

    /// Both directories of compressed files (primary and archive).
    pub fn dirs(&self) -> &NarDirs {
        &self.inner.dirs
    }

    pub fn compression(&self) -> Compression {
        self.inner.compression
    }

    /// Where response bodies are read (NARs, compressed files, logs).
    pub fn reads(&self) -> &body::ReadPool {
        &self.inner.reads
    }

    pub fn actor(&self) -> &CacheHandle {
        &self.inner.actor
    }

    /// Where Nix keeps build logs for this store.
    pub fn log_dir(&self) -> PathBuf {
        self.inner.store.layout.log_dir()
    }
}

/// The cache listener's routes.
pub fn router() -> Router<CacheState> {
    Router::new()
        .route("/nix-cache-info", get(get_cache_info))
        .route("/pubkey", get(get_pubkey))
        .route("/nar/{file}", get(nar::get_nar))
        .route("/log/{drv}", get(build_log::get_build_log))
        .route("/p2p/files/{hash}", get(p2p::get_files))
        .route("/p2p/manifest/{file}", get(p2p::get_manifest))
        .route("/p2p/outboard/{file}", get(p2p::get_outboard))
        .route("/{file}", get(narinfo::get_narinfo))
}

async fn get_cache_info(
    axum::extract::State(state): axum::extract::State<CacheState>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/x-nix-cache-info")],
        state.inner.cache_info.clone(),
    )
}

async fn get_pubkey(
    axum::extract::State(state): axum::extract::State<CacheState>,
) -> impl axum::response::IntoResponse {
    let keys: String = state
        .keys()
        .iter()
        .map(|k| k.public().to_nix_string() + "\n")
        .collect();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        keys,
    )
}
