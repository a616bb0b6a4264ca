//! tailcache-p2p: peer-assisted NAR fetches. The server signs a P2P manifest per NAR file
//! (its BLAKE3 root, in a signature domain of its own); peers move verified chunks of the
//! file over libp2p; a tracker on the server says who holds what.
//!
//! # Layout
//! - [`file`]: how a file and a set of its pieces are named ([`file::FileId`],
//!   [`file::PieceSet`]).
//! - [`files`]: which encodings of a NAR a server holds (`GET /p2p/files/…`).
//! - [`identity`]: a node's libp2p keypair on disk.
//! - [`manifest`]: the signed P2P manifest and its signature domain.
//! - [`verify`]: BLAKE3 outboards (hash trees) and verification of received chunks.
//! - [`node`]: the libp2p node — transports, behaviours, `Client` → `Command` → event loop.
//! - [`tracker`]: the control protocol (announce, who-has; between peers, piece maps of
//!   partial files) and the tracker's server-side state.
//! - [`error`]: the crate's error type.

pub mod error;
pub mod file;
pub mod files;
pub mod identity;
pub mod manifest;
pub mod node;
pub mod tracker;
pub mod verify;

pub use error::{Error, Result};
pub use file::{FileId, PieceSet};
/// The libp2p version this crate is built on, for callers that name its types.
pub use libp2p;
