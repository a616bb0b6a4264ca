//! The typed facade the HTTP layer uses: [`BuildHandle`] wraps the actors' addresses so
//! handlers never see actix types, and [`start_actors`] starts the four actors
//! (StatusStore, LogTail, GenerationStore, BuildSupervisor) under supervision on the current
//! actix system.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use tailcache_store::signing::SecretKey;
use tailcache_wire::hosts::{HostView, HostsReply};

use crate::error::Result;
use crate::fleet::generations::{GetHost, GetHosts};
use crate::fleet::{
    AlwaysServable, BuildObserver, FleetSettings, GenerationSettings, GenerationStore, Servable,
    TargetSpec,
};
use crate::groups::StepGroups;
use crate::log_tail::{FlushLog, Follow, GetLines, LogEvent, LogLimits, LogTail};
use crate::metrics::{MeteredAddr, Metrics};
use crate::status::{BuildStatus, FlushStatus, GetStatus, PanicForTest, RequestedBy, StatusStore};
use crate::step::Step;
use crate::supervisor::{
    BranchHead, BuildSupervisor, Cancel, CancelOutcome, Collaborators, NewPathsSink,
    PipelineSettings, Shutdown, Trigger, TriggerOutcome,
};

/// Everything the actors are configured with.
#[derive(Debug, Clone)]
pub struct ActorsConfig {
    /// Holds `status.json` and `logs/`.
    pub state_dir: PathBuf,
    pub steps: Vec<Step>,
    /// Triggers during a build schedule one follow-up build.
    pub coalesce: bool,
    /// SIGTERM → SIGKILL delay for a cancelled or timed-out step.
    pub kill_grace: Duration,
    /// Output lines longer than this are split.
    pub max_line_bytes: usize,
    pub log: LogLimits,
    /// Finished builds kept in the status history.
    pub history_len: usize,
    /// The default pipeline's targets, built after `steps` (`None`: explicit steps only).
    pub fleet: Option<FleetSettings>,
    /// Targets listed in the configuration (shown before their first build).
    pub configured_targets: Vec<TargetSpec>,
    /// Generations kept (and GC-rooted) per target.
    pub keep_generations: usize,
    /// Generation records are signed with every key.
    pub keys: Vec<SecretKey>,
    /// Whether the cache can serve a path in its configured compression (readiness).
    pub servable: Arc<dyn Servable>,
    /// The logical store directory (`/nix/store`).
    pub store_dir: String,
    /// A trigger for another commit than the running build's supersedes it.
    pub supersede: bool,
    /// Where to ask for the branch head when a trigger names no commit.
    pub branch_head: Option<BranchHead>,
    /// Told about every finished build (the notifier).
    pub observer: Option<Arc<dyn BuildObserver>>,
}

impl ActorsConfig {
    /// The defaults for everything but where state lives and what a build runs.
    pub fn new(state_dir: impl Into<PathBuf>, steps: Vec<Step>) -> Self {
        ActorsConfig {
            state_dir: state_dir.into(),
            steps,
            coalesce: false,
            kill_grace: Duration::from_secs(10),
            max_line_bytes: 16 << 10,
            log: LogLimits::default(),
            history_len: 20,
            fleet: None,
            configured_targets: Vec::new(),
            keep_generations: 3,
            keys: Vec::new(),
            servable: Arc::new(AlwaysServable),
            store_dir: tailcache_store::store_path::DEFAULT_STORE_DIR.to_owned(),
            supersede: false,
            branch_head: None,
            observer: None,
        }
    }
}

/// Cloneable handle over the build actors; all a request handler needs.
#[derive(Debug, Clone)]
pub struct BuildHandle {
    supervisor: MeteredAddr<BuildSupervisor>,
    status: MeteredAddr<StatusStore>,
    log: MeteredAddr<LogTail>,
    generations: MeteredAddr<GenerationStore>,
    state_dir: PathBuf,
    status_rx: watch::Receiver<BuildStatus>,
    ring_lines: usize,
    metrics: Metrics,
}

