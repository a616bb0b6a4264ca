//! The CacheServer actor: owns the cache's mutable state — the compression queues and which
//! paths are pending, the size bound of the compressed-NAR directories, the counters — and
//! its typed handle. It runs supervised (restarted after a panic) and metered like the build
//! actors. Request handlers *tell* it about paths worth compressing through
//! [`CacheHandle::request_compression`], which never waits: when the queue or the mailbox is
//! full the request is dropped and made again by the next narinfo request for that path.
//! A finished build hands it its new store paths ([`NewPathsSink`]); their whole closure
//! goes into a second queue that the compression workers empty first, so a just-built
//! generation becomes servable before older work is done. The primary lane runs several
//! workers (`compression_jobs`, one per core by default): a closure is many paths, and one
//! encoder thread would leave the other cores idle while the person waits.
//!
//! With an archive compression configured, each NAR whose primary file is made is queued for
//! a second file in the archive lane: its own bounded queue and its own worker thread at idle
//! priority ([`super::priority`]), which is handed a job only while the primary lane has
//! nothing queued or running — a just-built closure's primary files never wait for archive
//! work. An archive request that finds the queue full is dropped; a sweep of the primary
//! index (at start-up, and after drops once the queue has drained) queues what lacks its
//! archive file.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tailcache_actors::NewPathsSink;
use tailcache_actors::fleet::Servable;
use tailcache_actors::metrics::{ActorMetrics, Metered, MeteredAddr, metered};
use tailcache_store::{Sha256Hash, StorePath, StorePathHash};
use tokio::sync::mpsc;

use super::LazyStore;
use super::compress::{self, Job};
use super::nar_cache::{NarCache, NarDirs};
use super::priority;
use super::queue::CompressionQueue;
use super::stats::CacheStats;
use crate::config::Compression;

/// Messages that may wait in the actor's mailbox; beyond this, senders are told it is full.
pub const MAILBOX_CAPACITY: usize = 256;
/// Most store paths one build's closure walk queues.
const MAX_CLOSURE: usize = 100_000;
/// Paths whose archive job failed that sweeps skip; beyond this the list starts over.
const MAX_FAILED: usize = 4096;

/// How NARs are compressed.
#[derive(Debug, Clone, Copy)]
pub struct CompressionSettings {
    pub compression: Compression,
    pub level: u32,
    pub threads: u32,
}

/// Which of a NAR's files a job makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The file narinfos name, made first.
    Primary,
    /// The second, smaller file, made in the background.
    Archive,
}

/// One lane's queue, workers and settings.
#[derive(Debug)]
struct LaneState {
    settings: CompressionSettings,
    /// Where its files go.
    nars: Arc<NarCache>,
    /// To the workers; room for one job per worker, so that each finds its next job waiting
    /// and what it takes next is decided as late as possible.
    jobs: mpsc::Sender<Job>,
    queue: CompressionQueue,
    /// Jobs sent to the workers that have not reported back.
    in_flight: usize,
}

impl LaneState {
    /// Whether the path's NAR has this lane's file.
    fn done(&self, msg: &Compress) -> bool {
        compressed_in(
            &self.nars,
            &msg.path_hash,
            &msg.nar_hash,
            self.settings.compression,
        )
    }

    /// Sends the worker its next job if the channel has room; whether one was sent.
    fn send_next(&mut self) -> bool {
        let Ok(permit) = self.jobs.try_reserve() else {
            if self.jobs.is_closed() {
                tracing::error!("a compression worker has stopped");
            }
            return false;
        };
        let Some(msg) = self.queue.take_next() else {
            return false;
        };
        let s = self.settings;
        permit.send(Job {
            path_hash: msg.path_hash,
            physical_path: msg.physical_path,
            nar_hash: msg.nar_hash,
            nar_size: msg.nar_size,
            compression: s.compression,
            level: s.level,
            threads: s.threads,
        });
        self.in_flight += 1;
        true
    }

