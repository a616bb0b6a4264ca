//! `TestPeer`: a real libp2p node of the `tailcache-p2p` crate inside the test process (on
//! its own tokio runtime), to look at a server's tracker the way a peer does, to fetch a file
//! from the server's seed, and to play a peer that lies on the data protocol: it announces a
//! file as a finished seeder and then answers every range request with bytes that are not the
//! file's.

use std::sync::Arc;

use futures::{AsyncWriteExt as _, StreamExt as _};
use tailcache_p2p::libp2p::{Multiaddr, PeerId, identity::Keypair};
use tailcache_p2p::node::{
    self, Client, DATA_PROTOCOL, NoPieces, NodeConfig, PeerAddr, read_data_request,
    write_data_accept,
};
use tailcache_p2p::tracker::{FileAnnouncement, FileId};

use super::TestCache;

/// How a lying peer answers a range it accepted.
#[derive(Debug, Clone)]
pub enum Lie {
    /// The first half of the true bytes, then the end of the stream.
    Truncated,
    /// Never-ending bytes: far more than the length it accepted.
    Endless,
    /// The same range of another file (these bytes, as long as the true file).
    WrongFile(Arc<[u8]>),
}

/// A node of our own: `client` to act, the tracker's identity to ask it.
pub struct TestPeer {
    pub client: Client,
    tracker: PeerId,
    rt: tokio::runtime::Runtime,
}

impl TestPeer {
    /// A node on loopback, connected to `server`'s tracker; with `serve_data` off nobody
    /// answers data requests until [`TestPeer::lie`] does.
    fn start(server: &TestCache, serve_data: bool) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let PeerAddr {
            peer: tracker,
            addr: tracker_addr,
        } = server.tracker_addr().parse().unwrap();
        let client = rt.block_on(async {
            let mut config = NodeConfig::new(Keypair::generate_ed25519());
            config.serve_data = serve_data;
            let client = node::spawn(config, Arc::new(NoPieces)).unwrap();
            let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
            client.listen(listen).await.unwrap();
            client.dial(tracker, vec![tracker_addr]).await.unwrap();
            client.keep_connected(tracker, true).await.unwrap();
            client
        });
        TestPeer {
            client,
            tracker,
            rt,
        }
    }

    /// A node that only asks the tracker.
    pub fn observer(server: &TestCache) -> Self {
        Self::start(server, true)
    }

    /// A peer that announces `file` (whose true bytes are `truth`) as a finished seeder and
    /// answers every range request of it with `lie`.
    pub fn liar(server: &TestCache, file: FileId, truth: Arc<[u8]>, lie: Lie) -> Self {
        let peer = Self::start(server, false);
        let mut incoming = peer.client.stream_control().accept(DATA_PROTOCOL).unwrap();
        peer.rt.spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                let (truth, lie) = (truth.clone(), lie.clone());
                tokio::spawn(async move {
                    let Ok(req) = read_data_request(&mut stream).await else {
                        return;
                    };
                    if write_data_accept(&mut stream, req.len).await.is_err() {
                        return;
                    }
                    let start = usize::try_from(req.offset).unwrap().min(truth.len());
                    let end = (start + usize::try_from(req.len).unwrap()).min(truth.len());
                    // Write errors end the lie: the requester hung up.
                    let _ = match lie {
                        Lie::Truncated => {
                            let half = start + (end - start) / 2;
                            stream.write_all(&truth[start..half]).await
                        }
                        Lie::WrongFile(other) => stream.write_all(&other[start..end]).await,
                        Lie::Endless => loop {
                            if let Err(e) = stream.write_all(&truth[start..end]).await {
                                break Err(e);
                            }
                        },
                    };
                    let _ = stream.close().await;
                });
            }
        });
        let addrs = peer.rt.block_on(peer.client.listen_addrs()).unwrap();
        let accepted = peer
            .rt
            .block_on(peer.client.announce(
                peer.tracker,
                vec![FileAnnouncement {
                    file,
                    complete: true,
                }],
                addrs,
            ))
            .unwrap();
        assert_eq!(accepted, 1, "the tracker did not record the liar's file");
        peer
    }

    pub fn peer_id(&self) -> PeerId {
        self.client.peer_id()
    }

    /// The peers the tracker lists for `file` (the asker left out).
    pub fn who_has(&self, file: FileId) -> Vec<PeerId> {
        self.rt
            .block_on(self.client.who_has(self.tracker, file))
            .unwrap()
            .into_iter()
            .map(|r| r.peer_id)
            .collect()
    }
}

impl TestPeer {
    /// `len` bytes of `file` from offset 0, asked of the server's own node (its seed) over
    /// the data protocol; `None` if it refuses.
    pub fn fetch_from_server(&self, file: FileId, len: u64) -> Option<Vec<u8>> {
        self.rt.block_on(async {
            use tokio::io::AsyncReadExt as _;
            let mut reader = self
                .client
                .fetch_range(self.tracker, file, 0, len)
                .await
                .ok()?;
            let mut data = Vec::new();
            reader.read_to_end(&mut data).await.unwrap();
            reader.finish().await.unwrap();
            Some(data)
        })
    }
}

impl Drop for TestPeer {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.client.shutdown());
    }
}
