//! BuildSupervisor: owns the build pipeline and decides when it runs. One build at a time:
//! `Trigger` during a build is answered `AlreadyRunning`, or, with coalescing on, schedules
//! exactly one follow-up build. A build is a task that runs the steps in order (see
//! [`crate::step`]), reports to StatusStore and LogTail, and on success hands the new store
//! paths to a [`NewPathsSink`] (the root crate's CacheServer, which compresses them).

use std::fmt::Debug;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::error::Result;
use crate::groups::StepGroups;
use crate::log_tail::{AppendLines, BeginLog, EndLog, LogTail};
use crate::metrics::{ActorMetrics, Metered, MeteredAddr, Metrics, metered};
use crate::status::{
    BuildFinished, BuildRecord, BuildResult, BuildStarted, RequestedBy, StatusStore, StepStarted,
};
use crate::step::{Capture, RunLimits, Step, StepEnd, StopReason, run_step};
use crate::time::now_rfc3339;

/// Messages that may wait in BuildSupervisor's mailbox.
pub const MAILBOX_CAPACITY: usize = 128;

/// Receives the store paths a successful build produced. Implementations must not block
/// (the root crate's CacheServer queues them with `try_send`).
pub trait NewPathsSink: Debug + Send + Sync + 'static {
    fn new_paths(&self, build_id: u64, paths: Vec<PathBuf>);
}

/// A sink that drops the paths (no cache attached).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSink;

impl NewPathsSink for NoSink {
    fn new_paths(&self, _: u64, _: Vec<PathBuf>) {}
}

/// A bounded channel as a sink: when it is full the paths are dropped with a warning
/// (the cache compresses them on first request anyway).
impl NewPathsSink for mpsc::Sender<(u64, Vec<PathBuf>)> {
    fn new_paths(&self, build_id: u64, paths: Vec<PathBuf>) {
        if let Err(e) = self.try_send((build_id, paths)) {
            tracing::warn!("new paths of build {build_id} not handed over: {e}");
        }
    }
}

/// How builds run.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub steps: Vec<Step>,
    /// Triggers during a build schedule one follow-up build instead of being refused.
    pub coalesce: bool,
    /// Time between SIGTERM and SIGKILL when a step is cancelled or times out.
    pub kill_grace: Duration,
    /// Longer output lines are split.
    pub max_line_bytes: usize,
    /// Where running steps' process groups are recorded.
    pub groups: Option<StepGroups>,
}

/// Answer to [`Trigger`] (also what `POST /build/trigger` answers, read back by the CLI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TriggerOutcome {
    Triggered {
        build_id: u64,
    },
    AlreadyRunning {
        build_id: u64,
        since: String,
        requested_by: RequestedBy,
    },
    /// Coalesced: one build will run after the current one.
    Queued {
        after_build: u64,
    },
    ShuttingDown,
}

/// Answer to [`Cancel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CancelOutcome {
    Cancelling { build_id: u64 },
    NotRunning,
}

#[derive(Debug)]
struct Running {
    build_id: u64,
    since: String,
    requested_by: RequestedBy,
    /// Who cancelled it first, for its record.
    cancelled_by: Option<RequestedBy>,
    stop: watch::Sender<Option<StopReason>>,
    done: watch::Sender<bool>,
}

/// The actor.
#[derive(Debug)]
pub struct BuildSupervisor {
    settings: Arc<PipelineSettings>,
    next_id: u64,
    running: Option<Running>,
    follow_up: Option<RequestedBy>,
    shutting_down: bool,
    status: MeteredAddr<StatusStore>,
    log: MeteredAddr<LogTail>,
    sink: Arc<dyn NewPathsSink>,
    metrics: Metrics,
}

impl BuildSupervisor {
    pub fn new(
        settings: PipelineSettings,
        next_id: u64,
        status: MeteredAddr<StatusStore>,
        log: MeteredAddr<LogTail>,
        sink: Arc<dyn NewPathsSink>,
        metrics: Metrics,
    ) -> Self {
        BuildSupervisor {
            settings: Arc::new(settings),
            next_id,
            running: None,
            follow_up: None,
            shutting_down: false,
            status,
            log,
            sink,
            metrics,
        }
    }

    fn start_build(&mut self, ctx: &mut Context<Self>, requested_by: RequestedBy) -> u64 {
        let build_id = self.next_id;
        self.next_id += 1;
        let (stop, stop_rx) = watch::channel(None);
        let (done, _) = watch::channel(false);
        let since = now_rfc3339();
        self.running = Some(Running {
            build_id,
            since: since.clone(),
            requested_by: requested_by.clone(),
            cancelled_by: None,
            stop,
            done,
        });
        // Queued here, before the trigger is answered, so that anyone who hears "triggered"
        // and then asks StatusStore or LogTail (FIFO mailboxes) sees this build running.
        self.status.force(BuildStarted {
            build_id,
            requested_by: requested_by.clone(),
            started: since.clone(),
        });
        self.log.force(BeginLog { build_id });
        let build = Build {
            build_id,
            requested_by,
            started: since,
            settings: self.settings.clone(),
            status: self.status.clone(),
            log: self.log.clone(),
            sink: self.sink.clone(),
            metrics: self.metrics.clone(),
        };
        let me = MeteredAddr::new(ctx.address(), self.metrics.actors.clone());
        tokio::spawn(async move {
            let record = build.run(stop_rx).await;
            if let Err(e) = me.ask(BuildDone { record }).await {
                tracing::error!("build {build_id} ended unannounced: {e}");
            }
        });
        build_id
    }
}

