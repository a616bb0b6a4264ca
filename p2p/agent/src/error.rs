//! The agent's error types: [`Error`] for starting and running the agent, [`FetchError`] for
//! why one download failed (what the response to Nix then reports).

use std::path::PathBuf;

use tailcache_store::IoError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stops the agent from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    ConfigParse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    P2p(#[from] tailcache_p2p::Error),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

impl Error {
    /// Wraps an I/O error with what was being done when it happened.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io(IoError::new(context, source))
    }
}

/// Why a download (or the check of a cached file) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("the server failed {failures} times")]
    ServerFailed { failures: u32 },
    #[error("no source left for the missing pieces")]
    NoSource,
    #[error("cannot write piece {index}: {reason}")]
    Write { index: u64, reason: String },
    #[error("cannot read the file: {reason}")]
    Read { reason: String },
    /// A kept file without a proof, which the server no longer has either.
    #[error("no manifest and outboard to check the cached file against")]
    NoProof,
    /// A kept file's manifest or outboard does not check (a key no longer trusted, or the
    /// proof itself rotted).
    #[error("the cached file's manifest or outboard does not check: {reason}")]
    BadProof { reason: String },
    /// A cached file whose bytes no longer match the signed root.
    #[error("the cached file is corrupt at byte {offset}; evicted")]
    Corrupt { offset: u64 },
    #[error("a fetch task failed: {reason}")]
    Task { reason: String },
    #[error("the download ended before the file did")]
    Ended,
}
