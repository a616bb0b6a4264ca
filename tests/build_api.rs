//! The build API over HTTP with shell-script build steps (`[[build.steps]]`):
//! trigger → status → logs → live logs as Server-Sent Events until `end`; success, failure
//! and timeout as recorded; `already_running` naming who asked; cancel; 50 concurrent
//! triggers running exactly one build; the bearer token; the GitHub webhook's HMAC;
//! SIGTERM during a build (exit 0, `interrupted`); SIGKILL during a build and during a
//! burst of status writes (on restart `status.json` parses and says `interrupted`).
//!
//! Builds are held in a step by gate files the test opens, so every "while running"
//! check happens while the build really runs, without sleeping.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::TestCache;
use common::api::{
    Gate, StepPids, build_section, hmac_sha256, parse_json, process_exists, read_status_file,
    sh_step,
};
use serde_json::Value;
use tempfile::TempDir;

const END_TIMEOUT: Duration = Duration::from_secs(60);

fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("tc-api.")
        .tempdir()
        .unwrap()
}

/// An empty store root, so the cache side serves nothing of the machine's.
fn empty_store_root(dir: &Path) -> PathBuf {
    let root = dir.join("store-root");
    std::fs::create_dir_all(root.join("nix/store")).unwrap();
    root
}

fn builder<'a>(dir: &Path, build: &str) -> common::cache::TestCacheBuilder<'a> {
    TestCache::builder()
        .store_root(&empty_store_root(dir))
        .build_toml(build)
}

fn start(dir: &Path, build: &str) -> TestCache {
    builder(dir, build).start()
}

const SETTINGS: &str = "kill_grace_secs = 2\nlog_lines = 1000";

/// A step that appends a line to `count` each time it runs.
fn count_step(count: &Path) -> String {
    sh_step("count", &format!("echo run >> '{}'", count.display()), "")
}

fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Where the line that is exactly `line` is (the log also echoes each step's command
/// line, which contains the script's text, so substrings would match that too).
fn position(lines: &[String], line: &str) -> usize {
    lines
        .iter()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("no line {line:?} in {lines:?}"))
}

fn end_data(end: &common::sse::SseEvent) -> Value {
    parse_json("the `end` event's data", &end.data)
}

#[test]
fn trigger_status_logs_and_live_follow_until_end() {
    let d = scratch();
    let gate = Gate::new(d.path(), "go");
    let steps = [
        sh_step(
            "prepare",
            "echo prepare-line-1; echo prepare-line-2 >&2",
            "",
        ),
        sh_step(
            "wait",
            &format!(
                "echo before-gate; {}; echo after-gate-1; printf 'progress 10%%\\rprogress 100%%\\n'; echo after-gate-2",
                gate.wait_script()
            ),
            "",
        ),
    ];
    let server = start(d.path(), &build_section(SETTINGS, &steps));

    let t = server.trigger("alice", "laptop");
    assert_eq!(t["status"].as_str(), Some("triggered"), "{t:?}");
    assert!(t["message"].as_str().is_some(), "no message in {t:?}");
    let id = t["build_id"].as_u64().expect("build_id");

    let s = server.wait_step(id, "wait");
    let by = &s["requested_by"];
    assert_eq!(by["user"].as_str(), Some("alice"), "{s:?}");
    assert_eq!(by["host"].as_str(), Some("laptop"), "{s:?}");
    assert!(s["last_start"].as_str().is_some(), "{s:?}");

    let lines = server.wait_log_line("before-gate");
    let p1 = position(&lines, "prepare-line-1");
    let p2 = position(&lines, "prepare-line-2");
    let wait = position(&lines, "before-gate");
    assert!(p1 < wait && p2 < wait, "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("after-gate")),
        "the gate is still closed: {lines:?}"
    );

    let mut follow = server.follow(Some(1000));
    // The tail comes first and already holds what was printed before the follow.
    loop {
        let e = follow
            .next_event(END_TIMEOUT)
            .expect("stream closed during the tail");
        assert_ne!(e.event.as_deref(), Some("end"), "ended early: {e:?}");
        if e.data == "before-gate" {
            break;
        }
    }
    gate.open();
    let (live, end) = follow.until_end(END_TIMEOUT);
    let a1 = position(&live, "after-gate-1");
    let a2 = position(&live, "after-gate-2");
    assert!(a1 < a2, "{live:?}");
    // A progress line (carriage returns) neither breaks the stream nor smuggles a CR in.
    let progress = &live[a1 + 1];
    assert!(
        progress.ends_with("progress 100%") && !progress.contains('\r'),
        "{live:?}"
    );
    let end = end_data(&end);
    assert_eq!(end["build_id"].as_u64(), Some(id), "{end:?}");
    assert_eq!(end["result"].as_str(), Some("success"), "{end:?}");
    follow.expect_closed(Duration::from_secs(10));

    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s:?}");
    assert!(s["last_finish"].as_str().is_some(), "{s:?}");
    assert_eq!(s["current_step"], Value::Null, "{s:?}");
    let last = &s["history"][0];
    assert_eq!(last["result"].as_str(), Some("success"), "{last:?}");
    assert_eq!(last["requested_by"]["user"].as_str(), Some("alice"));

    // Everything the build printed is in the log, in order.
    let all = server.logs(1000);
    assert!(position(&all, "before-gate") < position(&all, "after-gate-1"));
}

