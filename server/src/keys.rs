//! The server's signing keys: the configured secret key files, or `<state_dir>/secret-key`,
//! generated (Nix format, mode 0600) on first start with `<hostname>-tailcache-1` as its name.

use std::path::Path;

use anyhow::Context as _;
use tailcache_store::signing::SecretKey;

/// File name of the generated key inside the state directory.
pub const DEFAULT_SECRET_KEY: &str = "secret-key";
/// Its public half, written beside it for convenience.
pub const DEFAULT_PUBLIC_KEY: &str = "public-key";

/// Loaded keys, and where the default one was written if it was just created.
#[derive(Debug)]
pub struct Keys {
    pub secret: Vec<SecretKey>,
    pub generated: Option<std::path::PathBuf>,
}

/// Loads `files`, or the default key in `state_dir` (generating it when missing).
pub fn load_or_generate(files: &[std::path::PathBuf], state_dir: &Path) -> anyhow::Result<Keys> {
    if !files.is_empty() {
        let secret = files
            .iter()
            .map(|f| SecretKey::load(f).with_context(|| format!("signing key {}", f.display())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return Ok(Keys {
            secret,
            generated: None,
        });
    }
    let path = state_dir.join(DEFAULT_SECRET_KEY);
    if path.exists() {
        let key =
            SecretKey::load(&path).with_context(|| format!("signing key {}", path.display()))?;
        return Ok(Keys {
            secret: vec![key],
            generated: None,
        });
    }
    let key = SecretKey::generate(&default_key_name())?;
    key.write_new(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let public = state_dir.join(DEFAULT_PUBLIC_KEY);
    std::fs::write(&public, key.public().to_nix_string() + "\n")
        .with_context(|| format!("cannot write {}", public.display()))?;
    Ok(Keys {
        secret: vec![key],
        generated: Some(path),
    })
}

/// `<hostname>-tailcache-1`, the key name clients see in `trusted-public-keys`.
pub fn default_key_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(':') && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "tailcache".to_owned());
    format!("{host}-tailcache-1")
}

/// Reads a secret (API token, webhook secret) from a file that only its owner may read; the
/// content is trimmed and must not be empty.
pub fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    let bytes = tailcache_store::signing::read_private_file(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("secret file {} is not UTF-8", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        anyhow::bail!("secret file {} is empty", path.display());
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret_file(&path).is_err());
    }
}
