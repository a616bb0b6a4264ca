//! The process groups of running build steps, so that no step outlives the server.
//!
//! While a step runs, `<state_dir>/steps/<pgid>.json` records its group (written
//! atomically, removed once the group is gone). The kernel ends a step's leader when the
//! server dies (`PR_SET_PDEATHSIG`, see [`crate::step`]), but what the leader started keeps
//! running, re-parented to init; so at start-up every recorded group that still has members
//! is killed, and said so in the build's log and record. A record is trusted only within
//! the boot it was written in and only while its leader, if alive, is the same process
//! (same start time), so a pgid reused by someone else is never touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::persist;

/// How long start-up waits for a killed group's members to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// One running step's group as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    build_id: u64,
    step: String,
    pgid: i32,
    /// `/proc/sys/kernel/random/boot_id` when the step started.
    boot_id: String,
    /// The leader's start time (clock ticks after boot, `/proc/<pid>/stat` field 22).
    leader_start: u64,
}

/// A group that outlived the server and was killed at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survivor {
    pub build_id: u64,
    pub step: String,
    pub pgid: i32,
    /// Processes the group still had.
    pub processes: usize,
}

impl Survivor {
    /// The line for the build's log and record.
    pub fn note(&self) -> String {
        format!(
            "step {} (process group {}, {} process{}) outlived the server and was killed \
             when the server started again",
            self.step,
            self.pgid,
            self.processes,
            if self.processes == 1 { "" } else { "es" }
        )
    }
}

/// The directory of records.
#[derive(Debug, Clone)]
pub struct StepGroups {
    dir: PathBuf,
}

impl StepGroups {
    /// Opens (creates) `<state_dir>/steps` and removes temp files a crash left there.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("steps");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        persist::remove_leftovers(&dir);
        Ok(StepGroups { dir })
    }

    fn path(&self, pgid: i32) -> PathBuf {
        self.dir.join(format!("{pgid}.json"))
    }

    /// Records a step's group (its leader is `pgid`); the record goes when the returned
    /// guard is dropped, which the step does once its group is gone.
    pub(crate) fn record(&self, build_id: u64, step: &str, pgid: i32) -> Result<Recorded> {
        let record = Record {
            build_id,
            step: step.to_owned(),
            pgid,
            boot_id: boot_id().unwrap_or_default(),
            leader_start: proc_stat(pgid).map_or(0, |s| s.start),
        };
        let path = self.path(pgid);
        let json = serde_json::to_vec(&record).map_err(|e| Error::io("step record", e.into()))?;
        persist::write_atomically(&path, &json)?;
        Ok(Recorded { path })
    }

    /// Kills every recorded group that outlived a previous server, and forgets all
    /// records. Runs at start-up, before any step of this server starts.
    pub fn end_survivors(&self) -> Vec<Survivor> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let boot = boot_id();
        let mut survivors = Vec::new();
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            let record = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok());
            if let Some(r) = record
                && boot.as_deref() == Some(r.boot_id.as_str())
                && let Some(s) = end_group(&r)
            {
                survivors.push(s);
            }
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
        survivors
    }
}

/// Removes its record when dropped.
#[derive(Debug)]
pub(crate) struct Recorded {
    path: PathBuf,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Kills `r`'s group if it still has members and is still the recorded one.
fn end_group(r: &Record) -> Option<Survivor> {
    let members = members_of(r.pgid);
    if members.is_empty() {
        return None;
    }
    // A live leader with another start time: the pgid now names someone else's group.
    if let Some(leader) = proc_stat(r.pgid)
        && leader.pgrp == r.pgid
        && leader.start != r.leader_start
    {
        return None;
    }
    let processes = members.len();
    tracing::warn!(
        "build {}: step {} (process group {}, {processes} processes) outlived the previous \
         server; killing it",
        r.build_id,
        r.step,
        r.pgid
    );
    let _ = killpg(Pid::from_raw(r.pgid), Signal::SIGKILL);
    let start = Instant::now();
    while !members_of(r.pgid).is_empty() {
        if start.elapsed() > KILL_WAIT {
            tracing::error!("process group {} survived SIGKILL", r.pgid);
            break;
        }
        std::thread::sleep(Duration::from_millis(10)); // the kernel reaping them
    }
    Some(Survivor {
        build_id: r.build_id,
        step: r.step.clone(),
        pgid: r.pgid,
        processes,
    })
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy)]
struct Stat {
    pgrp: i32,
    start: u64,
    zombie: bool,
}

fn proc_stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses, so fields are
    // counted after the last ')'. state is field 3, pgrp 5, starttime 22.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        zombie: *fields.first()? == "Z",
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The live (not zombie) processes whose process group is `pgid`.
fn members_of(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.pgrp == pgid && !s.zombie))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_stat() {
        let me = i32::try_from(std::process::id()).unwrap();
        let s = proc_stat(me).unwrap();
        assert!(!s.zombie && s.start > 0);
        assert_eq!(s.pgrp, nix::unistd::getpgrp().as_raw());
        assert!(members_of(s.pgrp).contains(&me));
    }

    #[test]
    fn a_surviving_group_is_killed_and_a_reused_pgid_is_not() {
        use std::os::unix::process::CommandExt as _;
        let dir = tempfile::tempdir().unwrap();
        let groups = StepGroups::open(dir.path()).unwrap();
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 1000 & sleep 1000; wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i32::try_from(child.id()).unwrap();
        // Both sleeps started: three members.
        let start = Instant::now();
        while members_of(pgid).len() < 3 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the group never formed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // A record whose leader start time is another process's: left alone.
        let other = Record {
            build_id: 1,
            step: "other".into(),
            pgid,
            boot_id: boot_id().unwrap(),
            leader_start: 1,
        };
        assert_eq!(end_group(&other), None);
        assert_eq!(members_of(pgid).len(), 3);
        // Its own record: killed.
        let recorded = groups.record(7, "wait", pgid).unwrap();
        std::mem::forget(recorded); // as if the server died
        let survivors = groups.end_survivors();
        assert_eq!(
            survivors,
            [Survivor {
                build_id: 7,
                step: "wait".into(),
                pgid,
                processes: 3
            }]
        );
        assert!(members_of(pgid).is_empty());
        assert!(!child.wait().unwrap().success());
        assert_eq!(
            std::fs::read_dir(dir.path().join("steps")).unwrap().count(),
            0
        );
    }
}
