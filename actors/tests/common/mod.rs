//! Shared set-up of the actor tests: an actix system on a multi-thread tokio runtime (as in
//! `tailcache serve`), shell-script steps, and waits with deadlines instead of sleeps.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tailcache_actors::{
    ActorsConfig, BuildHandle, BuildStatus, LogEvent, NewPathsSink, NoSink, RequestedBy, Step,
    TriggerOutcome, start_actors,
};
use tokio::sync::broadcast;

pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn run<F: Future<Output = ()>>(f: impl FnOnce() -> F) {
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    });
    system.block_on(f());
}

pub fn sh(name: &str, script: &str) -> Step {
    Step::new(name, "/bin/sh", &["-c", script])
}

pub fn who() -> RequestedBy {
    RequestedBy {
        host: "laptop".into(),
        user: "alice".into(),
        tailnet: None,
    }
}

pub fn start(config: ActorsConfig) -> (BuildHandle, Registry) {
    start_with_sink(config, Arc::new(NoSink))
}

pub fn start_with_sink(
    config: ActorsConfig,
    sink: Arc<dyn NewPathsSink>,
) -> (BuildHandle, Registry) {
    let mut registry = Registry::default();
    let handle = start_actors(
        config,
        tailcache_actors::Metrics::register(&mut registry),
        sink,
    )
    .unwrap();
    (handle, registry)
}

pub async fn trigger(h: &BuildHandle) -> u64 {
    match h.trigger(who()).await.unwrap() {
        TriggerOutcome::Triggered { build_id } => build_id,
        other => panic!("expected a build to start, got {other:?}"),
    }
}

/// Waits until build `id` is recorded as finished.
pub async fn finished(h: &BuildHandle, id: u64) -> BuildStatus {
    let mut rx = h.watch_status();
    tokio::time::timeout(
        DEADLINE,
        rx.wait_for(|s| s.history.iter().any(|r| r.build_id == id) && s.build_id.is_some()),
    )
    .await
    .expect("build did not finish in time")
    .unwrap()
    .clone()
}

/// Waits for a log line satisfying `pred`.
pub async fn line(rx: &mut broadcast::Receiver<LogEvent>, pred: impl Fn(&str) -> bool) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match rx.recv().await {
                Ok(LogEvent::Line(l)) if pred(&l) => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("log closed: {e}"),
            }
        }
    })
    .await
    .expect("log line did not come in time");
}