impl Actor for BuildSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Supervised for BuildSupervisor {
    fn restarting(&mut self, _: &mut Self::Context) {
        // The running build's task and its stop channel survive in `self.running`.
        self.metrics.actors.restarted(Self::NAME);
    }
}

impl Metered for BuildSupervisor {
    const NAME: &'static str = "BuildSupervisor";
    fn actor_metrics(&self) -> &ActorMetrics {
        &self.metrics.actors
    }
}

/// Start a build unless one runs.
#[derive(Debug, Message)]
#[rtype(result = "Result<TriggerOutcome>")]
pub struct Trigger {
    pub requested_by: RequestedBy,
}

/// Stop the running build (recorded `cancelled`, with who asked) and drop a scheduled
/// follow-up.
#[derive(Debug, Message)]
#[rtype(result = "Result<CancelOutcome>")]
pub struct Cancel {
    pub by: RequestedBy,
}

/// Refuse new builds, stop the running one (recorded `interrupted`) and answer once it has
/// been recorded.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct Shutdown;

/// A build task ended (sent by the task itself, with what StatusStore is to record).
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
struct BuildDone {
    record: BuildRecord,
}

impl Handler<Trigger> for BuildSupervisor {
    type Result = Result<TriggerOutcome>;
    fn handle(&mut self, msg: Trigger, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, ctx| {
            if this.shutting_down {
                return TriggerOutcome::ShuttingDown;
            }
            match &this.running {
                Some(r) if this.settings.coalesce => {
                    this.follow_up.get_or_insert(msg.requested_by);
                    TriggerOutcome::Queued {
                        after_build: r.build_id,
                    }
                }
                Some(r) => TriggerOutcome::AlreadyRunning {
                    build_id: r.build_id,
                    since: r.since.clone(),
                    requested_by: r.requested_by.clone(),
                },
                None => TriggerOutcome::Triggered {
                    build_id: this.start_build(ctx, msg.requested_by),
                },
            }
        })
    }
}

impl Handler<Cancel> for BuildSupervisor {
    type Result = Result<CancelOutcome>;
    fn handle(&mut self, msg: Cancel, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            this.follow_up = None;
            match &mut this.running {
                Some(r) => {
                    // A shutdown already under way stays a shutdown (`interrupted`).
                    let first = r.stop.send_if_modified(|s| {
                        let first = s.is_none();
                        s.get_or_insert(StopReason::Cancel);
                        first
                    });
                    if first {
                        r.cancelled_by = Some(msg.by);
                    }
                    CancelOutcome::Cancelling {
                        build_id: r.build_id,
                    }
                }
                None => CancelOutcome::NotRunning,
            }
        })
    }
}

impl Handler<Shutdown> for BuildSupervisor {
    type Result = ResponseFuture<Result<()>>;
    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let done = metered(self, ctx, msg, |this, _, _| {
            this.shutting_down = true;
            this.follow_up = None;
            this.running.as_ref().map(|r| {
                r.stop.send_replace(Some(StopReason::Shutdown));
                r.done.subscribe()
            })
        });
        Box::pin(async move {
            if let Some(mut done) = done? {
                // An error means the task is gone, which is just as finished.
                let _ = done.wait_for(|d| *d).await;
            }
            Ok(())
        })
    }
}

impl Handler<BuildDone> for BuildSupervisor {
    type Result = Result<()>;
    fn handle(&mut self, msg: BuildDone, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, ctx| {
            // Recorded from here, not by the task, so that StatusStore sees this build end
            // before a follow-up starts, and a client that sees it ended may trigger at once.
            // `force` because a finished build must not be lost to a full mailbox.
            let mut record = msg.record;
            let running = this.running.take_if(|r| r.build_id == record.build_id);
            if record.result == BuildResult::Cancelled {
                record.cancelled_by = running.as_ref().and_then(|r| r.cancelled_by.clone());
            }
            this.status.force(BuildFinished { record });
            if let Some(r) = running {
                r.done.send_replace(true);
            }
            if this.running.is_none()
                && !this.shutting_down
                && let Some(by) = this.follow_up.take()
            {
                this.start_build(ctx, by);
            }
        })
    }
}

/// Everything one build task needs.
#[derive(Debug)]
struct Build {
    build_id: u64,
    requested_by: RequestedBy,
    started: String,
    settings: Arc<PipelineSettings>,
    status: MeteredAddr<StatusStore>,
    log: MeteredAddr<LogTail>,
    sink: Arc<dyn NewPathsSink>,
    metrics: Metrics,
}

