//! StatusStore: owns the build status — whether a build runs, who asked for it, its current
//! step, how the last one ended and a short history — and persists it to
//! `<state_dir>/status.json` atomically on every change (temp file in the same directory,
//! fsync, rename, fsync of the directory), so a crash at any instant leaves either the old
//! or the new file. A status found `is_running` at start-up was cut short by a crash and
//! becomes `interrupted`. [`BuildStatus`] is the JSON of `GET /build/status`.

use std::path::{Path, PathBuf};

use actix::prelude::*;
pub use tailcache_wire::build::{
    BuildRecord, BuildResult, BuildStatus, RequestedBy, TailnetIdentity,
};
use tailcache_wire::hosts::target_result;
use tokio::sync::watch;

use crate::error::Result;
use crate::metrics::{ActorMetrics, Metered, metered};
use crate::persist;
use crate::time::now_rfc3339;

/// Loading and writing `status.json` ([`BuildStatus`] is the wire model; the file is the
/// actors' business).
pub trait StatusFile: Sized {
    /// Loads `path`; a missing file is an empty status.
    fn load(path: &Path) -> Result<Self>;
    /// Writes the status to `path` atomically and durably.
    fn persist(&self, path: &Path) -> Result<()>;
}

impl StatusFile for BuildStatus {
    fn load(path: &Path) -> Result<Self> {
        Ok(persist::read_json(path)?.unwrap_or_default())
    }

    fn persist(&self, path: &Path) -> Result<()> {
        persist::write_json(path, self)
    }
}

/// A status loaded after a crash: a build that was running is over, `interrupted`.
fn recover(s: &mut BuildStatus, history_len: usize) -> bool {
    if !s.is_running {
        return false;
    }
    let finished = now_rfc3339();
    s.is_running = false;
    s.last_status = Some(BuildResult::Interrupted);
    s.last_finish = Some(finished.clone());
    s.last_failing_step = s.current_step.take();
    s.last_exit_status = None;
    s.last_error = Some("the server stopped during the build".to_owned());
    for t in &mut s.targets {
        if t.result == target_result::BUILDING {
            t.result = target_result::INTERRUPTED.to_owned();
        }
    }
    if let Some(build_id) = s.build_id {
        push_history(
            s,
            BuildRecord {
                build_id,
                requested_by: s.requested_by.clone().unwrap_or_default(),
                started: s.last_start.clone().unwrap_or_default(),
                finished,
                result: BuildResult::Interrupted,
                commit: s.last_commit.clone(),
                failing_step: s.last_failing_step.clone(),
                exit_status: None,
                error: s.last_error.clone(),
                duration_seconds: 0.0,
                cancelled_by: None,
                notes: Vec::new(),
            },
            history_len,
        );
    }
    true
}

fn push_history(s: &mut BuildStatus, record: BuildRecord, history_len: usize) {
    s.history.insert(0, record);
    s.history.truncate(history_len);
}

/// The actor.
#[derive(Debug)]
pub struct StatusStore {
    path: PathBuf,
    status: BuildStatus,
    history_len: usize,
    publish: watch::Sender<BuildStatus>,
    metrics: ActorMetrics,
}

/// Messages that may wait in StatusStore's mailbox.
pub const MAILBOX_CAPACITY: usize = 256;

impl StatusStore {
    /// Loads (and if needed recovers and rewrites) `<state_dir>/status.json`.
    pub fn open(state_dir: &Path, history_len: usize, metrics: ActorMetrics) -> Result<Self> {
        let path = state_dir.join("status.json");
        let stale = persist::remove_leftovers(state_dir);
        if stale > 0 {
            tracing::info!(
                "removed {stale} temp file(s) a crash left in {}",
                state_dir.display()
            );
        }
        let mut status = BuildStatus::load(&path)?;
        if recover(&mut status, history_len) {
            tracing::warn!("the previous build was interrupted by a server stop");
            status.persist(&path)?;
        }
        let (publish, _) = watch::channel(status.clone());
        Ok(StatusStore {
            path,
            status,
            history_len,
            publish,
            metrics,
        })
    }

    /// Adds `note` to build `build_id`'s record in the history (start-up only).
    pub fn note(&mut self, build_id: u64, note: String) -> Result<()> {
        if let Some(r) = self
            .status
            .history
            .iter_mut()
            .find(|r| r.build_id == build_id)
        {
            r.notes.push(note);
            self.status.persist(&self.path)?;
            self.publish.send_replace(self.status.clone());
        }
        Ok(())
    }

    /// A receiver that sees every new status.
    pub fn subscribe(&self) -> watch::Receiver<BuildStatus> {
        self.publish.subscribe()
    }

    /// The status as loaded.
    pub fn status(&self) -> &BuildStatus {
        &self.status
    }

    fn changed(&mut self) {
        if let Err(e) = self.status.persist(&self.path) {
            tracing::error!("{e}");
        }
        self.publish.send_replace(self.status.clone());
    }
}

impl Actor for StatusStore {
    type Context = Context<Self>;
}

impl Supervised for StatusStore {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.metrics.restarted(Self::NAME);
        // The file holds the last state that was completely applied.
        match BuildStatus::load(&self.path) {
            Ok(s) => self.status = s,
            Err(e) => tracing::error!("{e}; keeping the in-memory status"),
        }
    }
}

impl Metered for StatusStore {
    const NAME: &'static str = "StatusStore";
    const MAILBOX_CAPACITY: usize = MAILBOX_CAPACITY;
    fn actor_metrics(&self) -> &ActorMetrics {
        &self.metrics
    }
}

/// Asks for the current status.
#[derive(Debug, Message)]
#[rtype(result = "Result<BuildStatus>")]
pub struct GetStatus;