#[test]
fn log_lines_are_capped_and_an_idle_follow_ends_at_once() {
    let d = scratch();
    let steps = [sh_step(
        "count",
        "i=0; while [ $i -lt 80 ]; do echo count-$i; i=$((i+1)); done",
        "",
    )];
    let server = start(d.path(), &build_section("log_lines = 50", &steps));
    let id = server.trigger_build();
    server.wait_finished(id);

    let all = server.logs(100_000);
    assert_eq!(all.len(), 50, "the ring buffer holds 50 lines: {all:?}");
    assert!(all.iter().any(|l| l.ends_with("count-79")), "{all:?}");
    assert!(!all.iter().any(|l| l.ends_with("count-0")), "{all:?}");
    let five = server.logs(5);
    assert_eq!(five.as_slice(), &all[45..], "the last 5 lines");

    // No build runs: the tail, then `end` and the stream closes.
    let mut follow = server.follow(Some(3));
    let (tail, end) = follow.until_end(Duration::from_secs(10));
    assert_eq!(tail.as_slice(), &all[47..], "the tail of an idle follow");
    assert_eq!(end.event.as_deref(), Some("end"));
    follow.expect_closed(Duration::from_secs(10));
}

#[test]
fn a_failing_step_is_recorded_with_its_exit_status() {
    let d = scratch();
    let gate = Gate::new(d.path(), "go");
    let never = d.path().join("never-ran");
    let steps = [
        sh_step("ok", &format!("echo fine; {}", gate.wait_script()), ""),
        sh_step("breaks", "echo about-to-fail; exit 3", ""),
        sh_step(
            "never",
            &format!("echo should-not-run; touch '{}'", never.display()),
            "",
        ),
    ];
    let server = start(d.path(), &build_section(SETTINGS, &steps));
    let id = server.trigger_build();
    server.wait_step(id, "ok");
    let mut follow = server.follow(None);
    gate.open();
    let (_, end) = follow.until_end(END_TIMEOUT);
    assert_eq!(end_data(&end)["result"].as_str(), Some("failed"), "{end:?}");

    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("failed"), "{s:?}");
    assert_eq!(s["last_failing_step"].as_str(), Some("breaks"), "{s:?}");
    assert_eq!(s["last_exit_status"].as_i64(), Some(3), "{s:?}");
    let last = &s["history"][0];
    assert_eq!(last["result"].as_str(), Some("failed"));
    assert_eq!(last["failing_step"].as_str(), Some("breaks"));
    assert_eq!(last["exit_status"].as_i64(), Some(3));
    assert!(!never.exists(), "a step after the failing one ran");
    let log = server.logs(1000);
    position(&log, "about-to-fail");
    assert!(!log.iter().any(|l| l == "should-not-run"), "{log:?}");
}

#[test]
fn a_step_past_its_timeout_fails_the_build() {
    let d = scratch();
    let gate = Gate::new(d.path(), "never-opened");
    let pids = StepPids::new(d.path());
    let steps = [sh_step(
        "slow",
        &format!("{}; echo sleeping; {}", pids.record(), gate.wait_script()),
        "timeout_secs = 1",
    )];
    let server = start(d.path(), &build_section(SETTINGS, &steps));
    let id = server.trigger_build();
    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("failed"), "{s:?}");
    assert_eq!(s["last_failing_step"].as_str(), Some("slow"), "{s:?}");
    let error = s["last_error"].as_str().unwrap_or("");
    assert!(error.contains("timed out"), "last_error {error:?}");
    for pid in pids.pids() {
        assert!(!process_exists(pid), "the timed-out step {pid} still runs");
    }
}

