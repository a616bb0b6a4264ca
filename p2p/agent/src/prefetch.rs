//! Proofs (a file's signed manifest and outboard) asked for when the narinfo naming the file
//! is served, so that the NAR request Nix sends next finds them instead of waiting a round
//! trip to the server before its first piece. `nix copy` asks every narinfo of a closure
//! first and then fetches as many NARs at once as the client has cores, so that round trip
//! was paid once per path, in series. Bounded by the proofs' expected bytes; the oldest
//! question is dropped first, and a proof is taken by one request (another asks again).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::task::JoinHandle;

use crate::store::Proof;

/// The most bytes of proofs asked for ahead (expected outboards, [`expected_bytes`]).
pub const MAX_BYTES: u64 = 16 << 20;

/// Bytes a file's proof is expected to take: its outboard (64 bytes per 16 KiB group) and
/// room for the manifest.
pub fn expected_bytes(file_size: u64) -> u64 {
    file_size / 256 + 4096
}

/// Proofs being asked for, or asked for already, oldest first.
#[derive(Debug, Default)]
pub struct Prefetched {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    list: VecDeque<Entry>,
    bytes: u64,
}

#[derive(Debug)]
struct Entry {
    file: String,
    bytes: u64,
    proof: JoinHandle<Option<Proof>>,
}

impl Drop for Entries {
    fn drop(&mut self) {
        for e in &self.list {
            e.proof.abort();
        }
    }
}

impl Prefetched {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for the proof of `file` (of `file_size` bytes) with `ask`, unless it is asked
    /// already or alone exceeds [`MAX_BYTES`]; the oldest questions are dropped to make room.
    pub fn ask(&self, file: &str, file_size: u64, ask: impl FnOnce() -> JoinHandle<Option<Proof>>) {
        let bytes = expected_bytes(file_size);
        if bytes > MAX_BYTES {
            return;
        }
        let mut e = self.lock();
        if e.list.iter().any(|x| x.file == file) {
            return;
        }
        while e.bytes + bytes > MAX_BYTES {
            let Some(old) = e.list.pop_front() else { break };
            old.proof.abort();
            e.bytes -= old.bytes;
        }
        e.bytes += bytes;
        e.list.push_back(Entry {
            file: file.to_owned(),
            bytes,
            proof: ask(),
        });
    }

    /// Whether `file`'s proof is asked for ahead (and not taken yet).
    pub fn holds(&self, file: &str) -> bool {
        self.lock().list.iter().any(|x| x.file == file)
    }

    /// The question asked for `file`'s proof, if any, taken.
    pub fn take(&self, file: &str) -> Option<JoinHandle<Option<Proof>>> {
        let mut e = self.lock();
        let i = e.list.iter().position(|x| x.file == file)?;
        let entry = e.list.remove(i)?;
        e.bytes -= entry.bytes;
        Some(entry.proof)
    }

    /// Questions held, and their expected bytes.
    pub fn held(&self) -> (usize, u64) {
        let e = self.lock();
        (e.list.len(), e.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: u8) -> JoinHandle<Option<Proof>> {
        tokio::spawn(async move {
            Some(Proof {
                manifest: vec![n],
                outboard: vec![n],
            })
        })
    }

    #[tokio::test]
    async fn a_proof_asked_ahead_is_taken_once() {
        let p = Prefetched::default();
        p.ask("a.nar.zst", 1 << 20, || answer(1));
        // Asked already: not asked again.
        p.ask("a.nar.zst", 1 << 20, || panic!("asked twice"));
        assert_eq!(p.held(), (1, expected_bytes(1 << 20)));
        assert!(p.holds("a.nar.zst") && !p.holds("b.nar.zst"));
        let proof = p.take("a.nar.zst").unwrap().await.unwrap().unwrap();
        assert_eq!(proof.manifest, vec![1]);
        assert!(p.take("a.nar.zst").is_none());
        assert!(!p.holds("a.nar.zst"));
        assert_eq!(p.held(), (0, 0));
    }

    #[tokio::test]
    async fn the_oldest_questions_make_room_and_a_huge_proof_is_not_asked_ahead() {
        let p = Prefetched::default();
        // Each a quarter of the bound (minus the manifest's room).
        let size = (MAX_BYTES / 4 - 4096) * 256;
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            p.ask(name, size, || answer(i as u8));
        }
        assert_eq!(p.held(), (4, MAX_BYTES));
        assert!(p.take("a").is_none(), "the oldest was dropped");
        assert!(p.take("e").is_some());
        p.ask("huge", MAX_BYTES * 256, || {
            panic!("a proof above the bound")
        });
        assert_eq!(p.held().0, 3);
    }
}
