//! `GET /hosts` and `GET /hosts/<name>`: every configured build target with its state
//! (is its newest generation servable yet?) and the generations the server keeps.

use serde::{Deserialize, Serialize};

use super::generation::{SignedGeneration, TargetKind};

/// Where a target stands, newest news first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// A build that includes this target is running.
    Building,
    /// Its newest generation is built; part of its closure is not yet servable in the
    /// cache's configured compression.
    Compressing,
    /// Its newest generation's whole closure is servable.
    Ready,
    /// The last build of this target failed (older generations are still kept).
    Failed,
    /// Configured but never built.
    New,
}

/// Whether one kept generation can be fetched yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationState {
    Compressing,
    Ready,
}

/// One kept generation of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationView {
    pub generation: u64,
    pub state: GenerationState,
    /// The signed record; a client acts only on what it verified here.
    pub signed: SignedGeneration,
}

/// The values of [`TargetOutcome::result`].
pub mod target_result {
    /// The build that includes the target is running.
    pub const BUILDING: &str = "building";
    /// Its out path is in the store (a new generation, or the newest one unchanged).
    pub const BUILT: &str = "built";
    /// It was not built: evaluation failed or a derivation of its closure did.
    pub const FAILED: &str = "failed";
    /// The build was cancelled (or superseded) before the target was judged.
    pub const CANCELLED: &str = "cancelled";
    /// The server stopped during the build.
    pub const INTERRUPTED: &str = "interrupted";
}

/// How the last build that included this target went for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetOutcome {
    /// The target's name (the same as [`HostView::name`]).
    #[serde(default)]
    pub target: String,
    pub build_id: u64,
    /// `building`, `built`, `failed`, `cancelled` or `interrupted` (see [`target_result`]).
    pub result: String,
    /// The generation it produced.
    pub generation: Option<u64>,
    /// Derivations whose builders failed in this target's closure.
    #[serde(default)]
    pub failed_derivations: Vec<String>,
    /// A short reason when it failed.
    pub error: Option<String>,
}

/// One target: `GET /hosts/<name>`, and an element of `GET /hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    pub kind: TargetKind,
    pub attribute: String,
    pub state: HostState,
    /// The newest ready generation (what `tailcache switch` takes by default).
    pub current: Option<u64>,
    pub last_outcome: Option<TargetOutcome>,
    /// Kept generations, newest first.
    pub generations: Vec<GenerationView>,
}

/// `GET /hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostsReply {
    pub hosts: Vec<HostView>,
}
