//! No build step outlives the server: after `kill -9` of the server during a step that
//! started children of its own, the kernel ends the step's leader at once, and the next
//! start kills what is left of its process group and says so in the build's record and
//! log, and removes the temp files a killed status write leaves. Repeated, since a race
//! would show only in some rounds.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::TestCache;
use common::api::{StepPids, build_section, sh_step};
use common::proc::{group_members, process_alive};

const ROUNDS: usize = 20;
const DEADLINE: Duration = Duration::from_secs(60);

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "{what} after {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(10)); // polling /proc
    }
}

fn builder<'a>(dir: &Path, build: &str) -> common::cache::TestCacheBuilder<'a> {
    let root = dir.join("store-root");
    std::fs::create_dir_all(root.join("nix/store")).unwrap();
    TestCache::builder()
        .store_root(&root)
        .state_dir(&dir.join("state"))
        .build_toml(build)
}

#[test]
fn no_step_outlives_a_kill9_of_the_server() {
    let d = tempfile::Builder::new()
        .prefix("tc-groups.")
        .tempdir()
        .unwrap();
    let pids = StepPids::new(d.path());
    // The leader starts two long children and waits for them: a group of three.
    let steps = [sh_step(
        "long",
        &format!(
            "{}; sleep 1000 & sleep 1000 & echo started; wait",
            pids.record()
        ),
        "",
    )];
    let build = build_section("kill_grace_secs = 2", &steps);
    let mut server = builder(d.path(), &build).start();
    let mut leader_gone = Vec::new();
    for round in 0..ROUNDS {
        let id = server.trigger_build();
        server.wait_log_line("started");
        let pgid = *pids.pids().last().unwrap();
        assert_eq!(group_members(pgid).len(), 3, "round {round}");
        server.kill9();
        // The kernel ends the leader (PR_SET_PDEATHSIG), with no server running.
        let start = Instant::now();
        wait_until(&format!("round {round}: leader {pgid} still runs"), || {
            !process_alive(pgid)
        });
        leader_gone.push(start.elapsed());
        // A temp file a kill in the middle of a status write would leave.
        let stale = d
            .path()
            .join("state")
            .join(format!(".status.json.tmp-99999-{round}"));
        std::fs::write(&stale, b"{\"is_run").unwrap();
        // The next start kills the rest of the group before it listens.
        let next = builder(d.path(), &build).start();
        assert!(
            !stale.exists(),
            "round {round}: {} is left",
            stale.display()
        );
        let left = group_members(pgid);
        assert!(
            left.is_empty(),
            "round {round}: {left:?} of group {pgid} survived"
        );
        let s = next.build_status();
        let last = &s["history"].as_array().unwrap()[0];
        assert_eq!(last["build_id"].as_u64(), Some(id), "{s:?}");
        assert_eq!(last["result"].as_str(), Some("interrupted"), "{s:?}");
        let notes = last["notes"].as_array().unwrap();
        let note = notes.first().and_then(|n| n.as_str()).unwrap_or("");
        assert!(
            note.contains("outlived the server") && note.contains(&format!("group {pgid}")),
            "round {round}: {s:?}"
        );
        let logs = next.logs(100);
        assert!(
            logs.iter().any(|l| l.contains(note)),
            "round {round}: {logs:?}"
        );
        server = next;
    }
    let slowest = leader_gone.iter().max().unwrap();
    println!(
        "{ROUNDS} rounds of kill -9: no survivor; leader ended by the kernel within {:.1} ms",
        slowest.as_secs_f64() * 1e3
    );
}
