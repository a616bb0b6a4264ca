//! What this machine applied: per server key (the one that verified the record) and target,
//! the generation `tailcache switch` last activated, so a server (or anyone in between) cannot
//! quietly move it back to an older generation. A small JSON file, written atomically (temp
//! file in the same directory, fsync, rename, fsync of the directory), and guarded by a lock
//! file so two switches never interleave. A file that does not parse is an error, never a
//! silent reset: resetting it would lift the rollback protection.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::{CliError, proc_uid};

/// The state file root uses (the system's generation is root's business).
pub const ROOT_STATE_FILE: &str = "/var/lib/tailcache-switch/applied.json";

/// The file's format version.
const VERSION: u32 = 1;

/// One applied generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedGeneration {
    pub generation: u64,
    pub out_path: String,
    /// `switch`, `boot`, `test` (NixOS), `activate` (home-manager) or `profile` (a package).
    pub action: String,
    pub applied_at: jiff::Timestamp,
    /// The build API it came from (for people reading the file).
    pub server: String,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    pub version: u32,
    /// Server key (`name:base64`) → target → what was applied.
    #[serde(default)]
    pub servers: BTreeMap<String, BTreeMap<String, AppliedGeneration>>,
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            version: VERSION,
            servers: BTreeMap::new(),
        }
    }
}

impl Applied {
    pub fn get(&self, key: &str, target: &str) -> Option<&AppliedGeneration> {
        self.servers.get(key)?.get(target)
    }

    pub fn set(&mut self, key: &str, target: &str, applied: AppliedGeneration) {
        self.servers
            .entry(key.to_owned())
            .or_default()
            .insert(target.to_owned(), applied);
    }
}

/// `ROOT_STATE_FILE` for root, else `$XDG_STATE_HOME/tailcache/applied.json` (else under
/// `~/.local/state`).
pub fn default_path() -> Option<PathBuf> {
    if proc_uid(1) == Some(0) {
        return Some(PathBuf::from(ROOT_STATE_FILE));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("tailcache").join("applied.json"))
}

/// Reads the state; a missing file is an empty state.
pub fn load(path: &Path) -> Result<Applied, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Applied::default()),
        Err(e) => return Err(CliError::local(format!("reading {}", path.display()), e)),
    };
    let applied: Applied = serde_json::from_str(&text).map_err(|e| {
        CliError::Config(format!(
            "{}: {e}; it remembers the generations this machine applied, so it is not \
             reset on its own: fix or remove it",
            path.display()
        ))
    })?;
    if applied.version != VERSION {
        return Err(CliError::Config(format!(
            "{}: version {} (this tailcache knows {VERSION})",
            path.display(),
            applied.version
        )));
    }
    Ok(applied)
}

/// Writes the state atomically and durably (the actors' state-file writer).
pub fn save(path: &Path, applied: &Applied) -> Result<(), CliError> {
    let failed = |e: String| {
        CliError::local(
            format!("writing {}", path.display()),
            std::io::Error::other(e),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
    }
    tailcache_actors::persist::write_json(path, applied).map_err(|e| failed(e.to_string()))
}

/// An exclusive lock on `<state file>.lock`, held until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Takes the lock, or says who holds it; never waits.
pub fn lock(path: &Path) -> Result<Lock, CliError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::local(format!("creating {}", dir.display()), e))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| CliError::local(format!("opening {}", lock_path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(Lock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::NotConfirmed(format!(
            "another `tailcache switch` is running (it holds {})",
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(CliError::local(
            format!("locking {}", lock_path.display()),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(generation: u64) -> AppliedGeneration {
        AppliedGeneration {
            generation,
            out_path: "/nix/store/b370w7ihml74cy9lg6bfj80j94ycj0fr-x".into(),
            action: "switch".into(),
            applied_at: "2026-12-01T12:00:00Z".parse().unwrap(),
            server: "http://build-server:8000".into(),
        }
    }

    #[test]
    fn round_trip_per_key_and_target() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/applied.json");
        assert_eq!(load(&p).unwrap(), Applied::default());
        let mut a = Applied::default();
        a.set("k-1:AAAA", "laptop", applied(3));
        a.set("k-2:BBBB", "laptop", applied(9));
        save(&p, &a).unwrap();
        let back = load(&p).unwrap();
        assert_eq!(back.get("k-1:AAAA", "laptop"), Some(&applied(3)));
        assert_eq!(back.get("k-2:BBBB", "laptop").unwrap().generation, 9);
        assert_eq!(back.get("k-1:AAAA", "desktop"), None);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["applied.json"]);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_reset() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("applied.json");
        std::fs::write(&p, "{\"version\": 1, \"servers\": {").unwrap();
        let e = load(&p).unwrap_err();
        assert!(e.to_string().contains("not reset on its own"), "{e}");
    }

    #[test]
    fn the_lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("applied.json");
        let held = lock(&p).unwrap();
        let e = lock(&p).unwrap_err();
        assert!(e.to_string().contains("another `tailcache switch`"), "{e}");
        drop(held);
        lock(&p).unwrap();
    }
}