#[test]
fn already_running_names_who_asked_and_cancel_stops_the_build() {
    let d = scratch();
    let gate = Gate::new(d.path(), "go");
    let pids = StepPids::new(d.path());
    let steps = [sh_step(
        "wait",
        &format!("{}; echo waiting; {}", pids.record(), gate.wait_script()),
        "",
    )];
    let server = start(d.path(), &build_section(SETTINGS, &steps));
    let t = server.trigger("alice", "laptop");
    let id = t["build_id"].as_u64().expect("build_id");
    server.wait_step(id, "wait");

    let again = server.trigger("bob", "desktop");
    assert_eq!(
        again["status"].as_str(),
        Some("already_running"),
        "{again:?}"
    );
    assert_eq!(again["build_id"].as_u64(), Some(id), "{again:?}");
    assert!(
        again["since"].as_str().is_some_and(|s| !s.is_empty()),
        "{again:?}"
    );
    assert!(again["message"].as_str().is_some(), "{again:?}");
    let by = &again["requested_by"];
    assert_eq!(by["user"].as_str(), Some("alice"), "{again:?}");
    assert_eq!(by["host"].as_str(), Some("laptop"), "{again:?}");
    let s = server.build_status();
    assert_eq!(s["requested_by"]["user"].as_str(), Some("alice"));

    let c = server.cancel();
    assert_eq!(c["status"].as_str(), Some("cancelling"), "{c:?}");
    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("cancelled"), "{s:?}");
    assert_eq!(s["last_failing_step"].as_str(), Some("wait"), "{s:?}");
    let step_pids = pids.pids();
    assert_eq!(step_pids.len(), 1, "{step_pids:?}");
    assert!(
        !process_exists(step_pids[0]),
        "the cancelled step still runs"
    );

    let c = server.cancel();
    assert_eq!(c["status"].as_str(), Some("not_running"), "{c:?}");

    // The supervisor is free again.
    gate.open();
    let next = server.trigger_build();
    assert!(next > id, "build ids grow: {next} after {id}");
    let s = server.wait_finished(next);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s:?}");
}

#[test]
fn requested_by_defaults_to_unknown_user_at_the_client_address() {
    let d = scratch();
    let steps = [sh_step("quick", "echo quick", "")];
    let server = start(d.path(), &build_section(SETTINGS, &steps));
    let r = server.api_post("/build/trigger", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = parse_json("trigger", &r.text())["build_id"]
        .as_u64()
        .expect("build_id");
    let s = server.wait_finished(id);
    let by = &s["history"][0]["requested_by"];
    assert_eq!(by["user"].as_str(), Some("unknown"), "{s:?}");
    assert_eq!(by["host"].as_str(), Some("127.0.0.1"), "{s:?}");
}

#[test]
fn fifty_concurrent_triggers_run_exactly_one_build() {
    let d = scratch();
    let gate = Gate::new(d.path(), "go");
    let count = d.path().join("runs");
    let steps = [sh_step(
        "count",
        &format!("echo run >> '{}'; {}", count.display(), gate.wait_script()),
        "",
    )];
    let server = Arc::new(start(d.path(), &build_section(SETTINGS, &steps)));
    let barrier = Arc::new(Barrier::new(50));
    let answers: Vec<Value> = (0..50)
        .map(|i| {
            let server = Arc::clone(&server);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                server.trigger(&format!("user-{i}"), &format!("host-{i}"))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let triggered: Vec<&Value> = answers
        .iter()
        .filter(|a| a["status"].as_str() == Some("triggered"))
        .collect();
    assert_eq!(triggered.len(), 1, "{answers:?}");
    let id = triggered[0]["build_id"].as_u64().unwrap();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|a| a["status"].as_str() == Some("already_running"))
        .collect();
    assert_eq!(refused.len(), 49, "{answers:?}");
    assert!(refused.iter().all(|a| a["build_id"].as_u64() == Some(id)));

    server.wait_step(id, "count");
    gate.open();
    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s:?}");
    assert_eq!(s["history"].as_array().map(Vec::len), Some(1), "{s:?}");
    assert_eq!(lines_of(&count), 1, "the build step ran more than once");
}

#[test]
fn the_token_guards_post_routes() {
    let d = scratch();
    let count = d.path().join("runs");
    let steps = [count_step(&count)];
    let server = builder(d.path(), &build_section(SETTINGS, &steps))
        .api_token("tok-3f9a7c")
        .start();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer tok-3f9a7"),
        Some("Bearer tok-3f9a7cX"),
        Some("Basic dG9rLTNmOWE3Yw=="),
        Some("tok-3f9a7c"),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        for route in ["/build/trigger", "/build/cancel"] {
            let r = server.api_post(route, &headers, b"");
            assert_eq!(r.status, 401, "POST {route} with {auth:?}: {}", r.text());
        }
    }
    let s = server.build_status();
    assert_eq!(s["build_id"], Value::Null, "a refused trigger ran: {s:?}");
    assert_eq!(server.api_get("/health").status, 200, "GET needs no token");

    let id = server.trigger_build();
    server.wait_finished(id);
    assert_eq!(lines_of(&count), 1);
}

