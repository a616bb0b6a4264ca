//! How the P2P layer names a file and a set of its pieces.
//!
//! A file is named by its SHA-256 — the narinfo's `FileHash`, the hash its manifest is keyed
//! by — so an agent knows the id from the NAR URL alone. On the wire a [`FileId`] is its 32
//! raw bytes and a [`PieceSet`] its bitmap, exactly as the bare types they replace.

use std::fmt;

use serde::{Deserialize, Serialize};
use tailcache_store::Sha256Hash;

/// A file as peers and the tracker name it: the SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileId([u8; 32]);

impl FileId {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        FileId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The file's SHA-256 (the narinfo's `FileHash`).
    pub fn hash(&self) -> Sha256Hash {
        Sha256Hash(self.0)
    }

    /// Lowercase hex, as file names on disk spell it.
    pub fn to_base16(&self) -> String {
        self.hash().to_base16()
    }

    /// Parses [`FileId::to_base16`]'s spelling.
    pub fn from_base16(s: &str) -> Option<Self> {
        Sha256Hash::from_base16(s).ok().map(Self::from)
    }
}

impl From<Sha256Hash> for FileId {
    fn from(h: Sha256Hash) -> Self {
        FileId(h.0)
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", self.hash().to_nix32())
    }
}

impl fmt::Display for FileId {
    /// The bare nix32 form, as NAR URLs spell it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hash().to_nix32())
    }
}

/// A set of piece indices of one file: bit `i` is bit `i % 8` (least significant first) of
/// byte `i / 8`, in as many bytes as the piece count needs.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PieceSet(Vec<u8>);

impl PieceSet {
    /// No piece of a file of `pieces` pieces.
    pub fn empty(pieces: u64) -> Self {
        PieceSet(vec![
            0u8;
            usize::try_from(pieces.div_ceil(8))
                .unwrap_or(usize::MAX)
        ])
    }

    /// Every piece of a file of `pieces` pieces.
    pub fn full(pieces: u64) -> Self {
        let mut s = Self::empty(pieces);
        for i in 0..pieces {
            s.insert(i);
        }
        s
    }

    /// Whether this set was made for a file of `pieces` pieces (a peer's answer of another
    /// size describes another file, or lies).
    pub fn fits(&self, pieces: u64) -> bool {
        self.0.len() as u64 == pieces.div_ceil(8)
    }

    pub fn contains(&self, i: u64) -> bool {
        usize::try_from(i / 8)
            .ok()
            .and_then(|b| self.0.get(b))
            .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
    }

    /// Adds or removes piece `i` (a no-op past the end).
    pub fn set(&mut self, i: u64, on: bool) {
        if let Some(byte) = usize::try_from(i / 8).ok().and_then(|b| self.0.get_mut(b)) {
            if on {
                *byte |= 1 << (i % 8);
            } else {
                *byte &= !(1 << (i % 8));
            }
        }
    }

    pub fn insert(&mut self, i: u64) {
        self.set(i, true);
    }

    pub fn remove(&mut self, i: u64) {
        self.set(i, false);
    }

    /// How many pieces are in the set.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    /// The members, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.0.len() as u64 * 8).filter(|i| self.contains(*i))
    }
}

impl fmt::Debug for PieceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_the_bare_bytes() {
        let id = FileId::from_bytes([7; 32]);
        assert_eq!(
            postcard::to_stdvec(&id).unwrap(),
            postcard::to_stdvec(&[7u8; 32]).unwrap()
        );
        let mut s = PieceSet::empty(10);
        s.insert(0);
        s.insert(9);
        assert_eq!(
            postcard::to_stdvec(&s).unwrap(),
            postcard::to_stdvec(&vec![1u8, 2]).unwrap()
        );
    }

    #[test]
    fn piece_sets_hold_what_was_put_in() {
        let mut s = PieceSet::empty(10);
        assert!(s.fits(10) && s.fits(16) && !s.fits(17) && !s.fits(8));
        s.insert(3);
        s.insert(9);
        assert!(s.contains(3) && s.contains(9) && !s.contains(4));
        s.insert(100); // past the end: ignored
        assert!(!s.contains(100));
        s.remove(3);
        assert_eq!(s.iter().collect::<Vec<_>>(), [9]);
        assert_eq!(s.count(), 1);
        assert_eq!(PieceSet::full(10).count(), 10);
        assert!(PieceSet::empty(5).is_empty());
    }

    #[test]
    fn file_ids_spell_like_the_hash() {
        let h = Sha256Hash::digest(b"x");
        let id = FileId::from(h);
        assert_eq!(id.hash(), h);
        assert_eq!(id.to_string(), h.to_nix32());
        assert_eq!(FileId::from_base16(&id.to_base16()), Some(id));
        assert_eq!(FileId::from_base16("zz"), None);
    }
}
