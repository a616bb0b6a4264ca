//! The order in which NARs are compressed: two queues, no I/O. Paths whose narinfo was
//! asked for wait in a bounded queue (a full queue drops the request: the next narinfo
//! request for the path asks again); the closure of what a build just produced goes into a
//! front queue that is always emptied first, taking along the paths of it that were
//! already waiting, so a new generation is servable before older work is done. A path is
//! pending from the moment it is queued until its job reports back, and is queued once.

use std::collections::{HashSet, VecDeque};

use tailcache_store::StorePathHash;

use super::actor::Compress;

/// Most paths the front queue holds (several builds' closures).
pub const MAX_URGENT: usize = 400_000;

#[derive(Debug)]
pub struct CompressionQueue {
    urgent: VecDeque<Compress>,
    waiting: VecDeque<Compress>,
    capacity: usize,
    /// Queued, or handed out by `take_next` and not yet `finished`.
    pending: HashSet<StorePathHash>,
}

impl CompressionQueue {
    /// `capacity`: most paths waiting behind the front queue.
    pub fn new(capacity: usize) -> Self {
        CompressionQueue {
            urgent: VecDeque::new(),
            waiting: VecDeque::new(),
            capacity,
            pending: HashSet::new(),
        }
    }

    /// Most paths waiting behind the front queue.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pending paths (queued or being compressed).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn is_pending(&self, path: &StorePathHash) -> bool {
        self.pending.contains(path)
    }

    /// A narinfo request's path, behind everything else; `false` when it was already
    /// pending or the queue is full.
    pub fn request(&mut self, job: Compress) -> bool {
        if self.pending.contains(&job.path_hash) || self.waiting.len() >= self.capacity {
            return false;
        }
        self.pending.insert(job.path_hash);
        self.waiting.push_back(job);
        true
    }

    /// A build's closure, before everything else (paths already waiting move ahead, paths
    /// being compressed are left alone); returns how many were cut off by [`MAX_URGENT`].
    pub fn prioritize(&mut self, jobs: impl IntoIterator<Item = Compress>) -> usize {
        let mut moved = HashSet::new();
        let mut dropped = 0;
        for job in jobs {
            if self.urgent.len() >= MAX_URGENT {
                dropped += 1;
                continue;
            }
            if self.pending.contains(&job.path_hash) {
                if self.waiting.iter().any(|w| w.path_hash == job.path_hash) {
                    moved.insert(job.path_hash);
                    self.urgent.push_back(job);
                }
                continue;
            }
            self.pending.insert(job.path_hash);
            self.urgent.push_back(job);
        }
        if !moved.is_empty() {
            self.waiting.retain(|w| !moved.contains(&w.path_hash));
        }
        dropped
    }

    /// The next job: the front queue first. It stays pending until [`Self::finished`].
    pub fn take_next(&mut self) -> Option<Compress> {
        self.urgent.pop_front().or_else(|| self.waiting.pop_front())
    }

    /// A job handed out by [`Self::take_next`] ended.
    pub fn finished(&mut self, path: &StorePathHash) {
        self.pending.remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailcache_store::Sha256Hash;

    fn job(n: u8) -> Compress {
        Compress {
            path_hash: StorePathHash::parse(&tailcache_store::nixbase32::encode(&[n; 20])).unwrap(),
            physical_path: format!("/p/{n}").into(),
            nar_hash: Sha256Hash([n; 32]),
            nar_size: u64::from(n),
        }
    }

    fn order(q: &mut CompressionQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.take_next())
            .map(|j| j.nar_size)
            .collect()
    }

    #[test]
    fn a_build_closure_goes_first_and_takes_waiting_paths_along() {
        let mut q = CompressionQueue::new(10);
        for n in 1..=4 {
            assert!(q.request(job(n)));
        }
        assert!(!q.request(job(2)), "queued once");
        // The worker already took 1.
        assert_eq!(q.take_next().map(|j| j.nar_size), Some(1));
        assert_eq!(q.prioritize([job(9), job(3), job(1)]), 0);
        assert_eq!(
            order(&mut q),
            [9, 3, 2, 4],
            "1 is being compressed: not again"
        );
        assert_eq!(q.len(), 5, "pending until finished");
        for n in [1, 2, 3, 4, 9] {
            q.finished(&job(n).path_hash);
        }
        assert!(q.is_empty());
    }

    #[test]
    fn requests_beyond_the_capacity_are_dropped_closures_are_not() {
        let mut q = CompressionQueue::new(2);
        assert!(q.request(job(1)));
        assert!(q.request(job(2)));
        assert!(!q.request(job(3)));
        assert_eq!(q.prioritize((10..20).map(job)), 0);
        assert_eq!(q.len(), 12);
        assert_eq!(order(&mut q)[..3], [10, 11, 12]);
    }
}
