//! The agent's file cache: completed, verified NAR files named `<file hash hex>` in
//! `cache_dir/files`, partial downloads in `cache_dir/partial`, a size bound enforced by
//! evicting the least recently used files (by modification time, refreshed on use). It is
//! also the agent's [`PieceSource`]: peers are served only completed files.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tailcache_p2p::node::PieceSource;
use tailcache_p2p::tracker::FileId;
use tokio::io::AsyncRead;

#[derive(Debug)]
pub struct FileStore {
    files: PathBuf,
    partial: PathBuf,
    max_bytes: u64,
    /// Serialises inserts and evictions.
    lock: Mutex<()>,
}

fn hex(id: &FileId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<FileId> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl FileStore {
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let files = dir.join("files");
        let partial = dir.join("partial");
        std::fs::create_dir_all(&files)?;
        // Partial files of an earlier run are not resumed.
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        Ok(FileStore {
            files,
            partial,
            max_bytes,
            lock: Mutex::new(()),
        })
    }

    pub fn path(&self, id: &FileId) -> PathBuf {
        self.files.join(hex(id))
    }

    /// A fresh name for a partial download.
    pub fn partial_path(&self, id: &FileId) -> PathBuf {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        self.partial
            .join(format!("{}.{}.{n}", hex(id), std::process::id()))
    }

    /// The completed file, if held; its use refreshes its place in the LRU order.
    pub fn get(&self, id: &FileId) -> Option<PathBuf> {
        let p = self.path(id);
        let f = std::fs::File::open(&p).ok()?;
        let _ = f.set_modified(std::time::SystemTime::now());
        Some(p)
    }

    /// Moves a verified partial file into the cache, then evicts down to the bound. Returns
    /// the ids evicted.
    pub fn insert(&self, id: &FileId, partial: &Path) -> std::io::Result<Vec<FileId>> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::rename(partial, self.path(id))?;
        Ok(self.evict(Some(id)))
    }

    /// Every completed file held.
    pub fn list(&self) -> Vec<FileId> {
        self.entries().into_iter().map(|(id, _, _)| id).collect()
    }

    fn entries(&self) -> Vec<(FileId, u64, std::time::SystemTime)> {
        let Ok(dir) = std::fs::read_dir(&self.files) else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let e = e.ok()?;
            let id = unhex(e.file_name().to_str()?)?;
            let m = e.metadata().ok()?;
            Some((id, m.len(), m.modified().ok()?))
        })
        .collect()
    }

    fn evict(&self, keep: Option<&FileId>) -> Vec<FileId> {
        let mut entries = self.entries();
        entries.sort_by_key(|(_, _, t)| *t);
        let mut total: u64 = entries.iter().map(|(_, s, _)| s).sum();
        let mut evicted = Vec::new();
        for (id, size, _) in entries {
            if total <= self.max_bytes {
                break;
            }
            if Some(&id) == keep {
                continue;
            }
            if std::fs::remove_file(self.path(&id)).is_ok() {
                total -= size;
                evicted.push(id);
            }
        }
        evicted
    }
}

impl PieceSource for FileStore {
    fn open(
        &self,
        file: &FileId,
        offset: u64,
        len: u64,
    ) -> Option<Box<dyn AsyncRead + Send + Unpin>> {
        crate::p2p::open_range(&self.path(file), offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), 10).unwrap();
        let put = |n: u8, len: usize| {
            let id = [n; 32];
            let p = store.partial_path(&id);
            std::fs::write(&p, vec![n; len]).unwrap();
            let old =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(n));
            std::fs::File::open(&p).unwrap().set_modified(old).unwrap();
            store.insert(&id, &p).unwrap()
        };
        assert!(put(1, 4).is_empty());
        assert!(put(2, 4).is_empty());
        // 12 bytes > 10: the oldest goes, never the file just inserted.
        assert_eq!(put(3, 4), vec![[1; 32]]);
        assert_eq!(store.list().len(), 2);
        assert!(store.get(&[1; 32]).is_none());
        assert!(store.get(&[3; 32]).is_some());
        assert_eq!(hex(&[0xab; 32]).len(), 64);
        assert_eq!(unhex(&hex(&[0xab; 32])), Some([0xab; 32]));
    }
}
