//! The CacheServer actor: owns the cache's mutable state — the compression queue and which
//! paths are pending, the size bound of the compressed-NAR directory, the counters — and
//! its typed handle. Request handlers *tell* it about paths worth compressing through
//! [`CacheHandle::request_compression`], which never waits: when the queue or the mailbox is
//! full the request is dropped and made again by the next narinfo request for that path.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use tailcache_store::{Sha256Hash, StorePathHash};
use tokio::sync::mpsc;

use super::CacheStats;
use super::compress::{self, Job};
use super::nar_cache::NarCache;
use crate::config::Compression;

/// Messages that may wait in the actor's mailbox; beyond this, senders are told it is full.
pub const MAILBOX_CAPACITY: usize = 256;

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
    jobs: mpsc::Sender<Job>,
    pending: HashSet<StorePathHash>,
    settings: CompressionSettings,
    max_bytes: u64,
    stats: Arc<CacheStats>,
}

impl Actor for CacheServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
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

impl Handler<Compress> for CacheServer {
    type Result = ();

    fn handle(&mut self, msg: Compress, _: &mut Self::Context) {
        if self.settings.compression == Compression::None
            || self.pending.contains(&msg.path_hash)
            || self.nars.contains(&msg.path_hash, &msg.nar_hash)
        {
            return;
        }
        let job = Job {
            path_hash: msg.path_hash,
            physical_path: msg.physical_path,
            nar_hash: msg.nar_hash,
            nar_size: msg.nar_size,
            compression: self.settings.compression,
            level: self.settings.level,
            threads: self.settings.threads,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.pending.insert(msg.path_hash);
                self.publish_queue_len();
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("compression queue full; {} will be retried", msg.path_hash);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("the compression worker has stopped");
            }
        }
    }
}

impl Handler<Compressed> for CacheServer {
    type Result = ();

    fn handle(&mut self, msg: Compressed, _: &mut Self::Context) {
        self.pending.remove(&msg.path_hash);
        self.publish_queue_len();
        let counter = if msg.ok {
            &self.stats.compressions_done
        } else {
            &self.stats.compressions_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if msg.ok && self.nars.total_bytes() > self.max_bytes {
            let (nars, max) = (self.nars.clone(), self.max_bytes);
            // Unlinking files is blocking I/O; keep it off the actor's thread.
            tokio::task::spawn_blocking(move || {
                let n = nars.evict_to(max);
                tracing::info!("evicted {n} compressed NARs to stay under {max} bytes");
            });
        }
    }
}

impl CacheServer {
    fn publish_queue_len(&self) {
        self.stats
            .compression_queue_len
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    /// Starts the actor and its compression worker on the current actix system.
    pub fn start(
        nars: Arc<NarCache>,
        settings: CompressionSettings,
        max_bytes: u64,
        queue: usize,
        stats: Arc<CacheStats>,
    ) -> CacheHandle {
        let (tx, rx) = mpsc::channel(queue);
        let actor = CacheServer {
            nars: nars.clone(),
            jobs: tx,
            pending: HashSet::new(),
            settings,
            max_bytes,
            stats,
        };
        let addr = actor.start();
        tokio::spawn(worker(rx, nars, addr.clone()));
        CacheHandle { addr }
    }
}

/// Runs jobs one at a time (an xz job already uses every core) on a blocking thread.
async fn worker(mut rx: mpsc::Receiver<Job>, nars: Arc<NarCache>, addr: Addr<CacheServer>) {
    while let Some(job) = rx.recv().await {
        let path_hash = job.path_hash;
        let nars = nars.clone();
        let ok = tokio::task::spawn_blocking(move || {
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
        if addr.send(Compressed { path_hash, ok }).await.is_err() {
            return;
        }
    }
}

/// What request handlers hold: tells the actor things without waiting for it.
#[derive(Debug, Clone)]
pub struct CacheHandle {
    addr: Addr<CacheServer>,
}

impl CacheHandle {
    /// Queues a path for compression unless the mailbox is full (then the next request for
    /// the path asks again).
    pub fn request_compression(&self, msg: Compress) {
        if let Err(SendError::Full(m)) = self.addr.try_send(msg) {
            tracing::debug!("CacheServer mailbox full; {} not queued", m.path_hash);
        }
    }
}
