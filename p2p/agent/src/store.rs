//! The agent's file cache: completed, verified NAR files named `<file hash hex>` in
//! `cache_dir/files`, each with its [`Proof`] beside it (`<hex>.manifest`, `<hex>.obao`: the
//! signed manifest and the BLAKE3 outboard as the server sent them), partial downloads in
//! `cache_dir/partial`, a size bound enforced by evicting the least recently used files
//! (`tailcache_store::lru`, by modification time, refreshed on use). A kept file is checked
//! against its proof whenever it is served (see `serve`), without asking the server; one
//! that fails is removed here ([`FileStore::remove`]). It is
//! also the agent's [`PieceSource`]: peers are served completed files and, of a download in
//! progress ([`Partial`]), exactly the pieces already verified and written — a range that is
//! not wholly verified is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tailcache_p2p::node::{PieceSource, RangeReader, file_range};
use tailcache_p2p::tracker::PieceMap;
use tailcache_p2p::{FileId, PieceSet};
use tailcache_store::lru;

/// What a kept file is checked against: its signed manifest and its BLAKE3 outboard, as
/// the server sent them. Not trusted as stored: the signature and the root are checked
/// again each time the file is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub manifest: Vec<u8>,
    pub outboard: Vec<u8>,
}

/// Suffixes of a kept file's proof, beside it.
const MANIFEST_SUFFIX: &str = ".manifest";
const OUTBOARD_SUFFIX: &str = ".obao";

#[derive(Debug)]
pub struct FileStore {
    files: PathBuf,
    partial: PathBuf,
    max_bytes: u64,
    /// Serialises inserts and evictions.
    lock: Mutex<()>,
    /// Downloads in progress that peers may be served from.
    partials: Mutex<HashMap<FileId, Arc<Partial>>>,
}

/// A download in progress as peers see it: its partial file, the pieces verified and
/// written there, and the pieces being fetched from the server.
#[derive(Debug)]
pub struct Partial {
    path: PathBuf,
    piece_size: u64,
    file_size: u64,
    /// (have, fetching from the server).
    bits: Mutex<(PieceSet, PieceSet)>,
}

impl Partial {
    pub fn new(path: PathBuf, piece_size: u64, file_size: u64) -> Self {
        let pieces = file_size.div_ceil(piece_size.max(1)).max(1);
        Partial {
            path,
            piece_size: piece_size.max(1),
            file_size,
            bits: Mutex::new((PieceSet::empty(pieces), PieceSet::empty(pieces))),
        }
    }

    fn bits(&self) -> std::sync::MutexGuard<'_, (PieceSet, PieceSet)> {
        self.bits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Piece `i` is verified and written: peers may be served it from now on.
    pub fn set_have(&self, i: u64) {
        let mut b = self.bits();
        b.0.insert(i);
        b.1.remove(i);
    }

    /// Piece `i` is (or no longer is) being fetched from the server.
    pub fn set_fetching(&self, i: u64, on: bool) {
        self.bits().1.set(i, on);
    }

    /// Whether every byte of `[offset, offset + len)` lies in verified pieces.
    pub fn covers(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if len == 0 || end > self.file_size {
            return false;
        }
        let b = self.bits();
        (offset / self.piece_size..=(end - 1) / self.piece_size).all(|i| b.0.contains(i))
    }

    pub fn map(&self) -> PieceMap {
        let b = self.bits();
        PieceMap {
            complete: false,
            have: b.0.clone(),
            fetching: b.1.clone(),
        }
    }
}

