//! The agent's Prometheus metrics (`GET /metrics` on the agent): bytes from peers and from
//! the server, verification failures, bans, refused manifests, cached files found corrupt,
//! peers known, bytes uploaded.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Default)]
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
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = AgentMetrics::default();
        let r = registry.sub_registry_with_prefix("tailcache_agent");
        r.register(
            "peer_bytes",
            "NAR file bytes received from peers (verified)",
            m.peer_bytes.clone(),
        );
        r.register(
            "server_bytes",
            "NAR file bytes received from the server",
            m.server_bytes.clone(),
        );
        r.register(
            "verification_failures",
            "Pieces that failed BLAKE3 verification",
            m.verification_failures.clone(),
        );
        r.register("peer_bans", "Peers banned for bad bytes", m.bans.clone());
        r.register(
            "manifests_refused",
            "P2P manifests refused (bad or untrusted signature)",
            m.manifests_refused.clone(),
        );
        r.register(
            "corrupt_files",
            "Cached files that failed verification when served, and were evicted",
            m.corrupt_files.clone(),
        );
        r.register(
            "peers_known",
            "Peers this agent has seen",
            m.peers_known.clone(),
        );
        r.register(
            "uploaded_bytes",
            "Bytes uploaded to peers",
            m.uploaded_bytes.clone(),
        );
        m
    }
}
