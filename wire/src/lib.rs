//! tailcache-wire: the wire model of the build API — the JSON that the server's build-API
//! listener sends and the CLI (`bt`, `bs`, `bl`, `tailcache switch`) reads, defined once for
//! both sides, apart from the actors' internals.
//!
//! # Layout
//! - [`build`]: `GET /build/status` (also the server's `status.json`) and the replies of
//!   `POST /build/trigger` and `POST /build/cancel`.
//! - [`generation`]: a target's generation record (what was built, from which commit and
//!   lock, the closure and what changed) and its signature by the server's key, in a
//!   signature domain of its own.
//! - [`hosts`]: `GET /hosts` and `GET /hosts/<name>`: each target's state and kept
//!   generations.

pub mod build;
pub mod generation;
pub mod hosts;
