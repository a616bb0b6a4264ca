//! BuildSupervisor: owns the build pipeline and decides when it runs. One build at a time:
//! `Trigger` during a build is answered `AlreadyRunning`, or, with coalescing on, schedules
//! exactly one follow-up build; with superseding on, a trigger for another commit than the
//! running build's (the commit a webhook push names, else the branch head that
//! `git ls-remote` reports) cancels the running build and starts one for it. A build is a
//! task that runs the steps in order (see [`crate::step`]), then, for the default pipeline,
//! the fleet stage (see [`crate::fleet`]); it reports to StatusStore, LogTail and
//! GenerationStore, hands the new store paths to a [`NewPathsSink`] (the root crate's
//! CacheServer, which compresses them first) and, once recorded, tells a [`BuildObserver`]
//! (the root crate's notifier).

use std::fmt::Debug;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
pub use tailcache_wire::build::{CancelOutcome, TriggerOutcome};
use tokio::sync::{mpsc, watch};

use crate::error::Result;
use crate::fleet::generations::{BuildBegins, BuildEnds, GenerationStore};
use crate::fleet::run::{Stage, StageEnd};
use crate::fleet::{BuildObserver, BuildSummary, FleetSettings, TargetSummary};
use crate::groups::StepGroups;
use crate::log_tail::{BeginLog, EndLog, LogTail};
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
    /// The default pipeline's targets, built after `steps`.
    pub fleet: Option<FleetSettings>,
    /// Triggers during a build schedule one follow-up build instead of being refused.
    pub coalesce: bool,
    /// A trigger for another commit than the running build's cancels it and builds that one.
    pub supersede: bool,
    /// Where the branch head is read for a trigger that names no commit (`supersede`).
    pub branch_head: Option<BranchHead>,
    /// Time between SIGTERM and SIGKILL when a step is cancelled or times out.
    pub kill_grace: Duration,
    /// Longer output lines are split.
    pub max_line_bytes: usize,
    /// Where running steps' process groups are recorded.
    pub groups: Option<StepGroups>,
}

/// `git ls-remote <repository> refs/heads/<branch>`: the commit a build started now gets.
#[derive(Debug, Clone)]
pub struct BranchHead {
    pub git: PathBuf,
    pub repository: String,
    pub branch: String,
}

/// How long asking the repository for its branch head may take.
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);

impl BranchHead {
    /// The branch's commit, or `None` (with a warning) if the repository does not answer
    /// in time or names none.
    async fn resolve(&self) -> Option<String> {
        let run = tokio::process::Command::new(&self.git)
            .arg("ls-remote")
            .arg("--")
            .arg(&self.repository)
            .arg(format!("refs/heads/{}", self.branch))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(HEAD_TIMEOUT, run).await {
            Ok(Ok(o)) if o.status.success() => o,
            Ok(Ok(o)) => {
                let err = String::from_utf8_lossy(&o.stderr);
                tracing::warn!("git ls-remote {}: {}", self.repository, err.trim());
                return None;
            }
            Ok(Err(e)) => {
                tracing::warn!("cannot run git ls-remote: {e}");
                return None;
            }
            Err(_) => {
                tracing::warn!("git ls-remote {} timed out", self.repository);
                return None;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let commit = text.split_whitespace().next()?;
        is_commit(commit).then(|| commit.to_owned())
    }
}

/// A full hexadecimal commit id (SHA-1 or SHA-256).
fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
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
    /// The commit it builds, once its fetch step knows.
    commit: watch::Receiver<Option<String>>,
}

/// The actors and observers a build reports to besides StatusStore and LogTail.
#[derive(Debug, Clone)]
pub struct Collaborators {
    pub generations: MeteredAddr<GenerationStore>,
    pub sink: Arc<dyn NewPathsSink>,
    pub observer: Option<Arc<dyn BuildObserver>>,
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
    with: Collaborators,
    metrics: Metrics,
}

/// What a trigger gets: an answer now, or after the branch head is known.
enum Decision {
    Now(TriggerOutcome),
    AskHead(RequestedBy, BranchHead),
}

impl BuildSupervisor {
    pub fn new(
        settings: PipelineSettings,
        next_id: u64,
        status: MeteredAddr<StatusStore>,
        log: MeteredAddr<LogTail>,
        with: Collaborators,
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
            with,
            metrics,
        }
    }