/// Starts StatusStore, LogTail and BuildSupervisor (each under `actix::Supervisor`) on the
/// current actix system, reporting into `metrics` (from [`Metrics::register`], shared with
/// any other actor of the process). Recovers an interrupted status before anything else runs.
pub fn start_actors(
    config: ActorsConfig,
    metrics: Metrics,
    sink: Arc<dyn NewPathsSink>,
) -> Result<BuildHandle> {
    // Before anything else: steps a previous server left running are ended first.
    let groups = StepGroups::open(&config.state_dir)?;
    let survivors = groups.end_survivors();
    let mut store = StatusStore::open(
        &config.state_dir,
        config.history_len,
        metrics.actors.clone(),
    )?;
    let mut tail = LogTail::open(&config.state_dir, config.log, metrics.actors.clone())?;
    for s in &survivors {
        let note = s.note();
        store.note(s.build_id, note.clone())?;
        tail.note(s.build_id, &format!("==> {note}"))?;
    }
    let next_id = store.status().next_build_id();
    let status_rx = store.subscribe();
    let status = MeteredAddr::start(store);
    let log = MeteredAddr::start(tail);
    let store = GenerationStore::open(
        GenerationSettings {
            state_dir: config.state_dir.clone(),
            keys: config.keys,
            keep: config.keep_generations.max(1),
            configured: config.configured_targets,
            servable: config.servable,
        },
        &config.store_dir,
        sink.as_ref(),
        metrics.actors.clone(),
    )?;
    let generations = MeteredAddr::start(store);
    let settings = PipelineSettings {
        steps: config.steps,
        fleet: config.fleet,
        coalesce: config.coalesce,
        supersede: config.supersede,
        branch_head: config.branch_head,
        kill_grace: config.kill_grace,
        max_line_bytes: config.max_line_bytes,
        groups: Some(groups),
    };
    let with = Collaborators {
        generations: generations.clone(),
        sink,
        observer: config.observer,
    };
    let sup = BuildSupervisor::new(
        settings,
        next_id,
        status.clone(),
        log.clone(),
        with,
        metrics.clone(),
    );
    let supervisor = MeteredAddr::start(sup);
    Ok(BuildHandle {
        supervisor,
        status,
        log,
        generations,
        state_dir: config.state_dir,
        status_rx,
        ring_lines: config.log.ring_lines,
        metrics,
    })
}

impl BuildHandle {
    /// Starts a build unless one runs (or queues one follow-up, with coalescing).
    pub async fn trigger(&self, requested_by: RequestedBy) -> Result<TriggerOutcome> {
        self.trigger_for(requested_by, None).await
    }

    /// A trigger for a known commit (a webhook push): with superseding on, a running build
    /// of another commit is cancelled for it.
    pub async fn trigger_for(
        &self,
        requested_by: RequestedBy,
        commit: Option<String>,
    ) -> Result<TriggerOutcome> {
        self.supervisor
            .ask(Trigger {
                requested_by,
                commit,
            })
            .await
    }

    /// `GET /hosts`: every target with its generations.
    pub async fn hosts(&self) -> Result<HostsReply> {
        self.generations.ask(GetHosts).await
    }

    /// `GET /hosts/<name>`.
    pub async fn host(&self, name: &str) -> Result<Option<HostView>> {
        self.generations
            .ask(GetHost {
                name: name.to_owned(),
            })
            .await
    }

    /// Where the kept lock file with this hash is (`None` for a malformed hash).
    pub fn lock_path(&self, hash: &str) -> Option<PathBuf> {
        crate::fleet::lock::lock_path(&self.state_dir, hash)
    }

    /// Cancels the running build; `by` is recorded as who cancelled it.
    pub async fn cancel(&self, by: RequestedBy) -> Result<CancelOutcome> {
        self.supervisor.ask(Cancel { by }).await
    }

    /// The current status.
    pub async fn status(&self) -> Result<BuildStatus> {
        self.status.ask(GetStatus).await
    }

    /// Sees every status change (for the status page and tests; no actor round trip).
    pub fn watch_status(&self) -> watch::Receiver<BuildStatus> {
        self.status_rx.clone()
    }

    /// The last `n` log lines; `n` is capped at the ring buffer's size.
    pub async fn logs(&self, n: usize) -> Result<Vec<String>> {
        self.log.ask(GetLines { n }).await
    }

    /// The last `n` log lines and every event after them.
    pub async fn follow(&self, n: usize) -> Result<(Vec<String>, broadcast::Receiver<LogEvent>)> {
        self.log.ask(Follow { n }).await
    }

    /// Most lines `logs` can return.
    pub fn max_lines(&self) -> usize {
        self.ring_lines
    }

    /// Whether all four actors accept messages.
    pub fn is_alive(&self) -> bool {
        self.supervisor.connected()
            && self.status.connected()
            && self.log.connected()
            && self.generations.connected()
    }

    /// The metrics the actors report into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops a running build (recorded `interrupted`), refuses new ones, and flushes the
    /// status file and the log.
    pub async fn shutdown(&self) -> Result<()> {
        self.supervisor.ask(Shutdown).await?;
        self.status.ask(FlushStatus).await?;
        self.log.ask(FlushLog).await
    }

    /// Makes StatusStore's handler panic (supervision tests only).
    #[doc(hidden)]
    pub async fn panic_status_store_for_test(&self) -> Result<()> {
        self.status.ask(PanicForTest).await
    }
}
