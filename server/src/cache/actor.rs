//! The CacheServer actor: owns the cache's mutable state — the compression queues and which
//! paths are pending, the size bound of the compressed-NAR directory, the counters — and
//! its typed handle. It runs supervised (restarted after a panic) and metered like the build
//! actors. Request handlers *tell* it about paths worth compressing through
//! [`CacheHandle::request_compression`], which never waits: when the queue or the mailbox is
//! full the request is dropped and made again by the next narinfo request for that path.
//! A finished build hands it its new store paths ([`NewPathsSink`]); their whole closure
//! goes into a second queue that the compression worker empties first, so a just-built
//! generation becomes servable before older work is done.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use tailcache_actors::NewPathsSink;
use tailcache_actors::fleet::Servable;
use tailcache_actors::metrics::{ActorMetrics, Metered, MeteredAddr, metered};
use tailcache_store::{Sha256Hash, StorePath, StorePathHash};
use tokio::sync::mpsc;

use super::LazyStore;
use super::compress::{self, Job};
use super::nar_cache::NarCache;
use super::queue::CompressionQueue;
use super::stats::CacheStats;
use crate::config::Compression;

/// Messages that may wait in the actor's mailbox; beyond this, senders are told it is full.
pub const MAILBOX_CAPACITY: usize = 256;
/// Most store paths one build's closure walk queues.
const MAX_CLOSURE: usize = 100_000;

/// How NARs are compressed.
#[derive(Debug, Clone, Copy)]
pub struct CompressionSettings {
    pub compression: Compression,
    pub level: u32,
    pub threads: u32,
}

/// The actor.
#[derive(Debug)]
pub struct CacheServer {
    nars: Arc<NarCache>,
    store: Arc<LazyStore>,
    /// To the worker; room for one job, so what it takes next is decided as late as possible.
    jobs: mpsc::Sender<Job>,
    /// What is compressed next: a build's closure first, then narinfo requests.
    queue: CompressionQueue,
    settings: CompressionSettings,
    max_bytes: u64,
    stats: CacheStats,
    metrics: ActorMetrics,
}

impl Actor for CacheServer {
    type Context = Context<Self>;
}

impl Metered for CacheServer {
    const NAME: &'static str = "CacheServer";
    const MAILBOX_CAPACITY: usize = MAILBOX_CAPACITY;

    fn actor_metrics(&self) -> &ActorMetrics {
        &self.metrics
    }
}

impl Supervised for CacheServer {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.metrics.restarted(Self::NAME);
        // `pending` stays: jobs in flight still report back and clear their entries.
    }
}

/// "This path was asked for and has no compressed NAR yet."
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Compress {
    pub path_hash: StorePathHash,
    pub physical_path: PathBuf,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
}

/// A compression job ended; on success its entry is already in the index.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Compressed {
    path_hash: StorePathHash,
    ok: bool,
}

/// A build produced these store paths (absolute, as `nix build` prints them).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct NewPaths {
    pub paths: Vec<PathBuf>,
}

/// The closure of a build's new paths, walked: compressed before anything else.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Prioritize {
    jobs: Vec<Compress>,
}

impl Handler<Compress> for CacheServer {
    type Result = ();

    fn handle(&mut self, msg: Compress, ctx: &mut Self::Context) {
        let _ = metered(self, ctx, msg, |act, msg, _| act.enqueue(msg));
    }
}

impl Handler<Compressed> for CacheServer {
    type Result = ();

    fn handle(&mut self, msg: Compressed, ctx: &mut Self::Context) {
        let _ = metered(self, ctx, msg, |act, msg, _| {
            act.queue.finished(&msg.path_hash);
            act.dispatch();
            act.stats.set_queue_len(act.queue.len());
            act.stats.compression_finished(msg.ok);
            let total = act.nars.total_bytes();
            act.stats.set_nar_dir_bytes(total);
            if msg.ok && total > act.max_bytes {
                let (nars, max, stats) = (act.nars.clone(), act.max_bytes, act.stats.clone());
                // Unlinking files is blocking I/O; keep it off the actor's thread.
                tokio::task::spawn_blocking(move || {
                    let n = nars.evict_to(max);
                    stats.set_nar_dir_bytes(nars.total_bytes());
                    tracing::info!("evicted {n} compressed NARs to stay under {max} bytes");
                });
            }
        });
    }
}

impl Handler<NewPaths> for CacheServer {
    type Result = ();

