//! Speaking to the build-API listener of a `TestCache` started with `.api()`: triggers,
//! status polling with deadlines, logs (plain and followed as SSE), metrics; plus the
//! pieces scenarios are made of — shell-script build steps as `[[build.steps]]` TOML,
//! gate files a step waits on (so a test decides when a build may go on, without
//! sleeping), JSON parsing and the webhook's HMAC-SHA256 (RFC 2104).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::cache::{API_TIMEOUT, TestCache};
use super::http::{self, Response};
use super::sse::EventStream;

/// Parses JSON from the server; a parse failure names what was being read.
pub fn parse_json(what: &str, text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{what} is not valid JSON ({e}): {text:?}"))
}

/// The headers naming who asks for a build.
pub fn who(user: &str, host: &str) -> [(&'static str, String); 2] {
    [
        ("X-Tailcache-User", user.to_string()),
        ("X-Tailcache-Host", host.to_string()),
    ]
}

impl TestCache {
    pub fn api_get(&self, target: &str) -> Response {
        http::get(self.api_url(), target)
    }

    /// A POST exactly as given (no token added).
    pub fn api_post(&self, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        http::post(self.api_url(), target, headers, body)
    }

    /// A POST with the configured token, if any.
    pub fn api_post_auth(&self, target: &str, headers: &[(&str, &str)]) -> Response {
        let bearer = self.api_token().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(b) = &bearer {
            all.push(("Authorization", b));
        }
        self.api_post(target, &all, b"")
    }

    /// `POST /build/trigger` as `user@host`; must answer 200 with JSON.
    pub fn trigger(&self, user: &str, host: &str) -> Value {
        let h = who(user, host);
        let r = self.api_post_auth(
            "/build/trigger",
            &[(h[0].0, h[0].1.as_str()), (h[1].0, h[1].1.as_str())],
        );
        assert_eq!(r.status, 200, "POST /build/trigger: {}", r.text());
        parse_json("POST /build/trigger", &r.text())
    }

    /// Triggers and insists on `triggered`; returns the build id.
    pub fn trigger_build(&self) -> u64 {
        let t = self.trigger("itest", "itest-host");
        assert_eq!(t["status"].as_str(), Some("triggered"), "{t:?}");
        t["build_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no build_id in {t:?}"))
    }

    /// `POST /build/cancel`; must answer 200 with JSON.
    pub fn cancel(&self) -> Value {
        let r = self.api_post_auth("/build/cancel", &[]);
        assert_eq!(r.status, 200, "POST /build/cancel: {}", r.text());
        parse_json("POST /build/cancel", &r.text())
    }

    /// `GET /build/status`.
    pub fn build_status(&self) -> Value {
        let r = self.api_get("/build/status");
        assert_eq!(r.status, 200, "GET /build/status: {}", r.text());
        parse_json("GET /build/status", &r.text())
    }

    /// Polls `GET /build/status` until `pred` holds; panics after [`API_TIMEOUT`].
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + API_TIMEOUT;
        loop {
            let s = self.build_status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "status never became {what} within {API_TIMEOUT:?}; last: {s:?}\nlog: {:?}\nstderr:\n{}",
                self.logs(50),
                self.stderr()
            );
            // Polling the server's real state.
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until build `id` runs the step `step`.
    pub fn wait_step(&self, id: u64, step: &str) -> Value {
        self.wait_status(&format!("build {id} in step {step}"), |s| {
            s["is_running"].as_bool() == Some(true)
                && s["build_id"].as_u64() == Some(id)
                && s["current_step"].as_str() == Some(step)
        })
    }

    /// Waits until build `id` has finished and been recorded.
    pub fn wait_finished(&self, id: u64) -> Value {
        self.wait_status(&format!("build {id} finished"), |s| {
            s["is_running"].as_bool() == Some(false)
                && s["history"][0]["build_id"].as_u64() == Some(id)
        })
    }

    /// `GET /build/logs?lines=n`.
    pub fn logs(&self, n: usize) -> Vec<String> {
        let r = self.api_get(&format!("/build/logs?lines={n}"));
        assert_eq!(r.status, 200, "GET /build/logs: {}", r.text());
        let j = parse_json("GET /build/logs", &r.text());
        j["logs"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /build/logs: no list of lines: {j}"))
            .iter()
            .map(|l| {
                l.as_str()
                    .unwrap_or_else(|| panic!("log line {l:?}"))
                    .to_string()
            })
            .collect()
    }

    /// Polls the log until a line is exactly `line` (the log also echoes each step's
    /// command line, which contains the script's text).
    pub fn wait_log_line(&self, line: &str) -> Vec<String> {
        let deadline = Instant::now() + API_TIMEOUT;
        loop {
            let lines = self.logs(1000);
            if lines.iter().any(|l| l == line) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {line:?} within {API_TIMEOUT:?}; log: {lines:?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `GET /build/logs?follow=1[&lines=n]` as an event stream (status 200 and
    /// `text/event-stream` checked).
    pub fn follow(&self, lines: Option<usize>) -> EventStream {
        let target = match lines {
            Some(n) => format!("/build/logs?follow=1&lines={n}"),
            None => "/build/logs?follow=1".to_string(),
        };
        let s = EventStream::open(self.api_url(), &target);
        assert_eq!(s.status, 200, "GET {target}");
        let ct = s.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("text/event-stream"),
            "GET {target}: content-type {ct:?}"
        );
        s
    }

    /// `GET /metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        let r = self.api_get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// The sum of the samples of `name` whose labels include all of `labels` (0 when
    /// there are none).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&self.metrics(), name, labels)
    }

    /// `<state_dir>/status.json`.
    pub fn status_file(&self) -> PathBuf {
        self.state_dir().join("status.json")
    }
}

/// The sum of the samples of `name` in the Prometheus `text` whose labels include all of
/// `labels` (0 when there are none).
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Reads and parses a `status.json`.
pub fn read_status_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_json(&path.display().to_string(), &text)
}

/// A `[build]` section with `settings` (TOML lines) and these steps.
pub fn build_section(settings: &str, steps: &[String]) -> String {
    let mut s = format!("[build]\n{settings}\n");
    for step in steps {
        s.push_str(step);
    }
    s
}

/// A `[[build.steps]]` entry running `script` with `/bin/sh -c`; `extra` is more TOML
/// lines for the step (`timeout_secs = 5`, …).
pub fn sh_step(name: &str, script: &str, extra: &str) -> String {
    assert!(
        !script.contains("'''"),
        "scripts go into a TOML literal string"
    );
    format!(
        "\n[[build.steps]]\nname = \"{name}\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", '''\n{script}\n''']\n{extra}\n"
    )
}

/// A file a build step waits for: the test creates it when the build may go on. The
/// wait is bounded (two minutes) so a step orphaned by a killed server ends by itself.
#[derive(Debug, Clone)]
pub struct Gate {
    pub path: PathBuf,
}

impl Gate {
    pub fn new(dir: &Path, name: &str) -> Gate {
        Gate {
            path: dir.join(format!("gate-{name}")),
        }
    }

    /// Shell code that blocks until the gate is open.
    pub fn wait_script(&self) -> String {
        format!(
            "i=0; while [ ! -e '{}' ]; do i=$((i+1)); if [ $i -gt 2400 ]; then echo 'gate never opened' >&2; exit 97; fi; sleep 0.05; done",
            self.path.display()
        )
    }

    pub fn open(&self) {
        std::fs::write(&self.path, b"open").unwrap();
    }
}

/// Shell code that appends the step's pid to `pid_file` (a step runs in its own process
/// group, led by this shell).
pub fn record_pid(pid_file: &Path) -> String {
    format!("echo $$ >> '{}'", pid_file.display())
}

/// The pids `record_pid` wrote.
pub fn recorded_pids(pid_file: &Path) -> Vec<u32> {
    std::fs::read_to_string(pid_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills the process groups `record_pid` recorded, if they still exist: cleans up after
/// a server killed with SIGKILL (its steps outlive it).
pub fn kill_step_groups(pid_file: &Path) {
    for pid in recorded_pids(pid_file) {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Whether process `pid` exists (`kill -0`).
pub fn process_exists(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.map(|x| x ^ b);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[test]
fn hmac_matches_rfc_4231_case_2() {
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    assert_eq!(
        hex::encode(mac),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// Where steps record their pids; on drop, kills whatever of them still runs (also when
/// the test failed half-way).
#[derive(Debug)]
pub struct StepPids {
    pub path: PathBuf,
}

impl StepPids {
    pub fn new(dir: &Path) -> StepPids {
        StepPids {
            path: dir.join("step-pids"),
        }
    }

    pub fn record(&self) -> String {
        record_pid(&self.path)
    }

    pub fn pids(&self) -> Vec<u32> {
        recorded_pids(&self.path)
    }

    /// Waits (with a deadline) until `n` steps have recorded their pid. The status says a
    /// step runs once it is spawned, which on a busy machine can be before its shell has
    /// run its first line.
    pub fn wait_for(&self, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pids = self.pids();
            if pids.len() >= n {
                return pids;
            }
            assert!(
                Instant::now() < deadline,
                "{n} step pid(s) never recorded: {pids:?}"
            );
            // Polling the file the steps write.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for StepPids {
    fn drop(&mut self) {
        kill_step_groups(&self.path);
    }
}
