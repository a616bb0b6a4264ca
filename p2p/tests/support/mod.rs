//! Shared helpers for the p2p integration tests: nodes on loopback, in-memory piece
//! sources, and waiting for node events with a deadline (never sleeping to synchronise).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tailcache_p2p::node::{self, Client, NodeConfig, NodeEvent, PieceSource, RangeReader};
use tailcache_p2p::tracker::FileId;
use tokio::io::AsyncRead;
use tokio::sync::broadcast;

/// Longest any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn quic() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
}

pub fn tcp() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

pub fn config() -> NodeConfig {
    NodeConfig::new(Keypair::generate_ed25519())
}

/// A running node listening on `listen`; returns its client and bound address.
pub async fn start(
    config: NodeConfig,
    source: Arc<dyn PieceSource>,
    listen: Multiaddr,
) -> (Client, Multiaddr) {
    let client = node::spawn(config, source).unwrap();
    let addr = client.listen(listen).await.unwrap();
    (client, addr)
}

/// Deterministic, incompressible-looking bytes (xorshift64*), different per seed, so a
/// misplaced range shows.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Files held in memory.
#[derive(Debug, Default)]
pub struct MemSource {
    pub files: HashMap<FileId, Arc<[u8]>>,
}

impl MemSource {
    pub fn with(file: FileId, bytes: Vec<u8>) -> Self {
        let mut files = HashMap::new();
        files.insert(file, Arc::from(bytes));
        Self { files }
    }
}

impl PieceSource for MemSource {
    fn open(&self, file: &FileId, offset: u64, len: u64) -> Option<RangeReader> {
        let data = self.files.get(file)?;
        let end = offset.checked_add(len)?;
        if end > data.len() as u64 {
            return None;
        }
        let slice = SliceReader {
            data: data.clone(),
            pos: offset as usize,
            end: end as usize,
        };
        Some(Box::new(slice))
    }
}

struct SliceReader {
    data: Arc<[u8]>,
    pos: usize,
    end: usize,
}

impl AsyncRead for SliceReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.end - self.pos);
        let (pos, data) = (self.pos, self.data.clone());
        buf.put_slice(&data[pos..pos + n]);
        self.pos += n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Waits (up to [`DEADLINE`]) for the first event that `pred` accepts.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<NodeEvent>,
    pred: impl Fn(&NodeEvent) -> bool,
) -> NodeEvent {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("node stopped"),
            }
        }
    })
    .await
    .expect("event within the deadline")
}

pub fn disconnected(peer: PeerId) -> impl Fn(&NodeEvent) -> bool {
    move |e| matches!(e, NodeEvent::PeerDisconnected { peer: p } if *p == peer)
}
