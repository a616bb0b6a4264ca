//! A bounded cache of the server's narinfo signatures. Signing costs more than everything
//! else a narinfo request does (ed25519: ~34 µs here, against ~4 µs to render), and the
//! signed fingerprint of a path never changes while its NAR hash stays the same — `URL`,
//! `Compression`, `FileHash` and `FileSize` are outside it — so each path is signed once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tailcache_store::{Sha256Hash, StorePathHash};

/// Entries kept; past this the cache starts over (bounded memory, ~200 bytes an entry).
pub const CAPACITY: usize = 1 << 16;

/// What a signature is of: a store path with a given NAR hash.
type Key = (StorePathHash, Sha256Hash);
type Map = HashMap<Key, Arc<[String]>>;

/// Our signatures of `(store path, NAR hash)`.
#[derive(Debug, Default)]
pub struct SignatureCache {
    map: Mutex<Map>,
}

impl SignatureCache {
    /// The cached signatures, or the ones `sign` makes (then cached).
    pub fn get_or_sign(&self, key: Key, sign: impl FnOnce() -> Vec<String>) -> Arc<[String]> {
        if let Some(sigs) = self.lock().get(&key) {
            return sigs.clone();
        }
        // Signed outside the lock: two requests racing for one path both sign, harmlessly.
        let sigs: Arc<[String]> = sign().into();
        let mut map = self.lock();
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key, sigs.clone());
        sigs
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> (StorePathHash, Sha256Hash) {
        let mut b = [0u8; 20];
        b[..4].copy_from_slice(&n.to_le_bytes());
        let h = StorePathHash::parse(&tailcache_store::nixbase32::encode(&b)).unwrap();
        (h, Sha256Hash([n as u8; 32]))
    }

    #[test]
    fn signs_each_key_once_and_stays_bounded() {
        let cache = SignatureCache::default();
        let mut signed = 0;
        for _ in 0..3 {
            let sigs = cache.get_or_sign(key(1), || {
                signed += 1;
                vec!["k:sig".to_owned()]
            });
            assert_eq!(&*sigs, ["k:sig".to_owned()]);
        }
        assert_eq!(signed, 1);
        for n in 0..(CAPACITY as u32 + 10) {
            cache.get_or_sign(key(n), Vec::new);
        }
        assert!(cache.len() <= CAPACITY);
    }
}