    fn decide(&mut self, ctx: &mut Context<Self>, msg: Trigger) -> Decision {
        if self.shutting_down {
            return Decision::Now(TriggerOutcome::ShuttingDown);
        }
        if self.running.is_none() {
            return Decision::Now(TriggerOutcome::Triggered {
                build_id: self.start_build(ctx, msg.requested_by),
            });
        }
        if self.settings.supersede {
            if msg.commit.is_some() {
                return Decision::Now(self.for_commit(ctx, msg.requested_by, msg.commit));
            }
            if let Some(head) = &self.settings.branch_head {
                return Decision::AskHead(msg.requested_by, head.clone());
            }
        }
        Decision::Now(self.busy(msg.requested_by))
    }

    /// A trigger for `commit` (`None`: unknown) with superseding on.
    fn for_commit(
        &mut self,
        ctx: &mut Context<Self>,
        requested_by: RequestedBy,
        commit: Option<String>,
    ) -> TriggerOutcome {
        if self.shutting_down {
            return TriggerOutcome::ShuttingDown;
        }
        let Some(r) = &self.running else {
            // The running build ended while the branch head was asked for.
            return TriggerOutcome::Triggered {
                build_id: self.start_build(ctx, requested_by),
            };
        };
        let building = r.commit.borrow().clone();
        match (commit, building) {
            (Some(new), Some(old)) if !same_commit(&new, &old) => {
                // A shutdown or a cancel already under way stays what it is.
                r.stop.send_if_modified(|s| {
                    let first = s.is_none();
                    s.get_or_insert(StopReason::Superseded);
                    first
                });
                let cancelled_build = r.build_id;
                self.follow_up = Some(requested_by);
                TriggerOutcome::Superseding {
                    cancelled_build,
                    commit: new,
                }
            }
            // The same commit, or one the running build has not fetched yet (it will fetch
            // the newest), or a head nobody could tell.
            _ => self.busy(requested_by),
        }
    }

    /// A trigger during a build that does not supersede it.
    fn busy(&mut self, requested_by: RequestedBy) -> TriggerOutcome {
        match &self.running {
            Some(r) if self.settings.coalesce => {
                self.follow_up.get_or_insert(requested_by);
                TriggerOutcome::Queued {
                    after_build: r.build_id,
                }
            }
            Some(r) => TriggerOutcome::AlreadyRunning {
                build_id: r.build_id,
                since: r.since.clone(),
                requested_by: r.requested_by.clone(),
            },
            None => TriggerOutcome::ShuttingDown,
        }
    }

    fn start_build(&mut self, ctx: &mut Context<Self>, requested_by: RequestedBy) -> u64 {
        let build_id = self.next_id;
        self.next_id += 1;
        let (stop, stop_rx) = watch::channel(None);
        let (done, _) = watch::channel(false);
        let (commit_tx, commit) = watch::channel(None);
        let since = now_rfc3339();
        self.running = Some(Running {
            build_id,
            since: since.clone(),
            requested_by: requested_by.clone(),
            cancelled_by: None,
            stop,
            done,
            commit,
        });
        // Queued here, before the trigger is answered, so that anyone who hears "triggered"
        // and then asks StatusStore or LogTail (FIFO mailboxes) sees this build running.
        self.status.force(BuildStarted {
            build_id,
            requested_by: requested_by.clone(),
            started: since.clone(),
        });
        self.log.force(BeginLog { build_id });
        self.with.generations.force(BuildBegins { build_id });
        let build = Build {
            build_id,
            requested_by,
            started: since,
            settings: self.settings.clone(),
            status: self.status.clone(),
            log: self.log.clone(),
            with: self.with.clone(),
            metrics: self.metrics.clone(),
            commit: commit_tx,
        };
        let me = MeteredAddr::new(ctx.address(), self.metrics.actors.clone());
        tokio::spawn(async move {
            let (record, targets) = build.run(stop_rx).await;
            if let Err(e) = me.ask(BuildDone { record, targets }).await {
                tracing::error!("build {build_id} ended unannounced: {e}");
            }
        });
        build_id
    }
}

impl Actor for BuildSupervisor {
    type Context = Context<Self>;
}

impl Supervised for BuildSupervisor {
    fn restarting(&mut self, _: &mut Self::Context) {
        // The running build's task and its stop channel survive in `self.running`.
        self.metrics.actors.restarted(Self::NAME);
    }
}

