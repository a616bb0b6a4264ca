//! The error type of tailcache-p2p. Each area adds the variants it needs.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the P2P layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    // --- node (libp2p transport, control and data protocols) ---
    /// Building the swarm or listening failed.
    #[error("p2p transport: {context}: {reason}")]
    Transport { context: String, reason: String },
    /// Could not connect to a peer.
    #[error("dial {peer}: {reason}")]
    Dial {
        peer: libp2p::PeerId,
        reason: String,
    },
    /// A control request failed (no answer, timeout, connection lost, …).
    #[error("control request to {peer}: {reason}")]
    Request {
        peer: libp2p::PeerId,
        reason: String,
    },
    /// A message larger than its protocol's cap; refused before it was allocated.
    #[error("message of {size} bytes exceeds the cap of {max} bytes")]
    MessageTooLarge { size: u64, max: u64 },
    /// Could not open a data stream to a peer.
    #[error("open data stream to {peer}: {reason}")]
    OpenStream {
        peer: libp2p::PeerId,
        reason: String,
    },
    /// A peer answered a data request with a refusal.
    #[error("peer {peer} refused the data request: {reason:?}")]
    Refused {
        peer: libp2p::PeerId,
        reason: crate::node::Refusal,
    },
    /// A peer broke the data protocol (malformed header, wrong length, …).
    #[error("peer {peer} broke the data protocol: {reason}")]
    Protocol {
        peer: libp2p::PeerId,
        reason: String,
    },
    /// A control request got an answer that does not fit it.
    #[error("unexpected control response from {peer}: {response}")]
    UnexpectedResponse {
        peer: libp2p::PeerId,
        response: String,
    },
    /// The node's event loop has stopped.
    #[error("the p2p node has stopped")]
    NodeStopped,
}
