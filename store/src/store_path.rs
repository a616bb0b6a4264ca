//! Store paths: `<store dir>/<32-char nix32 hash>-<name>`. Anything that comes from a URL or a
//! peer is parsed here before it touches the file system, so a name can never climb out of
//! the store (no `/`, no leading `.`, only the characters Nix itself allows).

use std::fmt;

use crate::error::{Error, Result};
use crate::nixbase32;

/// The default logical store directory.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";
/// Length of the hash part of a store path's base name.
pub const HASH_LEN: usize = 32;
/// Longest name Nix accepts (`maxStorePathLen` minus hash and dash).
pub const MAX_NAME_LEN: usize = 211;

/// The 20-byte hash part of a store path, validated nix32.
///
/// Ordered as Nix orders store paths: by the printed nix32 string. nix32 prints the bytes
/// as one little-endian number, most significant digit first, so that is the bytes compared
/// from the last one (not the derived byte order, which would break fingerprints).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StorePathHash([u8; 20]);

impl Ord for StorePathHash {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.iter().rev().cmp(other.0.iter().rev())
    }
}

impl PartialOrd for StorePathHash {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl StorePathHash {
    /// Parses the 32-character hash part (as found in `<hash>.narinfo` URLs).
    pub fn parse(s: &str) -> Result<Self> {
        nixbase32::decode::<20>(s)
            .map(StorePathHash)
            .map_err(|_| Error::InvalidStorePath {
                input: s.to_owned(),
                reason: "hash part is not 32 nix32 characters",
            })
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&nixbase32::encode(&self.0))
    }
}

impl fmt::Debug for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A store path's base name, `<hash>-<name>`, independent of the store directory. Its order
/// is the order of the base names as strings (hash parts have a fixed length).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash: StorePathHash,
    name: String,
}

impl StorePath {
    /// Parses a base name `<hash>-<name>`.
    pub fn from_base_name(s: &str) -> Result<Self> {
        let err = |reason| Error::InvalidStorePath {
            input: s.to_owned(),
            reason,
        };
        if s.len() < HASH_LEN + 2 || s.as_bytes()[HASH_LEN] != b'-' {
            return Err(err("expected <32-char hash>-<name>"));
        }
        let hash = StorePathHash::parse(&s[..HASH_LEN]).map_err(|_| err("bad hash part"))?;
        let name = &s[HASH_LEN + 1..];
        validate_name(name).map_err(err)?;
        Ok(StorePath {
            hash,
            name: name.to_owned(),
        })
    }

    /// Parses a full path `<store_dir>/<hash>-<name>`; nothing may follow the base name.
    pub fn from_absolute(store_dir: &str, s: &str) -> Result<Self> {
        let rest = s
            .strip_prefix(store_dir)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| Error::InvalidStorePath {
                input: s.to_owned(),
                reason: "not inside the store directory",
            })?;
        Self::from_base_name(rest)
    }

    pub fn hash(&self) -> StorePathHash {
        self.hash
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }

    /// `<store_dir>/<hash>-<name>`.
    pub fn to_absolute(&self, store_dir: &str) -> String {
        format!("{store_dir}/{}-{}", self.hash, self.name)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash, self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

/// Nix's rule for the name part: 1..=211 characters from `[A-Za-z0-9+-._?=]`, not starting
/// with a dot (so `.` and `..` are impossible).
fn validate_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err("name must have 1 to 211 characters");
    }
    if name.starts_with('.') {
        return Err("name must not start with a dot");
    }
    let ok = |c: u8| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c);
    if !name.bytes().all(ok) {
        return Err("name has a character Nix does not allow");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12.1";

    #[test]
    fn parses_valid_paths() {
        let p = StorePath::from_base_name(GOOD).unwrap();
        assert_eq!(p.name(), "hello-2.12.1");
        assert_eq!(p.base_name(), GOOD);
        assert_eq!(p.to_absolute("/nix/store"), format!("/nix/store/{GOOD}"));
        let q = StorePath::from_absolute("/nix/store", &format!("/nix/store/{GOOD}")).unwrap();
        assert_eq!(p, q);
    }

    proptest::proptest! {
        #[test]
        fn order_is_nix_string_order(a in proptest::array::uniform20(0u8..), b in proptest::array::uniform20(0u8..)) {
            let (pa, pb) = (StorePathHash(a), StorePathHash(b));
            proptest::prop_assert_eq!(pa.cmp(&pb), pa.to_string().cmp(&pb.to_string()));
            let (sa, sb) = (
                StorePath { hash: pa, name: "x".into() },
                StorePath { hash: pb, name: "x-y".into() },
            );
            proptest::prop_assert_eq!(sa.cmp(&sb), sa.base_name().cmp(&sb.base_name()));
        }
    }

    #[test]
    fn rejects_invalid_paths() {
        for bad in [
            "",
            "7rjj86a15146cq1d3qy068lml7n8ykzm",
            "7rjj86a15146cq1d3qy068lml7n8ykzm-",
            "7rjj86a15146cq1d3qy068lml7n8ykze-hello", // 'e' is not nix32
            "7rjj86a15146cq1d3qy068lml7n8ykz-hello",  // 31 chars
            "7rjj86a15146cq1d3qy068lml7n8ykzm-..",
            "7rjj86a15146cq1d3qy068lml7n8ykzm-.hidden",
            "7rjj86a15146cq1d3qy068lml7n8ykzm-a/b",
            "7rjj86a15146cq1d3qy068lml7n8ykzm-a b",
            "7rjj86a15146cq1d3qy068lml7n8ykzm-é",
            "../../../etc/passwd",
        ] {
            assert!(StorePath::from_base_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(StorePath::from_absolute("/nix/store", &format!("/nix/store/{GOOD}/bin")).is_err());
        assert!(StorePath::from_absolute("/nix/store", &format!("/nix/storex/{GOOD}")).is_err());
        let long = format!("7rjj86a15146cq1d3qy068lml7n8ykzm-{}", "a".repeat(212));
        assert!(StorePath::from_base_name(&long).is_err());
    }
}
