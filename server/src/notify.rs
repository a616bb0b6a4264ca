//! Build notifications (`[notify]`): when a build ends, one POST to a URL with a summary —
//! a title line for the build and one line per host (ntfy-compatible plain text with
//! `Title`, `Tags` and `Priority` headers, or a JSON object) — with an optional bearer
//! token. The build never waits for it: summaries go through a bounded queue (a full queue
//! drops the newest with a warning) to a task of their own that tries each a few times with
//! doubling delays and a timeout per attempt, and logs what finally failed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tailcache_actors::fleet::{BuildObserver, BuildSummary, TargetSummary};
use tailcache_wire::build::BuildResult;
use tailcache_wire::hosts::target_result;
use tokio::sync::mpsc;

use crate::config::{NotifyConfig, NotifyFormat};

/// Summaries that may wait to be sent.
const QUEUE: usize = 16;
/// The delay before the first retry; doubled for each further one, at most [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Starts the notifier's task when `[notify] url` is set.
pub fn start(cfg: &NotifyConfig) -> anyhow::Result<Option<Arc<dyn BuildObserver>>> {
    let Some(url) = &cfg.url else {
        return Ok(None);
    };
    let token = cfg
        .token_file
        .as_deref()
        .map(crate::keys::read_secret_file)
        .transpose()
        .context("notify.token_file")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.timeout_secs))
        .connect_timeout(Duration::from_secs(cfg.timeout_secs))
        .build()
        .context("cannot create the notification client")?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let sender = Sender {
        client,
        url: url.clone(),
        token,
        format: cfg.format,
        attempts: cfg.attempts.max(1),
    };
    tokio::spawn(sender.run(rx));
    Ok(Some(Arc::new(Notifier { tx })))
}

/// What the build actors hold: queues a summary, never waits.
#[derive(Debug)]
struct Notifier {
    tx: mpsc::Sender<BuildSummary>,
}

impl BuildObserver for Notifier {
    fn build_ended(&self, summary: &BuildSummary) {
        if let Err(e) = self.tx.try_send(summary.clone()) {
            tracing::warn!(
                "notification of build {} dropped: {e}",
                summary.record.build_id
            );
        }
    }
}

#[derive(Debug)]
struct Sender {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    format: NotifyFormat,
    attempts: u32,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<BuildSummary>) {
        while let Some(summary) = rx.recv().await {
            self.send(&summary).await;
        }
    }

    /// Tries up to `attempts` times; a failure is logged, never propagated.
    async fn send(&self, summary: &BuildSummary) {
        let message = Message::of(summary);
        let mut delay = FIRST_DELAY;
        for attempt in 1..=self.attempts {
            match self.post(&message).await {
                Ok(()) => return,
                Err(e) if attempt == self.attempts => {
                    tracing::warn!(
                        "notification of build {} not delivered after {attempt} attempts: {e}",
                        message.build_id
                    );
                }
                Err(e) => {
                    tracing::info!(
                        "notification of build {} failed ({e}); retrying in {delay:?}",
                        message.build_id
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_DELAY);
                }
            }
        }
    }

    async fn post(&self, m: &Message) -> Result<(), String> {
        let mut req = self.client.post(&self.url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req = match self.format {
            NotifyFormat::Text => req
                .header("Title", &m.title)
                .header("Tags", if m.ok { "white_check_mark" } else { "x" })
                .header("Priority", if m.ok { "3" } else { "4" })
                .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(m.text.clone()),
            NotifyFormat::Json => req.json(m),
        };
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {status}", self.url))
        }
    }
}

/// The notification, as the JSON format sends it (the text format sends `title` as a header
/// and `text` as the body).
#[derive(Debug, Clone, Serialize)]
struct Message {
    build_id: u64,
    result: BuildResult,
    commit: Option<String>,
    duration_seconds: f64,
    ok: bool,
    title: String,
    /// One line per host (or one for the build when it has no targets).
    text: String,
    hosts: Vec<HostLine>,
}

#[derive(Debug, Clone, Serialize)]
struct HostLine {
    name: String,
    result: String,
    generation: Option<u64>,
    failed_derivations: Vec<String>,
    line: String,
}

