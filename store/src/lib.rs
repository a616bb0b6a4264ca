//! tailcache-store: what tailcache knows about Nix — its formats and a local store, read-only.
//!
//! Everything here is synchronous and free of any async runtime, so the pure parts are
//! testable without a store and the I/O parts run on blocking threads of whoever calls them.
//!
//! # Layout
//! - [`nixbase32`]: Nix's base-32 alphabet and bit order.
//! - [`nix_string`]: text as a Nix string literal.
//! - [`hash`]: `sha256:<nix32>` hashes and the other spellings Nix accepts.
//! - [`compression`]: a binary-cache file's compression (`Compression:`, file suffixes).
//! - [`store_path`]: validated store paths (`<32-char nix32 hash>-<name>`).
//! - [`nar`]: the NAR format — a streaming encoder over a path and a decoder/verifier.
//! - [`path_info`]: what Nix records about a valid path, and the signature fingerprint.
//! - [`narinfo`]: narinfo rendering and parsing.
//! - [`signing`]: ed25519 keys in Nix's `name:base64` format, signing and verification.
//! - [`lru`]: least-recently-used eviction under a byte budget, for caches of such files.
//! - [`db`]: read-only access to a store's SQLite database (`ValidPaths`, `Refs`, …).
//! - [`error`]: the crate's error type.

pub mod compression;
pub mod db;
pub mod error;
pub mod hash;
pub mod lru;
pub mod nar;
pub mod narinfo;
pub mod nix_string;
pub mod nixbase32;
pub mod path_info;
pub mod signing;
pub mod store_path;

pub use compression::Compression;
pub use error::{Error, IoError, Result};
pub use hash::Sha256Hash;
pub use path_info::PathInfo;
pub use store_path::{StorePath, StorePathHash};
