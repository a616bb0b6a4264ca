//! What Nix knows about a valid store path (its `ValidPathInfo`): the NAR's hash and size,
//! the references, deriver, signatures and content address. The store database holds one per
//! valid path ([`crate::db`]); a narinfo is one plus where its NAR file is
//! ([`crate::narinfo`]). The signatures sign its fingerprint:
//! `1;<store_dir>/<base name>;sha256:<nix32 NarHash>;<NarSize>;<full reference paths, sorted,
//! comma-joined>`.

use crate::hash::Sha256Hash;
use crate::signing::{PublicKey, SecretKey, verify_any};
use crate::store_path::StorePath;

/// What Nix records about one valid path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    /// Sorted as Nix sorts them (by path string), including the path itself if it refers to
    /// itself.
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
    /// When the path became valid (Unix seconds); 0 where that is not known (a narinfo does
    /// not say).
    pub registration_time: i64,
}

impl PathInfo {
    /// The signature fingerprint of this path in the logical store directory `store_dir`.
    pub fn fingerprint(&self, store_dir: &str) -> String {
        fingerprint(
            store_dir,
            &self.path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Adds `key`'s signature, replacing an existing one by a key of the same name.
    pub fn sign(&mut self, key: &SecretKey, store_dir: &str) {
        self.add_signature(key.sign(&self.fingerprint(store_dir)));
    }

    /// Adds a signature made earlier (`name:base64`), replacing any by the same key name.
    pub fn add_signature(&mut self, sig: String) {
        if let Some((name, _)) = sig.split_once(':') {
            let prefix = format!("{name}:");
            self.sigs.retain(|s| !s.starts_with(&prefix));
        }
        self.sigs.push(sig);
    }

    /// Whether one of the signatures is valid for one of `keys`.
    pub fn verify(&self, keys: &[PublicKey], store_dir: &str) -> bool {
        verify_any(keys, &self.fingerprint(store_dir), &self.sigs)
    }
}

/// `1;<store_dir>/<path>;<sha256:nix32 narHash>;<narSize>;<comma-joined full reference paths,
/// sorted>` — the text Nix signs for a store path.
pub fn fingerprint(
    store_dir: &str,
    path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let refs: Vec<String> = sorted_base_names(references)
        .into_iter()
        .map(|b| format!("{store_dir}/{b}"))
        .collect();
    format!(
        "1;{};{nar_hash};{nar_size};{}",
        path.to_absolute(store_dir),
        refs.join(",")
    )
}

/// Base names in Nix's order (`StorePath`'s `Ord`, the text order) without duplicates.
pub(crate) fn sorted_base_names(paths: &[StorePath]) -> Vec<String> {
    let mut sorted: Vec<&StorePath> = paths.iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.into_iter().map(StorePath::base_name).collect()
}
