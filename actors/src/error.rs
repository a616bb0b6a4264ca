//! The crate's error type: what can go wrong between the build API's handle and the actors,
//! and in the actors' own file I/O.

use std::path::PathBuf;

use tailcache_store::IoError;

/// Everything the actors report as failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation on the state directory failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// `status.json` exists but is not a status this version understands.
    #[error("cannot parse {path}: {source}")]
    StatusFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A message could not be delivered or its answer never came (the actor stopped).
    #[error("the {actor} actor is not running")]
    ActorGone { actor: &'static str },
    /// The actor's mailbox is full; the caller may retry later.
    #[error("the {actor} actor is overloaded (mailbox full)")]
    MailboxFull { actor: &'static str },
    /// The handler panicked; the actor has been restarted and the message is lost.
    #[error("the {actor} actor failed while handling {message} and was restarted")]
    Panicked {
        actor: &'static str,
        message: &'static str,
    },
    /// Registering the metrics or encoding them failed.
    #[error("cannot encode metrics")]
    Metrics(#[from] std::fmt::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io(IoError::new(context, source))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
