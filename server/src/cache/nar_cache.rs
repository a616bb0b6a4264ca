//! The directory of precompressed NARs: files named by their own hash
//! (`<filehash>.nar.xz`, `.nar.zst`), beside each its BLAKE3 outboard for P2P verification
//! (`<filehash>.nar.xz.obao`, see `tailcache_p2p::verify`), and an index from store-path
//! hash to file, kept as one small text file per entry under `index/` so that adding an
//! entry is one atomic rename.
//!
//! Start-up removes what a crash can leave behind (temporary files, an index entry whose
//! file is gone, a file or outboard no entry names); an entry whose outboard is missing
//! keeps serving HTTP but is not offered to peers. The size bound is enforced by the
//! CacheServer actor, which evicts the least recently served entries with their outboards.
//!
//! The server keeps two such directories ([`NarDirs`]): the primary files, which narinfos
//! name, and in `archive/` inside it the optional second, smaller file per NAR. Both are
//! served alike; the size bound holds over both, archive files going first.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tailcache_store::{Sha256Hash, StorePathHash, lru};

use crate::config::Compression;

/// Prefix of files being written; anything carrying it at start-up is a crash leftover.
pub const TMP_PREFIX: &str = ".tmp-";

/// One compressed NAR.
#[derive(Debug)]
pub struct NarEntry {
    pub compression: Compression,
    pub file_hash: Sha256Hash,
    pub file_size: u64,
    /// The NAR hash the file was made from; a store path whose current NAR hash differs
    /// (deleted and rebuilt) does not use this entry.
    pub nar_hash: Sha256Hash,
    /// BLAKE3 root of the file, when its outboard is on disk beside it (P2P manifests).
    pub blake3_root: Option<[u8; 32]>,
    /// Seconds since the epoch when the entry was last served (LRU order).
    last_used: AtomicU64,
}

impl NarEntry {
    pub fn new(
        compression: Compression,
        file_hash: Sha256Hash,
        file_size: u64,
        nar_hash: Sha256Hash,
        blake3_root: Option<[u8; 32]>,
    ) -> Self {
        NarEntry {
            compression,
            file_hash,
            file_size,
            nar_hash,
            blake3_root,
            last_used: AtomicU64::new(now()),
        }
    }

    /// `nar/<filehash>.nar.xz`, relative to the cache root.
    pub fn url(&self) -> String {
        format!("nar/{}", self.file_name())
    }

    pub fn file_name(&self) -> String {
        format_file_name(&self.file_hash, self.compression)
    }

    /// `<filehash>.nar.xz.obao`: the file's BLAKE3 outboard.
    pub fn outboard_name(&self) -> String {
        format_outboard_name(&self.file_hash, self.compression)
    }

    pub fn touch(&self) {
        self.last_used.store(now(), Ordering::Relaxed);
    }

    fn serialize(&self) -> String {
        let mut text = format!(
            "Compression: {}\nFileHash: {}\nFileSize: {}\nNarHash: {}\n",
            self.compression.narinfo_name(),
            self.file_hash,
            self.file_size,
            self.nar_hash
        );
        if let Some(root) = &self.blake3_root {
            text.push_str(&format!("Blake3Root: {}\n", hex::encode(root)));
        }
        text
    }

    fn deserialize(text: &str, last_used: u64) -> Option<Self> {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let (k, v) = line.split_once(": ")?;
            fields.insert(k, v);
        }
        let compression = Compression::from_narinfo_name(fields.get("Compression")?)?;
        if compression == Compression::None {
            return None;
        }
        Some(NarEntry {
            compression,
            file_hash: Sha256Hash::parse(fields.get("FileHash")?).ok()?,
            file_size: fields.get("FileSize")?.parse().ok()?,
            nar_hash: Sha256Hash::parse(fields.get("NarHash")?).ok()?,
            // Optional: entries written before outboards existed have none.
            blake3_root: match fields.get("Blake3Root") {
                Some(h) => Some(unhex(h)?),
                None => None,
            },
            last_used: AtomicU64::new(last_used),
        })
    }
}

/// `<nix32 file hash>.nar<ext>`: the only names this directory ever serves.
pub fn format_file_name(file_hash: &Sha256Hash, compression: Compression) -> String {
    format!("{}.nar{}", file_hash.to_nix32(), compression.extension())
}