impl FileStore {
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let files = dir.join("files");
        let partial = dir.join("partial");
        std::fs::create_dir_all(&files)?;
        // Partial files of an earlier run are not resumed.
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        let store = FileStore {
            files,
            partial,
            max_bytes,
            lock: Mutex::new(()),
            partials: Mutex::new(HashMap::new()),
        };
        store.remove_orphan_proofs()?;
        Ok(store)
    }

    /// A crash between writing a proof and moving its file in leaves the proof alone.
    fn remove_orphan_proofs(&self) -> std::io::Result<()> {
        for e in std::fs::read_dir(&self.files)? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            let owner = name
                .strip_suffix(MANIFEST_SUFFIX)
                .or_else(|| name.strip_suffix(OUTBOARD_SUFFIX))
                .and_then(FileId::from_base16);
            if let Some(id) = owner
                && !self.path(&id).exists()
            {
                let _ = std::fs::remove_file(self.files.join(name));
            }
        }
        Ok(())
    }

    fn partials(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, Arc<Partial>>> {
        self.partials.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves the verified pieces of `partial` to peers until [`FileStore::unregister`].
    pub fn register(&self, id: &FileId, partial: Arc<Partial>) {
        self.partials().insert(*id, partial);
    }

    /// Stops serving `partial` (if it is still the one registered for `id`).
    pub fn unregister(&self, id: &FileId, partial: &Arc<Partial>) {
        let mut map = self.partials();
        if map.get(id).is_some_and(|p| Arc::ptr_eq(p, partial)) {
            map.remove(id);
        }
    }

    pub fn path(&self, id: &FileId) -> PathBuf {
        self.files.join(id.to_base16())
    }

    /// A fresh name for a partial download.
    pub fn partial_path(&self, id: &FileId) -> PathBuf {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        self.partial
            .join(format!("{}.{}.{n}", id.to_base16(), std::process::id()))
    }

    /// The completed file, if held; its use refreshes its place in the LRU order.
    pub fn get(&self, id: &FileId) -> Option<PathBuf> {
        let p = self.path(id);
        let f = std::fs::File::open(&p).ok()?;
        let _ = f.set_modified(std::time::SystemTime::now());
        Some(p)
    }

    fn proof_paths(&self, id: &FileId) -> (PathBuf, PathBuf) {
        let hex = id.to_base16();
        (
            self.files.join(format!("{hex}{MANIFEST_SUFFIX}")),
            self.files.join(format!("{hex}{OUTBOARD_SUFFIX}")),
        )
    }

    /// The proof kept beside a completed file; `None` if there is none (a file kept by an
    /// older agent) or it cannot be read.
    pub fn proof(&self, id: &FileId) -> Option<Proof> {
        let (m, o) = self.proof_paths(id);
        Some(Proof {
            manifest: std::fs::read(m).ok()?,
            outboard: std::fs::read(o).ok()?,
        })
    }

    /// Moves a verified partial file into the cache with its proof (written first, each
    /// file renamed into place, so a crash leaves no file without its proof), then evicts
    /// down to the bound. Returns the ids evicted.
    pub fn insert(
        &self,
        id: &FileId,
        partial: &Path,
        proof: &Proof,
    ) -> std::io::Result<Vec<FileId>> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (m, o) = self.proof_paths(id);
        for (dest, bytes) in [(m, &proof.manifest), (o, &proof.outboard)] {
            let tmp = self.partial_path(id);
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, dest)?;
        }
        std::fs::rename(partial, self.path(id))?;
        Ok(self.evict(Some(id)))
    }

    /// Removes a completed file (it failed verification) and its proof; true if the file
    /// was there.
    pub fn remove(&self, id: &FileId) -> bool {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.remove_unlocked(id)
    }

    fn remove_unlocked(&self, id: &FileId) -> bool {
        let (m, o) = self.proof_paths(id);
        let removed = std::fs::remove_file(self.path(id)).is_ok();
        let _ = std::fs::remove_file(m);
        let _ = std::fs::remove_file(o);
        removed
    }

    /// Every completed file held.
    pub fn list(&self) -> Vec<FileId> {
        self.entries().into_iter().map(|e| e.key).collect()
    }

    fn entries(&self) -> Vec<lru::Entry<FileId, std::time::SystemTime>> {
        let Ok(dir) = std::fs::read_dir(&self.files) else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let e = e.ok()?;
            let key = FileId::from_base16(e.file_name().to_str()?)?;
            let m = e.metadata().ok()?;
            Some(lru::Entry {
                key,
                size: m.len(),
                last_used: m.modified().ok()?,
            })
        })
        .collect()
    }

    fn evict(&self, keep: Option<&FileId>) -> Vec<FileId> {
        lru::victims(self.entries(), self.max_bytes, keep)
            .into_iter()
            .filter(|v| self.remove_unlocked(&v.key))
            .map(|v| v.key)
            .collect()
    }
}

