//! One NAR file fetched in pieces from a swarm of peers and the server, BitTorrent-like.
//! What to fetch from whom, whom to ban and when to give up is decided by the pure
//! [`schedule::Scheduler`]; this module is its driver: it performs the scheduler's actions
//! (piece requests over libp2p or HTTP ranges, piece-map and tracker requests, bans, the
//! pieces peers are told about) and feeds back what came of them, with the time.
//!
//! Every piece is verified against the signed BLAKE3 root (`verify_range`) before it is
//! written to the partial file; only then is it marked held (and, when the agent uploads,
//! offered to peers through [`Partial`]). The verified prefix is published so the response
//! streams it to Nix in order while later pieces arrive out of order on disk. A piece from
//! the server is also verified and written as it arrives, [`STREAM_STEP`] at a time, so the
//! prefix grows within the piece that ends it: Nix decodes the start of a piece while its
//! end is still on the wire instead of waiting a whole piece per file (a piece of 1 MiB is
//! 80 ms at 100 Mbit/s, 400 ms at 20). Memory is bounded by the pieces in flight and one
//! piece set per known peer.
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

use futures::StreamExt as _;
use tailcache_p2p::libp2p::PeerId;
use tailcache_p2p::manifest::P2pManifest;
use tailcache_p2p::node::{Client, NodeEvent, PeerAddr, Refusal};
use tailcache_p2p::verify::VerifiedOutboard;
use tailcache_p2p::{Error as P2pError, FileId};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{broadcast, mpsc, watch};
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
/// How much of a piece arriving from the server is verified and written at a time (rounded
/// down to whole verification groups, at least one).
pub const STREAM_STEP: u64 = 64 << 10;
/// Reports of a piece's verified start waiting for the driver; more are dropped (each
/// report says all that was verified, the next one makes up for a lost one).
const VERIFIED_REPORTS: usize = 64;

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
    /// The tracker's answer, asked before the download began ([`ask_tracker_early`]): the
    /// scheduler's first question to the tracker takes it instead of a round trip.
    pub tracker_answer: Option<tokio::task::JoinHandle<Vec<Found>>>,
}

/// Asks the tracker who holds `file` while the download is being prepared (its manifest
/// and outboard fetched): the answer the scheduler would otherwise wait a round trip for
/// before it asks the server for a piece.
pub fn ask_tracker_early(
    node: &Client,
    tracker: &PeerAddr,
    file: FileId,
    scores: &Scores,
    max_peers: usize,
) -> tokio::task::JoinHandle<Vec<Found>> {
    tokio::spawn(tracker_peers(
        node.clone(),
        tracker.clone(),
        file,
        HashSet::new(),
        scores.clone(),
        max_peers,
    ))
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

/// A piece's bytes, of which the first `written` are on disk already (verified as they
/// arrived from the server).
struct Piece {
    data: Vec<u8>,
    written: usize,
}

type PieceResult = (u64, Source, Result<Piece, PieceError>, Duration);

/// What the driver waits on.
struct Io {
    pieces: JoinSet<PieceResult>,
    /// Tracker and piece-map requests, each ending in the event it produces.
    control: JoinSet<Event>,
    node_events: broadcast::Receiver<NodeEvent>,
    /// (piece, bytes from its start verified and written) of pieces arriving from the server.
    verified: mpsc::Receiver<(u64, u64)>,
    verified_tx: mpsc::Sender<(u64, u64)>,
    /// Pieces `[0, prefix)` are whole; of piece `prefix`, `within` bytes are verified.
    prefix: u64,
    within: HashMap<u64, u64>,
    /// The tracker's answer asked before the download began, for its first question.
    early_answer: Option<tokio::task::JoinHandle<Vec<Found>>>,
}

impl Io {
    /// Tells the response the verified prefix of the file: the whole pieces, and what is
    /// verified of the piece after them.
    fn publish(&mut self, manifest: &P2pManifest, progress: &watch::Sender<Progress>) {
        self.within.retain(|i, _| *i >= self.prefix);
        let within = self.within.get(&self.prefix).copied().unwrap_or(0);
        let at = manifest.piece_range(self.prefix).start + within;
        progress.send_if_modified(|p| match p {
            Progress::Verified(old) if *old < at => {
                *old = at;
                true
            }
            _ => false,
        });
    }
}

fn lock(scores: &Scores) -> std::sync::MutexGuard<'_, HashMap<PeerId, PeerScore>> {
    scores.lock().unwrap_or_else(|e| e.into_inner())
}

