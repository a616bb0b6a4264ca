//! tailcache-actors: the build server's actix actors — BuildSupervisor runs the build
//! pipeline as child processes, StatusStore owns and persists the build status, LogTail
//! owns the build log and its live followers — their typed messages, their metrics, and
//! the [`BuildHandle`] facade the HTTP layer uses instead of actix types.
//!
//! # Layout
//! - [`handle`]: [`start_actors`], [`BuildHandle`], [`ActorsConfig`].
//! - [`supervisor`]: BuildSupervisor, `Trigger`/`Cancel`/`Shutdown`, [`NewPathsSink`].
//! - [`step`]: a step and how one runs (process group, line reading, timeout, kill).
//! - [`groups`]: running steps' process groups on disk; survivors killed at start-up.
//! - [`pipeline`]: the default pipeline (git fetch, `nix flake update`, `nix build`).
//! - [`status`]: StatusStore and [`BuildStatus`] (`status.json`, `GET /build/status`).
//! - [`log_tail`]: LogTail (log files, ring buffer, followers).
//! - [`metrics`]: per-actor and per-build Prometheus metrics, [`metrics::metered`].
//! - [`error`]: the crate's [`Error`].

mod atomic_file;
pub mod error;
pub mod groups;
pub mod handle;
pub mod log_tail;
pub mod metrics;
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
pub use status::{BuildRecord, BuildResult, BuildStatus, RequestedBy, TailnetIdentity};
pub use step::{Capture, Step};
pub use supervisor::{CancelOutcome, NewPathsSink, NoSink, TriggerOutcome};