impl PieceSource for FileStore {
    fn open(&self, file: &FileId, offset: u64, len: u64) -> Option<RangeReader> {
        let partial = self.partials().get(file).cloned();
        if let Some(p) = partial
            && p.covers(offset, len)
            && let Some(r) = file_range(&p.path, offset, len)
        {
            return Some(r);
        }
        // Completed (possibly just now: the partial file was renamed into the cache).
        file_range(&self.path(file), offset, len)
    }

    fn pieces(&self, file: &FileId) -> Option<PieceMap> {
        if self.path(file).is_file() {
            return Some(PieceMap::complete());
        }
        self.partials().get(file).map(|p| p.map())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof(n: u8) -> Proof {
        Proof {
            manifest: vec![n; 3],
            outboard: vec![n; 5],
        }
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), 10).unwrap();
        let id = |n: u8| FileId::from_bytes([n; 32]);
        let put = |n: u8, len: usize| {
            let id = id(n);
            let p = store.partial_path(&id);
            std::fs::write(&p, vec![n; len]).unwrap();
            let old =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(n));
            std::fs::File::open(&p).unwrap().set_modified(old).unwrap();
            store.insert(&id, &p, &proof(n)).unwrap()
        };
        assert!(put(1, 4).is_empty());
        assert!(put(2, 4).is_empty());
        // 12 bytes > 10: the oldest goes, never the file just inserted.
        assert_eq!(put(3, 4), vec![id(1)]);
        assert_eq!(store.list().len(), 2);
        assert!(store.get(&id(1)).is_none());
        assert_eq!(store.proof(&id(1)), None, "evicted with its file");
        assert!(store.get(&id(3)).is_some());
        assert_eq!(store.proof(&id(3)), Some(proof(3)));
        assert!(store.remove(&id(3)));
        assert!(!store.remove(&id(3)));
        assert!(store.get(&id(3)).is_none());
        assert_eq!(store.proof(&id(3)), None);
        // A proof whose file is gone (a crash in between) is removed at the next start.
        let (m, _) = store.proof_paths(&id(3));
        std::fs::write(&m, b"x").unwrap();
        drop(store);
        let store = FileStore::open(dir.path(), 10).unwrap();
        assert!(!m.exists());
        assert_eq!(store.list().len(), 1);
        assert_eq!(store.proof(&id(2)), Some(proof(2)));
    }

    #[tokio::test]
    async fn a_partial_file_serves_only_verified_pieces() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), 1 << 20).unwrap();
        let id = FileId::from_bytes([9u8; 32]);
        let path = store.partial_path(&id);
        // 3 pieces of 10 bytes, the last one 5 bytes.
        let data: Vec<u8> = (0..25u8).collect();
        std::fs::write(&path, &data).unwrap();
        let partial = Arc::new(Partial::new(path.clone(), 10, 25));
        assert!(store.pieces(&id).is_none());
        store.register(&id, partial.clone());
        assert!(store.open(&id, 0, 1).is_none(), "nothing verified yet");
        partial.set_fetching(2, true);
        partial.set_have(1);
        let map = store.pieces(&id).unwrap();
        assert!(!map.complete);
        assert!(map.have.contains(1) && !map.have.contains(0));
        assert!(map.fetching.contains(2));
        let mut got = Vec::new();
        store
            .open(&id, 12, 8)
            .unwrap()
            .read_to_end(&mut got)
            .await
            .unwrap();
        assert_eq!(got, data[12..20]);
        // Ranges reaching into unverified pieces are refused.
        assert!(store.open(&id, 9, 2).is_none());
        assert!(store.open(&id, 15, 6).is_none());
        assert!(store.open(&id, 10, 0).is_none());
        partial.set_have(2);
        assert!(!store.pieces(&id).unwrap().fetching.contains(2));
        assert!(store.open(&id, 15, 10).is_some());
        assert!(store.open(&id, 15, 11).is_none(), "past the end");
        // Completed: served as a whole, the partial forgotten.
        store.insert(&id, &path, &proof(9)).unwrap();
        store.unregister(&id, &partial);
        assert!(store.pieces(&id).unwrap().complete);
        assert!(store.open(&id, 0, 25).is_some());
    }
}