    fn finished(&mut self, path: &StorePathHash) {
        self.queue.finished(path);
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// The archive lane and how it catches up with the primary files.
#[derive(Debug)]
struct ArchiveLane {
    lane: LaneState,
    /// Some primary file may lack its archive file without being queued (start-up, a
    /// request dropped on a full queue): sweep the primary index once the queue drains.
    backlog: bool,
    /// A sweep is reading the primary index and the store.
    sweeping: bool,
    /// Paths whose archive job failed: sweeps skip them (a request after a new primary
    /// file still tries).
    failed: HashSet<StorePathHash>,
}

/// The actor.
#[derive(Debug)]
pub struct CacheServer {
    dirs: NarDirs,
    store: Arc<LazyStore>,
    /// Primary files: a build's closure first, then narinfo requests.
    primary: LaneState,
    archive: Option<ArchiveLane>,
    max_bytes: u64,
    stats: CacheStats,
    metrics: ActorMetrics,
}

impl Actor for CacheServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Primary files made before a restart (or before the archive was turned on) may lack
        // their archive file.
        self.dispatch(ctx);
    }
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
        if let Some(a) = &mut self.archive {
            a.backlog = true;
        }
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
    lane: Lane,
    job: Job,
    ok: bool,
}

/// What a sweep of the primary index found lacking its archive file.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct ArchiveBacklog {
    jobs: Vec<Compress>,
    /// It stopped at the queue's capacity: sweep again once these are done.
    more: bool,
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
        let _ = metered(self, ctx, msg, |act, msg, ctx| act.enqueue(msg, ctx));
    }
}

impl Handler<Compressed> for CacheServer {
    type Result = ();

    fn handle(&mut self, msg: Compressed, ctx: &mut Self::Context) {
        let _ = metered(self, ctx, msg, |act, msg, ctx| {
            let Compressed { lane, job, ok } = msg;
            match lane {
                Lane::Primary => {
                    act.primary.finished(&job.path_hash);
                    act.stats.compression_finished(ok);
                    if ok {
                        act.enqueue_archive(request_of(job));
                    }
                }
                Lane::Archive => {
                    if let Some(a) = &mut act.archive {
                        a.lane.finished(&job.path_hash);
                        if ok {
                            a.failed.remove(&job.path_hash);
                        } else {
                            if a.failed.len() >= MAX_FAILED {
                                a.failed.clear();
                            }
                            a.failed.insert(job.path_hash);
                        }
                    }
                    act.stats.archive_finished(ok);
                }
            }
            act.dispatch(ctx);
            act.stats.set_dir_bytes(&act.dirs);
            if ok && act.dirs.total_bytes() > act.max_bytes {
                let (dirs, max, stats) = (act.dirs.clone(), act.max_bytes, act.stats.clone());
                // Unlinking files is blocking I/O; keep it off the actor's thread.
                tokio::task::spawn_blocking(move || {
                    let n = dirs.evict_to(max);
                    stats.set_dir_bytes(&dirs);
                    tracing::info!("evicted {n} compressed NARs to stay under {max} bytes");
                });
            }
        });
    }
}

impl Handler<ArchiveBacklog> for CacheServer {
    type Result = ();

    fn handle(&mut self, msg: ArchiveBacklog, ctx: &mut Self::Context) {
        let _ = metered(self, ctx, msg, |act, msg, ctx| {
            if let Some(a) = &mut act.archive {
                a.sweeping = false;
                a.backlog |= msg.more;
            }
            if !msg.jobs.is_empty() {
                tracing::info!(
                    "{} primary files lack their archive file; queued",
                    msg.jobs.len()
                );
            }
            for job in msg.jobs {
                act.enqueue_archive(job);
            }
            act.dispatch(ctx);
        });
    }
}

impl Handler<NewPaths> for CacheServer {
    type Result = ();