fn push_payload() -> Vec<u8> {
    br#"{"ref":"refs/heads/main","before":"0000000000000000000000000000000000000000","after":"1111111111111111111111111111111111111111","repository":{"full_name":"me/machines"},"pusher":{"name":"me"}}"#.to_vec()
}

fn post_webhook(server: &TestCache, signature: Option<&str>, body: &[u8]) -> u16 {
    let mut headers = vec![
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("Content-Type", "application/json"),
    ];
    if let Some(s) = signature {
        headers.push(("X-Hub-Signature-256", s));
    }
    let r = server.api_post("/build/webhook", &headers, body);
    if r.status == 200 {
        let j = parse_json("POST /build/webhook", &r.text());
        assert_eq!(j["status"].as_str(), Some("triggered"), "{j:?}");
    }
    r.status
}

#[test]
fn the_webhook_needs_a_valid_signature() {
    let d = scratch();
    let count = d.path().join("runs");
    let steps = [count_step(&count)];
    let secret = "hook-secret-8d1e";
    let server = builder(d.path(), &build_section(SETTINGS, &steps))
        .webhook_secret(secret)
        .start();
    let body = push_payload();
    let good = format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &body))
    );
    let wrong_key = format!(
        "sha256={}",
        hex::encode(hmac_sha256(b"not-the-secret", &body))
    );
    let other_body = format!(
        "sha256={}",
        hex::encode(hmac_sha256(
            secret.as_bytes(),
            b"{\"ref\":\"refs/heads/other\"}"
        ))
    );
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    let sha1 = format!("sha1={}", &good["sha256=".len()..][..40]);
    for sig in [
        None,
        Some(""),
        Some("sha256="),
        Some("sha256=zz"),
        Some(wrong_key.as_str()),
        Some(other_body.as_str()),
        Some(flipped.as_str()),
        Some(sha1.as_str()),
        Some(&good["sha256=".len()..]),
    ] {
        let status = post_webhook(&server, sig, &body);
        assert!(
            status == 401 || status == 403,
            "signature {sig:?} answered {status}"
        );
    }
    // A signature spelled with a sign: `u8::from_str_radix` read "+a" as 0x0a, so a MAC
    // byte below 0x10 could be written "+X" and still matched. The body gets trailing
    // spaces (still the same JSON) until its MAC has such a byte.
    let (signed, plus) = (0..64)
        .find_map(|n| {
            let mut b = body.clone();
            b.extend(std::iter::repeat_n(b' ', n));
            let h = hex::encode(hmac_sha256(secret.as_bytes(), &b));
            let i = (0..h.len()).step_by(2).find(|&i| h.as_bytes()[i] == b'0')?;
            Some((b, format!("sha256={}+{}", &h[..i], &h[i + 1..])))
        })
        .unwrap();
    let status = post_webhook(&server, Some(&plus), &signed);
    assert!(status == 401 || status == 403, "{plus}: {status}");
    // A valid signature over a different body.
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let status = post_webhook(&server, Some(&good), &tampered);
    assert!(status == 401 || status == 403, "tampered body: {status}");
    let s = server.build_status();
    assert_eq!(s["build_id"], Value::Null, "a refused webhook ran: {s:?}");
    assert!(!count.exists());

    assert_eq!(post_webhook(&server, Some(&good), &body), 200);
    let s = server.wait_status("a build", |s| s["build_id"].as_u64().is_some());
    let id = s["build_id"].as_u64().unwrap();
    server.wait_finished(id);
    assert_eq!(lines_of(&count), 1);
}

