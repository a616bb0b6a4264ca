//! StatusStore persistence (atomic `status.json`, recovery of an interrupted build),
//! supervision of a panicking actor, and the metrics exposition checked by `promtool`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use prometheus_client::registry::Registry;
use tailcache_actors::metrics::{MeteredAddr, Metrics};
use tailcache_actors::status::{BuildStarted, StatusStore, StepStarted};
use tailcache_actors::{ActorsConfig, BuildResult, BuildStatus, Error, StatusFile, encode_text};

#[test]
fn a_persisted_running_build_becomes_interrupted_and_ids_continue() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = BuildStatus {
        is_running: true,
        build_id: Some(7),
        current_step: Some("build".into()),
        last_start: Some("2024-01-01T00:00:00.000Z".into()),
        requested_by: Some(who()),
        ..BuildStatus::default()
    };
    std::fs::write(
        dir.path().join("status.json"),
        serde_json::to_vec(&crashed).unwrap(),
    )
    .unwrap();
    let c = ActorsConfig::new(dir.path(), vec![sh("ok", "true")]);
    run(|| async {
        let (h, _reg) = start(c);
        let s = h.status().await.unwrap();
        assert!(!s.is_running);
        assert_eq!(s.last_status, Some(BuildResult::Interrupted));
        assert_eq!(s.last_failing_step.as_deref(), Some("build"));
        assert_eq!(s.history[0].build_id, 7);
        assert_eq!(s.history[0].requested_by, who());
        let on_disk = BuildStatus::load(&dir.path().join("status.json")).unwrap();
        assert_eq!(on_disk, s, "the recovery was not written back");
        assert_eq!(trigger(&h).await, 8);
        let s = finished(&h, 8).await;
        assert_eq!(s.last_status, Some(BuildResult::Success));
    });
    // And the finished status survives a restart unchanged.
    let before = BuildStatus::load(&dir.path().join("status.json")).unwrap();
    let c = ActorsConfig::new(dir.path(), vec![]);
    run(|| async {
        let (h, _reg) = start(c);
        assert_eq!(h.status().await.unwrap(), before);
    });
}

#[test]
fn status_writes_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("status.json");
    let state_dir = dir.path().to_owned();
    run(|| async move {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let store = StatusStore::open(&state_dir, 20, metrics.actors.clone()).unwrap();
        let addr = MeteredAddr::start(store);
        let started = BuildStarted {
            build_id: 1,
            requested_by: who(),
            started: "now".into(),
        };
        addr.ask(started).await.unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let bytes = std::fs::read(&path).unwrap();
                    let s: BuildStatus = serde_json::from_slice(&bytes)
                        .unwrap_or_else(|e| panic!("torn status.json ({e}): {bytes:?}"));
                    assert!(s.is_running);
                    reads += 1;
                }
                reads
            })
        };
        // Step names of varying length, so a torn write would show as bad JSON.
        for i in 0..300 {
            let step = "x".repeat(i % 97);
            addr.ask(StepStarted { build_id: 1, step }).await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let reads = reader.join().unwrap();
        assert!(reads > 0);
        let s = BuildStatus::load(&path).unwrap();
        assert_eq!(s.current_step, Some("x".repeat(299 % 97)));
        let names: Vec<_> = std::fs::read_dir(&state_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["status.json"], "temporary files left behind");
    });
}

#[test]
fn a_panicking_actor_is_restarted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let c = ActorsConfig::new(dir.path(), vec![sh("ok", "true")]);
    run(|| async {
        let (h, _reg) = start(c);
        let id = trigger(&h).await;
        finished(&h, id).await;
        assert_eq!(h.metrics().actors.restarts("StatusStore"), 0);
        match h.panic_status_store_for_test().await {
            Err(Error::Panicked {
                actor: "StatusStore",
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // The next message is handled by the restarted actor, with the persisted state.
        let s = h.status().await.unwrap();
        assert_eq!(s.history[0].build_id, id);
        assert_eq!(h.metrics().actors.restarts("StatusStore"), 1);
        assert!(h.is_alive());
        assert_eq!(trigger(&h).await, id + 1);
        finished(&h, id + 1).await;
    });
}

#[test]
fn metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let c = ActorsConfig::new(dir.path(), vec![sh("ok", "echo hi"), sh("bad", "exit 1")]);
    let text = std::sync::Mutex::new(String::new());
    run(|| async {
        let (h, reg) = start(c);
        let id = trigger(&h).await;
        finished(&h, id).await;
        h.logs(10).await.unwrap();
        *text.lock().unwrap() = encode_text(&reg).unwrap();
    });
    let text = text.into_inner().unwrap();
    for name in [
        "tailcache_actor_messages_handled_total{actor=\"BuildSupervisor\",message=\"Trigger\"} 1",
        "tailcache_actor_handler_duration_seconds_bucket{",
        "tailcache_actor_mailbox_depth{",
        "tailcache_actor_restarts_total{actor=\"LogTail\"} 0",
        "tailcache_builds_total{result=\"failed\"} 1",
        "tailcache_builds_total{result=\"success\"} 0",
        "tailcache_build_duration_seconds_count{result=\"failed\"} 1",
        "# TYPE tailcache_builds_total counter",
        "# TYPE tailcache_actor_mailbox_depth gauge",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    tailcache_testkit::promtool::check_metrics(&text);
}
