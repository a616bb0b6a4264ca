//! tailcache-testkit: test support shared by the workspace's crates, so that every test
//! drives real Nix the same way.
//!
//! # Layout
//! - [`nix`]: a private Nix configuration per test ([`nix::NixEnv`]), throwaway stores with
//!   every store shape the cache must serve ([`nix::TestStore`]) and their ground truth, keys
//!   made by Nix, and the stock client operations (`nix copy --from`, `nix-store -r`).
//! - [`promtool`]: `promtool check metrics` as the judge of a metrics exposition.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod nix;
pub mod promtool;

pub use nix::{KeyPair, NixEnv, PathInfo, STORE_DIR, Shapes, TestStore};
