//! A node's libp2p identity on disk: an ed25519 keypair in libp2p's protobuf encoding, in a
//! file of mode 0600, generated on first start. The server's tracker/seed node and every
//! agent keep theirs this way, so a restart keeps the same PeerId.

use std::path::Path;

use libp2p::identity::Keypair;
use tailcache_store::IoError;
use tailcache_store::signing::{read_private_file, write_private_file};

use crate::error::{Error, Result};

/// Reads the identity at `path`, or generates one there (mode 0600) if there is none. A file
/// readable by group or others is refused, as secret key files are
/// ([`read_private_file`]).
pub fn load_or_generate(path: &Path) -> Result<Keypair> {
    let bytes = match read_private_file(path) {
        Ok(bytes) => bytes,
        Err(tailcache_store::Error::Io(IoError { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return generate(path);
        }
        Err(e) => return Err(e.into()),
    };
    Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::InvalidKeyFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A new identity, written to `path` (which must not exist) with mode 0600.
fn generate(path: &Path) -> Result<Keypair> {
    let key = Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| Error::InvalidKeyFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    write_private_file(path, &bytes)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};

    #[test]
    fn generated_once_kept_after_and_refused_when_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p2p-key");
        let first = load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_generate(&path).unwrap();
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_generate(&path).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Store(tailcache_store::Error::InsecureKeyFile { mode: 0o644, .. })
            ),
            "{err}"
        );

        let junk = dir.path().join("junk");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&junk)
            .unwrap()
            .write_all(b"not a key")
            .unwrap();
        assert!(matches!(
            load_or_generate(&junk),
            Err(Error::InvalidKeyFile { .. })
        ));
    }
}
