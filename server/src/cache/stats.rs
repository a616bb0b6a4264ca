//! The cache's counters as Prometheus metrics, updated lock-free by request handlers and the
//! CacheServer actor, exposed at `GET /metrics` and summarised on the status page.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tailcache_metrics::{CompressionLabels, Prefixed, ResultLabels};

use super::nar_cache::NarDirs;
use crate::config::Compression;

/// Counters of the cache. Cheap to clone (the metrics are shared).
#[derive(Debug, Clone)]
pub struct CacheStats {
    narinfo: Family<ResultLabels, Counter>,
    nar_bytes: Family<CompressionLabels, Counter>,
    compressions: Family<ResultLabels, Counter>,
    queue_len: Gauge,
    nar_dir_bytes: Gauge,
    archive_jobs: Family<ResultLabels, Counter>,
    archive_queue_len: Gauge,
    archive_dir_bytes: Gauge,
}

impl CacheStats {
    /// Creates the metrics and registers them under `tailcache_cache_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = Prefixed::new(registry, "tailcache_cache");
        let s = CacheStats {
            narinfo: r.add(
                "narinfo_requests",
                "narinfo requests by result (hit: a valid path)",
                Family::default(),
            ),
            nar_bytes: r.add(
                "nar_bytes",
                "NAR bytes sent, by compression",
                Family::default(),
            ),
            compressions: r.add(
                "compressions",
                "background NAR compressions by result",
                Family::default(),
            ),
            queue_len: r.add(
                "compression_queue_length",
                "paths waiting for compression",
                Gauge::default(),
            ),
            nar_dir_bytes: r.add(
                "nar_dir_bytes",
                "bytes of compressed NARs on disk",
                Gauge::default(),
            ),
            archive_jobs: r.add(
                "archive_jobs",
                "background archive files (the second, smaller file per NAR) made, by result",
                Family::default(),
            ),
            archive_queue_len: r.add(
                "archive_queue_length",
                "paths waiting for their archive file or having it made",
                Gauge::default(),
            ),
            archive_dir_bytes: r.add(
                "archive_dir_bytes",
                "bytes of archive files on disk",
                Gauge::default(),
            ),
        };
        for result in ["hit", "miss"] {
            let _ = s.narinfo.get_or_create(&ResultLabels { result });
        }
        for c in [Compression::None, Compression::Xz, Compression::Zstd] {
            let _ = s.nar_bytes.get_or_create(&CompressionLabels {
                compression: c.narinfo_name(),
            });
        }
        for result in ["ok", "failed"] {
            let _ = s.compressions.get_or_create(&ResultLabels { result });
            let _ = s.archive_jobs.get_or_create(&ResultLabels { result });
        }
        s
    }

    pub fn narinfo(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.narinfo.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn add_nar_bytes(&self, compression: Compression, n: u64) {
        let labels = CompressionLabels {
            compression: compression.narinfo_name(),
        };
        self.nar_bytes.get_or_create(&labels).inc_by(n);
    }

    pub fn compression_finished(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.compressions
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn archive_finished(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.archive_jobs
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn set_queue_len(&self, n: usize) {
        set(&self.queue_len, n as u64);
    }

    pub fn set_archive_queue_len(&self, n: usize) {
        set(&self.archive_queue_len, n as u64);
    }

    /// The bytes in both directories of compressed files.
    pub fn set_dir_bytes(&self, dirs: &NarDirs) {
        set(&self.nar_dir_bytes, dirs.primary.total_bytes());
        set(&self.archive_dir_bytes, dirs.archive.total_bytes());
    }

    /// A snapshot for the status page and `/health`.
    pub fn snapshot(&self) -> StatsSnapshot {
        let narinfo = |result| self.narinfo.get_or_create(&ResultLabels { result }).get();
        let bytes = |c: Compression| {
            self.nar_bytes
                .get_or_create(&CompressionLabels {
                    compression: c.narinfo_name(),
                })
                .get()
        };
        StatsSnapshot {
            narinfo_hits: narinfo("hit"),
            narinfo_misses: narinfo("miss"),
            nar_bytes_none: bytes(Compression::None),
            nar_bytes_xz: bytes(Compression::Xz),
            nar_bytes_zstd: bytes(Compression::Zstd),
            compression_queue_length: u64::try_from(self.queue_len.get()).unwrap_or(0),
            nar_dir_bytes: u64::try_from(self.nar_dir_bytes.get()).unwrap_or(0),
        }
    }
}

fn set(gauge: &Gauge, n: u64) {
    gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StatsSnapshot {
    pub narinfo_hits: u64,
    pub narinfo_misses: u64,
    pub nar_bytes_none: u64,
    pub nar_bytes_xz: u64,
    pub nar_bytes_zstd: u64,
    pub compression_queue_length: u64,
    pub nar_dir_bytes: u64,
}
