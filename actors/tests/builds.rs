//! BuildSupervisor, StatusStore and LogTail together, with real child processes: small
//! shell scripts as build steps.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tailcache_actors::{
    ActorsConfig, BuildResult, CancelOutcome, Capture, LogEvent, LogLimits, RequestedBy,
    TriggerOutcome,
};
use tokio::sync::{broadcast, mpsc};

fn config(dir: &Path, steps: Vec<tailcache_actors::Step>) -> ActorsConfig {
    let mut c = ActorsConfig::new(dir, steps);
    c.kill_grace = Duration::from_millis(300);
    c
}

fn log_file(dir: &Path) -> String {
    let files: Vec<_> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::read_to_string(&files[0]).unwrap()
}

#[test]
fn success_records_status_log_lines_and_new_paths() {
    let dir = tempfile::tempdir().unwrap();
    let steps = vec![
        sh(
            "hello",
            "echo hello; echo to-stderr >&2; printf 'bad\\377utf8\\n'",
        ),
        sh("long", "echo abcdefghijklmnopqrstuvwxyz"),
        sh(
            "paths",
            "echo /nix/store/aaaa-out; echo 'not a path'; echo /nix/store/bbbb-dev",
        )
        .capture(Capture::OutPaths),
    ];
    let mut c = config(dir.path(), steps);
    c.max_line_bytes = 20;
    run(|| async {
        let (tx, mut rx) = mpsc::channel(4);
        let (h, _reg) = start_with_sink(c, Arc::new(tx));
        let id = trigger(&h).await;
        let s = finished(&h, id).await;
        assert_eq!(s.last_status, Some(BuildResult::Success));
        assert!(!s.is_running);
        assert_eq!(s.requested_by, Some(who()));
        assert_eq!(s.history[0].result, BuildResult::Success);
        assert_eq!(s.last_failing_step, None);
        let (got_id, paths) = rx.recv().await.unwrap();
        assert_eq!(got_id, id);
        let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(paths, ["/nix/store/aaaa-out", "/nix/store/bbbb-dev"]);
        let logs = h.logs(100).await.unwrap();
        for want in [
            "hello",
            "to-stderr",
            "bad\u{FFFD}utf8",
            "abcdefghijklmnopqrst",
            "uvwxyz",
        ] {
            assert!(logs.iter().any(|l| l == want), "{want:?} not in {logs:?}");
        }
        let file = log_file(dir.path());
        assert!(
            file.contains("hello\n") && file.contains("uvwxyz\n"),
            "{file}"
        );
        assert_eq!(h.metrics().builds.count(BuildResult::Success), 1);
        // The file on disk says the same as the actor.
        let on_disk: tailcache_actors::BuildStatus =
            serde_json::from_slice(&std::fs::read(dir.path().join("status.json")).unwrap())
                .unwrap();
        assert_eq!(on_disk, s);
    });
}

#[test]
fn a_failing_step_fails_the_build_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("third-ran");
    let steps = vec![
        sh("one", "true"),
        sh("two", "echo failing; exit 3"),
        sh("three", &format!("touch {}", marker.display())),
    ];
    let c = config(dir.path(), steps);
    run(|| async {
        let (h, _reg) = start(c);
        let id = trigger(&h).await;
        let s = finished(&h, id).await;
        assert_eq!(s.last_status, Some(BuildResult::Failed));
        assert_eq!(s.last_failing_step.as_deref(), Some("two"));
        assert_eq!(s.last_exit_status, Some(3));
        assert!(!marker.exists(), "a step after the failure ran");
        assert_eq!(h.metrics().builds.count(BuildResult::Failed), 1);
    });
}

