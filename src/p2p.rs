//! The server's P2P node: a libp2p node in tracker mode that is the
//! bootstrap peer and seeds every compressed NAR in the NAR directory. Also the libp2p
//! identity file shared with the agent (protobuf-encoded keypair, mode 0600).
//!
//! P2P file ids: a file is named by its SHA-256 — the narinfo's `FileHash` bytes, the same
//! hash the P2P manifest is keyed by — so the agent knows the id from the URL alone.

use std::io::{Seek as _, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tailcache_p2p::libp2p::Multiaddr;
use tailcache_p2p::libp2p::identity::Keypair;
use tailcache_p2p::node::{self, Client, NodeConfig, PieceSource};
use tailcache_p2p::tracker::{FileId, TrackerLimits};
use tailcache_store::Sha256Hash;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::cache::nar_cache::NarCache;
use crate::config::{Compression, P2pConfig};

/// Reads the libp2p identity at `path`, or generates one there (mode 0600) if absent.
pub fn load_or_generate_identity(path: &Path) -> anyhow::Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path)
                .with_context(|| format!("cannot stat {}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "libp2p key file {} is readable by group or others (mode {:o})",
                    path.display(),
                    mode & 0o777
                );
            }
            Keypair::from_protobuf_encoding(&bytes)
                .with_context(|| format!("invalid libp2p key file {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .context("cannot encode the libp2p key")?;
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.write_all(&bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Opens `len` bytes at `offset` of a file, if the file is that long.
pub fn open_range(path: &Path, offset: u64, len: u64) -> Option<Box<dyn AsyncRead + Send + Unpin>> {
    let mut f = std::fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    if offset.checked_add(len)? > size {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    Some(Box::new(tokio::fs::File::from_std(f).take(len)))
}

/// Uploads come straight from the NAR directory, by file hash.
#[derive(Debug)]
struct NarSource {
    nars: Arc<NarCache>,
}

impl PieceSource for NarSource {
    fn open(
        &self,
        file: &FileId,
        offset: u64,
        len: u64,
    ) -> Option<Box<dyn AsyncRead + Send + Unpin>> {
        let hash = Sha256Hash(*file);
        [Compression::Xz, Compression::Zstd]
            .into_iter()
            .find_map(|c| self.nars.find_file(&hash, c).map(|_| c))
            .and_then(|c| open_range(&self.nars.file_path(&hash, c), offset, len))
    }
}

/// Starts the tracker/seed node and listens on the configured addresses; returns the node
/// and its full addresses (`<multiaddr>/p2p/<peer id>`).
pub async fn start_server_node(
    config: &P2pConfig,
    state_dir: &Path,
    nars: Arc<NarCache>,
) -> anyhow::Result<(Client, Vec<Multiaddr>)> {
    let key_file = config
        .key_file
        .clone()
        .unwrap_or_else(|| state_dir.join("p2p-key"));
    let keypair = load_or_generate_identity(&key_file)?;
    let mut node_config = NodeConfig::new(keypair);
    node_config.tracker = Some(TrackerLimits::default());
    let client = node::spawn(node_config, Arc::new(NarSource { nars }))
        .context("cannot start the p2p node")?;
    let addrs = listen_all(&client, &config.listen).await?;
    Ok((client, addrs))
}

/// Listens on every address; returns them with the node's `/p2p/<peer id>` appended.
pub async fn listen_all(client: &Client, listen: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    let mut out = Vec::new();
    for a in listen {
        let addr: Multiaddr = a
            .parse()
            .with_context(|| format!("invalid p2p listen address {a:?}"))?;
        let bound = client
            .listen(addr)
            .await
            .with_context(|| format!("cannot listen on {a}"))?;
        let full = bound.with(tailcache_p2p::libp2p::multiaddr::Protocol::P2p(
            client.peer_id(),
        ));
        out.push(full);
    }
    Ok(out)
}
