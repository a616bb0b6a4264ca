//! One NAR file fetched in pieces from a swarm of peers and the server,
//! BitTorrent-like. Every piece is verified against the signed BLAKE3 root (`verify_range`)
//! before it is written to the partial file; only then is it marked held (and, when the
//! agent uploads, offered to peers through [`Partial`]). The verified prefix is published so
//! the response streams it to Nix in order while later pieces arrive out of order on disk.
//! Memory is bounded by the pieces in flight and one bitmap per known peer.
//!
//! Peers: the tracker is asked who holds the file at the start and every
//! [`TRACKER_REFRESH`] (peers that arrive later are picked up), and a peer that asks this
//! node for its piece map of the file is fetching it too and joins at once; every peer is
//! asked which pieces it holds ([`PieceMap`]) every [`MAP_REFRESH`]. Complete seeders hold
//! everything. The server is first asked only once the tracker and every peer it listed
//! have answered, so agents that start together agree on who fetches what.
//!
//! Selection: pieces some peer holds come from peers, rarest first (then lowest index), at
//! most `requests_per_peer` per peer, the best goodput first. Pieces no peer holds come
//! from the server, at most `server_requests` at once, in an order that differs per agent
//! so agents that fetch together pull disjoint pieces from the server and exchange the
//! rest: the agents still downloading (this one and the partial peers that upload, by peer id)
//! split the pieces by index modulo their number; each takes its own share lowest first
//! (so every agent's verified prefix, streamed to Nix, keeps growing), then helps with the
//! others' shares from the top down. A piece another peer is fetching from the server right
//! now is left to it (for at most [`CLAIM_PATIENCE`], and only [`MAX_CLAIMS_PER_PEER`] per
//! peer). With no usable peer at all the
//! server serves every missing piece, lowest first.
//!
//! Failures: a peer that sends a piece that fails verification, or a stream shorter or
//! longer than the range it accepted, is banned for the agent's life and the piece is
//! fetched again elsewhere; a peer that fails [`MAX_PEER_FAILURES`] times is dropped from
//! this download (a busy peer is only backed off; [`MAX_PEER_BUSY`] refusals in a row count
//! as one failure). A peer's claims and its place in the server split last as long as it
//! answers piece maps, whatever its failures. Endgame: once every missing piece is in
//! flight, the ones with a single request get a duplicate request at another peer that
//! holds it; the first verified copy wins.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tailcache_p2p::Error as P2pError;
use tailcache_p2p::libp2p::{Multiaddr, PeerId};
use tailcache_p2p::manifest::P2pManifest;
use tailcache_p2p::node::{Client, NodeEvent, Refusal};
use tailcache_p2p::tracker::{FileId, PieceMap};
use tailcache_p2p::verify::VerifiedOutboard;
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::http_client::{self, ServerUrl};
use super::metrics::AgentMetrics;
use super::store::Partial;

/// A peer failing this often (errors, refusals, timeouts) is dropped from the download.
pub const MAX_PEER_FAILURES: u32 = 3;
/// "Busy" refusals in a row (no piece in between) that count as one failure.
pub const MAX_PEER_BUSY: u32 = 50;
/// Server failures that end the download.
const MAX_SERVER_FAILURES: u32 = 3;
/// How long one piece may take.
const PIECE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often each peer is asked which pieces it holds.
pub const MAP_REFRESH: Duration = Duration::from_millis(500);
/// How often the tracker is asked again who holds the file.
pub const TRACKER_REFRESH: Duration = Duration::from_secs(1);
/// How long a piece another peer says it is fetching from the server is left to it.
pub const CLAIM_PATIENCE: Duration = Duration::from_secs(20);
/// Claims one peer may make at once; a map with more (no honest agent has that many server
/// requests in flight) has its claims ignored, so a lying peer cannot hold pieces back.
const MAX_CLAIMS_PER_PEER: u32 = 16;
/// How long a busy peer is left alone.
const BUSY_BACKOFF: Duration = Duration::from_millis(100);
/// Peers one download keeps track of.
const MAX_PEERS: usize = 32;
/// How long connecting to one peer may take before it is skipped.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The tracker and its addresses; `None`: the server alone.
    pub tracker: Option<(PeerId, Vec<Multiaddr>)>,
    pub scores: Scores,
    pub metrics: AgentMetrics,
    pub requests_per_peer: usize,
    /// Range requests to the server at once.
    pub server_requests: usize,
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