#[test]
fn cancel_stops_a_long_running_step() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), vec![sh("wait", "echo started; sleep 1000")]);
    run(|| async {
        let (h, _reg) = start(c);
        let (_, mut follow) = h.follow(0).await.unwrap();
        let id = trigger(&h).await;
        line(&mut follow, |l| l == "started").await;
        let canceller = RequestedBy {
            host: "desktop".into(),
            user: "bob".into(),
            tailnet: None,
        };
        assert_eq!(
            h.cancel(canceller.clone()).await.unwrap(),
            CancelOutcome::Cancelling { build_id: id }
        );
        let s = finished(&h, id).await;
        assert_eq!(s.last_status, Some(BuildResult::Cancelled));
        assert_eq!(s.history[0].cancelled_by, Some(canceller));
        assert_eq!(s.last_failing_step.as_deref(), Some("wait"));
        // Killed by SIGTERM.
        assert_eq!(s.last_exit_status, Some(128 + 15));
        assert_eq!(h.cancel(who()).await.unwrap(), CancelOutcome::NotRunning);
    });
}

fn gone(pid_file: &Path) -> bool {
    let pid = std::fs::read_to_string(pid_file).unwrap();
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        // A zombie waiting for its reaper is dead too.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z'),
    }
}

#[test]
fn a_step_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (dir.path().join("sh.pid"), dir.path().join("sleep.pid"));
    let script = format!(
        "trap '' TERM; echo $$ > {}; sleep 1000 & echo $! > {}; echo ready; wait",
        p1.display(),
        p2.display()
    );
    let c = config(dir.path(), vec![sh("stubborn", &script)]);
    run(|| async {
        let (h, _reg) = start(c);
        let (_, mut follow) = h.follow(0).await.unwrap();
        let id = trigger(&h).await;
        line(&mut follow, |l| l == "ready").await;
        let cancelled_at = Instant::now();
        h.cancel(who()).await.unwrap();
        let s = finished(&h, id).await;
        assert!(cancelled_at.elapsed() >= Duration::from_millis(300));
        assert_eq!(s.last_status, Some(BuildResult::Cancelled));
        assert_eq!(s.last_exit_status, Some(128 + 9), "not killed by SIGKILL");
        let deadline = Instant::now() + DEADLINE;
        while !(gone(&p1) && gone(&p2)) {
            assert!(Instant::now() < deadline, "step processes survived");
            tokio::task::yield_now().await;
        }
    });
}

#[test]
fn a_step_timeout_fails_the_build_naming_the_step_even_when_term_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let steps = vec![
        sh("quick", "true"),
        sh("slow", "trap '' TERM; sleep 1000").timeout(Duration::from_millis(200)),
    ];
    let c = config(dir.path(), steps);
    run(|| async {
        let (h, _reg) = start(c);
        let id = trigger(&h).await;
        let s = finished(&h, id).await;
        assert_eq!(s.last_status, Some(BuildResult::Failed));
        assert_eq!(s.last_failing_step.as_deref(), Some("slow"));
        assert_eq!(s.last_exit_status, Some(128 + 9));
        assert!(
            s.last_error.as_deref().unwrap().contains("timed out"),
            "{s:?}"
        );
    });
}

#[test]
fn a_hundred_thousand_lines_reach_the_file_and_a_slow_follower_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), vec![sh("flood", "seq 1 100000")]);
    c.log = LogLimits {
        ring_lines: 1000,
        files_kept: 5,
        follower_buffer: 64,
    };
    run(|| async {
        let (h, _reg) = start(c);
        // Subscribed and never read while the build runs.
        let (_, mut idle) = h.follow(10).await.unwrap();
        let id = trigger(&h).await;
        let s = finished(&h, id).await;
        assert_eq!(s.last_status, Some(BuildResult::Success));

        let file = log_file(dir.path());
        let numbers: Vec<u32> = file.lines().filter_map(|l| l.parse().ok()).collect();
        assert_eq!(numbers, (1..=100_000).collect::<Vec<u32>>());

        let tail = h.logs(5000).await.unwrap();
        assert_eq!(tail.len(), 1000, "the ring holds the last N lines");
        assert_eq!(tail.last().unwrap(), &format!("==> build {id} success"));
        let tail_numbers: Vec<u32> = tail.iter().filter_map(|l| l.parse().ok()).collect();
        assert_eq!(
            tail_numbers,
            (100_000 - 998..=100_000).collect::<Vec<u32>>()
        );

        match idle.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert!(n > 99_000, "skipped {n}"),
            other => panic!("the slow follower was not told it lagged: {other:?}"),
        }
        // After the skip it still learns that the build ended.
        let mut ended = false;
        while let Ok(ev) = idle.try_recv() {
            ended |= ev
                == LogEvent::Ended {
                    build_id: id,
                    result: BuildResult::Success,
                };
        }
        assert!(ended);
    });
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Lets one blocked `read x < fifo` step go on.
async fn release(fifo: &Path) {
    let fifo = fifo.to_owned();
    tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n").unwrap())
        .await
        .unwrap();
}

