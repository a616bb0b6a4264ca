//! Least-recently-used eviction under a byte budget: the one rule behind both caches of
//! binary-cache files — the server's directory of compressed NARs and the agent's cache of
//! fetched files. Pure: the caller lists its entries with their sizes and last use, removes
//! what [`victims`] names, and owns the files and the locking.

/// What a cache knows of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<K, T> {
    pub key: K,
    /// Bytes the entry takes.
    pub size: u64,
    /// When it was last used; entries used longest ago go first.
    pub last_used: T,
}

/// The entries to remove, least recently used first, so that the rest total at most
/// `max_bytes`. `keep` (the entry just added) is never chosen, even if it alone is over the
/// budget. Ties in `last_used` keep the order of `entries`.
pub fn victims<K: PartialEq, T: Ord>(
    mut entries: Vec<Entry<K, T>>,
    max_bytes: u64,
    keep: Option<&K>,
) -> Vec<Entry<K, T>> {
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    if total <= max_bytes {
        return Vec::new();
    }
    entries.sort_by(|a, b| a.last_used.cmp(&b.last_used));
    let mut out = Vec::new();
    for e in entries {
        if total <= max_bytes {
            break;
        }
        if Some(&e.key) == keep {
            continue;
        }
        total -= e.size;
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(key: u32, size: u64, last_used: u64) -> Entry<u32, u64> {
        Entry {
            key,
            size,
            last_used,
        }
    }

    #[test]
    fn oldest_go_first_and_the_kept_entry_stays() {
        let entries = vec![e(1, 4, 30), e(2, 4, 10), e(3, 4, 20)];
        let keys = |v: Vec<Entry<u32, u64>>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(keys(victims(entries.clone(), 12, None)), Vec::<u32>::new());
        assert_eq!(keys(victims(entries.clone(), 8, None)), [2]);
        assert_eq!(keys(victims(entries.clone(), 4, None)), [2, 3]);
        assert_eq!(keys(victims(entries.clone(), 4, Some(&2))), [3, 1]);
        assert_eq!(keys(victims(entries, 0, Some(&1))), [2, 3]);
    }

    proptest! {
        #[test]
        fn what_remains_fits_and_nothing_newer_goes_before_something_older(
            entries in proptest::collection::vec((0u64..100, 0u64..1000), 0..30),
            max in 0u64..3000,
        ) {
            let entries: Vec<Entry<u32, u64>> = entries
                .into_iter()
                .enumerate()
                .map(|(i, (size, t))| e(i as u32, size, t))
                .collect();
            let gone = victims(entries.clone(), max, None);
            let left: u64 = entries.iter().map(|e| e.size).sum::<u64>()
                - gone.iter().map(|e| e.size).sum::<u64>();
            prop_assert!(left <= max);
            // Every survivor was used no earlier than every victim but the last one chosen.
            if let Some(last) = gone.last() {
                for s in entries.iter().filter(|s| !gone.iter().any(|g| g.key == s.key)) {
                    prop_assert!(s.last_used >= last.last_used);
                }
            }
        }
    }
}