impl Metered for BuildSupervisor {
    const NAME: &'static str = "BuildSupervisor";
    const MAILBOX_CAPACITY: usize = MAILBOX_CAPACITY;
    fn actor_metrics(&self) -> &ActorMetrics {
        &self.metrics.actors
    }
}

/// Start a build unless one runs.
#[derive(Debug, Message)]
#[rtype(result = "Result<TriggerOutcome>")]
pub struct Trigger {
    pub requested_by: RequestedBy,
    /// The commit the trigger is for (a webhook push's `after`), when it names one.
    pub commit: Option<String>,
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
    targets: Vec<TargetSummary>,
}

impl Handler<Trigger> for BuildSupervisor {
    type Result = ResponseActFuture<Self, Result<TriggerOutcome>>;
    fn handle(&mut self, msg: Trigger, ctx: &mut Self::Context) -> Self::Result {
        match metered(self, ctx, msg, |this, msg, ctx| this.decide(ctx, msg)) {
            Err(e) => Box::pin(actix::fut::ready(Err(e))),
            Ok(Decision::Now(outcome)) => Box::pin(actix::fut::ready(Ok(outcome))),
            Ok(Decision::AskHead(requested_by, head)) => Box::pin(
                async move { head.resolve().await }
                    .into_actor(self)
                    .map(move |commit, this, ctx| Ok(this.for_commit(ctx, requested_by, commit))),
            ),
        }
    }
}

/// Whether two spellings name the same commit (one may be abbreviated).
fn same_commit(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    let n = a.len().min(b.len());
    n >= 7 && a[..n] == b[..n]
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
            let build_id = record.build_id;
            let running = this.running.take_if(|r| r.build_id == build_id);
            if record.result == BuildResult::Cancelled {
                record.cancelled_by = running.as_ref().and_then(|r| r.cancelled_by.clone());
            }
            let summary = BuildSummary {
                record: record.clone(),
                targets: msg.targets,
            };
            this.status.force(BuildFinished { record });
            this.with.generations.force(BuildEnds { build_id });
            if let Some(observer) = &this.with.observer {
                observer.build_ended(&summary);
            }
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
    with: Collaborators,
    metrics: Metrics,
    /// Where the commit goes once the fetch step knows it (superseding compares it).
    commit: watch::Sender<Option<String>>,
}

/// How a build ended, before it is written down.
#[derive(Debug)]
struct Outcome {
    result: BuildResult,
    failing_step: Option<String>,
    exit_status: Option<i32>,
    error: Option<String>,
}

impl Outcome {
    const SUCCESS: Outcome = Outcome {
        result: BuildResult::Success,
        failing_step: None,
        exit_status: None,
        error: None,
    };

    fn failed(step: &str, status: Option<ExitStatus>, error: String) -> Outcome {
        Outcome {
            result: BuildResult::Failed,
            failing_step: Some(step.to_owned()),
            exit_status: status.and_then(exit_code),
            error: Some(error),
        }
    }

    /// How a step that did not exit successfully ends the build.
    fn of_step(step: &str, program: &Path, end: StepEnd) -> Outcome {
        match end {
            StepEnd::Exited(s) => Outcome::failed(step, Some(s), format!("{step} failed ({s})")),
            StepEnd::TimedOut(t, s) => {
                Outcome::failed(step, Some(s), format!("{step} timed out after {t:?}"))
            }
            StepEnd::Stopped(reason, s) => stopped_outcome(reason, step, Some(s)),
            StepEnd::SpawnFailed(e) => {
                Outcome::failed(step, None, format!("cannot run {}: {e}", program.display()))
            }
        }
    }
}

fn exit_code(s: ExitStatus) -> Option<i32> {
    s.code().or_else(|| s.signal().map(|n| 128 + n))
}

impl Build {
    async fn say(&self, line: String) {
        crate::log_tail::say(&self.log, self.build_id, line).await;
    }