fn gated(
    dir: &Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    tailcache_actors::Step,
) {
    let fifo = dir.join("gate");
    let count = dir.join("count");
    mkfifo(&fifo);
    let step = sh(
        "gated",
        &format!(
            "echo run >> {}; read x < {}",
            count.display(),
            fifo.display()
        ),
    );
    (fifo, count, step)
}

fn runs(count: &Path) -> usize {
    std::fs::read_to_string(count).unwrap().lines().count()
}

#[test]
fn fifty_concurrent_triggers_run_exactly_one_build() {
    let dir = tempfile::tempdir().unwrap();
    let (fifo, count, step) = gated(dir.path());
    let c = config(dir.path(), vec![step]);
    run(|| async {
        let (h, _reg) = start(c);
        let answers = futures::future::join_all((0..50).map(|_| h.trigger(who()))).await;
        let mut started = Vec::new();
        let mut refused = 0;
        for a in answers {
            match a.unwrap() {
                TriggerOutcome::Triggered { build_id } => started.push(build_id),
                TriggerOutcome::AlreadyRunning { requested_by, .. } => {
                    assert_eq!(requested_by, who());
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((started.len(), refused), (1, 49));
        release(&fifo).await;
        finished(&h, started[0]).await;
        assert_eq!(runs(&count), 1);
    });
}

#[test]
fn coalescing_runs_exactly_one_follow_up_build() {
    let dir = tempfile::tempdir().unwrap();
    let (fifo, count, step) = gated(dir.path());
    let mut c = config(dir.path(), vec![step]);
    c.coalesce = true;
    run(|| async {
        let (h, _reg) = start(c);
        let first = trigger(&h).await;
        let answers = futures::future::join_all((0..49).map(|_| h.trigger(who()))).await;
        for a in answers {
            assert_eq!(a.unwrap(), TriggerOutcome::Queued { after_build: first });
        }
        release(&fifo).await;
        finished(&h, first).await;
        release(&fifo).await;
        let s = finished(&h, first + 1).await;
        assert_eq!(s.history.len(), 2);
        assert_eq!(runs(&count), 2);
        // Nothing else was queued: the next trigger starts the next build at once.
        assert_eq!(
            h.trigger(who()).await.unwrap(),
            TriggerOutcome::Triggered {
                build_id: first + 2
            }
        );
        h.cancel(who()).await.unwrap();
        finished(&h, first + 2).await;
    });
}

#[test]
fn shutdown_interrupts_the_running_build_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), vec![sh("wait", "echo started; sleep 1000")]);
    run(|| async {
        let (h, _reg) = start(c);
        let (_, mut follow) = h.follow(0).await.unwrap();
        let id = trigger(&h).await;
        line(&mut follow, |l| l == "started").await;
        h.shutdown().await.unwrap();
        // Recorded before shutdown answered.
        let s = h.status().await.unwrap();
        assert!(!s.is_running);
        assert_eq!(s.history[0].build_id, id);
        assert_eq!(s.last_status, Some(BuildResult::Interrupted));
        let on_disk = std::fs::read_to_string(dir.path().join("status.json")).unwrap();
        assert!(on_disk.contains("\"interrupted\""), "{on_disk}");
        assert!(log_file(dir.path()).contains("started\n"));
        assert_eq!(
            h.trigger(who()).await.unwrap(),
            TriggerOutcome::ShuttingDown
        );
    });
}