/// How a build ended, before it is written down.
#[derive(Debug)]
struct Outcome {
    result: BuildResult,
    failing_step: Option<String>,
    exit_status: Option<i32>,
    error: Option<String>,
}

fn exit_code(s: ExitStatus) -> Option<i32> {
    s.code().or_else(|| s.signal().map(|n| 128 + n))
}

impl Build {
    async fn say(&self, line: String) {
        let msg = AppendLines {
            build_id: self.build_id,
            lines: vec![line],
        };
        if let Err(e) = self.log.ask(msg).await {
            tracing::warn!("build log: {e}");
        }
    }

    /// Runs the steps; returns the record for StatusStore.
    async fn run(self, mut stop: watch::Receiver<Option<StopReason>>) -> BuildRecord {
        let clock = Instant::now();
        let id = self.build_id;
        let limits = RunLimits {
            max_line_bytes: self.settings.max_line_bytes,
            kill_grace: self.settings.kill_grace,
            groups: self.settings.groups.clone(),
        };
        let mut commit = None;
        let mut out_paths = Vec::new();
        let mut outcome = Outcome {
            result: BuildResult::Success,
            failing_step: None,
            exit_status: None,
            error: None,
        };
        for step in &self.settings.steps {
            let stopped = *stop.borrow();
            if let Some(reason) = stopped {
                outcome = stopped_outcome(reason, step, None);
                break;
            }
            let msg = StepStarted {
                build_id: id,
                step: step.name.clone(),
            };
            if let Err(e) = self.status.ask(msg).await {
                tracing::error!("build {id}: {e}");
            }
            let mut cmdline = step.program.display().to_string();
            for a in &step.args {
                cmdline.push(' ');
                cmdline.push_str(a);
            }
            self.say(format!("==> [{}] {cmdline}", step.name)).await;
            let (end, captured) = run_step(step, id, &self.log, &mut stop, limits.clone()).await;
            let failed = |status: Option<ExitStatus>, error: String| Outcome {
                result: BuildResult::Failed,
                failing_step: Some(step.name.clone()),
                exit_status: status.and_then(exit_code),
                error: Some(error),
            };
            outcome = match end {
                StepEnd::Exited(s) if s.success() => {
                    match &step.capture {
                        Capture::OutPaths => {
                            out_paths.extend(captured.into_iter().map(PathBuf::from))
                        }
                        Capture::Commit(dir) => match rev_parse(dir).await {
                            Ok(c) => commit = Some(c),
                            Err(e) => self.say(format!("==> cannot read the commit: {e}")).await,
                        },
                        Capture::Nothing => {}
                    }
                    continue;
                }
                StepEnd::Exited(s) => failed(Some(s), format!("{} failed ({s})", step.name)),
                StepEnd::TimedOut(t, s) => {
                    failed(Some(s), format!("{} timed out after {t:?}", step.name))
                }
                StepEnd::Stopped(reason, s) => stopped_outcome(reason, step, Some(s)),
                StepEnd::SpawnFailed(e) => {
                    failed(None, format!("cannot run {}: {e}", step.program.display()))
                }
            };
            break;
        }
        let summary = match &outcome.error {
            Some(e) => format!("==> build {id} {}: {e}", outcome.result.as_str()),
            None => format!("==> build {id} {}", outcome.result.as_str()),
        };
        self.say(summary).await;

        if outcome.result == BuildResult::Success && !out_paths.is_empty() {
            self.sink.new_paths(id, out_paths);
        }
        let seconds = clock.elapsed().as_secs_f64();
        self.metrics.builds.finished(outcome.result, seconds);
        let record = BuildRecord {
            build_id: id,
            requested_by: self.requested_by.clone(),
            started: self.started.clone(),
            finished: now_rfc3339(),
            result: outcome.result,
            commit,
            failing_step: outcome.failing_step,
            exit_status: outcome.exit_status,
            error: outcome.error,
            duration_seconds: seconds,
            cancelled_by: None,
            notes: Vec::new(),
        };
        let end = EndLog {
            build_id: id,
            result: outcome.result,
        };
        if let Err(e) = self.log.ask(end).await {
            tracing::error!("build {id}: {e}");
        }
        record
    }
}

fn stopped_outcome(reason: StopReason, step: &Step, status: Option<ExitStatus>) -> Outcome {
    let (result, error) = match reason {
        StopReason::Cancel => (BuildResult::Cancelled, "cancelled"),
        StopReason::Shutdown => (BuildResult::Interrupted, "the server is shutting down"),
    };
    Outcome {
        result,
        failing_step: Some(step.name.clone()),
        exit_status: status.and_then(exit_code),
        error: Some(error.to_owned()),
    }
}

/// `git -C dir rev-parse HEAD`.
async fn rev_parse(dir: &Path) -> std::result::Result<String, String> {
    let run = tokio::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(format!("cannot run git: {e}")),
        Err(_) => return Err("git rev-parse timed out".to_owned()),
    };
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