/// `<filehash>.nar<ext>.obao`: the outboard of that file.
pub fn format_outboard_name(file_hash: &Sha256Hash, compression: Compression) -> String {
    format!("{}.obao", format_file_name(file_hash, compression))
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The directory and its in-memory index. Readers take a read lock for a map lookup only.
#[derive(Debug)]
pub struct NarCache {
    dir: PathBuf,
    index: RwLock<HashMap<StorePathHash, Arc<NarEntry>>>,
}

impl NarCache {
    /// Opens (creating) `dir`, loads the index and removes crash leftovers.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let index_dir = dir.join("index");
        std::fs::create_dir_all(&index_dir)?;
        let mut index = HashMap::new();
        for entry in std::fs::read_dir(&index_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let parsed = StorePathHash::parse(&name).ok().and_then(|hash| {
                let text = std::fs::read_to_string(&path).ok()?;
                let mtime = entry.metadata().ok()?.modified().ok()?;
                let secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let mut e = NarEntry::deserialize(&text, secs)?;
                let len = std::fs::metadata(dir.join(e.file_name())).ok()?.len();
                if e.blake3_root.is_some() && !dir.join(e.outboard_name()).is_file() {
                    tracing::warn!("{}: outboard missing; not offered to peers", e.file_name());
                    e.blake3_root = None;
                }
                (len == e.file_size).then_some((hash, e))
            });
            match parsed {
                Some((hash, e)) => {
                    index.insert(hash, Arc::new(e));
                }
                None => remove_logged(&path),
            }
        }
        let named: std::collections::HashSet<String> = index
            .values()
            .flat_map(|e| {
                let outboard = e.blake3_root.map(|_| e.outboard_name());
                std::iter::once(e.file_name()).chain(outboard)
            })
            .collect();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_file() && !named.contains(&name) {
                remove_logged(&entry.path());
            }
        }
        Ok(NarCache {
            dir: dir.to_owned(),
            index: RwLock::new(index),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry for a store path, if its NAR hash still matches.
    pub fn get(&self, path: &StorePathHash, nar_hash: &Sha256Hash) -> Option<Arc<NarEntry>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.get(path).filter(|e| e.nar_hash == *nar_hash).cloned()
    }

    /// Whether a path has an entry for this NAR hash.
    pub fn contains(&self, path: &StorePathHash, nar_hash: &Sha256Hash) -> bool {
        self.get(path, nar_hash).is_some()
    }

    /// The physical file of a compressed NAR named in a URL, if it exists.
    pub fn file_path(&self, file_hash: &Sha256Hash, compression: Compression) -> PathBuf {
        self.dir.join(format_file_name(file_hash, compression))
    }

    /// Where the BLAKE3 outboard of a compressed NAR is kept.
    pub fn outboard_path(&self, file_hash: &Sha256Hash, compression: Compression) -> PathBuf {
        self.dir.join(format_outboard_name(file_hash, compression))
    }

    /// The entry of a compressed file, by the file's own hash (what P2P URLs name). A scan:
    /// the index is keyed by store path, and a few thousand entries take microseconds.
    pub fn find_file(
        &self,
        file_hash: &Sha256Hash,
        compression: Compression,
    ) -> Option<Arc<NarEntry>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .values()
            .find(|e| e.file_hash == *file_hash && e.compression == compression)
            .cloned()
    }

    /// A fresh temporary file name inside the directory (same file system: rename is atomic).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{TMP_PREFIX}{}-{n}-{what}", std::process::id()))
    }

    /// Records an entry whose file is already in place: writes the index file atomically,
    /// then publishes it to readers.
    pub fn insert(&self, path: StorePathHash, entry: NarEntry) -> std::io::Result<()> {
        let tmp = self.temp_path("index");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(entry.serialize().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("index").join(path.to_string()))?;
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = index.insert(path, Arc::new(entry)) {
            // Same path recompressed (its NAR changed): the old file is no longer named.
            drop(index);
            self.remove_file_if_unused(&old);
        }
        Ok(())
    }

    /// Every entry's store path and NAR hash, at one moment.
    pub fn keys(&self) -> Vec<(StorePathHash, Sha256Hash)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.iter().map(|(k, e)| (*k, e.nar_hash)).collect()
    }

    /// Total bytes of all compressed files.
    pub fn total_bytes(&self) -> u64 {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.values().map(|e| e.file_size).sum()
    }

    pub fn len(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes least recently used entries until the total is at most `max_bytes`; returns
    /// how many were removed.
    pub fn evict_to(&self, max_bytes: u64) -> usize {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let entries = index
            .iter()
            .map(|(k, e)| lru::Entry {
                key: *k,
                size: e.file_size,
                last_used: e.last_used.load(Ordering::Relaxed),
            })
            .collect();
        let removed: Vec<(StorePathHash, Arc<NarEntry>)> = lru::victims(entries, max_bytes, None)
            .into_iter()
            .filter_map(|v| index.remove(&v.key).map(|e| (v.key, e)))
            .collect();
        drop(index);
        let n = removed.len();
        for (key, e) in removed {
            remove_logged(&self.dir.join("index").join(key.to_string()));
            self.remove_file_if_unused(&e);
        }
        n
    }

    /// Two store paths with identical contents share one file; delete it only when no entry
    /// names it any more.
    fn remove_file_if_unused(&self, e: &NarEntry) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let shared = index.values().any(|o| o.file_hash == e.file_hash);
        drop(index);
        if !shared {
            remove_logged(&self.dir.join(e.file_name()));
            remove_logged(&self.dir.join(e.outboard_name()));
        }
    }
}

