//! The error type of tailcache-p2p. Each area adds the variants it needs.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the P2P layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] tailcache_store::IoError),

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
    /// A data stream failed before the peer answered: dropped unread (a node under load
    /// may drop an inbound stream it had no time to take), reset, or its connection went
    /// away. A transport failure, never evidence that the peer lies.
    #[error("data stream to {peer} failed before an answer: {reason}")]
    StreamFailed {
        peer: libp2p::PeerId,
        reason: String,
    },
    /// A peer broke the data protocol (malformed header, wrong length offered, …): no
    /// honest node does that.
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
    // --- identity ---
    /// Reading a secret file (the libp2p key file): unreadable, or readable by others.
    #[error(transparent)]
    Store(#[from] tailcache_store::Error),
    /// A libp2p key file that does not hold a key.
    #[error("invalid libp2p key file {path}: {reason}")]
    InvalidKeyFile {
        path: std::path::PathBuf,
        reason: String,
    },

    // --- manifests ---
    /// Bytes that do not decode as the named wire message.
    #[error("malformed {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    /// The manifest names a key that is not among the trusted ones.
    #[error("P2P manifest signed by untrusted key {key_name:?}")]
    UntrustedSigner { key_name: String },
    /// A trusted key name, but the signature is not that key's signature of this manifest.
    #[error("P2P manifest signature by {key_name:?} does not verify")]
    BadSignature { key_name: String },
    /// A correctly signed manifest whose parameters this implementation cannot use.
    #[error("invalid P2P manifest: {reason}")]
    InvalidManifest { reason: String },

    // --- outboards and verification ---
    /// An outboard of the wrong length for the file it claims to describe.
    #[error("outboard has {got} bytes, expected {expected} for this file")]
    OutboardSize { expected: u64, got: u64 },
    /// The hash tree does not hash to the signed root: the outboard is forged or belongs
    /// to another file.
    #[error("outboard does not match the signed BLAKE3 root")]
    OutboardMismatch,
    /// A range the caller asked to verify is not one verification can be asked about
    /// (not aligned to verification groups, or past the end of the file).
    #[error("range at {offset} of {len} bytes cannot be verified: {reason}")]
    InvalidRange {
        offset: u64,
        len: u64,
        reason: &'static str,
    },
    /// Received bytes that do not match the hash tree; `failed` are the indices of the
    /// verification groups to fetch again, from another source.
    #[error("{} verification group(s) failed, first {}", failed.len(), failed.first().copied().unwrap_or_default())]
    GroupsFailed { failed: Vec<u64> },
    /// A stream carried more bytes than the file has.
    #[error("stream is longer than the file ({file_size} bytes)")]
    StreamTooLong { file_size: u64 },
    /// A stream ended before the whole file was verified.
    #[error("stream ended after {verified} of {file_size} bytes")]
    StreamIncomplete { verified: u64, file_size: u64 },
}
