//! Shared machinery of the integration tests: throwaway Nix stores built by real
//! Nix (`nix`), the real `tailcache serve` binary under test (`cache`), a tiny
//! HTTP/1.1 client (`http`), Nix-compatible narinfo parsing (`narinfo`), a NAR's files and
//! their verified P2P manifests (`p2p_files`), processes seen
//! through `/proc` (`proc`), and for the build API an SSE client (`sse`) and scenario
//! helpers (`api`); a flake of three hosts and a server that builds it (`fleet`); the Nix
//! modules under the real module system (`modules`).
//! Each test file uses part of it, hence the `dead_code` allowance.
#![allow(dead_code, unused_imports)]

pub mod agent;
pub mod api;
pub mod cache;
pub mod fleet;
pub mod http;
pub mod modules;
pub mod narinfo;
pub mod p2p_files;
pub mod peer;
pub mod proc;
pub mod sse;

pub use tailcache_testkit::nix;

pub use cache::{TestCache, decompress};
pub use narinfo::NarInfo;
pub use nix::{KeyPair, NixEnv, PathInfo, Shapes, TestStore};
