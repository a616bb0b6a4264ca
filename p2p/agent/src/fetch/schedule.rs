//! The decisions of one download, as a pure state machine: [`Scheduler::handle`] takes an
//! [`Event`] (a piece arrived verified or not, a peer joined, left or told which pieces it
//! holds, the tracker answered, time passed) with the time it happened, and returns the
//! [`Action`]s to take (fetch piece X from Y, ask a peer or the tracker, ban a peer, tell
//! peers what this agent holds or fetches, publish the verified prefix, finish). No I/O and
//! no clock: the driver in [`super`] performs the actions and feeds back what came of them,
//! so every rule here is tested with simulated peers (`tests/scheduler.rs`).
//!
//! Peers: the tracker is asked who holds the file at the start and every
//! [`Limits::tracker_refresh`] after it answered; a peer that asks this node for its piece
//! map is fetching the file too and joins at once; every peer is asked which pieces it
//! holds every [`Limits::map_refresh`]. Complete seeders hold everything. The server is
//! first asked only once the tracker and every usable peer have answered, so agents that
//! start together agree on who fetches what.
//!
//! Selection: pieces some peer holds come from peers, rarest first (then lowest index), at
//! most `requests_per_peer` per peer, the best goodput first. Pieces no peer holds come
//! from the server, at most `server_requests` at once, in an order that differs per agent
//! so agents that fetch together pull disjoint pieces from the server and exchange the
//! rest ([`server_order`]). A piece another peer is fetching from the server right now is
//! left to it, for at most [`Limits::claim_patience`] and only while that peer claims at
//! most [`Limits::max_claims_per_peer`] pieces. With no usable peer at all the server serves
//! every missing piece, lowest first.
//!
//! Failures: a peer that sends a piece that fails verification or breaks the data protocol
//! is banned for the agent's life, and nothing it sends afterwards is kept; a peer that
//! fails [`Limits::max_peer_failures`] times (transport failures, refusals, timeouts) is
//! dropped from this download — a busy peer is only backed off, and
//! [`Limits::max_peer_busy`] refusals in a row count as one failure. The server failing
//! [`Limits::max_server_failures`] times ends the download. Endgame: once every missing
//! piece is in flight, the ones with a single request get a duplicate request at another
//! peer that holds it; the first verified copy wins.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tailcache_p2p::PieceSet;
use tailcache_p2p::libp2p::PeerId;
use tailcache_p2p::tracker::PieceMap;

use crate::error::FetchError;

/// The scheduler's rules, in numbers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Piece requests in flight to one peer.
    pub requests_per_peer: usize,
    /// Range requests in flight to the server.
    pub server_requests: usize,
    /// Peers one download keeps track of.
    pub max_peers: usize,
    /// A peer failing this often is dropped from the download.
    pub max_peer_failures: u32,
    /// "Busy" refusals in a row (no piece in between) that count as one failure.
    pub max_peer_busy: u32,
    /// Server failures that end the download.
    pub max_server_failures: u32,
    /// Claims one peer may make at once; a map with more (no honest agent has that many
    /// server requests in flight) has its claims ignored, so a peer cannot hold pieces back.
    pub max_claims_per_peer: u64,
    /// How often each peer is asked which pieces it holds.
    pub map_refresh: Duration,
    /// How often the tracker is asked again who holds the file.
    pub tracker_refresh: Duration,
    /// How long a piece another peer says it is fetching from the server is left to it.
    pub claim_patience: Duration,
    /// How long a busy peer is left alone.
    pub busy_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests_per_peer: 4,
            server_requests: 2,
            max_peers: 32,
            max_peer_failures: 3,
            max_peer_busy: 50,
            max_server_failures: 3,
            max_claims_per_peer: 16,
            map_refresh: Duration::from_millis(500),
            tracker_refresh: Duration::from_secs(1),
            claim_patience: Duration::from_secs(20),
            busy_backoff: Duration::from_millis(100),
        }
    }
}

