//! Generation records: for each build target (a host's NixOS system, a home-manager
//! profile, a package) that a build produced, the server keeps a numbered *generation* —
//! the out path it built, the commit and lock file it came from, the closure's size and the
//! difference to the previous generation — and signs it with its cache key, so a client
//! can check where a pointer to a store path came from before it switches to it.
//!
//! # Signature domain
//! The signed message is [`SIGNATURE_DOMAIN`] (`tailcache-generation-v1\0`) followed by the
//! record's JSON text, exactly as carried in [`SignedGeneration::record`]. A narinfo
//! fingerprint starts with `1;` and a P2P manifest's message with `tailcache-p2p-manifest`,
//! so no signature of one kind verifies as another. The client verifies the text it
//! received and only then parses it, so fields added by a newer server cannot break the
//! check, and no re-serialisation has to reproduce the server's bytes.

use serde::{Deserialize, Serialize};
use tailcache_store::signing::{PublicKey, SecretKey};

/// What a generation signature covers, before the record's JSON text.
pub const SIGNATURE_DOMAIN: &[u8] = b"tailcache-generation-v1\0";

/// What a target is, which decides how a client activates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// `nixosConfigurations.<host>.config.system.build.toplevel`: the system profile and
    /// `bin/switch-to-configuration`.
    Nixos,
    /// `homeConfigurations.<name>.activationPackage`: the `activate` script.
    Home,
    /// Any other derivation: kept and served, never activated.
    Package,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Nixos => "nixos",
            TargetKind::Home => "home",
            TargetKind::Package => "package",
        }
    }
}

/// One generation of one target: what the server built and vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// The target's name (`laptop`, `alice@laptop`).
    pub target: String,
    pub kind: TargetKind,
    /// The flake output attribute that was built.
    pub attribute: String,
    /// Monotonic per target, from 1.
    pub generation: u64,
    /// The store path to switch to (`/nix/store/<hash>-<name>`).
    pub out_path: String,
    /// The build that produced it.
    pub build_id: u64,
    /// The commit built (`git rev-parse HEAD` of the checkout), when known.
    pub commit: Option<String>,
    /// `sha256:<nix32>` of the `flake.lock` the build used (served by the API), when the
    /// flake had one.
    pub lock_hash: Option<String>,
    /// When the build of this generation ended.
    pub built_at: jiff::Timestamp,
    /// Sum of the NAR sizes of the out path's closure.
    pub closure_nar_size: u64,
    /// Number of store paths in the closure.
    pub closure_paths: u64,
    /// What changed since the previous generation of this target.
    pub diff: ClosureDiff,
}

/// The difference between two closures, like `nix store diff-closures`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosureDiff {
    /// The generation this one is compared with; `None` for a target's first generation
    /// (then everything is `added`).
    pub previous: Option<u64>,
    /// Store paths in this closure and not in the previous one, sorted.
    pub added: Vec<String>,
    /// Store paths in the previous closure and not in this one, sorted.
    pub removed: Vec<String>,
    /// Per package name (a store path's name without its version), the versions before and
    /// after and the change in NAR size, sorted by name; unchanged packages are left out.
    pub packages: Vec<PackageChange>,
}

/// One package's change between two closures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChange {
    /// The package name (`firefox`, `nixos-system-laptop`).
    pub name: String,
    /// Versions in the previous closure (empty: added), sorted.
    pub before: Vec<String>,
    /// Versions in this closure (empty: removed), sorted.
    pub after: Vec<String>,
    /// NAR bytes in this closure minus in the previous one, for this package's paths.
    pub size_delta: i64,
}

/// A record as served: its JSON text and the server's signatures of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedGeneration {
    /// The record's JSON text; the signatures cover exactly these bytes.
    pub record: String,
    /// `key-name:base64(ed25519 signature of SIGNATURE_DOMAIN ‖ record)`, one per key.
    pub signatures: Vec<String>,
}

/// Why a signed record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error(
        "the generation record is not signed by a trusted key (signed by: {signers}; trusted: {trusted})"
    )]
    Untrusted { signers: String, trusted: String },
    #[error("the generation record is malformed: {0}")]
    Malformed(String),
}

