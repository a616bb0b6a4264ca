//! One NAR file fetched in pieces from a swarm of peers and the server, BitTorrent-like.
//! What to fetch from whom, whom to ban and when to give up is decided by the pure
//! [`schedule::Scheduler`]; this module is its driver: it performs the scheduler's actions
//! (piece requests over libp2p or HTTP ranges, piece-map and tracker requests, bans, the
//! pieces peers are told about) and feeds back what came of them, with the time.
//!
//! Every piece is verified against the signed BLAKE3 root (`verify_range`) before it is
//! written to the partial file; only then is it marked held (and, when the agent uploads,
//! offered to peers through [`Partial`]). The verified prefix is published so the response
//! streams it to Nix in order while later pieces arrive out of order on disk. Memory is
//! bounded by the pieces in flight and one piece set per known peer.
//!
//! A peer's failure is classified here: bytes that fail verification and breaches of the
//! data protocol (a stream that ends before the length the peer accepted to send or goes on
//! past it, an answer that is not a header or offers another length) are lies, which ban;
//! a refusal, a stream dropped or reset, a lost connection or a timeout is a transport
//! failure, which only counts against the peer in this download.

pub mod schedule;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tailcache_p2p::libp2p::PeerId;
use tailcache_p2p::manifest::P2pManifest;
use tailcache_p2p::node::{Client, NodeEvent, PeerAddr, Refusal};
use tailcache_p2p::verify::VerifiedOutboard;
use tailcache_p2p::{Error as P2pError, FileId};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use crate::error::FetchError;
use crate::http_client::{self, Server};
use crate::measure::{Measurements, Route};
use crate::metrics::AgentMetrics;
use crate::store::Partial;
use schedule::{Action, Event, Found, Limits, MapAnswer, Outcome, Scheduler, Source};

/// How long one piece may take.
const PIECE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long connecting to one peer may take before it is skipped.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the agent remembers about a peer across downloads.
#[derive(Debug, Clone, Default)]
pub struct PeerScore {
    /// Bytes per second of verified pieces, a moving average (0 until measured).
    pub goodput: f64,
    pub banned: bool,
}

pub type Scores = Arc<Mutex<HashMap<PeerId, PeerScore>>>;

/// The download's state as the response sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Bytes `[0, n)` are verified and written.
    Verified(u64),
    Failed(FetchError),
}

