//! The build routes' JSON: `GET /build/status` ([`BuildStatus`], also what the server keeps
//! in `status.json`), and the replies of `POST /build/trigger` ([`TriggerOutcome`]) and
//! `POST /build/cancel` ([`CancelOutcome`]). Times are RFC 3339 UTC strings
//! (`2026-11-24T14:30:05.123Z`); a `status.json` written by an older server, without the
//! fields added since, still loads (every field of [`BuildStatus`] has a default).

use serde::{Deserialize, Serialize};

use crate::hosts::TargetOutcome;

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
    /// Per target, how the running build (once it has evaluated which targets it builds:
    /// `building`), else the last build that got that far, went for it. Empty until a
    /// build of the default pipeline has evaluated its targets (explicit steps have none).
    pub targets: Vec<TargetOutcome>,
}

impl BuildStatus {
    /// The id the next build gets.
    pub fn next_build_id(&self) -> u64 {
        let newest = self.history.first().map(|r| r.build_id);
        self.build_id.max(newest).map_or(1, |id| id + 1)
    }
}

/// Answer of `POST /build/trigger` (without its human `message`, which the server adds).
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
    /// `supersede`: the running build (of an older commit) is being cancelled; a build of
    /// `commit` runs as soon as it has stopped.
    Superseding {
        cancelled_build: u64,
        commit: String,
    },
    ShuttingDown,
}

/// Answer of `POST /build/cancel` (without its human `message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CancelOutcome {
    Cancelling { build_id: u64 },
    NotRunning,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_json_of_an_older_server_loads() {
        let old = r#"{"is_running":false,"build_id":3,"current_step":null,
            "last_start":"2026-11-24T14:30:05.123Z","last_finish":"2026-11-24T14:31:00.000Z",
            "last_status":"success","last_commit":"abc","requested_by":{"host":"h","user":"u"},
            "last_exit_status":null,"last_failing_step":null,"last_error":null,"history":[]}"#;
        let s: BuildStatus = serde_json::from_str(old).unwrap();
        assert_eq!(s.last_status, Some(BuildResult::Success));
        assert!(s.targets.is_empty());
        assert_eq!(s.next_build_id(), 4);
    }

    #[test]
    fn trigger_outcomes_are_tagged_by_status() {
        let t = TriggerOutcome::Superseding {
            cancelled_build: 4,
            commit: "0123".into(),
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["status"], "superseding");
        assert_eq!(v["cancelled_build"], 4);
        let back: TriggerOutcome = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
    }
}
