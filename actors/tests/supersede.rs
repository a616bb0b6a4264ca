//! Superseding without Nix: a build whose first step records the commit of a git checkout
//! (`Capture::Commit`) and whose second step runs until stopped. A trigger for that commit,
//! or for none (no branch head configured), leaves it running; a trigger naming another
//! commit (as a webhook push does) cancels it — recorded `cancelled`, "superseded" — and
//! the next build starts at once.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{finished, line, run, sh, start, trigger, who};
use tailcache_actors::{ActorsConfig, BuildResult, Capture, TriggerOutcome};

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_trigger_for_another_commit_supersedes_the_running_build() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "one"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let steps = vec![
        sh("fetch", "true").capture(Capture::Commit(repo.clone())),
        sh("long", "echo waiting; sleep 1000"),
    ];
    let mut c = ActorsConfig::new(dir.path(), steps);
    c.kill_grace = Duration::from_millis(300);
    c.supersede = true;
    run(|| async {
        let (h, _reg) = start(c);
        let (_, mut follow) = h.follow(0).await.unwrap();
        let first = trigger(&h).await;
        line(&mut follow, |l| l == "waiting").await;

        for commit in [Some(head.clone()), Some(head[..12].to_owned()), None] {
            let t = h.trigger_for(who(), commit.clone()).await.unwrap();
            assert!(
                matches!(t, TriggerOutcome::AlreadyRunning { build_id, .. } if build_id == first),
                "{commit:?}: {t:?}"
            );
        }
        let newer = "f".repeat(40);
        let t = h.trigger_for(who(), Some(newer.clone())).await.unwrap();
        assert_eq!(
            t,
            TriggerOutcome::Superseding {
                cancelled_build: first,
                commit: newer
            }
        );
        let s = finished(&h, first).await;
        let record = s.history.iter().find(|r| r.build_id == first).unwrap();
        assert_eq!(record.result, BuildResult::Cancelled);
        assert_eq!(record.commit.as_deref(), Some(head.as_str()));
        assert!(
            record.error.as_deref().unwrap_or("").contains("superseded"),
            "{record:?}"
        );
        // The superseding build runs now; cancel it to end the test.
        line(&mut follow, |l| l == "waiting").await;
        let s = h.status().await.unwrap();
        assert!(s.is_running);
        assert_eq!(s.build_id, Some(first + 1));
        h.cancel(who()).await.unwrap();
        finished(&h, first + 1).await;
    });
}