impl Download {
    /// Fetches every piece into `out` (sized already); the verified prefix short of the
    /// whole file goes to `progress`. Returns true when every byte is verified and written
    /// (the caller then publishes `Verified(file_size)`); on failure `progress` says so.
    pub async fn run(
        mut self,
        out: Arc<std::fs::File>,
        progress: &watch::Sender<Progress>,
    ) -> bool {
        let early_answer = self.tracker_answer.take();
        match self.fetch_all(out, progress, early_answer).await {
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
        early_answer: Option<tokio::task::JoinHandle<Vec<Found>>>,
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
        let (verified_tx, verified) = mpsc::channel(VERIFIED_REPORTS);
        let mut io = Io {
            pieces: JoinSet::new(),
            control: JoinSet::new(),
            node_events: self.node.subscribe(),
            verified,
            verified_tx,
            prefix: 0,
            within: HashMap::new(),
            early_answer,
        };
        let mut actions = machine.start(Instant::now());
        loop {
            for action in actions.drain(..) {
                match action {
                    // Duplicates still in flight are dropped with the JoinSets.
                    Action::Done => return Ok(()),
                    Action::Fail(e) => return Err(e),
                    action => self.perform(action, &mut io, &out, progress),
                }
            }
            let event = self.next_event(&mut io, &machine, &out, progress).await?;
            actions = machine.handle(event, Instant::now());
        }
    }

    fn perform(
        &self,
        action: Action,
        io: &mut Io,
        out: &Arc<std::fs::File>,
        progress: &watch::Sender<Progress>,
    ) {
        match action {
            Action::AskTracker { known } => {
                if let Some(asked) = io.early_answer.take() {
                    io.control.spawn(async move {
                        Event::TrackerAnswered(asked.await.unwrap_or_default())
                    });
                } else if let Some(tracker) = &self.tracker {
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
            Action::Fetch { index, source } => self.spawn_fetch(io, index, source, out),
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
                io.prefix = n;
                io.publish(&self.manifest, progress);
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
        progress: &watch::Sender<Progress>,
    ) -> Result<Event, FetchError> {
        let task = |e: tokio::task::JoinError| FetchError::Task {
            reason: e.to_string(),
        };
        let wake = machine.next_wakeup(Instant::now());
        loop {
            return tokio::select! {
                Some(joined) = io.pieces.join_next() => {
                    self.piece_event(joined.map_err(task)?, machine, out).await
                }
                Some(joined) = io.control.join_next() => joined.map_err(task),
                event = io.node_events.recv() => self.node_event(event),
                Some((index, bytes)) = io.verified.recv() => {
                    // Not the scheduler's business: only the response's.
                    let known = io.within.entry(index).or_default();
                    *known = (*known).max(bytes);
                    io.publish(&self.manifest, progress);
                    continue;
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()),
                    if wake.is_some() => Ok(Event::Tick),
            };
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
            Ok(Piece { data, written }) => {
                // The first `written` bytes were verified as they arrived; the rest is checked
                // here (from a group boundary: `written` is a whole number of steps).
                let at = range.start + written as u64;
                match self
                    .outboard
                    .verify_range(at, range.end - at, &data[written..])
                {
                    Err(e) => {
                        self.metrics.verification_failures.inc();
                        tracing::warn!("piece {index} from {source:?} failed verification: {e}");
                        Outcome::BadBytes
                    }
                    Ok(()) => {
                        let len = data.len() as u64;
                        if machine.wants(index, source) && written < data.len() {
                            let out = out.clone();
                            tokio::task::spawn_blocking(move || {
                                out.write_all_at(&data[written..], at)
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

    fn spawn_fetch(&self, io: &mut Io, index: u64, source: Source, out: &Arc<std::fs::File>) {
        let range = self.manifest.piece_range(index);
        let node = self.node.clone();
        let file = self.file;
        let from_server = ServerRange {
            server: self.server.clone(),
            target: self.target.clone(),
            outboard: self.outboard.clone(),
            out: out.clone(),
            verified: io.verified_tx.clone(),
        };
        io.pieces.spawn(async move {
            let started = Instant::now();
            let fetch = async {
                match source {
                    Source::Peer(peer) => fetch_from_peer(&node, peer, file, range)
                        .await
                        .map(|data| Piece { data, written: 0 }),
                    Source::Server => from_server.fetch(index, range).await,
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

/// A piece fetched from the server, verified and written as it arrives.
struct ServerRange {
    server: Server,
    target: String,
    outboard: Arc<VerifiedOutboard>,
    out: Arc<std::fs::File>,
    verified: mpsc::Sender<(u64, u64)>,
}

impl ServerRange {
    /// Reads piece `index` (`range`) as it arrives: each whole [`STREAM_STEP`] short of the
    /// piece's end that verifies is written at once and reported on `verified`. The whole
    /// piece is returned too, with how much of it is written: the driver checks the rest like
    /// a piece from a peer and writes it (bytes written here are verified, so a copy of the
    /// same piece from elsewhere is the same bytes). A step that fails verification stops
    /// the reports; the rest, which begins with that step, then fails the driver's check.
    async fn fetch(self, index: u64, range: std::ops::Range<u64>) -> Result<Piece, PieceError> {
        let other = |e: std::io::Error| PieceError::Other(e.to_string());
        let want = usize::try_from(range.end - range.start)
            .map_err(|e| PieceError::Other(e.to_string()))?;
        let gs = usize::try_from(self.outboard.group_size()).unwrap_or(usize::MAX);
        let step = (usize::try_from(STREAM_STEP).unwrap_or(usize::MAX) / gs).max(1) * gs;
        let resp = http_client::get_range(&self.server, &self.target, range.clone())
            .await
            .map_err(other)?;
        let mut body = std::pin::pin!(resp.into_stream());
        let mut buf = Vec::with_capacity(want);
        let (mut done, mut trusted) = (0usize, true);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(other)?;
            if buf.len() + chunk.len() > want {
                return Err(PieceError::Other(format!(
                    "range request for {}: more than {want} bytes",
                    self.target
                )));
            }
            buf.extend_from_slice(&chunk);
            let ready = (buf.len() - done) / step * step;
            if !trusted || ready == 0 || done + ready >= want {
                continue;
            }
            let (a, b) = (done, done + ready);
            let at = range.start + a as u64;
            if self
                .outboard
                .verify_range(at, ready as u64, &buf[a..b])
                .is_err()
            {
                trusted = false;
                continue;
            }
            let (out, part) = (self.out.clone(), buf[a..b].to_vec());
            tokio::task::spawn_blocking(move || out.write_all_at(&part, at))
                .await
                .map_err(|e| PieceError::Other(e.to_string()))?
                .map_err(other)?;
            done = b;
            // Dropped when the driver is behind: the next report says as much and more.
            let _ = self.verified.try_send((index, done as u64));
        }
        if buf.len() != want {
            return Err(PieceError::Other(format!(
                "range request for {}: {} bytes instead of {want}",
                self.target,
                buf.len()
            )));
        }
        Ok(Piece {
            data: buf,
            written: done,
        })
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