impl Message {
    fn of(s: &BuildSummary) -> Message {
        let r = &s.record;
        let ok = r.result == BuildResult::Success;
        let commit = r
            .commit
            .as_deref()
            .map(|c| format!(" of {}", c.get(..12).unwrap_or(c)))
            .unwrap_or_default();
        let title = format!(
            "tailcache: build {}{commit} {} ({})",
            r.build_id,
            r.result.as_str(),
            duration(r.duration_seconds)
        );
        let hosts: Vec<HostLine> = s.targets.iter().map(host_line).collect();
        let text = if hosts.is_empty() {
            match &r.error {
                Some(e) => format!("build {} {}: {e}", r.build_id, r.result.as_str()),
                None => format!("build {} {}", r.build_id, r.result.as_str()),
            }
        } else {
            hosts
                .iter()
                .map(|h| h.line.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        };
        Message {
            build_id: r.build_id,
            result: r.result,
            commit: r.commit.clone(),
            duration_seconds: r.duration_seconds,
            ok,
            title,
            text,
            hosts,
        }
    }
}

fn host_line(t: &TargetSummary) -> HostLine {
    let o = &t.outcome;
    let line = match (o.result.as_str(), &t.new_generation, o.generation) {
        (target_result::BUILT, Some(g), Some(n)) => {
            let d = &g.diff;
            let mut line = format!(
                "{}: generation {n} built, {} (+{} −{} paths",
                o.target,
                size(g.closure_nar_size),
                d.added.len(),
                d.removed.len()
            );
            let delta: i64 = d.packages.iter().map(|p| p.size_delta).sum();
            if d.previous.is_some() {
                line.push_str(&format!(", {}", signed_size(delta)));
            }
            line.push(')');
            let changes: Vec<String> = d
                .packages
                .iter()
                .filter(|p| p.before != p.after)
                .take(5)
                .map(|p| {
                    format!(
                        "{} {} → {}",
                        p.name,
                        versions(&p.before),
                        versions(&p.after)
                    )
                })
                .collect();
            if d.previous.is_some() && !changes.is_empty() {
                line.push_str(&format!(": {}", changes.join(", ")));
            }
            line
        }
        (target_result::BUILT, None, Some(n)) => {
            format!("{}: unchanged (generation {n})", o.target)
        }
        (result, _, _) => {
            let mut line = format!("{}: {result}", o.target);
            if !o.failed_derivations.is_empty() {
                line.push_str(&format!(": {}", o.failed_derivations.join(", ")));
            } else if let Some(e) = &o.error {
                line.push_str(&format!(": {e}"));
            }
            line
        }
    };
    HostLine {
        name: o.target.clone(),
        result: o.result.clone(),
        generation: o.generation,
        failed_derivations: o.failed_derivations.clone(),
        line,
    }
}

fn versions(v: &[String]) -> String {
    match v {
        [] => "∅".to_owned(),
        [one] if one.is_empty() => "ε".to_owned(),
        many => many.join(", "),
    }
}

/// `42s`, `3m05s`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn signed_size(delta: i64) -> String {
    let sign = if delta < 0 { "−" } else { "+" };
    format!("{sign}{}", size(delta.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailcache_actors::fleet::NewGenerationSummary;
    use tailcache_wire::build::{BuildRecord, RequestedBy};
    use tailcache_wire::generation::{ClosureDiff, PackageChange};
    use tailcache_wire::hosts::TargetOutcome;

    fn outcome(target: &str, result: &str, generation: Option<u64>) -> TargetOutcome {
        TargetOutcome {
            target: target.into(),
            build_id: 7,
            result: result.into(),
            generation,
            failed_derivations: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn one_line_per_host() {
        let mut failed = outcome("server", "failed", None);
        failed.failed_derivations = vec!["/nix/store/x-broken-0.1.drv".into()];
        let s = BuildSummary {
            record: BuildRecord {
                build_id: 7,
                requested_by: RequestedBy::default(),
                started: String::new(),
                finished: String::new(),
                result: BuildResult::Failed,
                commit: Some("0123456789abcdef".into()),
                failing_step: Some("build".into()),
                exit_status: None,
                error: Some("1 of 3 targets failed: server".into()),
                duration_seconds: 65.0,
                cancelled_by: None,
                notes: Vec::new(),
            },
            targets: vec![
                TargetSummary {
                    outcome: outcome("laptop", "built", Some(2)),
                    new_generation: Some(NewGenerationSummary {
                        closure_nar_size: 3 << 20,
                        diff: ClosureDiff {
                            previous: Some(1),
                            added: vec!["a".into(), "b".into()],
                            removed: vec!["c".into(), "d".into()],
                            packages: vec![PackageChange {
                                name: "fleet-motd".into(),
                                before: vec!["1".into()],
                                after: vec!["2".into()],
                                size_delta: 4,
                            }],
                        },
                    }),
                },
                TargetSummary {
                    outcome: outcome("alice@laptop", "built", Some(1)),
                    new_generation: None,
                },
                TargetSummary {
                    outcome: failed,
                    new_generation: None,
                },
            ],
        };
        let m = Message::of(&s);
        assert_eq!(m.title, "tailcache: build 7 of 0123456789ab failed (1m05s)");
        let lines: Vec<&str> = m.text.lines().collect();
        assert_eq!(
            lines,
            [
                "laptop: generation 2 built, 3.0 MiB (+2 −2 paths, +4 B): fleet-motd 1 → 2",
                "alice@laptop: unchanged (generation 1)",
                "server: failed: /nix/store/x-broken-0.1.drv",
            ]
        );
        assert!(!m.ok);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(
            json["hosts"][2]["failed_derivations"][0],
            "/nix/store/x-broken-0.1.drv"
        );
        assert_eq!(json["result"], "failed");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
        assert_eq!(signed_size(-2048), "−2.0 KiB");
    }
}
