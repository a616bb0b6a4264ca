//! One NAR file fetched in pieces from peers and the server (issue 5, "Agent"): pieces of the
//! signed manifest's size are requested from up to `requests_per_peer` at a time per peer,
//! lowest index first inside a bounded window past the verified prefix; every piece is
//! verified against the signed BLAKE3 root (`verify_range`) before it is written to the
//! partial file, and the verified prefix is published so the response streams it to Nix in
//! order while later pieces arrive. Memory is bounded by the pieces in flight.
//!
//! Source selection: peers by measured goodput (then fewer requests in flight); a peer that
//! sends a piece that fails verification, or a stream shorter or longer than the range it
//! accepted, is banned for the agent's life and the piece is fetched again elsewhere; a peer
//! that fails [`MAX_PEER_FAILURES`] times is dropped from this download. The server (HTTP
//! Range) is used when no usable peer is left. Endgame: once every missing piece is in
//! flight, the ones with a single request get a duplicate
//! request at another peer; the first verified copy wins.

use std::collections::HashMap;
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tailcache_p2p::libp2p::PeerId;
use tailcache_p2p::manifest::P2pManifest;
use tailcache_p2p::node::Client;
use tailcache_p2p::tracker::FileId;
use tailcache_p2p::verify::VerifiedOutboard;
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::http_client::{self, ServerUrl};
use super::metrics::AgentMetrics;

/// Pieces past the first missing one that may be requested.
const WINDOW: u64 = 32;
/// Range requests to the server at once.
const MAX_SERVER_REQUESTS: usize = 2;
/// A peer failing this often (errors, refusals, timeouts) is dropped from the download.
pub const MAX_PEER_FAILURES: u32 = 3;
/// Server failures that end the download.
const MAX_SERVER_FAILURES: u32 = 3;
/// How long one piece may take.
const PIECE_TIMEOUT: Duration = Duration::from_secs(15);

/// What the agent remembers about a peer across downloads.
#[derive(Debug, Clone, Default)]
pub struct PeerScore {
    /// Bytes per second of verified pieces, a moving average (0 until measured).
    pub goodput: f64,
    pub failures: u32,
    pub banned: bool,
}

pub type Scores = Arc<Mutex<HashMap<PeerId, PeerScore>>>;

/// The download's state as the response sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Bytes `[0, n)` are verified and written.
    Verified(u64),
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Peer(PeerId),
    Server,
}

