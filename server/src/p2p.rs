//! The server's P2P node: a libp2p node in tracker mode that is the bootstrap peer and seeds
//! every compressed NAR in the NAR directories (primary and archive files). Identity file,
//! listening and file ranges come from `tailcache_p2p`, which the agent uses the same way.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tailcache_p2p::FileId;
use tailcache_p2p::libp2p::Multiaddr;
use tailcache_p2p::node::{self, Client, NodeConfig, PieceSource, RangeReader};
use tailcache_p2p::tracker::TrackerLimits;

use crate::cache::nar_cache::NarDirs;
use crate::config::{Compression, P2pConfig};

/// Uploads come straight from the NAR directories, by file hash.
#[derive(Debug)]
struct NarSource {
    dirs: NarDirs,
}

impl PieceSource for NarSource {
    fn open(&self, file: &FileId, offset: u64, len: u64) -> Option<RangeReader> {
        let hash = file.hash();
        [Compression::Xz, Compression::Zstd]
            .into_iter()
            .find_map(|c| {
                self.dirs
                    .find_file(&hash, c)
                    .map(|(dir, _)| dir.file_path(&hash, c))
            })
            .and_then(|path| node::file_range(&path, offset, len))
    }
}

/// Starts the tracker/seed node and listens on the configured addresses; returns the node
/// and its full addresses (`<multiaddr>/p2p/<peer id>`).
pub async fn start_server_node(
    config: &P2pConfig,
    state_dir: &Path,
    dirs: NarDirs,
) -> anyhow::Result<(Client, Vec<Multiaddr>)> {
    let listen = config
        .listen
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .with_context(|| format!("p2p.listen: invalid multiaddr {a:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let key_file = config
        .key_file
        .clone()
        .unwrap_or_else(|| state_dir.join("p2p-key"));
    let keypair = tailcache_p2p::identity::load_or_generate(&key_file)?;
    let mut node_config = NodeConfig::new(keypair);
    node_config.tracker = Some(TrackerLimits::default());
    let client = node::spawn(node_config, Arc::new(NarSource { dirs }))
        .context("cannot start the p2p node")?;
    let addrs = client.listen_all(&listen).await?;
    Ok((client, addrs))
}