/// One download: what it fetches, from where, and what it tells.
pub struct Download {
    pub node: Client,
    pub server: Server,
    /// `/nar/<file>` on the server.
    pub target: String,
    pub file: FileId,
    pub manifest: P2pManifest,
    pub outboard: Arc<VerifiedOutboard>,
    /// The tracker; `None`: the server alone.
    pub tracker: Option<PeerAddr>,
    pub scores: Scores,
    pub metrics: AgentMetrics,
    /// Where the download's goodput is counted.
    pub measurements: Measurements,
    pub limits: Limits,
    /// What peers are told and served of this download; `None` when the agent does not
    /// upload.
    pub partial: Option<Arc<Partial>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Why a piece did not arrive.
enum PieceError {
    /// The peer's upload slots are taken: back off, not a failure.
    Busy,
    /// The source broke the data protocol.
    Lie(String),
    /// A transport failure.
    Other(String),
}

type PieceResult = (u64, Source, Result<Vec<u8>, PieceError>, Duration);

/// What the driver waits on.
struct Io {
    pieces: JoinSet<PieceResult>,
    /// Tracker and piece-map requests, each ending in the event it produces.
    control: JoinSet<Event>,
    node_events: broadcast::Receiver<NodeEvent>,
}

fn lock(scores: &Scores) -> std::sync::MutexGuard<'_, HashMap<PeerId, PeerScore>> {
    scores.lock().unwrap_or_else(|e| e.into_inner())
}

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

    async fn fetch_all(
        &self,
        out: Arc<std::fs::File>,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), FetchError> {
        if self.manifest.file_size == 0 {
            return Ok(());
        }
        let _busy = self.measurements.transfer(Route::Pieces);
        let mut machine = Scheduler::new(
            self.node.peer_id(),
            self.manifest.file_size,
            u64::from(self.manifest.piece_size),
            self.tracker.is_some(),
            self.limits.clone(),
            Instant::now(),
        );
        let mut io = Io {
            pieces: JoinSet::new(),
            control: JoinSet::new(),
            node_events: self.node.subscribe(),
        };
        let mut actions = machine.start(Instant::now());
        loop {
            for action in actions.drain(..) {
                match action {
                    // Duplicates still in flight are dropped with the JoinSets.
                    Action::Done => return Ok(()),
                    Action::Fail(e) => return Err(e),
                    action => self.perform(action, &mut io, progress),
                }
            }
            let event = self.next_event(&mut io, &machine, &out).await?;
            actions = machine.handle(event, Instant::now());
        }
    }

    fn perform(&self, action: Action, io: &mut Io, progress: &watch::Sender<Progress>) {
        match action {
            Action::AskTracker { known } => {
                if let Some(tracker) = &self.tracker {
                    let ask = tracker_peers(
                        self.node.clone(),
                        tracker.clone(),
                        self.file,
                        known.into_iter().collect(),
                        self.scores.clone(),
                        self.limits.max_peers,
                    );
                    io.control
                        .spawn(async move { Event::TrackerAnswered(ask.await) });
                }
            }
            Action::AskPieceMap(peer) => {
                let (node, file) = (self.node.clone(), self.file);
                io.control.spawn(async move {
                    let answer = match node.pieces(peer, file).await {
                        Ok(Some(map)) => MapAnswer::Map(map),
                        Ok(None) => MapAnswer::Nothing,
                        Err(e) => {
                            tracing::debug!("peer {peer}: piece map: {e}");
                            MapAnswer::Failed
                        }
                    };
                    Event::PieceMap { peer, answer }
                });
            }
            Action::Fetch { index, source } => self.spawn_fetch(io, index, source),
            Action::Ban(peer) => self.ban(peer),
            Action::Goodput {
                peer,
                bytes_per_sec,
            } => lock(&self.scores).entry(peer).or_default().goodput = bytes_per_sec,
            Action::ServerFetching { index, on } => {
                if let Some(p) = &self.partial {
                    p.set_fetching(index, on);
                }
            }
            Action::Have(index) => {
                if let Some(p) = &self.partial {
                    p.set_have(index);
                }
            }
            Action::Prefix(n) => {
                let verified = self.manifest.piece_range(n).start;
                let _ = progress.send(Progress::Verified(verified));
            }
            Action::Done | Action::Fail(_) => {}
        }
    }

    /// Bans `peer` for the agent's life: it sent bad bytes or broke the data protocol.
    fn ban(&self, peer: PeerId) {
        let mut s = lock(&self.scores);
        let score = s.entry(peer).or_default();
        if !score.banned {
            score.banned = true;
            self.metrics.bans.inc();
            tracing::warn!("banned peer {peer}: it sent bad bytes or broke the protocol");
        }
    }

    fn known_score(&self, peer: &PeerId) -> PeerScore {
        lock(&self.scores).get(peer).cloned().unwrap_or_default()
    }

    /// Waits for the next thing that happens: a piece, a control answer, a node event, or
    /// the scheduler's next wake-up.
    async fn next_event(
        &self,
        io: &mut Io,
        machine: &Scheduler,
        out: &Arc<std::fs::File>,
    ) -> Result<Event, FetchError> {
        let task = |e: tokio::task::JoinError| FetchError::Task {
            reason: e.to_string(),
        };
        let wake = machine.next_wakeup(Instant::now());
        tokio::select! {
            Some(joined) = io.pieces.join_next() => {
                self.piece_event(joined.map_err(task)?, machine, out).await
            }
            Some(joined) = io.control.join_next() => joined.map_err(task),
            event = io.node_events.recv() => self.node_event(event),
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()),
                if wake.is_some() => Ok(Event::Tick),
        }
    }

    fn node_event(
        &self,
        event: Result<NodeEvent, broadcast::error::RecvError>,
    ) -> Result<Event, FetchError> {
        match event {
            Ok(NodeEvent::PieceMapAsked { peer, file })
                if file == self.file && peer != self.node.peer_id() =>
            {
                let score = self.known_score(&peer);
                Ok(if score.banned {
                    Event::Tick
                } else {
                    Event::PeerAsked(Found {
                        peer,
                        complete: false,
                        goodput: score.goodput,
                    })
                })
            }
            Ok(NodeEvent::PeerDisconnected { peer }) => Ok(Event::PeerLeft(peer)),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => Ok(Event::Tick),
            Err(broadcast::error::RecvError::Closed) => Err(FetchError::Task {
                reason: "the p2p node stopped".into(),
            }),
        }
    }

    /// Verifies a piece that arrived and, if the scheduler still wants it, writes it.
    async fn piece_event(
        &self,
        (index, source, result, elapsed): PieceResult,
        machine: &Scheduler,
        out: &Arc<std::fs::File>,
    ) -> Result<Event, FetchError> {
        let range = self.manifest.piece_range(index);
        let outcome = match result {
            Err(PieceError::Busy) => Outcome::Busy,
            Err(PieceError::Lie(e)) => {
                tracing::warn!("piece {index} from {source:?}: {e}");
                Outcome::Lie
            }
            Err(PieceError::Other(e)) => {
                tracing::debug!("piece {index} from {source:?}: {e}");
                Outcome::Failed
            }
            Ok(data) => {
                match self
                    .outboard
                    .verify_range(range.start, range.end - range.start, &data)
                {
                    Err(e) => {
                        self.metrics.verification_failures.inc();
                        tracing::warn!("piece {index} from {source:?} failed verification: {e}");
                        Outcome::BadBytes
                    }
                    Ok(()) => {
                        let len = data.len() as u64;
                        if machine.wants(index, source) {
                            let out = out.clone();
                            tokio::task::spawn_blocking(move || {
                                out.write_all_at(&data, range.start)
                            })
                            .await
                            .map_err(|e| FetchError::Task {
                                reason: e.to_string(),
                            })?
                            .map_err(|e| FetchError::Write {
                                index,
                                reason: e.to_string(),
                            })?;
                        }
                        match source {
                            Source::Peer(p) if !machine.is_banned(&p) => {
                                self.metrics.peer_bytes.inc_by(len);
                                self.measurements.received(Route::Pieces, len);
                            }
                            Source::Peer(_) => {}
                            Source::Server => {
                                self.metrics.server_bytes.inc_by(len);
                                self.measurements.received(Route::Pieces, len);
                            }
                        }
                        Outcome::Verified { elapsed }
                    }
                }
            }
        };
        Ok(Event::Piece {
            index,
            source,
            outcome,
        })
    }

    fn spawn_fetch(&self, io: &mut Io, index: u64, source: Source) {
        let range = self.manifest.piece_range(index);
        let node = self.node.clone();
        let server = self.server.clone();
        let target = self.target.clone();
        let file = self.file;
        io.pieces.spawn(async move {
            let started = Instant::now();
            let fetch = async {
                match source {
                    Source::Peer(peer) => fetch_from_peer(&node, peer, file, range).await,
                    Source::Server => http_client::get_range(&server, &target, range)
                        .await
                        .map_err(|e| PieceError::Other(e.to_string())),
                }
            };
            let result = match tokio::time::timeout(PIECE_TIMEOUT, fetch).await {
                Ok(r) => r,
                Err(_) => Err(PieceError::Other(format!("piece {index} timed out"))),
            };
            (index, source, result, started.elapsed())
        });
    }
}

