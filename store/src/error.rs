//! The error type of tailcache-store: one enum, structured fields, no stringly-typed causes.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid nix32 string {input:?}: {reason}")]
    InvalidNix32 { input: String, reason: &'static str },
    #[error("invalid hash {input:?}: {reason}")]
    InvalidHash { input: String, reason: &'static str },
    #[error("invalid store path {input:?}: {reason}")]
    InvalidStorePath { input: String, reason: &'static str },
    #[error("unknown compression {name:?}")]
    UnknownCompression { name: String },
    #[error("invalid narinfo: {reason}")]
    InvalidNarInfo { reason: String },
    #[error("invalid key: {reason}")]
    InvalidKey { reason: String },
    #[error(
        "secret key file {path} is readable by group or others (mode {mode:o}); \
         run `chmod 600 {path}`"
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },
    #[error("invalid NAR at byte {offset}: {reason}")]
    InvalidNar { offset: u64, reason: String },
    #[error("unsupported file type at {path}")]
    UnsupportedFileType { path: PathBuf },
    #[error("store database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Io(#[from] IoError),
}

impl Error {
    /// Wraps an I/O error with what was being done when it happened.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io(IoError::new(context, source))
    }
}

/// An I/O error and what was being done when it happened (`cannot write /x/y: …`). The
/// `Io` variant of every crate's error type, so each says it the same way.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct IoError {
    pub context: String,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    pub fn new(context: impl Into<String>, source: std::io::Error) -> Self {
        IoError {
            context: context.into(),
            source,
        }
    }
}
