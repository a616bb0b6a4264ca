//! BLAKE3 outboards (the hash tree of a file, kept apart from the file) and verification of
//! bytes received from untrusted peers against a signed BLAKE3 root (spec: the BLAKE3
//! paper's tree mode, through `blake3::hazmat`).
//!
//! # Groups and the outboard format
//! A file is cut into verification groups of `1024 << block_log` bytes (16 KiB for the
//! default log 4, what bao calls a chunk group); the last group may be short, and an empty
//! file is one empty group. Because a group is a power-of-two number of BLAKE3 chunks, each
//! group is a complete subtree of the file's BLAKE3 tree, and the tree above the groups is
//! BLAKE3's own (left subtree = the largest power of two of groups smaller than the whole).
//! So the root here is exactly `blake3::hash(file)`.
//!
//! The outboard is the concatenation of the groups' 32-byte chaining values, in file order:
//! the leaf level of that tree, nothing else. It is empty for a one-group file (the root
//! itself verifies that group). Interior nodes are not stored because the agent always
//! fetches the whole outboard (0.2 % of the file) before any data, validates it once against
//! the root ([`Outboard::verify_against`], O(groups) hashing of 64-byte parents), and can
//! then check any group on its own with one comparison. bao's pre/post-order outboards
//! store the interior nodes too (twice the size) to verify ranges without the whole
//! outboard, which this design never needs.
//!
//! # Untrusted input
//! The outboard is unsigned — anyone may serve it — so nothing is read from it before
//! [`Outboard::verify_against`] has checked it; every length is checked before hashing, so
//! hostile data yields an error, never a panic.

use std::io::Read;
use std::ops::Range;
use std::sync::Arc;

use blake3::Hasher;
use blake3::hazmat::{
    ChainingValue, HasherExt as _, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use tailcache_store::IoError;

use crate::error::{Error, Result};

/// 16 KiB groups: bao's chunk-group log 4.
pub const DEFAULT_BLOCK_LOG: u8 = 4;
/// Groups above 64 MiB would defeat the point of verifying small pieces.
pub const MAX_BLOCK_LOG: u8 = 16;
/// One BLAKE3 chunk.
const CHUNK_LEN: u64 = 1024;
/// Bytes per chaining value in the outboard.
const CV_LEN: usize = 32;

/// Bytes per verification group for `block_log` (callers check `block_log <= MAX_BLOCK_LOG`).
pub fn group_size(block_log: u8) -> u64 {
    CHUNK_LEN << block_log.min(MAX_BLOCK_LOG)
}

/// Number of groups of a file: at least one (an empty file is one empty group).
fn group_count(file_size: u64, block_log: u8) -> u64 {
    file_size.div_ceil(group_size(block_log)).max(1)
}

/// Chaining value of group `index` of a multi-group file. `data.len()` must be the
/// group's exact length and non-zero (checked by callers: the hasher panics otherwise).
fn group_cv(index: u64, group_size: u64, data: &[u8]) -> ChainingValue {
    let mut h = Hasher::new();
    h.set_input_offset(index * group_size);
    h.update(data);
    h.finalize_non_root()
}

/// Largest power of two strictly below `n` (n ≥ 2): BLAKE3's left subtree, in groups.
fn left_len(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn subtree_cv(cvs: &[ChainingValue]) -> ChainingValue {
    match cvs {
        [one] => *one,
        _ => {
            let (l, r) = cvs.split_at(left_len(cvs.len()));
            merge_subtrees_non_root(&subtree_cv(l), &subtree_cv(r), Mode::Hash)
        }
    }
}

/// Root of a tree of at least two groups.
fn root_of(cvs: &[ChainingValue]) -> [u8; 32] {
    let (l, r) = cvs.split_at(left_len(cvs.len()));
    *merge_subtrees_root(&subtree_cv(l), &subtree_cv(r), Mode::Hash).as_bytes()
}

/// Builds the root and outboard of a file fed in pieces of any size. Memory: one hasher
/// plus 32 bytes per group of output.
#[derive(Debug)]
pub struct OutboardBuilder {
    block_log: u8,
    group_size: u64,
    hasher: Hasher,
    in_group: u64,
    total: u64,
    cvs: Vec<ChainingValue>,
}

impl OutboardBuilder {
    pub fn new(block_log: u8) -> Result<Self> {
        if block_log > MAX_BLOCK_LOG {
            return Err(Error::InvalidManifest {
                reason: format!("block_log {block_log} exceeds {MAX_BLOCK_LOG}"),
            });
        }
        Ok(OutboardBuilder {
            block_log,
            group_size: group_size(block_log),
            hasher: Hasher::new(),
            in_group: 0,
            total: 0,
            cvs: Vec::new(),
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            // A full group is closed only when more bytes arrive: if none do, it is the only
            // group and must be finalized as the root instead.
            if self.in_group == self.group_size {
                self.cvs.push(self.hasher.finalize_non_root());
                self.hasher = Hasher::new();
                self.hasher
                    .set_input_offset(self.cvs.len() as u64 * self.group_size);
                self.in_group = 0;
            }
            let room = (self.group_size - self.in_group).min(data.len() as u64) as usize;
            self.hasher.update(&data[..room]);
            self.in_group += room as u64;
            self.total += room as u64;
            data = &data[room..];
        }
    }

    /// The BLAKE3 root and the outboard.
    pub fn finish(mut self) -> ([u8; 32], Outboard) {
        let root = if self.cvs.is_empty() {
            *self.hasher.finalize().as_bytes()
        } else {
            // in_group > 0 here: a group is only closed when bytes for the next one arrive.
            self.cvs.push(self.hasher.finalize_non_root());
            root_of(&self.cvs)
        };
        let outboard = Outboard {
            file_size: self.total,
            block_log: self.block_log,
            bytes: self.cvs.as_flattened().to_vec(),
        };
        (root, outboard)
    }
}

impl std::io::Write for OutboardBuilder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Root and outboard of everything `reader` yields, read in 256 KiB pieces.
pub fn outboard_of_reader(mut reader: impl Read, block_log: u8) -> Result<([u8; 32], Outboard)> {
    let mut builder = OutboardBuilder::new(block_log)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(builder.finish()),
            Ok(n) => builder.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(IoError::new("reading a file to hash", e).into());
            }
        }
    }
}

