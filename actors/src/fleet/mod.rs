//! Building a fleet: the default pipeline's targets (each host's NixOS toplevel or
//! home-manager activation package, listed or discovered), built from one commit and one
//! lock file by one `nix build`, and kept as numbered, signed generations with GC roots.
//!
//! # Layout
//! - [`target`]: targets, the one `nix eval` that finds their derivations, its output.
//! - [`failures`]: which derivations Nix reports failed.
//! - [`closure`]: closures read from the store database.
//! - [`diff`]: what changed between two closures (paths, packages, versions, sizes).
//! - [`lock`]: the lock files builds used, kept by hash.
//! - [`generations`]: GenerationStore, the actor that owns the generations and answers
//!   `GET /hosts`.
//! - `run`: the fleet stage of a build (evaluate, build, judge, root, record).

pub mod closure;
pub mod diff;
pub mod failures;
pub mod generations;
pub mod lock;
pub(crate) mod run;
pub mod target;

use std::path::PathBuf;
use std::time::Duration;

use tailcache_store::db::StoreLayout;
use tailcache_wire::build::BuildRecord;
use tailcache_wire::generation::ClosureDiff;
use tailcache_wire::hosts::TargetOutcome;

pub use generations::{AlwaysServable, GenerationSettings, GenerationStore, Servable};
pub use target::{TargetSpec, Targets};

/// How the default pipeline's fleet stage runs (after `fetch` and `flake-update`).
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub targets: Targets,
    /// The checkout holding `flake.nix` (and, after `flake-update`, `flake.lock`).
    pub checkout: PathBuf,
    /// Holds `locks/`, `gcroots/` and the evaluation's expression.
    pub state_dir: PathBuf,
    /// The store the build writes and the cache serves (its database is read to judge).
    pub store: StoreLayout,
    pub nix: PathBuf,
    /// Extra arguments for every `nix` command of the stage (`--store …`, `--option …`).
    pub nix_args: Vec<String>,
    /// Nix's `builders` for the build step (remote builders, e.g. an aarch64 machine).
    pub builders: Option<String>,
    pub eval_timeout: Duration,
    pub build_timeout: Duration,
}

/// A new generation, for the build's notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGenerationSummary {
    pub closure_nar_size: u64,
    pub diff: ClosureDiff,
}

/// How a build went for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSummary {
    pub outcome: TargetOutcome,
    pub new_generation: Option<NewGenerationSummary>,
}

/// What a finished build tells a [`BuildObserver`].
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSummary {
    pub record: BuildRecord,
    /// Empty for a build of explicit steps.
    pub targets: Vec<TargetSummary>,
}

/// Told about every build that ended, after StatusStore has been told. Implementations must
/// not block (the root crate's notifier queues the summary with `try_send`).
pub trait BuildObserver: std::fmt::Debug + Send + Sync + 'static {
    fn build_ended(&self, summary: &BuildSummary);
}