    fn handle(&mut self, msg: NewPaths, ctx: &mut Self::Context) {
        let _ = metered(self, ctx, msg, |act, msg, ctx| {
            if act.settings.compression == Compression::None {
                return;
            }
            let store = act.store.clone();
            let addr = MeteredAddr::new(ctx.address(), act.metrics.clone());
            // The closure walk reads the store database: a blocking thread, not the actor's.
            // One message carries the whole closure: it must not be lost to a full mailbox.
            tokio::task::spawn_blocking(move || {
                let jobs = closure(&store, &msg.paths);
                addr.force(Prioritize { jobs });
            });
        });
    }
}

impl Handler<Prioritize> for CacheServer {
    type Result = ();

    fn handle(&mut self, msg: Prioritize, ctx: &mut Self::Context) {
        let _ = metered(self, ctx, msg, |act, msg, _| act.prioritize(msg.jobs));
    }
}

/// Every valid path reachable from `roots` through references, as compression requests.
fn closure(store: &LazyStore, roots: &[PathBuf]) -> Vec<Compress> {
    let Some(db) = store.db() else {
        return Vec::new();
    };
    let layout = store.layout();
    let mut queue: VecDeque<StorePath> = roots
        .iter()
        .filter_map(|p| {
            let s = p.to_str()?;
            StorePath::from_absolute(&layout.store_dir, s)
                .map_err(|e| tracing::warn!("build output {s} is not a store path: {e}"))
                .ok()
        })
        .collect();
    let mut seen: HashSet<StorePathHash> = HashSet::new();
    let mut out = Vec::new();
    while let Some(path) = queue.pop_front() {
        if !seen.insert(path.hash()) || out.len() >= MAX_CLOSURE {
            continue;
        }
        match db.query_path_info(&path.hash()) {
            Ok(Some(info)) => {
                queue.extend(info.references.iter().cloned());
                out.push(Compress {
                    path_hash: info.path.hash(),
                    physical_path: layout.physical_path(&info.path),
                    nar_hash: info.nar_hash,
                    nar_size: info.nar_size,
                });
            }
            Ok(None) => tracing::warn!("build output {path} is not valid in the store"),
            Err(e) => tracing::warn!("cannot look up {path}: {e}"),
        }
    }
    out
}

impl CacheServer {
    /// Whether a path needs no compression: none is configured, or it is already done in
    /// the configured one (a file in another, from before a configuration change, is
    /// served meanwhile and replaced).
    fn done(&self, msg: &Compress) -> bool {
        self.settings.compression == Compression::None
            || compressed_in(
                &self.nars,
                &msg.path_hash,
                &msg.nar_hash,
                self.settings.compression,
            )
    }

    /// A narinfo request's path: queued behind everything else, dropped when the queue is
    /// full (the next request for it asks again).
    fn enqueue(&mut self, msg: Compress) {
        if self.done(&msg) || self.queue.is_pending(&msg.path_hash) {
            return;
        }
        let path = msg.path_hash;
        if !self.queue.request(msg) {
            tracing::debug!("compression queue full; {path} will be retried");
            return;
        }
        self.dispatch();
        self.stats.set_queue_len(self.queue.len());
    }

    /// A build's closure: before everything else, including paths already waiting.
    fn prioritize(&mut self, jobs: Vec<Compress>) {
        let todo: Vec<Compress> = jobs.into_iter().filter(|j| !self.done(j)).collect();
        let dropped = self.queue.prioritize(todo);
        if dropped > 0 {
            tracing::warn!(
                "{dropped} paths of a build's closure not queued (too many waiting); they are compressed on request"
            );
        }
        self.dispatch();
        self.stats.set_queue_len(self.queue.len());
    }

    /// Hands the worker its next job while it has room: the front queue first.
    fn dispatch(&mut self) {
        while let Ok(permit) = self.jobs.try_reserve() {
            let Some(msg) = self.queue.take_next() else {
                return;
            };
            permit.send(Job {
                path_hash: msg.path_hash,
                physical_path: msg.physical_path,
                nar_hash: msg.nar_hash,
                nar_size: msg.nar_size,
                compression: self.settings.compression,
                level: self.settings.level,
                threads: self.settings.threads,
            });
        }
        if self.jobs.is_closed() {
            tracing::error!("the compression worker has stopped");
        }
    }
}