impl SignedGeneration {
    /// Serialises `record` and signs the text with every key.
    pub fn sign(record: &GenerationRecord, keys: &[SecretKey]) -> Self {
        // A record holds strings, integers and a timestamp: serialising cannot fail.
        let record = serde_json::to_string(record).unwrap_or_default();
        let msg = signing_message(&record);
        let signatures = keys
            .iter()
            .map(|k| {
                use base64::Engine as _;
                let sig = k.sign_raw(&msg);
                format!(
                    "{}:{}",
                    k.name(),
                    base64::engine::general_purpose::STANDARD.encode(sig)
                )
            })
            .collect();
        SignedGeneration { record, signatures }
    }

    /// The record, if one of the signatures is valid for one of `trusted`.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<GenerationRecord, RecordError> {
        let msg = signing_message(&self.record);
        let valid = self
            .signatures
            .iter()
            .any(|sig| trusted.iter().any(|key| verify_raw_sig(key, &msg, sig)));
        if !valid {
            let name = |s: &String| s.split_once(':').map_or(s.clone(), |(n, _)| n.to_owned());
            return Err(RecordError::Untrusted {
                signers: list(self.signatures.iter().map(name)),
                trusted: list(trusted.iter().map(|k| k.name().to_owned())),
            });
        }
        self.parse_unverified()
    }

    /// The record without checking any signature: for display only (`bs`), never to act on.
    pub fn parse_unverified(&self) -> Result<GenerationRecord, RecordError> {
        serde_json::from_str(&self.record).map_err(|e| RecordError::Malformed(e.to_string()))
    }
}

fn list(names: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = names.collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

fn signing_message(record: &str) -> Vec<u8> {
    let mut msg = SIGNATURE_DOMAIN.to_vec();
    msg.extend_from_slice(record.as_bytes());
    msg
}

/// Whether `sig` (`name:base64`) is `key`'s signature of `msg`; another key's name or a
/// malformed signature is simply not valid.
fn verify_raw_sig(key: &PublicKey, msg: &[u8], sig: &str) -> bool {
    use base64::Engine as _;
    let Some((name, b64)) = sig.split_once(':') else {
        return false;
    };
    if name != key.name() {
        return false;
    }
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
        return false;
    };
    key.verify_raw(msg, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> GenerationRecord {
        GenerationRecord {
            target: "laptop".into(),
            kind: TargetKind::Nixos,
            attribute: "nixosConfigurations.laptop.config.system.build.toplevel".into(),
            generation: 3,
            out_path: "/nix/store/b370w7ihml74cy9lg6bfj80j94ycj0fr-nixos-system-laptop".into(),
            build_id: 12,
            commit: Some("0123abcd".into()),
            lock_hash: None,
            built_at: "2026-12-01T12:00:00Z".parse().unwrap(),
            closure_nar_size: 1234,
            closure_paths: 5,
            diff: ClosureDiff::default(),
        }
    }

    #[test]
    fn a_signed_record_verifies_with_its_key_only() {
        let key = SecretKey::generate("server-1").unwrap();
        let other = SecretKey::generate("other-1").unwrap();
        let signed = SignedGeneration::sign(&record(), std::slice::from_ref(&key));
        assert_eq!(signed.verify(&[key.public()]).unwrap(), record());
        let err = signed.verify(&[other.public()]).unwrap_err();
        assert!(err.to_string().contains("server-1"), "{err}");
        assert!(matches!(err, RecordError::Untrusted { .. }));
        assert!(signed.verify(&[]).is_err());
    }

    #[test]
    fn a_tampered_record_is_refused() {
        let key = SecretKey::generate("server-1").unwrap();
        let mut signed = SignedGeneration::sign(&record(), std::slice::from_ref(&key));
        signed.record = signed
            .record
            .replace("\"generation\":3", "\"generation\":4");
        assert!(signed.record.contains("\"generation\":4"));
        assert!(signed.verify(&[key.public()]).is_err());
    }

    #[test]
    fn another_domains_signature_of_the_same_bytes_is_refused() {
        let key = SecretKey::generate("server-1").unwrap();
        let text = serde_json::to_string(&record()).unwrap();
        // A narinfo-style signature over the bare text, without the domain.
        let forged = SignedGeneration {
            signatures: vec![key.sign(&text)],
            record: text,
        };
        assert!(forged.verify(&[key.public()]).is_err());
    }
}
