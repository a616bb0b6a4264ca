//! The lock files builds used, kept by their hash: `<state_dir>/locks/<nix32>.lock`, where
//! `sha256:<nix32>` is what a generation record names as its `lock_hash`. Written once
//! (atomically) and never changed, so a record can always be traced to the exact inputs.

use std::path::{Path, PathBuf};

use tailcache_store::Sha256Hash;

use crate::error::{Error, Result};
use crate::persist;

/// Where the lock file with this hash (`sha256:<nix32>` or bare nix32) is kept; `None` for
/// anything that is not such a hash (so a request can never name another file).
pub fn lock_path(state_dir: &Path, hash: &str) -> Option<PathBuf> {
    let hash = Sha256Hash::parse(hash)
        .or_else(|_| Sha256Hash::from_nix32(hash))
        .ok()?;
    Some(
        state_dir
            .join("locks")
            .join(format!("{}.lock", hash.to_nix32())),
    )
}

/// Keeps `<checkout>/flake.lock` (if the flake has one) and returns its `sha256:<nix32>`.
pub fn keep_lock(checkout: &Path, state_dir: &Path) -> Result<Option<String>> {
    let src = checkout.join("flake.lock");
    let bytes = match std::fs::read(&src) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", src.display()), e)),
    };
    let hash = Sha256Hash::digest(&bytes).to_string();
    let Some(dest) = lock_path(state_dir, &hash) else {
        return Ok(None);
    };
    if !dest.exists() {
        let dir = state_dir.join("locks");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        persist::write_atomically(&dest, &bytes)?;
    }
    Ok(Some(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_by_hash_and_found_by_either_spelling() {
        let d = tempfile::tempdir().unwrap();
        let checkout = d.path().join("c");
        std::fs::create_dir_all(&checkout).unwrap();
        assert_eq!(keep_lock(&checkout, d.path()).unwrap(), None);
        std::fs::write(checkout.join("flake.lock"), b"{\"version\": 7}\n").unwrap();
        let h = keep_lock(&checkout, d.path()).unwrap().unwrap();
        assert!(h.starts_with("sha256:") && h.len() == 59, "{h}");
        let p = lock_path(d.path(), &h).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"version\": 7}\n");
        assert_eq!(lock_path(d.path(), &h["sha256:".len()..]), Some(p));
        for bad in ["../x", "sha256:abc", "", "sha256:../../etc/passwd"] {
            assert_eq!(lock_path(d.path(), bad), None, "{bad}");
        }
    }
}
