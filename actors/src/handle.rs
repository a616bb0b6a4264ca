//! The typed facade the HTTP layer uses: [`BuildHandle`] wraps the actors' addresses so
//! handlers never see actix types, and [`start_actors`] starts the three actors under
//! supervision on the current actix system.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::Supervisor;
use tokio::sync::{broadcast, watch};

use crate::error::Result;
use crate::groups::StepGroups;
use crate::log_tail::{FlushLog, Follow, GetLines, LogEvent, LogLimits, LogTail};
use crate::metrics::{MeteredAddr, Metrics};
use crate::status::{BuildStatus, FlushStatus, GetStatus, PanicForTest, RequestedBy, StatusStore};
use crate::step::Step;
use crate::supervisor::{
    BuildSupervisor, Cancel, CancelOutcome, NewPathsSink, PipelineSettings, Shutdown, Trigger,
    TriggerOutcome,
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
        }
    }
}

/// Cloneable handle over the build actors; all a request handler needs.
#[derive(Debug, Clone)]
pub struct BuildHandle {
    supervisor: MeteredAddr<BuildSupervisor>,
    status: MeteredAddr<StatusStore>,
    log: MeteredAddr<LogTail>,
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
    let status = MeteredAddr::new(Supervisor::start(|_| store), metrics.actors.clone());
    let log = MeteredAddr::new(Supervisor::start(|_| tail), metrics.actors.clone());
    let settings = PipelineSettings {
        steps: config.steps,
        coalesce: config.coalesce,
        kill_grace: config.kill_grace,
        max_line_bytes: config.max_line_bytes,
        groups: Some(groups),
    };
    let sup = BuildSupervisor::new(
        settings,
        next_id,
        status.clone(),
        log.clone(),
        sink,
        metrics.clone(),
    );
    let supervisor = MeteredAddr::new(Supervisor::start(|_| sup), metrics.actors.clone());
    Ok(BuildHandle {
        supervisor,
        status,
        log,
        status_rx,
        ring_lines: config.log.ring_lines,
        metrics,
    })
}

impl BuildHandle {
    /// Starts a build unless one runs (or queues one follow-up, with coalescing).
    pub async fn trigger(&self, requested_by: RequestedBy) -> Result<TriggerOutcome> {
        self.supervisor.ask(Trigger { requested_by }).await
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

    /// Whether all three actors accept messages.
    pub fn is_alive(&self) -> bool {
        self.supervisor.connected() && self.status.connected() && self.log.connected()
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