/// What [`CacheServer::start`] needs.
#[derive(Debug)]
pub struct CacheServerParts {
    pub nars: Arc<NarCache>,
    pub store: Arc<LazyStore>,
    pub settings: CompressionSettings,
    pub max_bytes: u64,
    pub queue: usize,
    pub stats: CacheStats,
    pub metrics: ActorMetrics,
}

impl CacheServer {
    /// Starts the actor (supervised) and its compression worker on the current actix system.
    pub fn start(p: CacheServerParts) -> CacheHandle {
        let (tx, rx) = mpsc::channel(1);
        p.stats.set_nar_dir_bytes(p.nars.total_bytes());
        let actor = CacheServer {
            nars: p.nars.clone(),
            store: p.store,
            jobs: tx,
            queue: CompressionQueue::new(p.queue),
            settings: p.settings,
            max_bytes: p.max_bytes,
            stats: p.stats,
            metrics: p.metrics.clone(),
        };
        let addr = MeteredAddr::start(actor);
        tokio::spawn(worker(rx, p.nars.clone(), addr.clone()));
        CacheHandle {
            addr,
            nars: p.nars,
            compression: p.settings.compression,
        }
    }
}

/// Runs jobs one at a time (an xz job already uses every core) on a blocking thread.
async fn worker(mut rx: mpsc::Receiver<Job>, nars: Arc<NarCache>, addr: MeteredAddr<CacheServer>) {
    while let Some(job) = rx.recv().await {
        let path_hash = job.path_hash;
        let nars = nars.clone();
        let ok = tokio::task::spawn_blocking(move || {
            if compressed_in(&nars, &job.path_hash, &job.nar_hash, job.compression) {
                return true;
            }
            let started = std::time::Instant::now();
            let entry = match compress::run(&job, &nars) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("compression of {} failed: {e}", job.physical_path.display());
                    return false;
                }
            };
            tracing::info!(
                "compressed {} ({} → {} bytes, {:.1?})",
                job.physical_path.display(),
                job.nar_size,
                entry.file_size,
                started.elapsed()
            );
            match nars.insert(job.path_hash, entry) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("cannot record compressed NAR: {e}");
                    false
                }
            }
        })
        .await
        .unwrap_or(false);
        if !addr.connected() {
            return;
        }
        // Must not be lost: it clears the path's pending entry.
        addr.force(Compressed { path_hash, ok });
    }
}

/// What request handlers and the build pipeline hold: tells the actor things without
/// waiting for it.
#[derive(Debug, Clone)]
pub struct CacheHandle {
    addr: MeteredAddr<CacheServer>,
    nars: Arc<NarCache>,
    compression: Compression,
}

impl CacheHandle {
    /// Queues a path for compression unless the mailbox is full (then the next request for
    /// the path asks again).
    pub fn request_compression(&self, msg: Compress) {
        if let Err(e) = self.addr.tell(msg) {
            tracing::debug!("compression request dropped: {e}");
        }
    }

    /// Whether the actor accepts messages.
    pub fn is_running(&self) -> bool {
        self.addr.connected()
    }

    /// What a generation's readiness is judged by: servable in the configured compression.
    pub fn servable(&self) -> NarServable {
        NarServable {
            nars: self.nars.clone(),
            compression: self.compression,
        }
    }
}

/// Whether the cache serves a path in its configured compression: always when NARs are
/// served uncompressed, else once the compressed file of the path's current NAR is indexed
/// (a lookup in the in-memory index).
#[derive(Debug, Clone)]
pub struct NarServable {
    nars: Arc<NarCache>,
    compression: Compression,
}

impl Servable for NarServable {
    fn servable(&self, path: &StorePathHash, nar_hash: &Sha256Hash) -> bool {
        self.compression == Compression::None
            || compressed_in(&self.nars, path, nar_hash, self.compression)
    }
}

/// Whether the index holds this NAR compressed in `compression`.
pub fn compressed_in(
    nars: &NarCache,
    path: &StorePathHash,
    nar_hash: &Sha256Hash,
    compression: Compression,
) -> bool {
    nars.get(path, nar_hash)
        .is_some_and(|e| e.compression == compression)
}

impl NewPathsSink for CacheHandle {
    fn new_paths(&self, build_id: u64, paths: Vec<PathBuf>) {
        if let Err(e) = self.addr.tell(NewPaths { paths }) {
            tracing::warn!("build {build_id}: new paths not queued for compression: {e}");
        }
    }
}