/// A build has started.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct BuildStarted {
    pub build_id: u64,
    pub requested_by: RequestedBy,
    pub started: String,
}

/// A build entered a step.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct StepStarted {
    pub build_id: u64,
    pub step: String,
}

/// The running build evaluated its targets (all `building`), or judged them.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct TargetsChanged {
    pub build_id: u64,
    pub targets: Vec<tailcache_wire::hosts::TargetOutcome>,
}

/// A build has ended.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct BuildFinished {
    pub record: BuildRecord,
}

/// Writes the status file again (at shutdown; every change is already written).
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct FlushStatus;

/// Makes the handler panic: exercises supervision in tests.
#[doc(hidden)]
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct PanicForTest;

impl Handler<GetStatus> for StatusStore {
    type Result = Result<BuildStatus>;
    fn handle(&mut self, msg: GetStatus, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, _, _| this.status.clone())
    }
}

impl Handler<BuildStarted> for StatusStore {
    type Result = Result<()>;
    fn handle(&mut self, msg: BuildStarted, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            let s = &mut this.status;
            s.is_running = true;
            s.build_id = Some(msg.build_id);
            s.current_step = None;
            s.last_start = Some(msg.started);
            s.requested_by = Some(msg.requested_by);
            this.changed();
        })
    }
}

impl Handler<StepStarted> for StatusStore {
    type Result = Result<()>;
    fn handle(&mut self, msg: StepStarted, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            if this.status.is_running && this.status.build_id == Some(msg.build_id) {
                this.status.current_step = Some(msg.step);
                this.changed();
            }
        })
    }
}

impl Handler<TargetsChanged> for StatusStore {
    type Result = Result<()>;
    fn handle(&mut self, msg: TargetsChanged, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            if this.status.build_id == Some(msg.build_id) {
                this.status.targets = msg.targets;
                this.changed();
            }
        })
    }
}

impl Handler<BuildFinished> for StatusStore {
    type Result = Result<()>;
    fn handle(&mut self, msg: BuildFinished, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            let r = msg.record;
            let s = &mut this.status;
            if s.build_id == Some(r.build_id) {
                s.is_running = false;
                s.current_step = None;
            }
            s.last_finish = Some(r.finished.clone());
            s.last_status = Some(r.result);
            if r.commit.is_some() {
                s.last_commit = r.commit.clone();
            }
            s.last_exit_status = r.exit_status;
            s.last_failing_step = r.failing_step.clone();
            s.last_error = r.error.clone();
            let n = this.history_len;
            push_history(s, r, n);
            this.changed();
        })
    }
}

impl Handler<FlushStatus> for StatusStore {
    type Result = Result<()>;
    fn handle(&mut self, msg: FlushStatus, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, _, _| this.status.persist(&this.path))?
    }
}

impl Handler<PanicForTest> for StatusStore {
    type Result = Result<()>;
    fn handle(&mut self, msg: PanicForTest, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |_, _, _| panic!("PanicForTest"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailcache_wire::hosts::TargetOutcome;

    #[test]
    fn a_crashed_build_and_its_building_targets_become_interrupted() {
        let target = |result: &str| TargetOutcome {
            target: "laptop".into(),
            build_id: 4,
            result: result.into(),
            generation: None,
            failed_derivations: Vec::new(),
            error: None,
        };
        let mut s = BuildStatus {
            is_running: true,
            build_id: Some(4),
            current_step: Some("build".into()),
            targets: vec![target(target_result::BUILDING)],
            ..BuildStatus::default()
        };
        assert!(recover(&mut s, 20));
        assert_eq!(s.last_status, Some(BuildResult::Interrupted));
        assert_eq!(s.targets, [target(target_result::INTERRUPTED)]);
        assert_eq!(s.history[0].failing_step.as_deref(), Some("build"));
        assert!(!recover(&mut s, 20), "once");
    }

    /// A status.json written before tailnet identities, cancellers and notes existed.
    const OLD: &str = r#"{
  "is_running": false,
  "build_id": 3,
  "last_status": "cancelled",
  "requested_by": { "host": "laptop", "user": "alice" },
  "history": [
    {
      "build_id": 3,
      "requested_by": { "host": "laptop", "user": "alice" },
      "started": "2026-01-01T00:00:00Z",
      "finished": "2026-01-01T00:01:00Z",
      "result": "cancelled",
      "commit": null,
      "failing_step": "build",
      "exit_status": 143,
      "error": "cancelled",
      "duration_seconds": 60.0
    }
  ]
}"#;

    #[test]
    fn old_status_files_still_load_and_new_fields_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::fs::write(&path, OLD).unwrap();
        let mut s = BuildStatus::load(&path).unwrap();
        let who = s.requested_by.clone().unwrap();
        assert_eq!((who.user.as_str(), who.tailnet.as_ref()), ("alice", None));
        assert_eq!(who.to_string(), "alice@laptop");
        assert!(s.history[0].notes.is_empty() && s.history[0].cancelled_by.is_none());

        s.history[0].cancelled_by = Some(RequestedBy {
            tailnet: Some(TailnetIdentity {
                node: "ci-runner".into(),
                user: "tagged-devices".into(),
                tags: vec!["tag:ci".into()],
            }),
            ..who
        });
        s.history[0].notes.push("a note".into());
        s.persist(&path).unwrap();
        let again = BuildStatus::load(&path).unwrap();
        assert_eq!(again, s);
        let by = again.history[0].cancelled_by.as_ref().unwrap();
        assert_eq!(by.to_string(), "ci-runner [tag:ci]");
    }
}
