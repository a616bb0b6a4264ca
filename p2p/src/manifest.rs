//! The P2P manifest: what the server signs about one NAR file so that bytes fetched from
//! untrusted peers can be checked — the file's SHA-256 (the narinfo `FileHash`), size,
//! compression, and the BLAKE3 root of the exact file bytes ([`crate::verify`] builds the
//! tree below that root) — and its signature domain.
//!
//! # Wire format
//! `postcard` of [`SignedManifest`], served as `application/octet-stream` by
//! `GET /p2p/manifest/<filehash>.nar.<ext>`: the manifest — file hash (32 raw bytes),
//! file size (varint), compression (varint length + UTF-8), BLAKE3 root (32 raw bytes),
//! block log (1 byte), piece size (varint) — then the key name (varint length + UTF-8) and
//! the signature (64 raw bytes). Decoding refuses trailing bytes.
//!
//! # Signature domain
//! The signed message is [`SIGNATURE_DOMAIN`] (`tailcache-p2p-manifest-v1\0`) followed by
//! `postcard(P2pManifest)`, signed with plain ed25519 by one of the server's Nix signing
//! keys. Such a signature can never be taken for a Nix narinfo signature, nor the reverse:
//! - Nix never verifies a signature over bytes it is given; it rebuilds the fingerprint
//!   `1;<store path>;<nar hash>;<nar size>;<references>` from narinfo fields and verifies
//!   the signature over that. Every such fingerprint starts with the two bytes `1;`.
//!   Every manifest message starts with `t` (and contains a NUL, which no fingerprint — UTF-8
//!   text of store paths and hashes — contains). So no manifest message is a fingerprint,
//!   and an ed25519 signature of one message says nothing about any other.
//! - In the other direction, [`SignedManifest::verify`] builds the message with the domain
//!   prefix itself, so a Nix signature (over a message starting `1;`) would have to be a
//!   signature over a message starting `t`: again a different message.
//! - The `v1` in the domain separates future manifest layouts the same way.

use serde::{Deserialize, Serialize};
use tailcache_store::signing::{PublicKey, SecretKey};
use tailcache_store::{Compression, Sha256Hash};

use crate::error::{Error, Result};
use crate::verify::{self, MAX_BLOCK_LOG};

/// Prefix of every signed manifest message (see the module documentation).
pub const SIGNATURE_DOMAIN: &[u8] = b"tailcache-p2p-manifest-v1\0";

/// Pieces are the unit peers are asked for: large enough that per-request overhead does
/// not matter, small enough that several peers share even a modest file.
pub const DEFAULT_PIECE_SIZE: u32 = 1 << 20;

/// What the server signs about one NAR file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct P2pManifest {
    /// SHA-256 of the file, as in the narinfo's `FileHash`.
    #[serde(with = "sha256_bytes")]
    pub file_hash: Sha256Hash,
    /// Size of the file in bytes (the narinfo's `FileSize`).
    pub file_size: u64,
    /// The narinfo's `Compression:` (on the wire, its name: `xz`, `zstd`).
    #[serde(with = "compression_name")]
    pub compression: Compression,
    /// BLAKE3 hash of the file bytes (an ordinary BLAKE3 hash: `b3sum` gives the same).
    pub blake3_root: [u8; 32],
    /// Verification groups are `1024 << block_log` bytes (4 → 16 KiB, bao's chunk-group log).
    pub block_log: u8,
    /// Bytes per piece, a multiple of the group size.
    pub piece_size: u32,
}

impl P2pManifest {
    /// A manifest with the default group and piece sizes.
    pub fn new(
        file_hash: Sha256Hash,
        file_size: u64,
        compression: Compression,
        blake3_root: [u8; 32],
    ) -> Self {
        P2pManifest {
            file_hash,
            file_size,
            compression,
            blake3_root,
            block_log: verify::DEFAULT_BLOCK_LOG,
            piece_size: DEFAULT_PIECE_SIZE,
        }
    }

    /// The exact bytes a signature covers: domain prefix ‖ postcard(self).
    pub fn signing_message(&self) -> Vec<u8> {
        let mut msg = SIGNATURE_DOMAIN.to_vec();
        // Serializing plain integers, byte arrays and a string into a Vec cannot fail.
        let body = postcard::to_allocvec(self).unwrap_or_default();
        msg.extend_from_slice(&body);
        msg
    }