    fn handle(&mut self, msg: NewPaths, ctx: &mut Self::Context) {
        let _ = metered(self, ctx, msg, |act, msg, ctx| {
            if act.primary.settings.compression == Compression::None {
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
        let _ = metered(self, ctx, msg, |act, msg, ctx| {
            act.prioritize(msg.jobs, ctx)
        });
    }
}

/// Every valid path reachable from `roots` through references, as compression requests,
/// largest NAR first: the workers take them in this order, so the closure's biggest paths
/// start at once and the small ones fill the other workers around them, instead of one big
/// path running alone at the end while the other cores idle.
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
    out.sort_by_key(|job| std::cmp::Reverse(job.nar_size));
    out
}

impl CacheServer {
    /// Whether a path needs no primary file: none is configured, or it is already done in
    /// the configured compression (a file in another, from before a configuration change,
    /// is served meanwhile and replaced).
    fn done(&self, msg: &Compress) -> bool {
        self.primary.settings.compression == Compression::None || self.primary.done(msg)
    }

    /// A narinfo request's path: queued behind everything else, dropped when the queue is
    /// full (the next request for it asks again). One whose primary file is made may still
    /// lack its archive file.
    fn enqueue(&mut self, msg: Compress, ctx: &mut Context<Self>) {
        if self.done(&msg) {
            self.enqueue_archive(msg);
        } else if !self.primary.queue.is_pending(&msg.path_hash) {
            let path = msg.path_hash;
            if !self.primary.queue.request(msg) {
                tracing::debug!("compression queue full; {path} will be retried");
                return;
            }
        }
        self.dispatch(ctx);
    }

    /// A build's closure: before everything else, including paths already waiting.
    fn prioritize(&mut self, jobs: Vec<Compress>, ctx: &mut Context<Self>) {
        let (done, todo): (Vec<Compress>, Vec<Compress>) =
            jobs.into_iter().partition(|j| self.done(j));
        let dropped = self.primary.queue.prioritize(todo);
        if dropped > 0 {
            tracing::warn!(
                "{dropped} paths of a build's closure not queued (too many waiting); they are compressed on request"
            );
        }
        for job in done {
            self.enqueue_archive(job);
        }
        self.dispatch(ctx);
    }

    /// A path whose primary file exists: queued for its archive file, if one is configured
    /// and missing. A full queue drops it until the next sweep.
    fn enqueue_archive(&mut self, msg: Compress) {
        let Some(a) = &mut self.archive else {
            return;
        };
        if a.lane.done(&msg) || a.lane.queue.is_pending(&msg.path_hash) {
            return;
        }
        if !a.lane.queue.request(msg) {
            a.backlog = true;
        }
    }

    /// Hands the workers their next jobs: the primary worker while it has room; the archive
    /// worker one job, only while the primary lane has nothing queued or running and the
    /// archive worker is idle. With neither busy, sweeps for missing archive files.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        while self.primary.send_next() {}
        let primary_idle = self.primary.queue.is_empty();
        let mut sweep = false;
        if let Some(a) = &mut self.archive
            && primary_idle
            && a.lane.in_flight == 0
        {
            let sent = a.lane.send_next();
            sweep = !sent && a.lane.queue.is_empty() && a.backlog && !a.sweeping;
            if sweep {
                a.backlog = false;
                a.sweeping = true;
            }
        }
        if sweep {
            self.sweep_archive_backlog(ctx);
        }
        self.stats.set_queue_len(self.primary.queue.len());
        if let Some(a) = &self.archive {
            self.stats.set_archive_queue_len(a.lane.queue.len());
        }
    }

    /// Reads, on a blocking thread, which primary files lack their archive file (up to the
    /// archive queue's capacity) and tells the actor.
    fn sweep_archive_backlog(&self, ctx: &mut Context<Self>) {
        let Some(a) = &self.archive else {
            return;
        };
        let (dirs, store) = (self.dirs.clone(), self.store.clone());
        let (compression, skip) = (a.lane.settings.compression, a.failed.clone());
        let limit = a.lane.queue.capacity();
        let addr = MeteredAddr::new(ctx.address(), self.metrics.clone());
        tokio::task::spawn_blocking(move || {
            let (jobs, more) = archive_backlog(&store, &dirs, compression, &skip, limit);
            // Must not be lost: it ends the sweep.
            addr.force(ArchiveBacklog { jobs, more });
        });
    }
}

/// Primary files without an archive file in `compression`, as requests for one: at most
/// `limit`, and whether there were more. Paths in `skip`, and paths no longer valid with the
/// same NAR, are left out.
fn archive_backlog(
    store: &LazyStore,
    dirs: &NarDirs,
    compression: Compression,
    skip: &HashSet<StorePathHash>,
    limit: usize,
) -> (Vec<Compress>, bool) {
    let Some(db) = store.db() else {
        return (Vec::new(), false);
    };
    let mut out = Vec::new();
    for (path, nar_hash) in dirs.primary.keys() {
        if skip.contains(&path) || compressed_in(&dirs.archive, &path, &nar_hash, compression) {
            continue;
        }
        if out.len() >= limit {
            return (out, true);
        }
        match db.query_path_info(&path) {
            Ok(Some(info)) if info.nar_hash == nar_hash => out.push(Compress {
                path_hash: path,
                physical_path: store.layout().physical_path(&info.path),
                nar_hash,
                nar_size: info.nar_size,
            }),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot look up {path}: {e}"),
        }
    }
    (out, false)
}

/// The request a job was made from.
fn request_of(job: Job) -> Compress {
    Compress {
        path_hash: job.path_hash,
        physical_path: job.physical_path,
        nar_hash: job.nar_hash,
        nar_size: job.nar_size,
    }
}

/// What [`CacheServer::start`] needs.
#[derive(Debug)]
pub struct CacheServerParts {
    pub dirs: NarDirs,
    pub store: Arc<LazyStore>,
    pub settings: CompressionSettings,
    /// Worker threads of the primary lane (at least one).
    pub jobs: usize,
    /// The archive file's compression, level and threads; `None`: no archive files.
    pub archive: Option<CompressionSettings>,
    pub max_bytes: u64,
    /// Paths that may wait in each lane's queue.
    pub queue: usize,
    pub stats: CacheStats,
    pub metrics: ActorMetrics,
}

impl CacheServer {
    /// Starts the actor (supervised) and its compression workers on the current actix system.
    pub fn start(p: CacheServerParts) -> std::io::Result<CacheHandle> {
        let workers = p.jobs.max(1);
        let (primary_tx, primary_rx) = mpsc::channel(workers);
        let lane = |settings, nars: &Arc<NarCache>, jobs| LaneState {
            settings,
            nars: nars.clone(),
            jobs,
            queue: CompressionQueue::new(p.queue),
            in_flight: 0,
        };
        p.stats.set_dir_bytes(&p.dirs);
        let mut archive_rx = None;
        let archive = p.archive.map(|settings| {
            let (tx, rx) = mpsc::channel(1);
            archive_rx = Some(rx);
            ArchiveLane {
                lane: lane(settings, &p.dirs.archive, tx),
                backlog: true,
                sweeping: false,
                failed: HashSet::new(),
            }
        });
        let actor = CacheServer {
            dirs: p.dirs.clone(),
            store: p.store,
            primary: lane(p.settings, &p.dirs.primary, primary_tx),
            archive,
            max_bytes: p.max_bytes,
            stats: p.stats,
            metrics: p.metrics.clone(),
        };
        let addr = MeteredAddr::start(actor);
        let primary_rx = Arc::new(Mutex::new(primary_rx));
        for _ in 0..workers {
            spawn_worker(
                Lane::Primary,
                primary_rx.clone(),
                p.dirs.primary.clone(),
                addr.clone(),
            )?;
        }
        if let Some(rx) = archive_rx {
            let rx = Arc::new(Mutex::new(rx));
            spawn_worker(Lane::Archive, rx, p.dirs.archive.clone(), addr.clone())?;
        }
        Ok(CacheHandle {
            addr,
            nars: p.dirs.primary,
            compression: p.settings.compression,
        })
    }
}

/// Starts one of a lane's workers on a thread of its own, taking the lane's jobs one at a time
/// (the lane runs as many workers as `CacheConfig::jobs` allows: one for an xz job that
/// already uses every core). The archive worker first lowers its thread to idle priority.
fn spawn_worker(
    lane: Lane,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    nars: Arc<NarCache>,
    addr: MeteredAddr<CacheServer>,
) -> std::io::Result<()> {
    let name = match lane {
        Lane::Primary => "compress",
        Lane::Archive => "archive",
    };
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if lane == Lane::Archive {
                priority::lower_current_thread();
            }
            // The lock is held only while waiting for a job: the lane's workers take turns
            // receiving and run their jobs side by side.
            while let Some(job) = next_job(&rx) {
                // A panic in one job must not stop the worker: it counts as a failure.
                let ok =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(&job, &nars)))
                        .unwrap_or(false);
                if !addr.connected() {
                    return;
                }
                // Must not be lost: it clears the path's pending entry.
                addr.force(Compressed { lane, job, ok });
            }
        })
        .map(drop)
}

/// The lane's next job; `None` once the actor is gone.
fn next_job(rx: &Mutex<mpsc::Receiver<Job>>) -> Option<Job> {
    rx.lock().unwrap_or_else(|e| e.into_inner()).blocking_recv()
}

/// Makes a job's file and records it in the index; whether the file is there.
fn run_job(job: &Job, nars: &NarCache) -> bool {
    if compressed_in(nars, &job.path_hash, &job.nar_hash, job.compression) {
        return true;
    }
    let started = std::time::Instant::now();
    let entry = match compress::run(job, nars) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("compression of {} failed: {e}", job.physical_path.display());
            return false;
        }
    };
    tracing::info!(
        "compressed {} ({} → {} bytes {}, {:.1?})",
        job.physical_path.display(),
        job.nar_size,
        entry.file_size,
        job.compression.narinfo_name(),
        started.elapsed()
    );
    match nars.insert(job.path_hash, entry) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot record compressed NAR: {e}");
            false
        }
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