pub struct Download {
    pub node: Client,
    pub server: ServerUrl,
    /// `/nar/<file>` on the server.
    pub target: String,
    pub file: FileId,
    pub manifest: P2pManifest,
    pub outboard: Arc<VerifiedOutboard>,
    pub peers: Vec<PeerId>,
    pub scores: Scores,
    pub metrics: AgentMetrics,
    pub requests_per_peer: usize,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("target", &self.target)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

struct Piece {
    done: bool,
    inflight: Vec<Source>,
}

/// Why a piece did not arrive.
#[derive(Debug)]
enum PieceError {
    /// The source broke the data protocol: a stream that ends before the length the peer
    /// accepted to send, or goes on past it. Treated like bad bytes: the peer is banned.
    Lie(String),
    /// Refused, unreachable, reset, timed out: counted as a failure.
    Failed(String),
}

type PieceResult = (u64, Source, Result<Vec<u8>, PieceError>, Duration);

impl Download {
    /// Fetches every piece into `out` (sized already); the verified prefix short of the
    /// whole file goes to `progress`. Returns true when every byte is verified and written
    /// (the caller then publishes `Verified(file_size)`); on failure `progress` says so.
    pub async fn run(self, out: Arc<std::fs::File>, progress: &watch::Sender<Progress>) -> bool {
        match self.fetch_all(out, progress).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("fetch of {} failed: {e}", self.target);
                let _ = progress.send(Progress::Failed(e));
                false
            }
        }
    }

    /// Bans `peer` for the agent's life: it sent bad bytes or broke the data protocol.
    fn ban(&self, peer: PeerId) {
        let mut s = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let score = s.entry(peer).or_default();
        if !score.banned {
            score.banned = true;
            self.metrics.bans.inc();
            tracing::warn!("banned peer {peer}: it sent bad bytes or broke the protocol");
        }
    }

    fn usable(&self, peer: &PeerId, local_failures: &HashMap<PeerId, u32>) -> bool {
        let scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        !scores.get(peer).is_some_and(|s| s.banned)
            && local_failures.get(peer).copied().unwrap_or(0) < MAX_PEER_FAILURES
    }

    /// The best peer with a free request slot, not in `exclude`; the server when no usable
    /// peer is left at all (and `allow_server`).
    fn choose(
        &self,
        inflight: &HashMap<Source, usize>,
        local_failures: &HashMap<PeerId, u32>,
        exclude: &[Source],
        allow_server: bool,
    ) -> Option<Source> {
        let usable: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|p| self.usable(p, local_failures))
            .copied()
            .collect();
        let load = |s: &Source| inflight.get(s).copied().unwrap_or(0);
        let scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let best = usable
            .iter()
            .map(|p| Source::Peer(*p))
            .filter(|s| !exclude.contains(s) && load(s) < self.requests_per_peer)
            .max_by(|a, b| {
                let g = |s: &Source| match s {
                    Source::Peer(p) => scores.get(p).map_or(0.0, |x| x.goodput),
                    Source::Server => 0.0,
                };
                g(a).total_cmp(&g(b)).then(load(b).cmp(&load(a)))
            });
        if best.is_some() {
            return best;
        }
        (usable.is_empty()
            && allow_server
            && !exclude.contains(&Source::Server)
            && load(&Source::Server) < MAX_SERVER_REQUESTS)
            .then_some(Source::Server)
    }

    fn spawn(&self, tasks: &mut JoinSet<PieceResult>, index: u64, source: Source) {
        let range = self.manifest.piece_range(index);
        let node = self.node.clone();
        let server = self.server.clone();
        let target = self.target.clone();
        let file = self.file;
        tasks.spawn(async move {
            let started = Instant::now();
            let len = range.end - range.start;
            let fetch = async {
                match source {
                    Source::Peer(peer) => {
                        let mut reader = node
                            .fetch_range(peer, file, range.start, len)
                            .await
                            .map_err(|e| PieceError::Failed(e.to_string()))?;
                        let mut buf = Vec::with_capacity(len as usize);
                        let protocol = |e: std::io::Error| match e.kind() {
                            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => {
                                PieceError::Lie(e.to_string())
                            }
                            _ => PieceError::Failed(e.to_string()),
                        };
                        reader.read_to_end(&mut buf).await.map_err(protocol)?;
                        reader.finish().await.map_err(protocol)?;
                        Ok(buf)
                    }
                    Source::Server => http_client::get_range(&server, &target, range.clone())
                        .await
                        .map_err(|e| PieceError::Failed(e.to_string())),
                }
            };
            let result = match tokio::time::timeout(PIECE_TIMEOUT, fetch).await {
                Ok(r) => r,
                Err(_) => Err(PieceError::Failed(format!("piece {index} timed out"))),
            };
            (index, source, result, started.elapsed())
        });
    }

    async fn fetch_all(
        &self,
        out: Arc<std::fs::File>,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), String> {
        let n = self.manifest.piece_count();
        let mut pieces: Vec<Piece> = (0..n)
            .map(|_| Piece {
                done: false,
                inflight: Vec::new(),
            })
            .collect();
        let mut prefix = 0u64; // first piece not done
        let mut inflight: HashMap<Source, usize> = HashMap::new();
        let mut local_failures: HashMap<PeerId, u32> = HashMap::new();
        let mut server_failures = 0u32;
        let mut tasks = JoinSet::new();
        if self.manifest.file_size == 0 {
            return Ok(());
        }
        loop {
            // Missing pieces nobody is fetching, in order, inside the window.
            let end = n.min(prefix + WINDOW);
            for i in prefix..end {
                let p = &pieces[i as usize];
                if p.done || !p.inflight.is_empty() {
                    continue;
                }
                let Some(src) = self.choose(&inflight, &local_failures, &[], true) else {
                    break;
                };
                self.spawn(&mut tasks, i, src);
                pieces[i as usize].inflight.push(src);
                *inflight.entry(src).or_default() += 1;
            }
            // Endgame: everything missing is requested; duplicate single requests.
            let idle = (prefix..n).any(|i| {
                let p = &pieces[i as usize];
                !p.done && p.inflight.is_empty()
            });
            if !idle {
                for i in prefix..n {
                    let p = &pieces[i as usize];
                    if p.done || p.inflight.len() != 1 {
                        continue;
                    }
                    let exclude = p.inflight.clone();
                    let Some(src) = self.choose(&inflight, &local_failures, &exclude, false) else {
                        continue;
                    };
                    self.spawn(&mut tasks, i, src);
                    pieces[i as usize].inflight.push(src);
                    *inflight.entry(src).or_default() += 1;
                }
            }
            let Some(joined) = tasks.join_next().await else {
                return Err("no source left for the missing pieces".into());
            };
            let (index, source, result, elapsed) =
                joined.map_err(|e| format!("piece task failed: {e}"))?;
            let piece = &mut pieces[index as usize];
            piece.inflight.retain(|s| *s != source);
            if let Some(c) = inflight.get_mut(&source) {
                *c = c.saturating_sub(1);
            }
            let range = self.manifest.piece_range(index);
            let fail = |source: Source,
                        local_failures: &mut HashMap<PeerId, u32>,
                        server_failures: &mut u32| match source {
                Source::Peer(p) => {
                    *local_failures.entry(p).or_default() += 1;
                    let mut s = self.scores.lock().unwrap_or_else(|e| e.into_inner());
                    s.entry(p).or_default().failures += 1;
                }
                Source::Server => *server_failures += 1,
            };
            match result {
                Err(PieceError::Lie(e)) => {
                    tracing::warn!("piece {index} from {source:?}: {e}");
                    match source {
                        Source::Peer(p) => self.ban(p),
                        Source::Server => server_failures += 1,
                    }
                }
                Err(PieceError::Failed(e)) => {
                    tracing::debug!("piece {index} from {source:?}: {e}");
                    fail(source, &mut local_failures, &mut server_failures);
                }
                Ok(data) => {
                    let len = range.end - range.start;
                    match self.outboard.verify_range(range.start, len, &data) {
                        Err(e) => {
                            self.metrics.verification_failures.inc();
                            tracing::warn!(
                                "piece {index} from {source:?} failed verification: {e}"
                            );
                            match source {
                                Source::Peer(p) => self.ban(p),
                                Source::Server => server_failures += 1,
                            }
                        }
                        Ok(()) => {
                            match source {
                                Source::Peer(p) => {
                                    self.metrics.peer_bytes.inc_by(len);
                                    let rate = len as f64 / elapsed.as_secs_f64().max(1e-6);
                                    let mut s =
                                        self.scores.lock().unwrap_or_else(|e| e.into_inner());
                                    let score = s.entry(p).or_default();
                                    score.goodput = if score.goodput == 0.0 {
                                        rate
                                    } else {
                                        0.7 * score.goodput + 0.3 * rate
                                    };
                                }
                                Source::Server => {
                                    self.metrics.server_bytes.inc_by(len);
                                }
                            }
                            if !pieces[index as usize].done {
                                let out = out.clone();
                                tokio::task::spawn_blocking(move || {
                                    out.write_all_at(&data, range.start)
                                })
                                .await
                                .map_err(|e| format!("write task: {e}"))?
                                .map_err(|e| format!("write piece {index}: {e}"))?;
                                pieces[index as usize].done = true;
                            }
                        }
                    }
                }
            }
            if server_failures >= MAX_SERVER_FAILURES {
                return Err(format!("the server failed {server_failures} times"));
            }
            let before = prefix;
            while prefix < n && pieces[prefix as usize].done {
                prefix += 1;
            }
            // The last step (the whole file) is the caller's to publish, once the file is
            // kept and announced.
            if prefix != before && prefix < n {
                let verified = if prefix == n {
                    self.manifest.file_size
                } else {
                    self.manifest.piece_range(prefix).start
                };
                let _ = progress.send(Progress::Verified(verified));
            }
            if prefix == n {
                // Duplicates still in flight are dropped with the JoinSet.
                return Ok(());
            }
        }
    }
}