#[test]
fn without_a_repository_or_steps_trigger_is_not_configured() {
    let d = scratch();
    let server = TestCache::builder()
        .store_root(&empty_store_root(d.path()))
        .start();
    let r = server.api_post("/build/trigger", &[], b"");
    assert_eq!(r.status, 409, "{}", r.text());
    let j = parse_json("trigger", &r.text());
    assert_eq!(j["status"].as_str(), Some("not_configured"), "{j:?}");
    assert!(j["message"].as_str().is_some(), "{j:?}");
}

#[test]
fn health_reports_the_actors() {
    let d = scratch();
    let steps = [sh_step("quick", "true", "")];
    let server = start(d.path(), &build_section(SETTINGS, &steps));
    let r = server.api_get("/health");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = parse_json("GET /health", &r.text());
    assert_eq!(j["status"].as_str(), Some("healthy"), "{j:?}");
    assert_eq!(j["cache_running"].as_bool(), Some(true), "{j:?}");
    assert_eq!(j["build_actors_running"].as_bool(), Some(true), "{j:?}");
}

fn log_files(state_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state_dir.join("logs"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn sigterm_during_a_build_records_interrupted_and_exits_zero() {
    let d = scratch();
    let gate = Gate::new(d.path(), "never-opened");
    let pids = StepPids::new(d.path());
    let steps = [sh_step(
        "wait",
        &format!(
            "{}; echo still-going; {}",
            pids.record(),
            gate.wait_script()
        ),
        "",
    )];
    let mut server = start(d.path(), &build_section(SETTINGS, &steps));
    let id = server.trigger_build();
    server.wait_step(id, "wait");
    server.wait_log_line("still-going");

    server.sigterm();
    let exit = server.wait_exit(Duration::from_secs(30));
    assert_eq!(
        exit.code(),
        Some(0),
        "exit after SIGTERM: {exit}; stderr:\n{}",
        server.stderr()
    );
    let s = read_status_file(&server.status_file());
    assert_eq!(s["is_running"].as_bool(), Some(false), "{s:?}");
    assert_eq!(s["last_status"].as_str(), Some("interrupted"), "{s:?}");
    let last = &s["history"][0];
    assert_eq!(last["build_id"].as_u64(), Some(id), "{s:?}");
    assert_eq!(last["result"].as_str(), Some("interrupted"), "{s:?}");
    for pid in pids.pids() {
        assert!(!process_exists(pid), "step {pid} outlived the server");
    }
    let logs = log_files(&server.state_dir());
    let log = std::fs::read_to_string(logs.last().expect("a build log file")).unwrap();
    assert!(log.contains("still-going"), "log file: {log:?}");
}

#[test]
fn kill9_during_a_build_then_restart_shows_interrupted() {
    let d = scratch();
    let state = d.path().join("state");
    let gate = Gate::new(d.path(), "go");
    let pids = StepPids::new(d.path());
    let steps = [sh_step(
        "wait",
        &format!("{}; echo waiting; {}", pids.record(), gate.wait_script()),
        "",
    )];
    let build = build_section(SETTINGS, &steps);
    let mut first = builder(d.path(), &build).state_dir(&state).start();
    let id = first.trigger_build();
    first.wait_step(id, "wait");
    first.kill9();
    let on_disk = read_status_file(&state.join("status.json"));
    assert_eq!(on_disk["is_running"].as_bool(), Some(true), "{on_disk:?}");
    drop(first);

    let second = builder(d.path(), &build).state_dir(&state).start();
    let s = second.build_status();
    assert_eq!(s["is_running"].as_bool(), Some(false), "{s:?}");
    assert_eq!(s["last_status"].as_str(), Some("interrupted"), "{s:?}");
    let last = &s["history"][0];
    assert_eq!(last["build_id"].as_u64(), Some(id), "{s:?}");
    assert_eq!(last["result"].as_str(), Some("interrupted"), "{s:?}");
    let on_disk = read_status_file(&state.join("status.json"));
    assert_eq!(on_disk["last_status"].as_str(), Some("interrupted"));

    gate.open();
    let next = second.trigger_build();
    assert!(
        next > id,
        "build ids grow across restarts: {next} after {id}"
    );
    let s = second.wait_finished(next);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s:?}");
}

#[test]
fn kill9_during_a_burst_of_status_writes_leaves_a_parsable_status() {
    let d = scratch();
    let state = d.path().join("state");
    let gate = Gate::new(d.path(), "never-opened");
    let pids = StepPids::new(d.path());
    // Every step start is a status write (temp file, fsync, rename).
    let mut steps: Vec<String> = (0..300)
        .map(|i| sh_step(&format!("s-{i}"), "true", ""))
        .collect();
    steps.push(sh_step(
        "wait",
        &format!("{}; {}", pids.record(), gate.wait_script()),
        "",
    ));
    let build = build_section(SETTINGS, &steps);
    let mut interrupted = Vec::new();
    for round in 0..4 {
        let mut server = builder(d.path(), &build).state_dir(&state).start();
        let s = server.build_status();
        if let Some(prev) = interrupted.last() {
            assert_eq!(s["last_status"].as_str(), Some("interrupted"), "{s:?}");
            assert_eq!(s["build_id"].as_u64(), Some(*prev), "{s:?}");
        }
        let id = server.trigger_build();
        server.wait_status(&format!("round {round}: build {id} in its steps"), |s| {
            s["build_id"].as_u64() == Some(id)
                && s["current_step"]
                    .as_str()
                    .is_some_and(|st| st.starts_with("s-"))
        });
        server.kill9();
        let on_disk = read_status_file(&state.join("status.json"));
        assert_eq!(on_disk["build_id"].as_u64(), Some(id), "{on_disk:?}");
        interrupted.push(id);
    }
    let server = builder(d.path(), &build).state_dir(&state).start();
    let s = server.build_status();
    assert_eq!(s["is_running"].as_bool(), Some(false), "{s:?}");
    let history: Vec<(Option<u64>, Option<&str>)> = s["history"]
        .as_array()
        .expect("a history list")
        .iter()
        .map(|r| (r["build_id"].as_u64(), r["result"].as_str()))
        .collect();
    for id in &interrupted {
        assert!(
            history.contains(&(Some(*id), Some("interrupted"))),
            "build {id} not recorded interrupted: {history:?}"
        );
    }
}

/// Sends a request head (plus `body`, which may be only the start of what the head
/// declares) and reads the answer's status line; the server may answer before the body.
fn status_of_raw(base_url: &str, head: &str, body: &[u8]) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(common::http::host_port(base_url)).unwrap();
    s.set_read_timeout(Some(END_TIMEOUT)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // The server may already have answered and closed: a failed write is fine.
    let _ = s.write_all(body);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        line.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"))
}

#[test]
fn oversized_bodies_are_refused_with_413() {
    let d = scratch();
    let count = d.path().join("runs");
    let steps = [count_step(&count)];
    let server = builder(d.path(), &build_section(SETTINGS, &steps))
        .webhook_secret("hook-secret")
        .start();
    let api = server.api_url();
    let some = vec![b'x'; 64 << 10];
    // Declared sizes: refused before the body is read.
    for (method, target, declared) in [
        ("POST", "/build/trigger", 8 << 20),
        ("POST", "/build/trigger", 5000),
        ("POST", "/build/cancel", 8 << 20),
        ("GET", "/build/status", 8 << 20),
        ("GET", "/health", 8 << 20),
        ("POST", "/build/webhook", (1 << 20) + 1),
    ] {
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\
             X-GitHub-Event: push\r\n\r\n"
        );
        let status = status_of_raw(api, &head, &some[..some.len().min(declared)]);
        assert_eq!(status, 413, "{method} {target} with {declared} bytes");
    }
    // A chunked body has no declared size: refused once more than the limit was read.
    let mut chunked = Vec::new();
    for _ in 0..16 {
        chunked.extend_from_slice(format!("{:x}\r\n", 1024).as_bytes());
        chunked.extend_from_slice(&[b'x'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /build/trigger HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(status_of_raw(api, head, &chunked), 413);
    let s = server.build_status();
    assert_eq!(
        s["build_id"],
        serde_json::Value::Null,
        "an oversized trigger ran: {s:?}"
    );
    // Within the limits everything works as before.
    let r = server.api_post("/build/trigger", &[], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = parse_json("trigger", &r.text())["build_id"]
        .as_u64()
        .unwrap();
    server.wait_finished(id);
    assert_eq!(lines_of(&count), 1);
}
