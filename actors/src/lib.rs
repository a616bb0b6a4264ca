//! tailcache-actors: the build server's actix actors — BuildSupervisor runs the build
//! pipeline as child processes, StatusStore owns and persists the build status, LogTail
//! owns the build log and its live followers, GenerationStore owns every target's signed
//! generations and their GC roots — their typed messages, their metrics, and the
//! [`BuildHandle`] facade the HTTP layer uses instead of actix types.
//!
//! # Layout
//! - [`handle`]: [`start_actors`], [`BuildHandle`], [`ActorsConfig`].
//! - [`supervisor`]: BuildSupervisor, `Trigger`/`Cancel`/`Shutdown`, [`NewPathsSink`].
//! - [`step`]: a step and how one runs (process group, line reading, timeout, kill).
//! - [`groups`]: running steps' process groups on disk; survivors killed at start-up.
//! - [`pipeline`]: the default pipeline (git fetch, `nix flake update`, then the targets).
//! - [`fleet`]: the targets, their evaluation and build, GenerationStore (generations, GC
//!   roots, signed records, `GET /hosts`), closure diffs and kept lock files.
//! - [`status`]: StatusStore, which owns and persists [`BuildStatus`] (`status.json`);
//!   the JSON model itself is `tailcache_wire::build`'s, re-exported here.
//! - [`persist`]: atomic, durable writes of the state files.
//! - [`log_tail`]: LogTail (log files, ring buffer, followers).
//! - [`metrics`]: per-actor and per-build Prometheus metrics, [`metrics::metered`].
//! - [`error`]: the crate's [`Error`].

pub mod error;
pub mod fleet;
pub mod groups;
pub mod handle;
pub mod log_tail;
pub mod metrics;
pub mod persist;
pub mod pipeline;
pub mod status;
pub mod step;
pub mod supervisor;
pub mod time;

pub use error::{Error, Result};
pub use handle::{ActorsConfig, BuildHandle, start_actors};
pub use log_tail::{LogEvent, LogLimits};
pub use metrics::{Metrics, TEXT_CONTENT_TYPE, encode_text};
pub use pipeline::DefaultPipeline;
pub use status::{BuildRecord, BuildResult, BuildStatus, RequestedBy, StatusFile, TailnetIdentity};
pub use step::{Capture, Step};
pub use supervisor::{BranchHead, CancelOutcome, NewPathsSink, NoSink, TriggerOutcome};