/// One range from a peer, with its failure classified (see the module documentation).
async fn fetch_from_peer(
    node: &Client,
    peer: PeerId,
    file: FileId,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, PieceError> {
    let len = range.end - range.start;
    let mut reader = node
        .fetch_range(peer, file, range.start, len)
        .await
        .map_err(|e| match e {
            P2pError::Refused {
                reason: Refusal::Busy,
                ..
            } => PieceError::Busy,
            e @ P2pError::Protocol { .. } => PieceError::Lie(e.to_string()),
            e => PieceError::Other(e.to_string()),
        })?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let protocol = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => {
            PieceError::Lie(e.to_string())
        }
        _ => PieceError::Other(e.to_string()),
    };
    reader.read_to_end(&mut buf).await.map_err(protocol)?;
    reader.finish().await.map_err(protocol)?;
    Ok(buf)
}

/// The peers `tracker` lists for `file`, connected (those in `known` are not dialled
/// again), not banned, not us, at most `max`.
async fn tracker_peers(
    node: Client,
    tracker: PeerAddr,
    file: FileId,
    known: HashSet<PeerId>,
    scores: Scores,
    max: usize,
) -> Vec<Found> {
    if let Err(e) = node.dial(tracker.peer, vec![tracker.addr]).await {
        tracing::warn!("tracker unreachable: {e}");
        return Vec::new();
    }
    let records = match node.who_has(tracker.peer, file).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("who_has: {e}");
            return Vec::new();
        }
    };
    let mut dials = JoinSet::new();
    let mut out = Vec::new();
    for r in records {
        if r.peer_id == node.peer_id() || r.peer_id == tracker.peer {
            continue;
        }
        let score = lock(&scores).entry(r.peer_id).or_default().clone();
        if score.banned {
            continue;
        }
        let found = Found {
            peer: r.peer_id,
            complete: r.complete,
            goodput: score.goodput,
        };
        if known.contains(&r.peer_id) {
            out.push(found);
            continue;
        }
        if known.len() + dials.len() >= max {
            continue;
        }
        let node = node.clone();
        dials.spawn(async move {
            match tokio::time::timeout(DIAL_TIMEOUT, node.dial(r.peer_id, r.addrs)).await {
                Ok(Ok(())) => Some(found),
                Ok(Err(e)) => {
                    tracing::debug!("peer {}: {e}", r.peer_id);
                    None
                }
                Err(_) => {
                    tracing::debug!("peer {}: dial timed out", r.peer_id);
                    None
                }
            }
        });
    }
    while let Some(r) = dials.join_next().await {
        if let Ok(Some(p)) = r {
            out.push(p);
        }
    }
    out
}