/// Where a piece comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Peer(PeerId),
    Server,
}

/// A peer as it is found (listed by the tracker, or asking for our piece map).
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub peer: PeerId,
    /// It holds the whole file.
    pub complete: bool,
    /// Its goodput (bytes per second) as remembered from earlier downloads; 0: unknown.
    pub goodput: f64,
}

/// A peer's answer to "which pieces do you hold?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapAnswer {
    Map(PieceMap),
    /// It holds none of the file yet, or does not upload.
    Nothing,
    /// No answer (refused, unreachable, timed out).
    Failed,
}

/// How one piece request ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The bytes verified against the signed root (the driver wrote them if
    /// [`Scheduler::wants`] said so).
    Verified { elapsed: Duration },
    /// The bytes failed verification.
    BadBytes,
    /// The source broke the data protocol: a stream shorter or longer than it accepted to
    /// send, or a length it was not asked for. No honest node does that.
    Lie,
    /// Refused because every upload slot was taken.
    Busy,
    /// A transport failure: refused, unreachable, reset, dropped, timed out.
    Failed,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Only time passed.
    Tick,
    /// The tracker's answer: the peers it lists for the file, connected (empty when it
    /// could not be asked).
    TrackerAnswered(Vec<Found>),
    /// A peer asked for our piece map of the file: it fetches it too.
    PeerAsked(Found),
    /// The last connection to a peer closed.
    PeerLeft(PeerId),
    PieceMap {
        peer: PeerId,
        answer: MapAnswer,
    },
    Piece {
        index: u64,
        source: Source,
        outcome: Outcome,
    },
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ask the tracker who holds the file (connecting to the peers it lists that are not in
    /// `known`); answer with [`Event::TrackerAnswered`].
    AskTracker {
        known: Vec<PeerId>,
    },
    /// Ask a peer which pieces it holds; answer with [`Event::PieceMap`].
    AskPieceMap(PeerId),
    /// Request a piece; answer with [`Event::Piece`].
    Fetch {
        index: u64,
        source: Source,
    },
    /// The peer sent bad bytes or broke the protocol: ban it for the agent's life.
    Ban(PeerId),
    /// The peer's goodput (bytes per second, a moving average), to remember.
    Goodput {
        peer: PeerId,
        bytes_per_sec: f64,
    },
    /// Piece `index` is (or no longer is) being fetched from the server: tell peers.
    ServerFetching {
        index: u64,
        on: bool,
    },
    /// Piece `index` is verified and written: peers may be served it.
    Have(u64),
    /// Pieces `[0, n)` are verified and written: the response may stream that far.
    Prefix(u64),
    /// Every piece is verified and written.
    Done,
    Fail(FetchError),
}

#[derive(Debug, Default)]
struct Piece {
    done: bool,
    inflight: Vec<Source>,
}

/// What one download knows of one peer.
#[derive(Debug, Default)]
struct PeerState {
    complete: bool,
    /// Pieces held, as last answered; `None` until the first answer.
    have: Option<PieceSet>,
    /// Pieces it is fetching from the server, as last answered (empty if it claimed more
    /// than [`Limits::max_claims_per_peer`]).
    fetching: PieceSet,
    /// It answered with a map of a download in progress: it fetches and shares pieces (a
    /// peer that answers "nothing" does not upload, and takes no share of the server's).
    sharing: bool,
    /// A piece-map request is outstanding.
    asking: bool,
    /// Busy refusals since its last piece.
    busy: u32,
    backoff_until: Option<Instant>,
    failures: u32,
    banned: bool,
    /// Its last connection closed; it is back when found again.
    gone: bool,
    goodput: f64,
}