struct Piece {
    done: bool,
    inflight: Vec<Source>,
}

/// What one download knows of one peer.
#[derive(Debug, Default)]
struct PeerState {
    complete: bool,
    /// Pieces held, as last answered; `None` until the first answer.
    have: Option<Vec<u8>>,
    /// Pieces it is fetching from the server, as last answered.
    fetching: Vec<u8>,
    /// It answered with a map of a download in progress: it fetches and shares pieces
    /// (a peer that answers "none" does not upload, and takes no share of the server's).
    sharing: bool,
    /// A piece-map request is outstanding.
    asking: bool,
    /// Busy refusals since its last piece.
    busy: u32,
    backoff_until: Option<Instant>,
}

impl PeerState {
    fn has(&self, i: u64) -> bool {
        self.complete || self.have.as_deref().is_some_and(|h| PieceMap::bit(h, i))
    }
}

/// Why a piece did not arrive.
enum PieceError {
    /// The peer's upload slots are taken: back off, not a failure.
    Busy,
    /// The source broke the data protocol: a stream that ends before the length the peer
    /// accepted to send, or goes on past it. Treated like bad bytes: the peer is banned.
    Lie(String),
    /// Refused, unreachable, reset, timed out: counted as a failure.
    Other(String),
}

type PieceResult = (u64, Source, Result<Vec<u8>, PieceError>, Duration);

enum Control {
    Map(PeerId, Result<Option<PieceMap>, String>),
    /// Peers the tracker listed, connected, with whether each is a complete seeder.
    Tracker(Vec<(PeerId, bool)>),
}

/// The order in which an agent that is `me` of `members` downloaders (sorted peer ids,
/// `me < members`) asks the server for piece `i`: its own share (`i % members == me`)
/// first, lowest index first; then the others' shares, highest first.
fn server_order(i: u64, members: u64, me: u64) -> (bool, u64) {
    if members <= 1 || i % members == me {
        (false, i)
    } else {
        (true, u64::MAX - i)
    }
}