    /// Runs the steps in order until one does not succeed; returns how they went, the commit
    /// and the out paths they captured.
    async fn run_steps(
        &self,
        stop: &mut watch::Receiver<Option<StopReason>>,
        limits: &RunLimits,
    ) -> (Outcome, Option<String>, Vec<PathBuf>) {
        let id = self.build_id;
        let mut commit = None;
        let mut out_paths = Vec::new();
        for step in &self.settings.steps {
            let stopped = *stop.borrow();
            if let Some(reason) = stopped {
                return (stopped_outcome(reason, &step.name, None), commit, out_paths);
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
            let (end, captured) = run_step(step, id, &self.log, stop, limits).await;
            match end {
                StepEnd::Exited(s) if s.success() => match &step.capture {
                    // Custom pipelines' out paths: queued for compression like a target's
                    // closure (they get no generation).
                    Capture::OutPaths => out_paths.extend(captured.into_iter().map(PathBuf::from)),
                    Capture::Commit(dir) => match rev_parse(dir).await {
                        Ok(c) => {
                            self.commit.send_replace(Some(c.clone()));
                            commit = Some(c);
                        }
                        Err(e) => self.say(format!("==> cannot read the commit: {e}")).await,
                    },
                    Capture::Nothing | Capture::Stdout | Capture::FailedDerivations(_) => {}
                },
                end => {
                    let outcome = Outcome::of_step(&step.name, &step.program, end);
                    return (outcome, commit, out_paths);
                }
            }
        }
        (Outcome::SUCCESS, commit, out_paths)
    }

    /// Runs the steps (and the fleet stage); returns the record for StatusStore and how the
    /// build went for each target.
    async fn run(
        self,
        mut stop: watch::Receiver<Option<StopReason>>,
    ) -> (BuildRecord, Vec<TargetSummary>) {
        let clock = Instant::now();
        let id = self.build_id;
        let limits = RunLimits {
            max_line_bytes: self.settings.max_line_bytes,
            kill_grace: self.settings.kill_grace,
            groups: self.settings.groups.clone(),
        };
        let (mut outcome, commit, out_paths) = self.run_steps(&mut stop, &limits).await;
        let mut targets = Vec::new();
        if outcome.result == BuildResult::Success
            && let Some(fleet) = &self.settings.fleet
        {
            let stage = Stage {
                build_id: id,
                commit: commit.clone(),
                settings: fleet,
                log: &self.log,
                status: &self.status,
                generations: &self.with.generations,
                sink: &self.with.sink,
                limits,
            };
            let (end, summaries) = stage.run(&mut stop).await;
            outcome = judged_outcome(end, &summaries, &fleet.nix);
            targets = summaries;
        }
        let summary = match &outcome.error {
            Some(e) => format!("==> build {id} {}: {e}", outcome.result.as_str()),
            None => format!("==> build {id} {}", outcome.result.as_str()),
        };
        self.say(summary).await;

        if outcome.result == BuildResult::Success && !out_paths.is_empty() {
            self.with.sink.new_paths(id, out_paths);
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
        (record, targets)
    }
}

/// The build's outcome from its fleet stage: success when every target built.
fn judged_outcome(end: StageEnd, targets: &[TargetSummary], nix: &Path) -> Outcome {
    use tailcache_wire::hosts::target_result;
    let failed: Vec<&str> = targets
        .iter()
        .filter(|t| t.outcome.result != target_result::BUILT)
        .map(|t| t.outcome.target.as_str())
        .collect();
    match end {
        StageEnd::Step { step, end } => Outcome::of_step(step, nix, end),
        StageEnd::Judged if targets.is_empty() => Outcome::failed(
            "evaluate",
            None,
            "no targets: the flake has no nixosConfigurations or homeConfigurations".to_owned(),
        ),
        StageEnd::Judged if failed.is_empty() => Outcome::SUCCESS,
        StageEnd::Judged => Outcome::failed(
            "build",
            None,
            format!(
                "{} of {} targets failed: {}",
                failed.len(),
                targets.len(),
                failed.join(", ")
            ),
        ),
    }
}

fn stopped_outcome(reason: StopReason, step: &str, status: Option<ExitStatus>) -> Outcome {
    let (result, error) = match reason {
        StopReason::Cancel => (BuildResult::Cancelled, "cancelled"),
        StopReason::Superseded => (
            BuildResult::Cancelled,
            "cancelled: superseded by a trigger for a newer commit",
        ),
        StopReason::Shutdown => (BuildResult::Interrupted, "the server is shutting down"),
    };
    Outcome {
        result,
        failing_step: Some(step.to_owned()),
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
