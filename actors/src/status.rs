//! StatusStore: owns the build status — whether a build runs, who asked for it, its current
//! step, how the last one ended and a short history — and persists it to
//! `<state_dir>/status.json` atomically on every change (temp file in the same directory,
//! fsync, rename, fsync of the directory), so a crash at any instant leaves either the old
//! or the new file. A status found `is_running` at start-up was cut short by a crash and
//! becomes `interrupted`. [`BuildStatus`] is the JSON of `GET /build/status`.

use std::fs;
use std::path::{Path, PathBuf};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::atomic_file;
use crate::error::{Error, Result};
use crate::metrics::{ActorMetrics, Metered, metered};
use crate::time::now_rfc3339;

/// Who asked for a build (or cancelled one). `host` and `user` are what the request
/// claims (the CLI's headers, else the peer's address); `tailnet` is who tailscaled says
/// the caller is, when it could be asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestedBy {
    pub host: String,
    pub user: String,
    /// Absent in files written before identities came from the tailnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailnet: Option<TailnetIdentity>,
}

/// A caller as tailscaled's `whois` names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailnetIdentity {
    /// The node's short name (MagicDNS host name).
    pub node: String,
    /// The login of the node's user (`tagged-devices` for a tagged node).
    pub user: String,
    /// The node's ACL tags (`tag:ci`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl std::fmt::Display for RequestedBy {
    /// `login@node` when the tailnet said who it is (with its tags), else the claim.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tailnet {
            Some(t) if t.tags.is_empty() => write!(f, "{}@{}", t.user, t.node),
            Some(t) => write!(f, "{} [{}]", t.node, t.tags.join(", ")),
            None => write!(f, "{}@{}", self.user, self.host),
        }
    }
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildResult {
    Success,
    Failed,
    Cancelled,
    /// Stopped by a server shutdown or found running after a crash.
    Interrupted,
}

impl BuildResult {
    pub const ALL: [BuildResult; 4] = [
        BuildResult::Success,
        BuildResult::Failed,
        BuildResult::Cancelled,
        BuildResult::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuildResult::Success => "success",
            BuildResult::Failed => "failed",
            BuildResult::Cancelled => "cancelled",
            BuildResult::Interrupted => "interrupted",
        }
    }
}

/// One finished build, as kept in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub build_id: u64,
    pub requested_by: RequestedBy,
    pub started: String,
    pub finished: String,
    pub result: BuildResult,
    /// Commit built, when the fetch step got that far.
    pub commit: Option<String>,
    /// The step that failed (or was running when the build was cancelled/interrupted).
    pub failing_step: Option<String>,
    /// Exit code of the failing step; `128 + n` when it was killed by signal `n`.
    pub exit_status: Option<i32>,
    /// A short human-readable reason (`timed out after 30s`, `cannot start git: …`).
    pub error: Option<String>,
    pub duration_seconds: f64,
    /// Who cancelled the build (absent unless it was cancelled through the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<RequestedBy>,
    /// What else happened to the build, e.g. a step that outlived the server and was
    /// killed at its next start (absent in files written before notes existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The whole status: `status.json` and the body of `GET /build/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildStatus {
    pub is_running: bool,
    /// Id of the running build, else of the last one started.
    pub build_id: Option<u64>,
    /// Step of the running build.
    pub current_step: Option<String>,
    /// Start of the running build, else of the last one.
    pub last_start: Option<String>,
    pub last_finish: Option<String>,
    pub last_status: Option<BuildResult>,
    pub last_commit: Option<String>,
    /// Who asked for the running build, else for the last one.
    pub requested_by: Option<RequestedBy>,
    pub last_exit_status: Option<i32>,
    pub last_failing_step: Option<String>,
    pub last_error: Option<String>,
    /// Most recent first.
    pub history: Vec<BuildRecord>,
}

impl BuildStatus {
    /// Loads `path`; a missing file is an empty status.
    pub fn load(path: &Path) -> Result<Self> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::StatusFile {
                path: path.to_owned(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BuildStatus::default()),
            Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
        }
    }

    /// Writes the status to `path` atomically and durably.
    pub fn persist(&self, path: &Path) -> Result<()> {
        // Serialising into memory first keeps a serde error from leaving a half file.
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e.into()))?;
        json.push(b'\n');
        atomic_file::write(path, &json)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    /// The id the next build gets.
    pub fn next_build_id(&self) -> u64 {
        let newest = self.history.first().map(|r| r.build_id);
        self.build_id.max(newest).map_or(1, |id| id + 1)
    }

    /// A status loaded after a crash: a build that was running is over, `interrupted`.
    fn recover(&mut self, history_len: usize) -> bool {
        if !self.is_running {
            return false;
        }
        let finished = now_rfc3339();
        self.is_running = false;
        self.last_status = Some(BuildResult::Interrupted);
        self.last_finish = Some(finished.clone());
        self.last_failing_step = self.current_step.take();
        self.last_exit_status = None;
        self.last_error = Some("the server stopped during the build".to_owned());
        if let Some(build_id) = self.build_id {
            self.push_history(
                BuildRecord {
                    build_id,
                    requested_by: self.requested_by.clone().unwrap_or_default(),
                    started: self.last_start.clone().unwrap_or_default(),
                    finished,
                    result: BuildResult::Interrupted,
                    commit: self.last_commit.clone(),
                    failing_step: self.last_failing_step.clone(),
                    exit_status: None,
                    error: self.last_error.clone(),
                    duration_seconds: 0.0,
                    cancelled_by: None,
                    notes: Vec::new(),
                },
                history_len,
            );
        }
        true
    }

    fn push_history(&mut self, record: BuildRecord, history_len: usize) {
        self.history.insert(0, record);
        self.history.truncate(history_len);
    }
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
        let stale = atomic_file::remove_leftovers(state_dir);
        if stale > 0 {
            tracing::info!(
                "removed {stale} temp file(s) a crash left in {}",
                state_dir.display()
            );
        }
        let mut status = BuildStatus::load(&path)?;
        if status.recover(history_len) {
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

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
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
            s.push_history(r, n);
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
        fs::write(&path, OLD).unwrap();
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