    /// Signs the manifest with `key` in the P2P domain.
    pub fn sign(self, key: &SecretKey) -> SignedManifest {
        let signature = key.sign_raw(&self.signing_message());
        SignedManifest {
            manifest: self,
            key_name: key.name().to_owned(),
            signature,
        }
    }

    /// Checks the parameters other code relies on (group size in range, pieces made of
    /// whole groups), so that a signed but unusable manifest fails here, not later.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidManifest { reason });
        if self.block_log > MAX_BLOCK_LOG {
            return invalid(format!(
                "block_log {} exceeds {MAX_BLOCK_LOG}",
                self.block_log
            ));
        }
        let group = self.group_size();
        if self.piece_size == 0 || !u64::from(self.piece_size).is_multiple_of(group) {
            return invalid(format!(
                "piece size {} is not a positive multiple of the group size {group}",
                self.piece_size
            ));
        }
        Ok(())
    }

    /// Bytes per verification group.
    pub fn group_size(&self) -> u64 {
        verify::group_size(self.block_log)
    }

    /// Number of pieces (at least one, even for an empty file).
    pub fn piece_count(&self) -> u64 {
        self.file_size.div_ceil(u64::from(self.piece_size)).max(1)
    }

    /// The byte range `[start, end)` of piece `index`; the last piece may be short.
    pub fn piece_range(&self, index: u64) -> std::ops::Range<u64> {
        let size = u64::from(self.piece_size);
        let start = index.saturating_mul(size).min(self.file_size);
        start..start.saturating_add(size).min(self.file_size)
    }
}

/// A manifest with the server's signature, as served over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    pub manifest: P2pManifest,
    /// Name of the signing key (the part before `:` in `trusted-public-keys`).
    pub key_name: String,
    /// Detached ed25519 signature of [`P2pManifest::signing_message`].
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

impl SignedManifest {
    /// The wire form (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        // As in `signing_message`: plain data into a Vec cannot fail to serialize.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes the wire form; trailing bytes are an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let decode = |reason: String| Error::Decode {
            what: "signed P2P manifest",
            reason,
        };
        let (m, rest) =
            postcard::take_from_bytes::<Self>(bytes).map_err(|e| decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(decode(format!("{} trailing bytes", rest.len())));
        }
        Ok(m)
    }

    /// The manifest, if a key in `trusted` with the manifest's key name signed it in the
    /// P2P domain and its parameters are usable. Any other signer is refused, including a
    /// different key that carries a trusted key's name.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<&P2pManifest> {
        let mut candidates = trusted
            .iter()
            .filter(|k| k.name() == self.key_name)
            .peekable();
        if candidates.peek().is_none() {
            return Err(Error::UntrustedSigner {
                key_name: self.key_name.clone(),
            });
        }
        let msg = self.manifest.signing_message();
        if !candidates.any(|k| k.verify_raw(&msg, &self.signature)) {
            return Err(Error::BadSignature {
                key_name: self.key_name.clone(),
            });
        }
        self.manifest.validate()?;
        Ok(&self.manifest)
    }
}

/// `Sha256Hash` as its 32 raw bytes (the store crate has no serde).
mod sha256_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tailcache_store::Sha256Hash;

    pub fn serialize<S: Serializer>(h: &Sha256Hash, s: S) -> Result<S::Ok, S::Error> {
        h.0.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sha256Hash, D::Error> {
        <[u8; 32]>::deserialize(d).map(Sha256Hash)
    }
}

/// A [`Compression`] as its narinfo name; an unknown name does not decode.
mod compression_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use tailcache_store::Compression;

    pub fn serialize<S: Serializer>(c: &Compression, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(D::Error::custom)
    }
}

/// A 64-byte signature as two 32-byte halves: serde implements arrays only up to 32, and a
/// fixed-size tuple keeps postcard's encoding a plain 64 bytes with no length prefix.
mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        let mut halves = ([0u8; 32], [0u8; 32]);
        halves.0.copy_from_slice(&sig[..32]);
        halves.1.copy_from_slice(&sig[32..]);
        halves.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let (a, b) = <([u8; 32], [u8; 32])>::deserialize(d)?;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&a);
        sig[32..].copy_from_slice(&b);
        Ok(sig)
    }
}
