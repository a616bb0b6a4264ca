//! A bounded cache of rendered, signed narinfos: a hit costs a hash-map lookup and one read
//! of the store database's version, instead of two queries, hash encodings, formatting and
//! a signature lookup — what made narinfo hits slower than a static file server.
//!
//! An entry is served only while rendering anew would give the same text:
//! - the store database committed nothing since the entry was read (its [`DataVersion`],
//!   taken *before* the read, is still the current one) — so a path deleted, re-registered or
//!   re-signed in between is read again;
//! - the path is still served from the same compressed file (the very [`NarEntry`] the text
//!   names; an evicted or replaced file is read again);
//! - and the text asks for nothing: narinfos that still advertise the uncompressed NAR
//!   while compression is pending are never cached, because serving them must queue the
//!   compression.
//!
//! Signatures cover only fields the database gives (the fingerprint), and the keys never
//! change while the server runs, so a cached text is as signed as a fresh one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tailcache_store::db::DataVersion;
use tailcache_store::{Sha256Hash, StorePathHash};

use super::nar_cache::{NarCache, NarEntry};

/// Bytes of narinfo text kept; past this the cache starts over (a system closure's few
/// thousand narinfos fit several times).
pub const MAX_BYTES: usize = 8 << 20;

/// One rendered narinfo and what it depends on.
#[derive(Debug)]
struct Entry {
    version: DataVersion,
    nar_hash: Sha256Hash,
    /// The compressed file the text names (`None`: the uncompressed NAR, when the server
    /// compresses nothing).
    nar: Option<Arc<NarEntry>>,
    text: Bytes,
}

#[derive(Debug, Default)]
struct Map {
    entries: HashMap<StorePathHash, Entry>,
    bytes: usize,
}

/// Rendered narinfos by store path hash.
#[derive(Debug, Default)]
pub struct RenderedNarinfos {
    map: Mutex<Map>,
}

impl RenderedNarinfos {
    /// The cached text of `path` if it is still what rendering would give now: `version` is
    /// the database's current version and `nars` still maps the path to the same file (whose
    /// last use is then recorded, as serving it anew would).
    pub fn get(
        &self,
        path: &StorePathHash,
        version: DataVersion,
        nars: &NarCache,
    ) -> Option<Bytes> {
        let (nar_hash, nar, text) = {
            let map = self.lock();
            let e = map.entries.get(path)?;
            if e.version != version {
                return None;
            }
            (e.nar_hash, e.nar.clone(), e.text.clone())
        };
        let current = nars.get(path, &nar_hash);
        match (&nar, &current) {
            (None, None) => {}
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => a.touch(),
            _ => return None,
        }
        Some(text)
    }

    /// Keeps `text`, rendered from a database read at `version`, naming `nar`.
    pub fn insert(
        &self,
        path: StorePathHash,
        version: DataVersion,
        nar_hash: Sha256Hash,
        nar: Option<Arc<NarEntry>>,
        text: Bytes,
    ) {
        let mut map = self.lock();
        if map.bytes + text.len() > MAX_BYTES {
            map.entries.clear();
            map.bytes = 0;
        }
        map.bytes += text.len();
        let entry = Entry {
            version,
            nar_hash,
            nar,
            text,
        };
        if let Some(old) = map.entries.insert(path, entry) {
            map.bytes -= old.text.len();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}
