//! Ed25519 signing keys in Nix's own file format, and narinfo signatures.
//!
//! Formats (as `nix-store --generate-binary-cache-key` writes them and libsodium reads them):
//! - secret key: `<name>:<base64 of 64 bytes = 32-byte seed ‖ 32-byte public key>`
//! - public key: `<name>:<base64 of 32 bytes>`
//! - signature:  `<name>:<base64 of a 64-byte detached signature>` over the UTF-8 fingerprint
//!   (see [`crate::path_info::fingerprint`]).
//!
//! The name ties a signature to a key: a verifier only tries the key whose name matches.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::error::{Error, Result};

/// Mode bits that make a secret key file readable (or writable) by someone else.
const GROUP_OTHER_BITS: u32 = 0o077;

/// The bytes of a secret file (a signing key, a libp2p identity): a regular file that
/// neither group nor others may read or write, else [`Error::InsecureKeyFile`]. The mode
/// checked is that of the file actually opened, not of whatever the path names later.
pub fn read_private_file(path: &Path) -> Result<Vec<u8>> {
    let ctx = |what: &str| format!("{what} secret key file {}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(ctx("opening"), e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(ctx("inspecting"), e))?;
    if !meta.is_file() {
        return Err(Error::io(
            ctx("reading"),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(Error::InsecureKeyFile {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(ctx("reading"), e))?;
    Ok(bytes)
}

/// Writes `bytes` to a new secret file (a signing key, a libp2p identity) created with mode
/// 0600, never wider even briefly. An existing file is left alone and reported as an error;
/// a file that could not be written whole is removed (it would later fail to parse).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let ctx = format!("creating secret key file {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(ctx.clone(), e))?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(Error::io(ctx, e));
    }
    Ok(())
}

/// A named ed25519 secret key. `Debug` prints the name and public key only.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .field("public", &self.public().to_nix_string())
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// Makes a new key from 32 bytes of OS randomness.
    pub fn generate(name: &str) -> Result<Self> {
        validate_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| {
            Error::io(
                "reading random bytes for a new key",
                std::io::Error::other(e.to_string()),
            )
        })?;
        Self::from_seed(name, &seed)
    }

    /// Builds a key from its 32-byte seed (the first half of Nix's 64-byte secret).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self> {
        validate_name(name)?;
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        })
    }

    /// Parses `name:base64(seed ‖ public)`. Trailing whitespace (a newline added by an
    /// editor) is ignored. The embedded public half must be the one the seed derives, so a
    /// truncated or spliced key file is caught here rather than producing bad signatures.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, bytes) = split_key(s.trim_end(), "secret key")?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|v: Vec<u8>| Error::InvalidKey {
            reason: format!("secret key {name:?} has {} bytes, expected 64", v.len()),
        })?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[..32]);
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[32..] {
            return Err(Error::InvalidKey {
                reason: format!(
                    "secret key {name:?}: its public half does not match its seed (corrupt key?)"
                ),
            });
        }
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }

    /// Reads a secret key file, refusing one that group or others may read or write.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = read_private_file(path)?;
        let text = String::from_utf8(bytes).map_err(|_| Error::InvalidKey {
            reason: format!("{}: not UTF-8", path.display()),
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::InvalidKey { reason } => Error::InvalidKey {
                reason: format!("{}: {reason}", path.display()),
            },
            other => other,
        })
    }

    /// Writes the key to a new file created with mode 0600 ([`write_private_file`]).
    pub fn write_new(&self, path: &Path) -> Result<()> {
        write_private_file(path, self.to_nix_string().as_bytes())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name:base64(seed ‖ public)`, without a trailing newline (as Nix writes it).
    pub fn to_nix_string(&self) -> String {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(self.key.as_bytes());
        bytes[32..].copy_from_slice(self.key.verifying_key().as_bytes());
        format!("{}:{}", self.name, BASE64.encode(bytes))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `fingerprint`, giving `name:base64(signature)`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, BASE64.encode(sig.to_bytes()))
    }

    /// A detached ed25519 signature of arbitrary bytes. For signature domains other than
    /// Nix's fingerprints (the P2P manifest): the caller must prefix `msg` with a domain tag
    /// that no Nix fingerprint can start with, so the two kinds can never be confused.
    pub fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

/// A named ed25519 public key, as listed in Nix's `trusted-public-keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `name:base64(32 bytes)`; surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, bytes) = split_key(s.trim(), "public key")?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|v: Vec<u8>| Error::InvalidKey {
            reason: format!("public key {name:?} has {} bytes, expected 32", v.len()),
        })?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| Error::InvalidKey {
            reason: format!("public key {name:?} is not a valid ed25519 point"),
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name:base64(public)`.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }

    /// Whether `sig` (`name:base64`) is this key's signature of `fingerprint`. A signature
    /// by another key name, or one that is not well formed, is simply not valid.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = BASE64.decode(b64) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
            return false;
        };
        // Strict verification rejects non-canonical encodings and small-order keys, as
        // libsodium's crypto_sign_verify_detached (what Nix uses) does.
        self.key
            .verify_strict(fingerprint.as_bytes(), &Signature::from_bytes(&bytes))
            .is_ok()
    }

    /// Whether `sig` is this key's detached signature of `msg` (see
    /// [`SecretKey::sign_raw`]); strict, like [`PublicKey::verify`].
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.key
            .verify_strict(msg, &Signature::from_bytes(sig))
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix_string())
    }
}

/// True if any of `sigs` is a valid signature of `fingerprint` by any of `keys`.
pub fn verify_any(keys: &[PublicKey], fingerprint: &str, sigs: &[String]) -> bool {
    sigs.iter()
        .any(|sig| keys.iter().any(|key| key.verify(fingerprint, sig)))
}

/// Splits `name:base64` and decodes the base64 part.
fn split_key<'a>(s: &'a str, what: &str) -> Result<(&'a str, Vec<u8>)> {
    let (name, b64) = s.split_once(':').ok_or_else(|| Error::InvalidKey {
        reason: format!("{what} is not of the form name:base64"),
    })?;
    validate_name(name)?;
    let bytes = BASE64.decode(b64).map_err(|e| Error::InvalidKey {
        reason: format!("{what} {name:?} is not valid base64: {e}"),
    })?;
    Ok((name, bytes))
}

/// A key name ends up in `Sig: name:…` lines and in `trusted-public-keys` (space-separated),
/// so it must be non-empty and free of `:`, whitespace and control characters.
fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidKey {
            reason: "key name is empty".to_owned(),
        });
    }
    if name
        .chars()
        .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidKey {
            reason: format!("key name {name:?} contains ':', whitespace or a control character"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IoError;

    const FIXTURE_SECRET: &str = include_str!("../tests/fixtures/narinfo/test-only-secret.key");
    const FIXTURE_PUBLIC: &str = include_str!("../tests/fixtures/narinfo/test-only-public.key");

    fn fixture_secret_bytes() -> Vec<u8> {
        BASE64
            .decode(FIXTURE_SECRET.split_once(':').unwrap().1)
            .unwrap()
    }

    #[test]
    fn nix_generated_keys_parse_and_match() {
        let sk = SecretKey::parse(FIXTURE_SECRET).unwrap();
        let pk = PublicKey::parse(FIXTURE_PUBLIC).unwrap();
        assert_eq!(sk.name(), "tailcache-test-only-do-not-trust-1");
        assert_eq!(sk.public(), pk);
        assert_eq!(sk.to_nix_string(), FIXTURE_SECRET);
        assert_eq!(pk.to_nix_string(), FIXTURE_PUBLIC);
        assert_eq!(pk.to_string(), FIXTURE_PUBLIC);
        // A trailing newline from an editor is tolerated.
        assert_eq!(
            SecretKey::parse(&format!("{FIXTURE_SECRET}\n"))
                .unwrap()
                .to_nix_string(),
            FIXTURE_SECRET
        );
    }

    #[test]
    fn debug_does_not_leak_secret_material() {
        let sk = SecretKey::parse(FIXTURE_SECRET).unwrap();
        let dbg = format!("{sk:?}");
        let secret_b64 = FIXTURE_SECRET.split_once(':').unwrap().1;
        let seed_b64 = BASE64.encode(&fixture_secret_bytes()[..32]);
        assert!(!dbg.contains(secret_b64), "{dbg}");
        assert!(!dbg.contains(&seed_b64), "{dbg}");
        assert!(dbg.contains("tailcache-test-only-do-not-trust-1"), "{dbg}");
        // Debug formatting of raw bytes would show decimal numbers of the seed.
        let seed_dec = format!("{:?}", &fixture_secret_bytes()[..32]);
        assert!(!dbg.contains(&seed_dec[1..seed_dec.len() - 1]), "{dbg}");
    }

    #[test]
    fn sign_verify_round_trip_and_rejections() {
        let sk = SecretKey::generate("gen-1").unwrap();
        let pk = sk.public();
        let sig = sk.sign("1;/nix/store/x;sha256:y;1;");
        assert!(sig.starts_with("gen-1:"));
        assert!(pk.verify("1;/nix/store/x;sha256:y;1;", &sig));
        assert!(!pk.verify("1;/nix/store/x;sha256:y;2;", &sig));
        // Same key bytes under another name: signature's name doesn't match.
        let renamed = PublicKey::parse(&pk.to_nix_string().replacen("gen-1", "gen-2", 1)).unwrap();
        assert!(!renamed.verify("1;/nix/store/x;sha256:y;1;", &sig));
        for bad in [
            "",
            "gen-1",
            "gen-1:",
            "gen-1:!!!!",
            "gen-1:AAAA",
            &sig.replacen("gen-1:", "gen-1:A", 1),
        ] {
            assert!(!pk.verify("1;/nix/store/x;sha256:y;1;", bad), "{bad:?}");
        }
        let other = SecretKey::generate("gen-1").unwrap();
        assert_ne!(other.to_nix_string(), sk.to_nix_string());
        assert!(!other.public().verify("1;/nix/store/x;sha256:y;1;", &sig));
        assert!(verify_any(
            &[other.public(), pk.clone()],
            "1;/nix/store/x;sha256:y;1;",
            &["junk".to_owned(), sig.clone()]
        ));
        assert!(!verify_any(
            &[other.public()],
            "1;/nix/store/x;sha256:y;1;",
            &[sig]
        ));
        assert!(!verify_any(&[pk], "1;/nix/store/x;sha256:y;1;", &[]));
    }

    #[test]
    fn raw_signatures_are_plain_ed25519() {
        let sk = SecretKey::generate("raw-1").unwrap();
        let pk = sk.public();
        let msg = b"domain\0\x01\x02 arbitrary bytes";
        let sig = sk.sign_raw(msg);
        assert!(pk.verify_raw(msg, &sig));
        assert!(!pk.verify_raw(b"domain\0\x01\x03 arbitrary bytes", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!pk.verify_raw(msg, &bad));
        assert!(
            !SecretKey::generate("raw-1")
                .unwrap()
                .public()
                .verify_raw(msg, &sig)
        );
        // The same bytes signed through the Nix API give the same signature: one key, one
        // algorithm; only the message decides the domain.
        let text = "1;/nix/store/x;sha256:y;1;";
        let nix_sig = sk.sign(text);
        let b64 = BASE64.encode(sk.sign_raw(text.as_bytes()));
        assert_eq!(nix_sig, format!("raw-1:{b64}"));
    }

    #[test]
    fn rejects_malformed_keys() {
        let bytes = fixture_secret_bytes();
        let mut swapped = bytes.clone();
        swapped[40] ^= 1;
        let other_pub = SecretKey::generate("x").unwrap().public();
        let mut spliced = bytes[..32].to_vec();
        spliced.extend_from_slice(other_pub.key.as_bytes());
        let b64 = |b: &[u8]| BASE64.encode(b);
        let bad_secrets = [
            String::new(),
            "no-colon".to_owned(),
            format!(":{}", b64(&bytes)),
            format!("a b:{}", b64(&bytes)),
            format!("k:{}", b64(&bytes)).replace('k', "k\0"),
            "k:not base64!".to_owned(),
            format!("k:{}", &b64(&bytes)[1..]),
            format!("k:{}", b64(&bytes[..63])),
            format!("k:{}", b64(&[bytes.as_slice(), &[0]].concat())),
            format!("k:{}", b64(&bytes[..32])),
            format!("k:{}", b64(&swapped)),
            format!("k:{}", b64(&spliced)),
        ];
        for bad in &bad_secrets {
            let err = SecretKey::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidKey { .. }), "{bad:?}: {err}");
        }
        let public = &bytes[32..];
        let bad_publics = [
            String::new(),
            format!(":{}", b64(public)),
            "k:%%%".to_owned(),
            format!("k:{}", b64(&public[..31])),
            format!("k:{}", b64(&bytes)),
        ];
        for bad in &bad_publics {
            let err = PublicKey::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidKey { .. }), "{bad:?}: {err}");
        }
        assert!(SecretKey::generate("").is_err());
        assert!(SecretKey::generate("a:b").is_err());
    }

    fn write_with_mode(dir: &Path, name: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, FIXTURE_SECRET).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn load_refuses_key_files_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666] {
            let path = write_with_mode(dir.path(), &format!("k{mode:o}"), mode);
            match SecretKey::load(&path) {
                Err(Error::InsecureKeyFile { path: p, mode: m }) => {
                    assert_eq!(p, path);
                    assert_eq!(m, mode);
                }
                other => panic!("mode {mode:o}: expected InsecureKeyFile, got {other:?}"),
            }
        }
        for mode in [0o600, 0o400] {
            let path = write_with_mode(dir.path(), &format!("ok{mode:o}"), mode);
            let sk = SecretKey::load(&path).unwrap();
            assert_eq!(sk.to_nix_string(), FIXTURE_SECRET);
        }
    }

    #[test]
    fn load_reports_missing_and_invalid_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = SecretKey::load(&missing).unwrap_err();
        assert!(
            matches!(&err, Error::Io(IoError { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(err.to_string().contains("missing"), "{err}");

        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, "k:AAAA").unwrap();
        std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = SecretKey::load(&garbage).unwrap_err();
        assert!(matches!(&err, Error::InvalidKey { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage"), "{err}");

        let err = SecretKey::load(dir.path()).unwrap_err();
        assert!(matches!(&err, Error::Io(_)), "{err:?}");
    }

    #[test]
    fn write_new_creates_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let sk = SecretKey::generate("written-1").unwrap();
        sk.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), sk.to_nix_string());
        assert_eq!(
            SecretKey::load(&path).unwrap().to_nix_string(),
            sk.to_nix_string()
        );

        let other = SecretKey::generate("written-2").unwrap();
        let err = other.write_new(&path).unwrap_err();
        assert!(
            matches!(&err, Error::Io(IoError { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{err:?}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), sk.to_nix_string());
    }
}
