//! Closures read from the store database (read-only, as `tailcache-store` opens it): an out
//! path's runtime closure with each path's NAR hash and size (a generation's size, its diff
//! and whether it is servable yet), and a derivation's closure of `.drv` files and sources
//! (`nix-store -qR <x.drv>`: which failed derivations a target depended on). Blocking: run
//! on a blocking thread.

use std::collections::{BTreeSet, HashSet, VecDeque};

use tailcache_store::StorePath;
use tailcache_store::db::StoreDb;

use super::diff::ClosureEntry;

/// Most paths one walk visits; a closure this large is cut short with a warning.
const MAX_CLOSURE: usize = 500_000;

/// Visits every valid path reachable from `root` through references (`root` included);
/// `false` when `root` is not valid.
fn walk(
    db: &StoreDb,
    root: &StorePath,
    mut visit: impl FnMut(&tailcache_store::PathInfo),
) -> tailcache_store::Result<bool> {
    let mut queue = VecDeque::from([root.clone()]);
    let mut seen = HashSet::new();
    let mut first = true;
    while let Some(path) = queue.pop_front() {
        if !seen.insert(path.hash()) {
            continue;
        }
        if seen.len() > MAX_CLOSURE {
            tracing::warn!("the closure of {root} has more than {MAX_CLOSURE} paths; cut short");
            break;
        }
        match db.query_path_info(&path.hash())? {
            Some(info) => {
                queue.extend(info.references.iter().cloned());
                visit(&info);
            }
            None if first => return Ok(false),
            None => tracing::warn!("{path} is referenced but not valid in the store"),
        }
        first = false;
    }
    Ok(true)
}

/// The runtime closure of a valid `out`, sorted by path; `None` when `out` is not valid
/// (it was not built).
pub fn out_closure(
    db: &StoreDb,
    out: &StorePath,
) -> tailcache_store::Result<Option<Vec<ClosureEntry>>> {
    let store_dir = db.layout().store_dir.clone();
    let mut entries = Vec::new();
    let valid = walk(db, out, |info| {
        entries.push(ClosureEntry {
            path: info.path.to_absolute(&store_dir),
            nar_hash: info.nar_hash.to_string(),
            nar_size: info.nar_size,
        });
    })?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(valid.then_some(entries))
}

/// The absolute paths in a derivation's closure (its input derivations and sources).
pub fn drv_closure(db: &StoreDb, drv: &StorePath) -> tailcache_store::Result<BTreeSet<String>> {
    let store_dir = db.layout().store_dir.clone();
    let mut paths = BTreeSet::new();
    walk(db, drv, |info| {
        paths.insert(info.path.to_absolute(&store_dir));
    })?;
    Ok(paths)
}
