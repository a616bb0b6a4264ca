//! Which files a cache server holds for one NAR (`GET /p2p/files/<store path hash>`): the
//! encodings a client may fetch instead of the one the narinfo names. The narinfo fields
//! that describe a file (`URL`, `Compression`, `FileHash`, `FileSize`) are outside the signed
//! fingerprint, so an agent may advertise any of these files to Nix in the narinfo it passes
//! on; Nix still checks the signature and, after decoding, the NAR hash. The list itself is
//! not signed: a wrong entry can only make a download fail, never let bad bytes through.

use serde::{Deserialize, Serialize};
use tailcache_store::{Compression, Sha256Hash};

/// Every file the server serves for one NAR, the uncompressed stream included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarFiles {
    /// The NAR every file decodes to (`sha256:<nix32>`), as in the narinfo.
    #[serde(with = "sha256_text")]
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub files: Vec<NarFile>,
}

/// One encoding of the NAR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarFile {
    /// Relative to the cache root, as a narinfo's `URL` (`nar/<filehash>.nar.zst`).
    pub url: String,
    #[serde(with = "compression_name")]
    pub compression: Compression,
    /// SHA-256 of the file as served (`sha256:<nix32>`); the NAR hash when uncompressed.
    #[serde(with = "sha256_text")]
    pub file_hash: Sha256Hash,
    pub file_size: u64,
}

impl NarFiles {
    /// The JSON body of the endpoint.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }

    /// The file in `compression`, if the server has it.
    pub fn get(&self, compression: Compression) -> Option<&NarFile> {
        self.files.iter().find(|f| f.compression == compression)
    }
}

mod sha256_text {
    use serde::{Deserialize as _, Deserializer, Serializer};
    use tailcache_store::Sha256Hash;

    pub fn serialize<S: Serializer>(h: &Sha256Hash, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(h)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sha256Hash, D::Error> {
        let text = String::deserialize(d)?;
        Sha256Hash::parse(&text).map_err(serde::de::Error::custom)
    }
}

mod compression_name {
    use serde::{Deserialize as _, Deserializer, Serializer};
    use tailcache_store::Compression;

    pub fn serialize<S: Serializer>(c: &Compression, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
        let text = String::deserialize(d)?;
        Compression::from_name(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown compression {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_kinds() {
        let nar_hash = Sha256Hash::digest(b"nar");
        let files = NarFiles {
            nar_hash,
            nar_size: 3,
            files: vec![
                NarFile {
                    url: format!("nar/{}.nar", nar_hash.to_nix32()),
                    compression: Compression::None,
                    file_hash: nar_hash,
                    file_size: 3,
                },
                NarFile {
                    url: "nar/x.nar.xz".into(),
                    compression: Compression::Xz,
                    file_hash: Sha256Hash::digest(b"xz"),
                    file_size: 60,
                },
            ],
        };
        let json = files.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            text.contains(&format!("\"nar_hash\":\"{nar_hash}\"")),
            "{text}"
        );
        assert!(text.contains("\"compression\":\"xz\""), "{text}");
        assert_eq!(NarFiles::from_json(&json).unwrap(), files);
        assert_eq!(files.get(Compression::Xz).unwrap().file_size, 60);
        assert!(files.get(Compression::Zstd).is_none());
        let bad = text.replace("\"xz\"", "\"rar\"");
        let err = NarFiles::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("unknown compression"), "{err}");
    }
}