/// The peers `tracker` lists for `file`, connected (those in `known` are not dialled
/// again), not banned, not us, at most `max`.
async fn tracker_peers(
    node: Client,
    tracker: (PeerId, Vec<Multiaddr>),
    file: FileId,
    known: HashSet<PeerId>,
    scores: Scores,
    max: usize,
) -> Vec<(PeerId, bool)> {
    let (tracker, addrs) = tracker;
    if let Err(e) = node.dial(tracker, addrs).await {
        tracing::warn!("tracker unreachable: {e}");
        return Vec::new();
    }
    let records = match node.who_has(tracker, file).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("who_has: {e}");
            return Vec::new();
        }
    };
    let mut dials = JoinSet::new();
    let mut out = Vec::new();
    for r in records {
        if r.peer_id == node.peer_id() || r.peer_id == tracker {
            continue;
        }
        let banned = {
            let mut s = scores.lock().unwrap_or_else(|e| e.into_inner());
            s.entry(r.peer_id).or_default().banned
        };
        if banned {
            continue;
        }
        if known.contains(&r.peer_id) {
            out.push((r.peer_id, r.complete));
            continue;
        }
        if known.len() + dials.len() >= max {
            continue;
        }
        let node = node.clone();
        dials.spawn(async move {
            match tokio::time::timeout(DIAL_TIMEOUT, node.dial(r.peer_id, r.addrs)).await {
                Ok(Ok(())) => Some((r.peer_id, r.complete)),
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

/// The scheduler's state for one download.
struct Swarm {
    pieces: Vec<Piece>,
    peers: HashMap<PeerId, PeerState>,
    inflight: HashMap<Source, usize>,
    local_failures: HashMap<PeerId, u32>,
    /// When a claim ("fetching from the server") on a piece was first seen.
    claims: HashMap<u64, Instant>,
    /// The tracker has answered once (or there is none): until then the server waits.
    tracker_answered: bool,
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

    fn banned(&self, peer: &PeerId) -> bool {
        self.scores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .is_some_and(|s| s.banned)
    }

    fn usable(&self, sw: &Swarm, peer: &PeerId) -> bool {
        !self.banned(peer) && sw.local_failures.get(peer).copied().unwrap_or(0) < MAX_PEER_FAILURES
    }

    fn spawn(&self, sw: &mut Swarm, tasks: &mut JoinSet<PieceResult>, index: u64, source: Source) {
        sw.pieces[index as usize].inflight.push(source);
        *sw.inflight.entry(source).or_default() += 1;
        if source == Source::Server
            && let Some(p) = &self.partial
        {
            p.set_fetching(index, true);
        }
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
                            .map_err(|e| match e {
                                P2pError::Refused {
                                    reason: Refusal::Busy,
                                    ..
                                } => PieceError::Busy,
                                e => PieceError::Other(e.to_string()),
                            })?;
                        let mut buf = Vec::with_capacity(len as usize);
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
                    Source::Server => http_client::get_range(&server, &target, range.clone())
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

    /// Starts every request the rules allow now.
    fn schedule(&self, sw: &mut Swarm, tasks: &mut JoinSet<PieceResult>) {
        let n = sw.pieces.len() as u64;
        let now = Instant::now();
        let usable: Vec<PeerId> = sw
            .peers
            .keys()
            .filter(|p| self.usable(sw, p))
            .copied()
            .collect();
        // Availability of the missing pieces among usable peers; claims ("fetching it from
        // the server") of any peer not banned that answers piece maps.
        let sharing: Vec<PeerId> = sw
            .peers
            .iter()
            .filter(|(p, st)| st.sharing && !st.complete && !self.banned(p))
            .map(|(p, _)| *p)
            .collect();
        let mut avail = vec![0u32; n as usize];
        let mut claimed = vec![false; n as usize];
        for i in 0..n {
            if sw.pieces[i as usize].done {
                continue;
            }
            for p in &usable {
                if sw.peers[p].has(i) {
                    avail[i as usize] += 1;
                }
            }
            claimed[i as usize] = sharing
                .iter()
                .any(|p| PieceMap::bit(&sw.peers[p].fetching, i));
        }
        sw.claims.retain(|i, _| claimed[*i as usize]);
        for (i, c) in claimed.iter_mut().enumerate() {
            if *c {
                let since = *sw.claims.entry(i as u64).or_insert(now);
                *c = now.duration_since(since) < CLAIM_PATIENCE;
            }
        }
        let load = |sw: &Swarm, s: &Source| sw.inflight.get(s).copied().unwrap_or(0);
        let ready = |sw: &Swarm, p: &PeerId| {
            sw.peers[p].backoff_until.is_none_or(|t| t <= now)
                && load(sw, &Source::Peer(*p)) < self.requests_per_peer
        };
        // Peers, the best goodput first: the rarest piece each holds.
        let mut order = usable.clone();
        {
            let scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
            let g = |p: &PeerId| scores.get(p).map_or(0.0, |s| s.goodput);
            order.sort_by(|a, b| g(b).total_cmp(&g(a)));
        }
        for p in &order {
            while ready(sw, p) {
                let st = &sw.peers[p];
                let pick = (0..n)
                    .filter(|i| {
                        let pc = &sw.pieces[*i as usize];
                        !pc.done && pc.inflight.is_empty() && st.has(*i)
                    })
                    .min_by_key(|i| (avail[*i as usize], *i));
                let Some(i) = pick else { break };
                self.spawn(sw, tasks, i, Source::Peer(*p));
            }
        }
        // The server: pieces no peer holds or is about to, this agent's share first.
        let alone = usable.is_empty();
        let me = self.node.peer_id().to_bytes();
        let mut members: Vec<Vec<u8>> = sharing.iter().map(|p| p.to_bytes()).collect();
        members.push(me.clone());
        members.sort_unstable();
        let my_index = members.iter().position(|m| *m == me).unwrap_or(0) as u64;
        let members = members.len() as u64;
        let maps_known = sw
            .peers
            .iter()
            .all(|(p, st)| st.complete || st.have.is_some() || !usable.contains(p));
        if sw.tracker_answered && maps_known {
            while load(sw, &Source::Server) < self.server_requests {
                let candidates = (0..n).filter(|i| {
                    let pc = &sw.pieces[*i as usize];
                    !pc.done
                        && pc.inflight.is_empty()
                        && (alone || (avail[*i as usize] == 0 && !claimed[*i as usize]))
                });
                let pick = if alone {
                    candidates.min()
                } else {
                    candidates.min_by_key(|i| server_order(*i, members, my_index))
                };
                let Some(i) = pick else { break };
                self.spawn(sw, tasks, i, Source::Server);
            }
        }
        // Endgame: everything missing is requested; duplicate single requests at peers.
        let idle = sw.pieces.iter().any(|p| !p.done && p.inflight.is_empty());
        if !idle {
            for i in 0..n {
                let pc = &sw.pieces[i as usize];
                if pc.done || pc.inflight.len() != 1 {
                    continue;
                }
                let first = pc.inflight[0];
                let other = order
                    .iter()
                    .copied()
                    .find(|p| Source::Peer(*p) != first && ready(sw, p) && sw.peers[p].has(i));
                if let Some(p) = other {
                    self.spawn(sw, tasks, i, Source::Peer(p));
                }
            }
        }
    }

    fn add_peer(
        &self,
        sw: &mut Swarm,
        control: &mut JoinSet<Control>,
        peer: PeerId,
        complete: bool,
    ) {
        if !sw.peers.contains_key(&peer) && sw.peers.len() >= MAX_PEERS {
            return;
        }
        let st = sw.peers.entry(peer).or_default();
        st.complete |= complete;
        if !st.complete && st.have.is_none() && !st.asking {
            self.ask_map(sw, control, peer);
        }
    }

    fn ask_map(&self, sw: &mut Swarm, control: &mut JoinSet<Control>, peer: PeerId) {
        if let Some(st) = sw.peers.get_mut(&peer) {
            st.asking = true;
        }
        let node = self.node.clone();
        let file = self.file;
        control.spawn(async move {
            let r = node.pieces(peer, file).await.map_err(|e| e.to_string());
            Control::Map(peer, r)
        });
    }

    fn peer_failed(&self, sw: &mut Swarm, peer: PeerId) {
        *sw.local_failures.entry(peer).or_default() += 1;
        let mut s = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        s.entry(peer).or_default().failures += 1;
    }

    fn on_control(&self, sw: &mut Swarm, control: &mut JoinSet<Control>, event: Control) {
        match event {
            Control::Tracker(found) => {
                sw.tracker_answered = true;
                for (peer, complete) in found {
                    self.add_peer(sw, control, peer, complete);
                }
            }
            Control::Map(peer, result) => {
                let bitmap_len = PieceMap::empty_bitmap(sw.pieces.len() as u64).len();
                let Some(st) = sw.peers.get_mut(&peer) else {
                    return;
                };
                st.asking = false;
                match result {
                    Ok(Some(map)) if map.complete => {
                        st.complete = true;
                        st.sharing = false;
                    }
                    Ok(Some(map))
                        if map.have.len() == bitmap_len && map.fetching.len() == bitmap_len =>
                    {
                        let claims: u32 = map.fetching.iter().map(|b| b.count_ones()).sum();
                        st.have = Some(map.have);
                        st.fetching = if claims <= MAX_CLAIMS_PER_PEER {
                            map.fetching
                        } else {
                            Vec::new()
                        };
                        st.sharing = true;
                    }
                    Ok(Some(_)) => {
                        tracing::debug!("peer {peer}: piece map of the wrong size");
                        self.peer_failed(sw, peer);
                    }
                    // It holds none of it (yet), or does not upload.
                    Ok(None) => {
                        st.have = Some(Vec::new());
                        st.fetching = Vec::new();
                        st.sharing = false;
                    }
                    Err(e) => {
                        tracing::debug!("peer {peer}: piece map: {e}");
                        // Until it answers again it is taken to hold nothing new, claim
                        // nothing and take no share of the server's pieces.
                        st.have.get_or_insert_with(Vec::new);
                        st.fetching = Vec::new();
                        st.sharing = false;
                        self.peer_failed(sw, peer);
                    }
                }
            }
        }
    }

    async fn fetch_all(
        &self,
        out: Arc<std::fs::File>,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), String> {
        let n = self.manifest.piece_count();
        if self.manifest.file_size == 0 {
            return Ok(());
        }
        let mut sw = Swarm {
            pieces: (0..n)
                .map(|_| Piece {
                    done: false,
                    inflight: Vec::new(),
                })
                .collect(),
            peers: HashMap::new(),
            inflight: HashMap::new(),
            local_failures: HashMap::new(),
            claims: HashMap::new(),
            tracker_answered: self.tracker.is_none(),
        };
        let mut prefix = 0u64; // first piece not done
        let mut server_failures = 0u32;
        let mut tasks: JoinSet<PieceResult> = JoinSet::new();
        let mut control: JoinSet<Control> = JoinSet::new();
        let mut tracker_busy = false;
        let mut next_tracker = Instant::now();
        let mut events = self.node.subscribe();
        let mut maps = tokio::time::interval(MAP_REFRESH);
        maps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(tracker) = &self.tracker
                && !tracker_busy
                && Instant::now() >= next_tracker
            {
                tracker_busy = true;
                let fut = tracker_peers(
                    self.node.clone(),
                    tracker.clone(),
                    self.file,
                    sw.peers.keys().copied().collect(),
                    self.scores.clone(),
                    MAX_PEERS,
                );
                control.spawn(async move { Control::Tracker(fut.await) });
            }
            self.schedule(&mut sw, &mut tasks);
            if tasks.is_empty() && control.is_empty() && sw.tracker_answered {
                // Nothing under way and nothing could start: every missing piece waits on
                // peers; the next map refresh (or a claim's patience) changes that, unless
                // no peer is left.
                if !sw.peers.keys().any(|p| self.usable(&sw, p)) {
                    return Err("no source left for the missing pieces".into());
                }
            }
            // A busy peer's backoff ending is a reason to schedule again.
            let wake = sw
                .peers
                .values()
                .filter_map(|st| st.backoff_until)
                .filter(|t| *t > Instant::now())
                .min();
            let joined = tokio::select! {
                Some(joined) = tasks.join_next() => joined,
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => continue,
                Some(event) = control.join_next() => {
                    match event {
                        Ok(event) => {
                            if matches!(event, Control::Tracker(_)) {
                                tracker_busy = false;
                                next_tracker = Instant::now() + TRACKER_REFRESH;
                            }
                            self.on_control(&mut sw, &mut control, event);
                        }
                        Err(e) => return Err(format!("control task failed: {e}")),
                    }
                    continue;
                }
                event = events.recv() => {
                    if let Ok(NodeEvent::PieceMapAsked { peer, file }) = event
                        && file == self.file
                        && peer != self.node.peer_id()
                        && !self.banned(&peer)
                    {
                        self.add_peer(&mut sw, &mut control, peer, false);
                    }
                    continue;
                }
                _ = maps.tick() => {
                    let ask: Vec<PeerId> = sw
                        .peers
                        .iter()
                        .filter(|(p, st)| {
                            !st.complete && !st.asking && !self.banned(p)
                        })
                        .map(|(p, _)| *p)
                        .collect();
                    for p in ask {
                        self.ask_map(&mut sw, &mut control, p);
                    }
                    continue;
                }
            };
            let (index, source, result, elapsed) =
                joined.map_err(|e| format!("piece task failed: {e}"))?;
            let piece = &mut sw.pieces[index as usize];
            piece.inflight.retain(|s| *s != source);
            if let Some(c) = sw.inflight.get_mut(&source) {
                *c = c.saturating_sub(1);
            }
            if source == Source::Server
                && let Some(p) = &self.partial
                && !sw.pieces[index as usize].inflight.contains(&Source::Server)
            {
                p.set_fetching(index, false);
            }
            let range = self.manifest.piece_range(index);
            match result {
                Err(PieceError::Lie(e)) => {
                    tracing::warn!("piece {index} from {source:?}: {e}");
                    match source {
                        Source::Peer(p) => self.ban(p),
                        Source::Server => server_failures += 1,
                    }
                }
                Err(PieceError::Busy) => {
                    if let Source::Peer(p) = source
                        && let Some(st) = sw.peers.get_mut(&p)
                    {
                        st.busy += 1;
                        st.backoff_until = Some(Instant::now() + BUSY_BACKOFF);
                        if st.busy >= MAX_PEER_BUSY {
                            st.busy = 0;
                            self.peer_failed(&mut sw, p);
                        }
                    }
                }
                Err(PieceError::Other(e)) => {
                    tracing::debug!("piece {index} from {source:?}: {e}");
                    match source {
                        Source::Peer(p) => self.peer_failed(&mut sw, p),
                        Source::Server => server_failures += 1,
                    }
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
                                    if let Some(st) = sw.peers.get_mut(&p) {
                                        st.busy = 0;
                                    }
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
                            if !sw.pieces[index as usize].done {
                                let out = out.clone();
                                tokio::task::spawn_blocking(move || {
                                    out.write_all_at(&data, range.start)
                                })
                                .await
                                .map_err(|e| format!("write task: {e}"))?
                                .map_err(|e| format!("write piece {index}: {e}"))?;
                                sw.pieces[index as usize].done = true;
                                // Written and verified: peers may have it from now on.
                                if let Some(p) = &self.partial {
                                    p.set_have(index);
                                }
                            }
                        }
                    }
                }
            }
            if server_failures >= MAX_SERVER_FAILURES {
                return Err(format!("the server failed {server_failures} times"));
            }
            let before = prefix;
            while prefix < n && sw.pieces[prefix as usize].done {
                prefix += 1;
            }
            // The last step (the whole file) is the caller's to publish, once the file is
            // kept and announced.
            if prefix != before && prefix < n {
                let verified = self.manifest.piece_range(prefix).start;
                let _ = progress.send(Progress::Verified(verified));
            }
            if prefix == n {
                // Duplicates still in flight are dropped with the JoinSet.
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_fetching_together_ask_the_server_for_disjoint_pieces_first() {
        let n = 200u64;
        let order = |me: u64| -> Vec<u64> {
            let mut v: Vec<u64> = (0..n).collect();
            v.sort_by_key(|i| server_order(*i, 4, me));
            v
        };
        let firsts: Vec<Vec<u64>> = (0..4).map(order).collect();
        // Each one's first quarter is its own share, lowest first, and the shares are
        // disjoint and cover the file.
        let mut all: Vec<u64> = firsts.iter().flat_map(|o| o[..50].to_vec()).collect();
        assert!(firsts[1][..50].windows(2).all(|w| w[0] < w[1]));
        assert!(firsts[1][..50].iter().all(|i| i % 4 == 1));
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<u64>>());
        // Then the others' shares from the top down.
        assert_eq!(firsts[1][50], 199);
        // Alone: lowest first.
        assert_eq!(server_order(7, 1, 0), (false, 7));
        assert!(server_order(3, 1, 0) < server_order(7, 1, 0));
    }
}