impl PeerState {
    fn has(&self, i: u64) -> bool {
        self.complete || self.have.as_ref().is_some_and(|h| h.contains(i))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracker {
    /// None configured.
    Absent,
    /// A request is outstanding.
    Asking,
    /// Answered; ask again at this time.
    Idle(Instant),
}

/// The decisions of one download (see the module documentation).
#[derive(Debug)]
pub struct Scheduler {
    limits: Limits,
    /// This agent, for its place in the server split.
    me: PeerId,
    file_size: u64,
    piece_size: u64,
    pieces: Vec<Piece>,
    peers: HashMap<PeerId, PeerState>,
    /// Requests in flight per source.
    load: HashMap<Source, usize>,
    /// When a claim ("fetching from the server") on a piece was first seen.
    claims: HashMap<u64, Instant>,
    tracker: Tracker,
    /// The tracker has answered once (or there is none): until then the server waits.
    tracker_answered: bool,
    next_maps: Instant,
    server_failures: u32,
    /// First piece not done.
    prefix: u64,
    finished: bool,
}

/// What the schedule of one moment is computed from.
struct Plan {
    /// Peers pieces may be requested from: not banned, not gone, not failed too often.
    usable: Vec<PeerId>,
    /// `usable`, best goodput first.
    order: Vec<PeerId>,
    /// Downloaders sharing with us (partial peers that upload), for the server split.
    sharing: Vec<PeerId>,
    /// Per piece: usable peers holding it.
    avail: Vec<u32>,
    /// Per piece: a peer fetches it from the server now, and its patience has not run out.
    claimed: Vec<bool>,
}

/// The order in which an agent that is `me` of `members` downloaders (sorted peer ids,
/// `me < members`) asks the server for piece `i`: its own share (`i % members == me`)
/// first, lowest index first; then the others' shares, highest first.
pub fn server_order(i: u64, members: u64, me: u64) -> (bool, u64) {
    if members <= 1 || i % members == me {
        (false, i)
    } else {
        (true, u64::MAX - i)
    }
}

impl Scheduler {
    /// A download of `file_size` bytes in pieces of `piece_size` by agent `me`; with a
    /// tracker, the server waits for its first answer.
    pub fn new(
        me: PeerId,
        file_size: u64,
        piece_size: u64,
        with_tracker: bool,
        limits: Limits,
        now: Instant,
    ) -> Self {
        let piece_size = piece_size.max(1);
        let n = file_size.div_ceil(piece_size).max(1);
        Scheduler {
            next_maps: now + limits.map_refresh,
            limits,
            me,
            file_size,
            piece_size,
            pieces: (0..n).map(|_| Piece::default()).collect(),
            peers: HashMap::new(),
            load: HashMap::new(),
            claims: HashMap::new(),
            tracker: if with_tracker {
                Tracker::Idle(now)
            } else {
                Tracker::Absent
            },
            tracker_answered: !with_tracker,
            server_failures: 0,
            prefix: 0,
            finished: false,
        }
    }

    /// The first actions: ask the tracker, or start on the server.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.handle(Event::Tick, now)
    }

    /// Takes in what happened at `now`; returns what to do.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        match event {
            Event::Tick => {}
            Event::TrackerAnswered(found) => self.on_tracker(found, now, &mut out),
            Event::PeerAsked(found) => self.add_peer(found, &mut out),
            Event::PeerLeft(peer) => self.on_peer_left(peer),
            Event::PieceMap { peer, answer } => self.on_map(peer, answer),
            Event::Piece {
                index,
                source,
                outcome,
            } => self.on_piece(index, source, outcome, now, &mut out),
        }
        if !self.finished {
            self.refresh(now, &mut out);
            self.schedule(now, &mut out);
            self.check_end(&mut out);
        }
        out
    }

    /// Whether bytes of piece `index` from `source` are to be kept (written): the piece is
    /// still missing and the source not banned.
    pub fn wants(&self, index: u64, source: Source) -> bool {
        let banned = match source {
            Source::Peer(p) => self.is_banned(&p),
            Source::Server => false,
        };
        !banned && self.pieces.get(index as usize).is_some_and(|p| !p.done)
    }

    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|st| st.banned)
    }

    /// The next moment after `now` at which time alone changes a decision (a refresh is
    /// due, a busy peer's backoff or a claim's patience ends): the driver sends
    /// [`Event::Tick`] then.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let tracker = match self.tracker {
            Tracker::Idle(t) => Some(t),
            _ => None,
        };
        let maps = (!self.peers.is_empty()).then_some(self.next_maps);
        let backoffs = self.peers.values().filter_map(|st| st.backoff_until);
        let claims = self
            .claims
            .values()
            .map(|t| *t + self.limits.claim_patience);
        tracker
            .into_iter()
            .chain(maps)
            .chain(backoffs)
            .chain(claims)
            .filter(|t| *t > now)
            .min()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn piece_count(&self) -> u64 {
        self.pieces.len() as u64
    }

    /// Bytes in piece `index`.
    pub fn piece_len(&self, index: u64) -> u64 {
        let start = index.saturating_mul(self.piece_size).min(self.file_size);
        start.saturating_add(self.piece_size).min(self.file_size) - start
    }

    fn usable(&self, p: &PeerId) -> bool {
        self.peers
            .get(p)
            .is_some_and(|st| !st.banned && !st.gone && st.failures < self.limits.max_peer_failures)
    }

    fn on_tracker(&mut self, found: Vec<Found>, now: Instant, out: &mut Vec<Action>) {
        self.tracker_answered = true;
        if self.tracker != Tracker::Absent {
            self.tracker = Tracker::Idle(now + self.limits.tracker_refresh);
        }
        for f in found {
            self.add_peer(f, out);
        }
    }

    fn add_peer(&mut self, found: Found, out: &mut Vec<Action>) {
        if found.peer == self.me
            || (!self.peers.contains_key(&found.peer) && self.peers.len() >= self.limits.max_peers)
        {
            return;
        }
        let st = self.peers.entry(found.peer).or_default();
        if st.banned {
            return;
        }
        st.gone = false;
        st.complete |= found.complete;
        if st.goodput == 0.0 {
            st.goodput = found.goodput;
        }
        if !st.complete && st.have.is_none() && !st.asking {
            st.asking = true;
            out.push(Action::AskPieceMap(found.peer));
        }
    }

    fn on_peer_left(&mut self, peer: PeerId) {
        if let Some(st) = self.peers.get_mut(&peer) {
            // Until it is found again it holds nothing, claims nothing and takes no share.
            st.gone = true;
            st.have = None;
            st.fetching = PieceSet::default();
            st.sharing = false;
        }
    }

    fn on_map(&mut self, peer: PeerId, answer: MapAnswer) {
        let n = self.piece_count();
        let max_claims = self.limits.max_claims_per_peer;
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        st.asking = false;
        let failed = match answer {
            MapAnswer::Map(map) if map.complete => {
                st.complete = true;
                st.sharing = false;
                false
            }
            MapAnswer::Map(map) if map.have.fits(n) && map.fetching.fits(n) => {
                st.fetching = if map.fetching.count() <= max_claims {
                    map.fetching
                } else {
                    PieceSet::default()
                };
                st.have = Some(map.have);
                st.sharing = true;
                false
            }
            MapAnswer::Nothing => {
                st.have = Some(PieceSet::default());
                st.fetching = PieceSet::default();
                st.sharing = false;
                false
            }
            // A map of another size, or none: until it answers again it is taken to hold
            // nothing new, claim nothing and take no share of the server's pieces.
            MapAnswer::Map(_) | MapAnswer::Failed => {
                st.have.get_or_insert_with(PieceSet::default);
                st.fetching = PieceSet::default();
                st.sharing = false;
                true
            }
        };
        if failed {
            st.failures += 1;
        }
    }

    fn on_piece(
        &mut self,
        index: u64,
        source: Source,
        outcome: Outcome,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(piece) = self.pieces.get_mut(index as usize) else {
            return;
        };
        let Some(at) = piece.inflight.iter().position(|s| *s == source) else {
            return; // Not a request of ours: nothing to account.
        };
        piece.inflight.swap_remove(at);
        let still_from_server = piece.inflight.contains(&Source::Server);
        if let Some(c) = self.load.get_mut(&source) {
            *c = c.saturating_sub(1);
        }
        if source == Source::Server && !still_from_server {
            out.push(Action::ServerFetching { index, on: false });
        }
        match (outcome, source) {
            (Outcome::Verified { elapsed }, _) => self.on_verified(index, source, elapsed, out),
            (Outcome::BadBytes | Outcome::Lie, Source::Peer(p)) => self.ban(p, out),
            (Outcome::Busy, Source::Peer(p)) => self.on_busy(p, now),
            (Outcome::Failed, Source::Peer(p)) => {
                if let Some(st) = self.peers.get_mut(&p) {
                    st.failures += 1;
                }
            }
            (_, Source::Server) => self.server_failures += 1,
        }
        if self.server_failures >= self.limits.max_server_failures {
            self.finish(
                Action::Fail(FetchError::ServerFailed {
                    failures: self.server_failures,
                }),
                out,
            );
        }
    }

    fn on_verified(
        &mut self,
        index: u64,
        source: Source,
        elapsed: Duration,
        out: &mut Vec<Action>,
    ) {
        if let Source::Peer(p) = source {
            let len = self.piece_len(index);
            let Some(st) = self.peers.get_mut(&p) else {
                return;
            };
            if st.banned {
                return; // Nothing a banned peer sends is kept.
            }
            st.busy = 0;
            let rate = len as f64 / elapsed.as_secs_f64().max(1e-6);
            st.goodput = if st.goodput == 0.0 {
                rate
            } else {
                0.7 * st.goodput + 0.3 * rate
            };
            out.push(Action::Goodput {
                peer: p,
                bytes_per_sec: st.goodput,
            });
        }
        let piece = &mut self.pieces[index as usize];
        if piece.done {
            return;
        }
        piece.done = true;
        out.push(Action::Have(index));
        let before = self.prefix;
        while self
            .pieces
            .get(self.prefix as usize)
            .is_some_and(|p| p.done)
        {
            self.prefix += 1;
        }
        if self.prefix == self.piece_count() {
            self.finish(Action::Done, out);
        } else if self.prefix != before {
            out.push(Action::Prefix(self.prefix));
        }
    }

    fn ban(&mut self, peer: PeerId, out: &mut Vec<Action>) {
        let st = self.peers.entry(peer).or_default();
        if !st.banned {
            st.banned = true;
            st.sharing = false;
            st.fetching = PieceSet::default();
            out.push(Action::Ban(peer));
        }
    }

    fn on_busy(&mut self, peer: PeerId, now: Instant) {
        if let Some(st) = self.peers.get_mut(&peer) {
            st.busy += 1;
            st.backoff_until = Some(now + self.limits.busy_backoff);
            if st.busy >= self.limits.max_peer_busy {
                st.busy = 0;
                st.failures += 1;
            }
        }
    }

    fn finish(&mut self, last: Action, out: &mut Vec<Action>) {
        if !self.finished {
            self.finished = true;
            out.push(last);
        }
    }

    /// Asks the tracker and the peers again when their time has come.
    fn refresh(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Tracker::Idle(at) = self.tracker
            && now >= at
        {
            self.tracker = Tracker::Asking;
            let mut known: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(_, st)| !st.gone)
                .map(|(p, _)| *p)
                .collect();
            known.sort_unstable();
            out.push(Action::AskTracker { known });
        }
        if now >= self.next_maps {
            self.next_maps = now + self.limits.map_refresh;
            let mut ask: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(_, st)| !st.complete && !st.asking && !st.banned && !st.gone)
                .map(|(p, _)| *p)
                .collect();
            ask.sort_unstable();
            for p in ask {
                if let Some(st) = self.peers.get_mut(&p) {
                    st.asking = true;
                }
                out.push(Action::AskPieceMap(p));
            }
        }
        // Backoffs that ended are forgotten, so that they no longer wake the driver.
        for st in self.peers.values_mut() {
            if st.backoff_until.is_some_and(|t| t <= now) {
                st.backoff_until = None;
            }
        }
    }

    fn plan(&mut self, now: Instant) -> Plan {
        let n = self.piece_count() as usize;
        let mut usable: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| self.usable(p))
            .copied()
            .collect();
        usable.sort_unstable();
        let mut order = usable.clone();
        let goodput = |p: &PeerId| self.peers[p].goodput;
        order.sort_by(|a, b| goodput(b).total_cmp(&goodput(a)).then(a.cmp(b)));
        let mut sharing: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, st)| st.sharing && !st.complete && !st.banned && !st.gone)
            .map(|(p, _)| *p)
            .collect();
        sharing.sort_unstable();
        let mut avail = vec![0u32; n];
        let mut claimed = vec![false; n];
        for (i, piece) in self.pieces.iter().enumerate() {
            if piece.done {
                continue;
            }
            let i64 = i as u64;
            avail[i] = usable.iter().filter(|p| self.peers[*p].has(i64)).count() as u32;
            claimed[i] = sharing.iter().any(|p| self.peers[p].fetching.contains(i64));
        }
        self.claims.retain(|i, _| claimed[*i as usize]);
        for (i, c) in claimed.iter_mut().enumerate() {
            if *c {
                let since = *self.claims.entry(i as u64).or_insert(now);
                *c = now.duration_since(since) < self.limits.claim_patience;
            }
        }
        Plan {
            usable,
            order,
            sharing,
            avail,
            claimed,
        }
    }

    fn load(&self, s: &Source) -> usize {
        self.load.get(s).copied().unwrap_or(0)
    }

    /// The peer may be sent another request now.
    fn ready(&self, p: &PeerId, now: Instant) -> bool {
        self.peers[p].backoff_until.is_none_or(|t| t <= now)
            && self.load(&Source::Peer(*p)) < self.limits.requests_per_peer
    }

    fn fetch(&mut self, index: u64, source: Source, out: &mut Vec<Action>) {
        let piece = &mut self.pieces[index as usize];
        let first_from_server = source == Source::Server && !piece.inflight.contains(&source);
        piece.inflight.push(source);
        *self.load.entry(source).or_default() += 1;
        if first_from_server {
            out.push(Action::ServerFetching { index, on: true });
        }
        out.push(Action::Fetch { index, source });
    }

    /// Starts every request the rules allow now.
    fn schedule(&mut self, now: Instant, out: &mut Vec<Action>) {
        let plan = self.plan(now);
        self.schedule_peers(&plan, now, out);
        self.schedule_server(&plan, out);
        self.schedule_endgame(&plan, now, out);
    }

    /// Peers, the best goodput first: the rarest piece each holds.
    fn schedule_peers(&mut self, plan: &Plan, now: Instant, out: &mut Vec<Action>) {
        for p in &plan.order {
            while self.ready(p, now) {
                let st = &self.peers[p];
                let pick = self
                    .pieces
                    .iter()
                    .enumerate()
                    .filter(|(i, pc)| !pc.done && pc.inflight.is_empty() && st.has(*i as u64))
                    .map(|(i, _)| i as u64)
                    .min_by_key(|i| (plan.avail[*i as usize], *i));
                let Some(i) = pick else { break };
                self.fetch(i, Source::Peer(*p), out);
            }
        }
    }

    /// The server: pieces no peer holds or is about to, this agent's share first; with no
    /// usable peer, every missing piece, lowest first.
    fn schedule_server(&mut self, plan: &Plan, out: &mut Vec<Action>) {
        let maps_known = plan.usable.iter().all(|p| {
            let st = &self.peers[p];
            st.complete || st.have.is_some()
        });
        if !self.tracker_answered || !maps_known {
            return;
        }
        let alone = plan.usable.is_empty();
        let mut members: Vec<Vec<u8>> = plan.sharing.iter().map(|p| p.to_bytes()).collect();
        let me = self.me.to_bytes();
        members.push(me.clone());
        members.sort_unstable();
        let my_index = members.iter().position(|m| *m == me).unwrap_or(0) as u64;
        let members = members.len() as u64;
        while self.load(&Source::Server) < self.limits.server_requests {
            let candidates = self.pieces.iter().enumerate().filter(|(i, pc)| {
                !pc.done
                    && pc.inflight.is_empty()
                    && (alone || (plan.avail[*i] == 0 && !plan.claimed[*i]))
            });
            let pick = if alone {
                candidates.map(|(i, _)| i as u64).min()
            } else {
                candidates
                    .map(|(i, _)| i as u64)
                    .min_by_key(|i| server_order(*i, members, my_index))
            };
            let Some(i) = pick else { break };
            self.fetch(i, Source::Server, out);
        }
    }

    /// Endgame: everything missing is requested; duplicate single requests at peers.
    fn schedule_endgame(&mut self, plan: &Plan, now: Instant, out: &mut Vec<Action>) {
        if self.pieces.iter().any(|p| !p.done && p.inflight.is_empty()) {
            return;
        }
        for i in 0..self.piece_count() {
            let pc = &self.pieces[i as usize];
            if pc.done || pc.inflight.len() != 1 {
                continue;
            }
            let first = pc.inflight[0];
            let other =
                plan.order.iter().copied().find(|p| {
                    Source::Peer(*p) != first && self.ready(p, now) && self.peers[p].has(i)
                });
            if let Some(p) = other {
                self.fetch(i, Source::Peer(p), out);
            }
        }
    }

    /// Fails the download when nothing is under way, nothing could start and no peer is
    /// left to wait for.
    fn check_end(&mut self, out: &mut Vec<Action>) {
        let idle = self.load.values().all(|c| *c == 0)
            && self.tracker != Tracker::Asking
            && self.peers.values().all(|st| !st.asking)
            && self.tracker_answered;
        if idle && !self.peers.keys().any(|p| self.usable(p)) {
            self.finish(Action::Fail(FetchError::NoSource), out);
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

    #[test]
    fn alone_the_server_serves_every_piece_in_order_and_the_prefix_grows() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(
            PeerId::random(),
            3 * 10 + 5,
            10,
            false,
            Limits::default(),
            t0,
        );
        assert_eq!(s.piece_count(), 4);
        assert_eq!(s.piece_len(3), 5);
        let a = s.start(t0);
        assert_eq!(
            a,
            [
                Action::ServerFetching { index: 0, on: true },
                Action::Fetch {
                    index: 0,
                    source: Source::Server
                },
                Action::ServerFetching { index: 1, on: true },
                Action::Fetch {
                    index: 1,
                    source: Source::Server
                },
            ]
        );
        let ok = Outcome::Verified {
            elapsed: Duration::from_millis(1),
        };
        let piece = |index| Event::Piece {
            index,
            source: Source::Server,
            outcome: ok,
        };
        let a = s.handle(piece(1), t0);
        assert!(a.contains(&Action::Have(1)) && !a.iter().any(|x| matches!(x, Action::Prefix(_))));
        let a = s.handle(piece(0), t0);
        assert!(a.contains(&Action::Prefix(2)), "{a:?}");
        s.handle(piece(2), t0);
        assert!(!s.wants(2, Source::Server) && s.wants(3, Source::Server));
        let a = s.handle(piece(3), t0);
        assert_eq!(a.last(), Some(&Action::Done));
        assert!(s.is_finished() && s.next_wakeup(t0).is_none());
    }
}