/// Root and outboard of a file on disk.
pub fn outboard_of_file(path: &std::path::Path) -> Result<([u8; 32], Outboard)> {
    let file = std::fs::File::open(path)
        .map_err(|e| IoError::new(format!("opening {}", path.display()), e))?;
    outboard_of_reader(file, DEFAULT_BLOCK_LOG)
}

/// An outboard as received or built: not yet trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outboard {
    file_size: u64,
    block_log: u8,
    bytes: Vec<u8>,
}

impl Outboard {
    /// Wraps received outboard bytes for a file of `file_size` bytes (from the manifest).
    pub fn from_bytes(file_size: u64, block_log: u8, bytes: Vec<u8>) -> Self {
        Outboard {
            file_size,
            block_log,
            bytes,
        }
    }

    /// The serialized form (the `.obao` file and the HTTP body).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// How many bytes the outboard of a file of this size has.
    pub fn expected_len(file_size: u64, block_log: u8) -> u64 {
        match group_count(file_size, block_log) {
            1 => 0,
            n => n * CV_LEN as u64,
        }
    }

    /// Checks that this outboard is the hash tree of a file with BLAKE3 root `root` and
    /// gives the verifier built on it. For a one-group file the outboard is empty and the
    /// root alone verifies the data.
    pub fn verify_against(self, root: &[u8; 32]) -> Result<VerifiedOutboard> {
        if self.block_log > MAX_BLOCK_LOG {
            return Err(Error::InvalidManifest {
                reason: format!("block_log {} exceeds {MAX_BLOCK_LOG}", self.block_log),
            });
        }
        let expected = Self::expected_len(self.file_size, self.block_log);
        if self.bytes.len() as u64 != expected {
            return Err(Error::OutboardSize {
                expected,
                got: self.bytes.len() as u64,
            });
        }
        let cvs: Vec<ChainingValue> = self
            .bytes
            .chunks_exact(CV_LEN)
            .map(|c| {
                let mut cv = [0u8; CV_LEN];
                cv.copy_from_slice(c);
                cv
            })
            .collect();
        if !cvs.is_empty() && root_of(&cvs) != *root {
            return Err(Error::OutboardMismatch);
        }
        Ok(VerifiedOutboard {
            inner: Arc::new(Verified {
                file_size: self.file_size,
                group_size: group_size(self.block_log),
                root: *root,
                cvs,
            }),
        })
    }
}

/// An outboard checked against a signed root: it can verify any group on its own.
/// Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct VerifiedOutboard {
    inner: Arc<Verified>,
}

#[derive(Debug)]
struct Verified {
    file_size: u64,
    group_size: u64,
    root: [u8; 32],
    /// Empty for a one-group file.
    cvs: Vec<ChainingValue>,
}

impl VerifiedOutboard {
    pub fn file_size(&self) -> u64 {
        self.inner.file_size
    }

    pub fn root(&self) -> &[u8; 32] {
        &self.inner.root
    }

    pub fn group_size(&self) -> u64 {
        self.inner.group_size
    }

    pub fn group_count(&self) -> u64 {
        self.inner.file_size.div_ceil(self.inner.group_size).max(1)
    }

    /// The byte range of group `index` (empty past the end).
    pub fn group_range(&self, index: u64) -> Range<u64> {
        let size = self.inner.file_size;
        let start = index.saturating_mul(self.inner.group_size).min(size);
        start..start.saturating_add(self.inner.group_size).min(size)
    }

