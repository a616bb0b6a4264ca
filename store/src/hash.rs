//! SHA-256 hashes as Nix writes them: `sha256:<nix32>` in narinfos, `sha256:<base16>` in the
//! store database, and SRI `sha256-<base64>` in newer Nix output. Only SHA-256 is needed:
//! NAR hashes and file hashes in a binary cache are always SHA-256.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::Digest as _;

use crate::error::{Error, Result};
use crate::nixbase32;

/// A SHA-256 digest. `Display` gives the narinfo form `sha256:<nix32>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// Hashes `data` in one go.
    pub fn digest(data: &[u8]) -> Self {
        Sha256Hash(sha2::Sha256::digest(data).into())
    }

    /// Parses `sha256:<nix32|base16|base64>` or `sha256-<base64>` (SRI).
    pub fn parse(s: &str) -> Result<Self> {
        let err = |reason| Error::InvalidHash {
            input: s.to_owned(),
            reason,
        };
        let (sri, rest) = if let Some(r) = s.strip_prefix("sha256:") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("sha256-") {
            (true, r)
        } else {
            return Err(err("expected a sha256: or sha256- prefix"));
        };
        match (sri, rest.len()) {
            (false, 52) => Self::from_nix32(rest),
            (false, 64) => Self::from_base16(rest),
            (_, 44) => {
                let v = BASE64.decode(rest).map_err(|_| err("bad base64"))?;
                Ok(Sha256Hash(v.try_into().map_err(|_| err("wrong length"))?))
            }
            _ => Err(err("wrong length for a sha256 hash")),
        }
    }

    /// Parses a bare 52-character nix32 digest (as used in URLs).
    pub fn from_nix32(s: &str) -> Result<Self> {
        nixbase32::decode::<32>(s)
            .map(Sha256Hash)
            .map_err(|_| Error::InvalidHash {
                input: s.to_owned(),
                reason: "not a 52-character nix32 sha256",
            })
    }

    /// Parses a bare 64-character lowercase or uppercase hex digest. Strict: exactly 64 hex
    /// digits (no sign, no whitespace), as Nix accepts them.
    pub fn from_base16(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| Error::InvalidHash {
            input: s.to_owned(),
            reason: "bad base16",
        })?;
        Ok(Sha256Hash(out))
    }

    /// The bare nix32 digest (52 characters), without the `sha256:` prefix.
    pub fn to_nix32(&self) -> String {
        nixbase32::encode(&self.0)
    }

    /// The bare lowercase hex digest.
    pub fn to_base16(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An incremental SHA-256 that also counts the bytes it has seen — what a NAR stream or a
/// compressed file needs to yield both `…Hash` and `…Size`.
#[derive(Clone, Default)]
pub struct HashingCounter {
    hasher: sha2::Sha256,
    len: u64,
}

impl fmt::Debug for HashingCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashingCounter")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl HashingCounter {
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> (Sha256Hash, u64) {
        (Sha256Hash(self.hasher.finalize().into()), self.len)
    }
}

/// A writer adapter that passes bytes on to `inner` and exactly the bytes `inner` took to
/// `copy` (which may hash or count them), so `copy` sees what was written without a second
/// read.
#[derive(Debug)]
pub struct TeeWriter<W, F> {
    inner: W,
    copy: F,
}

impl<W, F: FnMut(&[u8])> TeeWriter<W, F> {
    pub fn new(inner: W, copy: F) -> Self {
        TeeWriter { inner, copy }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: std::io::Write, F: FnMut(&[u8])> std::io::Write for TeeWriter<W, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        (self.copy)(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn every_spelling_parses_to_the_same_hash() {
        let h = Sha256Hash::digest(b"");
        assert_eq!(h.to_base16(), EMPTY_HEX);
        assert_eq!(
            Sha256Hash::parse(&format!("sha256:{EMPTY_HEX}")).unwrap(),
            h
        );
        assert_eq!(Sha256Hash::parse(&h.to_string()).unwrap(), h);
        assert_eq!(
            Sha256Hash::parse("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").unwrap(),
            h
        );
        assert_eq!(
            h.to_string(),
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
    }

    #[test]
    fn rejects_other_algorithms_and_lengths() {
        for bad in [
            "md5:abc",
            "sha256:",
            "sha256:zz",
            "sha1:0000",
            &format!("sha256:{}x", EMPTY_HEX),
        ] {
            assert!(Sha256Hash::parse(bad).is_err(), "{bad}");
        }
    }

    /// Found by fuzzing: `u8::from_str_radix` takes a sign, so "+c" decoded as 0x0c and this
    /// 64-character string parsed as some other hash. Nix refuses it; so do we.
    #[test]
    fn base16_refuses_signs_and_non_hex() {
        let plus = "e3b0c44298+c1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(plus.len(), 64);
        assert!(Sha256Hash::parse(&format!("sha256:{plus}")).is_err());
        assert!(Sha256Hash::from_base16(plus).is_err());
        for bad in [
            EMPTY_HEX.replacen("e3", "-3", 1),
            EMPTY_HEX.replacen("e3", " 3", 1),
            EMPTY_HEX.replacen("e3", "g3", 1),
            EMPTY_HEX.replacen("e3", "é", 1),
        ] {
            assert!(Sha256Hash::from_base16(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            Sha256Hash::from_base16(&EMPTY_HEX.to_uppercase()).unwrap(),
            Sha256Hash::digest(b"")
        );
    }
}