/// Where the compressed files are: the primary directory, whose files narinfos name, and
/// the archive directory (`archive/` inside it) with the second, smaller file per NAR. Files
/// are named by their own hash, so a URL finds its file in either.
#[derive(Debug, Clone)]
pub struct NarDirs {
    pub primary: Arc<NarCache>,
    pub archive: Arc<NarCache>,
}

impl NarDirs {
    /// Opens (creating) `dir` and `dir/archive`, each cleaned of crash leftovers.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let primary = Arc::new(NarCache::open(dir)?);
        let archive = Arc::new(NarCache::open(&dir.join("archive"))?);
        Ok(NarDirs { primary, archive })
    }

    fn both(&self) -> [&NarCache; 2] {
        [&self.primary, &self.archive]
    }

    /// The entry of a compressed file, by the file's own hash, and the directory holding it.
    pub fn find_file(
        &self,
        file_hash: &Sha256Hash,
        compression: Compression,
    ) -> Option<(&NarCache, Arc<NarEntry>)> {
        self.both()
            .into_iter()
            .find_map(|c| c.find_file(file_hash, compression).map(|e| (c, e)))
    }

    /// Opens a compressed file named in a URL (open, eviction unlinking it cannot cut a
    /// download short).
    pub fn open_file(
        &self,
        file_hash: &Sha256Hash,
        compression: Compression,
    ) -> Option<std::fs::File> {
        self.open_first(|c| c.file_path(file_hash, compression))
    }

    /// Opens the BLAKE3 outboard of a compressed file.
    pub fn open_outboard(
        &self,
        file_hash: &Sha256Hash,
        compression: Compression,
    ) -> Option<std::fs::File> {
        self.open_first(|c| c.outboard_path(file_hash, compression))
    }

    fn open_first(&self, path: impl Fn(&NarCache) -> PathBuf) -> Option<std::fs::File> {
        self.both()
            .into_iter()
            .find_map(|c| std::fs::File::open(path(c)).ok())
    }

    /// Bytes of both directories' files.
    pub fn total_bytes(&self) -> u64 {
        self.primary.total_bytes() + self.archive.total_bytes()
    }

    /// Evicts until both together hold at most `max_bytes`: archive files first (a client
    /// can always fall back to the primary file), then primary ones; each directory least
    /// recently used first. Returns how many entries went.
    pub fn evict_to(&self, max_bytes: u64) -> usize {
        let archive_room = max_bytes.saturating_sub(self.primary.total_bytes());
        let n = self.archive.evict_to(archive_room);
        let primary_room = max_bytes.saturating_sub(self.archive.total_bytes());
        n + self.primary.evict_to(primary_room)
    }
}