    /// Whether `data` is exactly group `index` of the file.
    pub fn verify_group(&self, index: u64, data: &[u8]) -> bool {
        if index >= self.group_count() {
            return false;
        }
        let range = self.group_range(index);
        if data.len() as u64 != range.end - range.start {
            return false;
        }
        match self.inner.cvs.get(index as usize) {
            None => blake3::hash(data).as_bytes() == &self.inner.root,
            Some(cv) => group_cv(index, self.inner.group_size, data) == *cv,
        }
    }

    /// Verifies `data` received for the range `[offset, offset + len)`, which must start on
    /// a group boundary and end on one or at the end of the file. Ok only if every group of
    /// the range matches; otherwise [`Error::GroupsFailed`] lists the groups to fetch again.
    /// Data shorter than the range fails the groups it does not fully cover; data longer
    /// than the range fails the range's last group (the sender did not stop where it should).
    pub fn verify_range(&self, offset: u64, len: u64, data: &[u8]) -> Result<()> {
        let gs = self.inner.group_size;
        let size = self.inner.file_size;
        let invalid = |reason| Error::InvalidRange {
            offset,
            len,
            reason,
        };
        let end = offset.checked_add(len).ok_or(invalid("overflows"))?;
        if end > size {
            return Err(invalid("past the end of the file"));
        }
        if !offset.is_multiple_of(gs) {
            return Err(invalid("does not start on a group boundary"));
        }
        if !end.is_multiple_of(gs) && end != size {
            return Err(invalid(
                "does not end on a group boundary or the end of the file",
            ));
        }
        let first = offset / gs;
        // An empty range names no group, except the one empty group of an empty file.
        let last = if len == 0 {
            if size == 0 { 1 } else { first }
        } else {
            end.div_ceil(gs)
        };
        let mut failed = Vec::new();
        for index in first..last {
            let r = self.group_range(index);
            let (a, b) = ((r.start - offset) as usize, (r.end - offset) as usize);
            let ok = b <= data.len() && self.verify_group(index, &data[a..b]);
            if !ok {
                failed.push(index);
            }
        }
        let tail = if last > first { last - 1 } else { first };
        if data.len() as u64 > len && failed.last() != Some(&tail) {
            failed.push(tail);
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::GroupsFailed { failed })
        }
    }

    /// A verifier for the file's bytes arriving in order from offset 0.
    pub fn stream(&self) -> StreamVerifier {
        StreamVerifier {
            outboard: self.clone(),
            group: 0,
            buf: Vec::new(),
        }
    }
}

/// Consumes a file's bytes in order and releases only verified ones: bytes are held until
/// their whole group has arrived and matched, so at most one group is buffered and no
/// unverified byte ever leaves. A failed group is dropped (with anything pushed after it
/// in the same call) and [`StreamVerifier::position`] stays at its start, so the caller
/// can fetch the bytes from `position()` on from another source and go on pushing.
#[derive(Debug)]
pub struct StreamVerifier {
    outboard: VerifiedOutboard,
    /// The group being filled.
    group: u64,
    buf: Vec<u8>,
}

impl StreamVerifier {
    /// Bytes verified and released so far; the offset the next pushed byte belongs at
    /// after a failure.
    pub fn position(&self) -> u64 {
        self.outboard.group_range(self.group).start
    }

    /// Whether every byte of the file has been verified and released.
    pub fn is_complete(&self) -> bool {
        self.group >= self.outboard.group_count()
    }

    /// Feeds received bytes; appends the bytes of every group they complete and that
    /// verifies to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let file_size = self.outboard.file_size();
        while !data.is_empty() {
            if self.is_complete() {
                return Err(Error::StreamTooLong { file_size });
            }
            let range = self.outboard.group_range(self.group);
            let group_len = (range.end - range.start) as usize;
            if self.buf.is_empty() && data.len() >= group_len {
                // A whole group in the input: check it in place, without copying it first.
                let (group, rest) = data.split_at(group_len);
                self.check_group(group, out)?;
                data = rest;
                continue;
            }
            let want = group_len - self.buf.len();
            let take = want.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if take == want {
                let buf = std::mem::take(&mut self.buf);
                let result = self.check_group(&buf, out);
                self.buf = buf;
                self.buf.clear();
                result?;
            }
        }
        // An empty file is one empty group that no byte completes.
        if file_size == 0 && !self.is_complete() {
            self.check_group(&[], out)?;
        }
        Ok(())
    }

    /// Releases `group` (the current group's bytes) if it verifies.
    fn check_group(&mut self, group: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let index = self.group;
        if !self.outboard.verify_group(index, group) {
            return Err(Error::GroupsFailed {
                failed: vec![index],
            });
        }
        out.extend_from_slice(group);
        self.group += 1;
        Ok(())
    }

    /// Ends the stream: an error unless every byte was verified.
    pub fn finish(mut self) -> Result<()> {
        let mut out = Vec::new();
        self.push(&[], &mut out)?;
        if self.is_complete() {
            Ok(())
        } else {
            Err(Error::StreamIncomplete {
                verified: self.position(),
                file_size: self.outboard.file_size(),
            })
        }
    }
}
