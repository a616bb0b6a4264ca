//! The agent's Prometheus metrics (`GET /metrics` on the agent): bytes from peers and from
//! the server, verification failures, bans, refused manifests, cached files found corrupt,
//! peers known, bytes uploaded; and what the choice of encoding rests on and did: the
//! measured goodput and decoding speeds, the narinfos rewritten, the file lists missing.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tailcache_metrics::{CompressionLabels, Prefixed};
use tailcache_store::Compression;

use crate::choose::Measured;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    route: &'static str,
}

/// The label set of the compression `c`, by its name in narinfos.
fn by_compression(c: Compression) -> CompressionLabels {
    CompressionLabels {
        compression: c.name(),
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// Verified NAR-file bytes received from peers.
    pub peer_bytes: Counter,
    /// NAR-file bytes received from the server (verified pieces and proxied bodies).
    pub server_bytes: Counter,
    pub verification_failures: Counter,
    pub bans: Counter,
    pub manifests_refused: Counter,
    /// Cached files that failed verification when served (and were evicted).
    pub corrupt_files: Counter,
    pub peers_known: Gauge,
    pub uploaded_bytes: Gauge,
    /// Measured goodput of NAR downloads by route: `pieces`, `uncompressed` (0 until measured).
    pub goodput: Family<RouteLabels, FloatGauge>,
    /// Measured decoding speed by compression (0 until measured).
    pub decode_speed: Family<CompressionLabels, FloatGauge>,
    /// Narinfos served naming another file than the server's, by the compression named.
    narinfo_rewrites: Family<CompressionLabels, Counter>,
    /// Narinfos passed on as they are because the server's file list was not to be had.
    pub file_lists_failed: Counter,
    /// Downloads that found their file's proof asked for already, with its narinfo.
    pub proofs_prefetched: Counter,
}

impl AgentMetrics {
    /// Creates the metrics and registers them under `tailcache_agent_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = Prefixed::new(registry, "tailcache_agent");
        let m = AgentMetrics {
            peer_bytes: r.add(
                "peer_bytes",
                "NAR file bytes received from peers (verified)",
                Counter::default(),
            ),
            server_bytes: r.add(
                "server_bytes",
                "NAR file bytes received from the server",
                Counter::default(),
            ),
            verification_failures: r.add(
                "verification_failures",
                "Pieces that failed BLAKE3 verification",
                Counter::default(),
            ),
            bans: r.add("peer_bans", "Peers banned for bad bytes", Counter::default()),
            manifests_refused: r.add(
                "manifests_refused",
                "P2P manifests refused (bad or untrusted signature)",
                Counter::default(),
            ),
            corrupt_files: r.add(
                "corrupt_files",
                "Cached files that failed verification when served, and were evicted",
                Counter::default(),
            ),
            peers_known: r.add("peers_known", "Peers this agent has seen", Gauge::default()),
            uploaded_bytes: r.add("uploaded_bytes", "Bytes uploaded to peers", Gauge::default()),
            goodput: r.add(
                "goodput_bytes_per_second",
                "Measured goodput of NAR file downloads (bytes per second of busy wall time), by route: compressed files in verified pieces, uncompressed NARs proxied",
                Family::default(),
            ),
            decode_speed: r.add(
                "decode_bytes_per_second",
                "Measured decoding speed of this machine, NAR bytes per second, by compression",
                Family::default(),
            ),
            narinfo_rewrites: r.add(
                "narinfo_rewrites",
                "Narinfos served naming another of the NAR's files than the server's, by its compression",
                Family::default(),
            ),
            file_lists_failed: r.add(
                "file_lists_failed",
                "Narinfos passed on unchanged because the server's list of files failed",
                Counter::default(),
            ),
            proofs_prefetched: r.add(
                "proofs_prefetched",
                "Downloads whose manifest and outboard were asked for with the narinfo, ahead of the NAR request",
                Counter::default(),
            ),
        };
        for c in [Compression::None, Compression::Zstd, Compression::Xz] {
            let _ = m.narinfo_rewrites.get_or_create(&by_compression(c));
        }
        for c in [Compression::Zstd, Compression::Xz] {
            let _ = m.decode_speed.get_or_create(&by_compression(c));
        }
        m
    }

    /// Counts a narinfo served naming the file compressed with `c` instead of the server's.
    pub fn narinfo_rewritten(&self, c: Compression) {
        self.narinfo_rewrites
            .get_or_create(&by_compression(c))
            .inc();
    }

    /// Publishes the measurements in the gauges.
    pub fn set_measured(&self, measured: &Measured) {
        for (route, goodput) in [
            ("pieces", measured.goodput),
            ("uncompressed", measured.uncompressed_goodput),
        ] {
            let g = self.goodput.get_or_create(&RouteLabels { route });
            g.set(goodput.unwrap_or(0.0));
        }
        for c in [Compression::Zstd, Compression::Xz] {
            self.decode_speed
                .get_or_create(&by_compression(c))
                .set(measured.decode.of(c).unwrap_or(0.0));
        }
    }
}