fn remove_logged(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> StorePathHash {
        StorePathHash::parse(&tailcache_store::nixbase32::encode(&[n; 20])).unwrap()
    }

    fn put(cache: &NarCache, n: u8, size: usize) {
        let data = vec![n; size];
        let file_hash = Sha256Hash::digest(&data);
        std::fs::write(cache.file_path(&file_hash, Compression::Xz), &data).unwrap();
        std::fs::write(cache.outboard_path(&file_hash, Compression::Xz), [n; 64]).unwrap();
        let e = NarEntry::new(
            Compression::Xz,
            file_hash,
            size as u64,
            Sha256Hash([n; 32]),
            Some([n; 32]),
        );
        e.last_used.store(n as u64, Ordering::Relaxed);
        cache.insert(hash(n), e).unwrap();
    }

    #[test]
    fn survives_restart_and_cleans_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NarCache::open(dir.path()).unwrap();
        put(&cache, 1, 10);
        put(&cache, 2, 20);
        std::fs::write(cache.temp_path("junk"), b"half").unwrap();
        std::fs::write(dir.path().join("orphan.nar.xz"), b"x").unwrap();
        std::fs::write(dir.path().join("orphan.nar.xz.obao"), b"x").unwrap();
        // An entry whose outboard is lost keeps its NAR but is no longer offered to peers.
        put(&cache, 3, 30);
        let three = Sha256Hash::digest(&[3; 30]);
        std::fs::remove_file(cache.outboard_path(&three, Compression::Xz)).unwrap();
        std::fs::write(
            dir.path().join("index").join(hash(9).to_string()),
            b"garbage",
        )
        .unwrap();
        drop(cache);

        let cache = NarCache::open(dir.path()).unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.total_bytes(), 60);
        let one = cache
            .find_file(&Sha256Hash::digest(&[1; 10]), Compression::Xz)
            .unwrap();
        assert_eq!(one.blake3_root, Some([1; 32]), "root survives the restart");
        assert!(
            cache
                .find_file(&Sha256Hash::digest(&[1; 10]), Compression::Zstd)
                .is_none()
        );
        let three = cache.find_file(&three, Compression::Xz).unwrap();
        assert_eq!(three.blake3_root, None);
        assert!(cache.contains(&hash(1), &Sha256Hash([1; 32])));
        assert!(
            !cache.contains(&hash(1), &Sha256Hash([7; 32])),
            "stale NAR hash must not match"
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names.len(),
            6,
            "three NAR files, two outboards and index/: {names:?}"
        );
        assert!(!names.iter().any(|n| n.starts_with("orphan")), "{names:?}");
        assert!(!dir.path().join("index").join(hash(9).to_string()).exists());
    }

    #[test]
    fn both_directories_clean_up_and_evict_archive_files_first() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = NarDirs::open(dir.path()).unwrap();
        for n in 1..=3 {
            put(&dirs.primary, n, 100);
        }
        for n in 4..=5 {
            put(&dirs.archive, n, 100);
        }
        // An archive file is found, opened and its outboard served like a primary one.
        let four = Sha256Hash::digest(&[4; 100]);
        let (found, entry) = dirs.find_file(&four, Compression::Xz).unwrap();
        assert_eq!(found.dir(), dir.path().join("archive"));
        assert_eq!(entry.file_size, 100);
        assert!(dirs.open_file(&four, Compression::Xz).is_some());
        assert!(dirs.open_outboard(&four, Compression::Xz).is_some());
        assert!(dirs.open_file(&four, Compression::Zstd).is_none());
        // A crash mid-job leaves a temporary file in the archive directory: gone at start.
        let leftover = dirs.archive.temp_path("nar");
        std::fs::write(&leftover, b"half").unwrap();
        std::fs::write(dir.path().join("archive/orphan.nar.xz"), b"x").unwrap();
        drop(dirs);
        let dirs = NarDirs::open(dir.path()).unwrap();
        assert!(!leftover.exists());
        assert!(!dir.path().join("archive/orphan.nar.xz").exists());
        assert_eq!((dirs.primary.len(), dirs.archive.len()), (3, 2));
        assert_eq!(dirs.total_bytes(), 500);

        // Archive files go first, even the most recently used one.
        dirs.archive
            .get(&hash(5), &Sha256Hash([5; 32]))
            .unwrap()
            .touch();
        assert_eq!(dirs.evict_to(350), 2);
        assert_eq!((dirs.primary.len(), dirs.archive.len()), (3, 0));
        assert!(!dirs.archive.file_path(&four, Compression::Xz).exists());
        // Then primary ones, least recently used first.
        let three = dirs.primary.get(&hash(3), &Sha256Hash([3; 32])).unwrap();
        three.last_used.store(now() + 60, Ordering::Relaxed);
        assert_eq!(dirs.evict_to(150), 2);
        assert!(dirs.primary.contains(&hash(3), &Sha256Hash([3; 32])));
        assert_eq!(dirs.total_bytes(), 100);
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NarCache::open(dir.path()).unwrap();
        for n in 1..=4 {
            put(&cache, n, 100);
        }
        cache.get(&hash(1), &Sha256Hash([1; 32])).unwrap().touch();
        assert_eq!(cache.evict_to(250), 2);
        assert!(
            cache.contains(&hash(1), &Sha256Hash([1; 32])),
            "recently used survives"
        );
        assert!(cache.contains(&hash(4), &Sha256Hash([4; 32])));
        assert!(!cache.contains(&hash(2), &Sha256Hash([2; 32])));
        let two = Sha256Hash::digest(&[2; 100]);
        assert!(!cache.file_path(&two, Compression::Xz).exists());
        assert!(!cache.outboard_path(&two, Compression::Xz).exists());
        let four = Sha256Hash::digest(&[4; 100]);
        assert!(cache.outboard_path(&four, Compression::Xz).exists());
        assert_eq!(cache.evict_to(1000), 0);
    }
}
