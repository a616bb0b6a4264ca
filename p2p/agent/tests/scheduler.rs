//! The fetch scheduler against simulated peers and a simulated server: property tests over
//! swarms of honest, slow, busy, lying, vanishing and over-claiming peers, in simulated time
//! (no sockets, no clock). The simulation plays the driver: it answers every action the
//! scheduler takes after a latency, verifies "bytes" (only honest sources send true ones),
//! writes a piece when the scheduler still wants it, and checks at every step:
//! - every piece kept was verified, and came from a source that holds it truly;
//! - a peer that sends bad bytes or lies is banned, no honest peer ever is, and nothing a
//!   banned peer sends is kept;
//! - requests stay within the per-peer and server limits, go only to peers that claim the
//!   piece, never to a banned peer, never for a piece already kept;
//! - pieces no honest peer holds come from the server;
//! - the download never stalls (something is always under way or a wake-up is due) and,
//!   with the server reachable, finishes within a bounded time; with the server down it
//!   still ends (finished from peers, or failed) within a bounded time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tailcache_agent::fetch::schedule::{
    Action, Event, Found, Limits, MapAnswer, Outcome, Scheduler, Source,
};
use tailcache_p2p::PieceSet;
use tailcache_p2p::libp2p::PeerId;
use tailcache_p2p::libp2p::identity::Keypair;
use tailcache_p2p::tracker::PieceMap;

/// One simulated tick.
const TICK: Duration = Duration::from_millis(50);
const PIECE: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A complete seeder answering after `latency` ticks.
    Honest { latency: u64 },
    /// A downloader sharing what it has: each of its pieces appears at some tick; it
    /// claims the pieces it is about to get.
    Partial { latency: u64 },
    /// A complete seeder that takes long (but less than the piece timeout).
    Slow { latency: u64 },
    /// A complete seeder whose upload slots are always taken.
    Busy,
    /// A complete seeder that sends bad bytes (or breaks the protocol) after `good`
    /// honest pieces.
    Liar { good: u32, protocol: bool },
    /// A complete seeder that serves for a while, then leaves: its connection closes and
    /// everything in flight fails.
    Vanishing { latency: u64, leaves_at: u64 },
    /// Says it holds every piece and fetches every piece from the server; holds nothing.
    Greedy,
    /// Claims (within the limit) to be fetching pieces from the server, forever; holds
    /// nothing.
    Claimer,
}

impl Kind {
    fn honest(self) -> bool {
        !matches!(self, Kind::Liar { .. } | Kind::Greedy | Kind::Claimer)
    }

    fn complete(self) -> bool {
        !matches!(self, Kind::Partial { .. } | Kind::Greedy | Kind::Claimer)
    }
}

#[derive(Debug, Clone)]
struct SimPeer {
    kind: Kind,
    /// Tick at which the tracker starts listing it.
    joins_at: u64,
    /// For `Partial`: the tick each piece appears (`None`: never).
    acquires: Vec<Option<u64>>,
}

#[derive(Debug, Clone)]
struct World {
    pieces: u64,
    peers: Vec<SimPeer>,
    with_tracker: bool,
    server_up: bool,
    server_latency: u64,
    requests_per_peer: usize,
    server_requests: usize,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => (1u64..4).prop_map(|latency| Kind::Honest { latency }),
        3 => (1u64..4).prop_map(|latency| Kind::Partial { latency }),
        1 => (20u64..200).prop_map(|latency| Kind::Slow { latency }),
        1 => Just(Kind::Busy),
        2 => (0u32..3, any::<bool>()).prop_map(|(good, protocol)| Kind::Liar { good, protocol }),
        1 => (1u64..4, 0u64..200).prop_map(|(latency, leaves_at)| Kind::Vanishing { latency, leaves_at }),
        1 => Just(Kind::Greedy),
        1 => Just(Kind::Claimer),
    ]
}

fn world(server_up: impl Strategy<Value = bool>) -> impl Strategy<Value = World> {
    (
        1u64..40,
        proptest::collection::vec((kind(), 0u64..100), 0..6),
        any::<bool>(),
        server_up,
        1u64..10,
        1usize..5,
        1usize..4,
        any::<u64>(),
    )
        .prop_map(
            |(pieces, peers, with_tracker, server_up, server_latency, rpp, sr, seed)| {
                let mut x = seed | 1;
                let mut rand = move |m: u64| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % m
                };
                let peers = peers
                    .into_iter()
                    .map(|(kind, joins_at)| SimPeer {
                        kind,
                        joins_at,
                        acquires: (0..pieces)
                            .map(|_| (rand(3) != 0).then(|| rand(400)))
                            .collect(),
                    })
                    .collect();
                World {
                    pieces,
                    peers,
                    with_tracker,
                    server_up,
                    server_latency,
                    requests_per_peer: rpp,
                    server_requests: sr,
                }
            },
        )
}

/// How many ticks a download in `w` may take: time to give up on busy peers (150
/// refusals, each with its backoff) and on claims (the patience), plus every piece at the
/// pace of the slowest source, one at a time.
fn tick_bound(w: &World) -> u64 {
    let slowest_peer = w
        .peers
        .iter()
        .map(|sp| match sp.kind {
            Kind::Honest { latency }
            | Kind::Partial { latency }
            | Kind::Slow { latency }
            | Kind::Vanishing { latency, .. } => latency,
            _ => 1,
        })
        .max()
        .unwrap_or(1);
    let patience = Limits::default().claim_patience.as_millis() as u64 / 50;
    1000 + patience + w.pieces * (slowest_peer + w.server_latency)
}

fn peer_id(i: usize) -> PeerId {
    let mut seed = [0u8; 32];
    seed[0] = i as u8 + 1;
    Keypair::ed25519_from_bytes(seed)
        .unwrap()
        .public()
        .to_peer_id()
}

/// What the simulation delivers later.
#[derive(Debug, Clone)]
enum Due {
    Event(Event),
    /// A piece request's answer; turned into an event when delivered (so that a peer that
    /// left meanwhile fails it).
    Piece {
        index: u64,
        source: Source,
        sent: u64,
    },
}

/// The simulation's record of one run.
#[derive(Debug, Default)]
struct Record {
    kept: Vec<Option<Source>>,
    banned: HashSet<PeerId>,
    /// Peers that sent bad bytes or broke the protocol.
    lied: HashSet<PeerId>,
    finished: Option<Action>,
    ticks: u64,
}

struct Sim<'w> {
    w: &'w World,
    ids: Vec<PeerId>,
    index_of: HashMap<PeerId, usize>,
    t0: Instant,
    tick: u64,
    seq: u64,
    due: BinaryHeap<Reverse<(u64, u64)>>,
    payload: HashMap<u64, Due>,
    load: HashMap<Source, usize>,
    /// What each peer last claimed to hold (complete peers: everything).
    claimed: HashMap<PeerId, PieceSet>,
    /// Pieces served so far by each peer (for liars and the vanishing).
    served: HashMap<PeerId, u32>,
    rec: Record,
}

impl<'w> Sim<'w> {
    fn new(w: &'w World) -> Self {
        let ids: Vec<PeerId> = (0..w.peers.len()).map(peer_id).collect();
        let index_of = ids.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        Sim {
            w,
            ids,
            index_of,
            t0: Instant::now(),
            tick: 0,
            seq: 0,
            due: BinaryHeap::new(),
            payload: HashMap::new(),
            load: HashMap::new(),
            claimed: HashMap::new(),
            served: HashMap::new(),
            rec: Record {
                kept: vec![None; w.pieces as usize],
                ..Record::default()
            },
        }
    }

    fn at(&self, tick: u64) -> Instant {
        self.t0 + TICK * tick as u32
    }

    fn later(&mut self, ticks: u64, due: Due) {
        self.seq += 1;
        self.due.push(Reverse((self.tick + ticks.max(1), self.seq)));
        self.payload.insert(self.seq, due);
    }

    fn peer(&self, p: &PeerId) -> &SimPeer {
        &self.w.peers[self.index_of[p]]
    }

    fn gone(&self, p: &PeerId, tick: u64) -> bool {
        matches!(self.peer(p).kind, Kind::Vanishing { leaves_at, .. } if tick >= leaves_at)
    }

    /// Does peer `p` truly hold piece `i` at `tick`?
    fn holds(&self, p: &PeerId, i: u64, tick: u64) -> bool {
        let sp = self.peer(p);
        match sp.kind {
            Kind::Partial { .. } => sp.acquires[i as usize].is_some_and(|t| t <= tick),
            Kind::Greedy | Kind::Claimer => false,
            _ => !self.gone(p, tick),
        }
    }

    fn listed(&self, tick: u64) -> Vec<Found> {
        self.ids
            .iter()
            .filter(|p| self.peer(p).joins_at <= tick && !self.gone(p, tick))
            .map(|p| Found {
                peer: *p,
                complete: self.peer(p).kind.complete(),
                goodput: 0.0,
            })
            .collect()
    }

    fn map_of(&self, p: &PeerId, tick: u64) -> MapAnswer {
        let n = self.w.pieces;
        let sp = self.peer(p);
        if self.gone(p, tick) {
            return MapAnswer::Failed;
        }
        match sp.kind {
            Kind::Partial { .. } => {
                let mut have = PieceSet::empty(n);
                let mut fetching = PieceSet::empty(n);
                for i in 0..n {
                    match sp.acquires[i as usize] {
                        Some(t) if t <= tick => have.insert(i),
                        Some(t) if t <= tick + 20 => fetching.insert(i),
                        _ => {}
                    }
                }
                MapAnswer::Map(PieceMap {
                    complete: false,
                    have,
                    fetching,
                })
            }
            Kind::Greedy => MapAnswer::Map(PieceMap {
                complete: false,
                have: PieceSet::full(n),
                fetching: PieceSet::full(n),
            }),
            Kind::Claimer => {
                let mut fetching = PieceSet::empty(n);
                for i in 0..n.min(16) {
                    fetching.insert(i);
                }
                MapAnswer::Map(PieceMap {
                    complete: false,
                    have: PieceSet::empty(n),
                    fetching,
                })
            }
            _ => MapAnswer::Map(PieceMap::complete()),
        }
    }

    /// Carries out the scheduler's actions, checking each.
    fn perform(&mut self, sched: &Scheduler, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::AskTracker { .. } => {
                    assert!(self.w.with_tracker, "asked a tracker there is none of");
                    let found = self.listed(self.tick);
                    self.later(1, Due::Event(Event::TrackerAnswered(found)));
                }
                Action::AskPieceMap(p) => {
                    // What it claims is recorded when the answer arrives.
                    let answer = self.map_of(&p, self.tick);
                    self.later(1, Due::Event(Event::PieceMap { peer: p, answer }));
                }
                Action::Fetch { index, source } => self.on_fetch(sched, index, source),
                Action::Ban(p) => {
                    assert!(
                        !self.peer(&p).kind.honest(),
                        "banned an honest peer: {:?}",
                        self.peer(&p).kind
                    );
                    assert!(self.rec.banned.insert(p), "banned twice");
                }
                Action::Done | Action::Fail(_) => {
                    assert!(self.rec.finished.is_none());
                    self.rec.finished = Some(a);
                }
                Action::Goodput { .. }
                | Action::ServerFetching { .. }
                | Action::Have(_)
                | Action::Prefix(_) => {}
            }
        }
    }

    fn on_fetch(&mut self, sched: &Scheduler, index: u64, source: Source) {
        assert!(
            self.rec.kept[index as usize].is_none(),
            "requested piece {index}, already kept"
        );
        let load = self.load.entry(source).or_default();
        *load += 1;
        let limit = match source {
            Source::Server => self.w.server_requests,
            Source::Peer(_) => self.w.requests_per_peer,
        };
        assert!(
            *load <= limit,
            "{source:?}: {load} requests in flight > {limit}"
        );
        if let Source::Peer(p) = source {
            assert!(
                !self.rec.banned.contains(&p),
                "requested from a banned peer"
            );
            assert!(!sched.is_banned(&p));
            let claims = self.claimed.get(&p);
            assert!(
                self.peer(&p).kind.complete() || claims.is_some_and(|c| c.contains(index)),
                "asked {:?} for piece {index} it never claimed",
                self.peer(&p).kind
            );
        }
        let ticks = match source {
            Source::Server => self.w.server_latency,
            Source::Peer(p) => match self.peer(&p).kind {
                Kind::Honest { latency }
                | Kind::Partial { latency }
                | Kind::Slow { latency }
                | Kind::Vanishing { latency, .. } => latency,
                _ => 1,
            },
        };
        let sent = self.tick;
        self.later(
            ticks,
            Due::Piece {
                index,
                source,
                sent,
            },
        );
    }

    /// The outcome of a piece request answered now; plays the driver's verification.
    fn outcome(&mut self, index: u64, source: Source, sent: u64) -> Outcome {
        let elapsed = TICK * (self.tick - sent).max(1) as u32;
        let ok = Outcome::Verified { elapsed };
        let p = match source {
            Source::Server if self.w.server_up => return ok,
            Source::Server => return Outcome::Failed,
            Source::Peer(p) => p,
        };
        if self.gone(&p, self.tick) {
            return Outcome::Failed;
        }
        let served = self.served.get(&p).copied().unwrap_or(0);
        match self.peer(&p).kind {
            Kind::Busy => Outcome::Busy,
            Kind::Liar { good, protocol } if served >= good => {
                self.rec.lied.insert(p);
                if protocol {
                    Outcome::Lie
                } else {
                    Outcome::BadBytes
                }
            }
            _ if self.holds(&p, index, sent) => {
                *self.served.entry(p).or_default() += 1;
                ok
            }
            // Refused: it does not hold it.
            _ => Outcome::Failed,
        }
    }

    fn deliver(&mut self, sched: &mut Scheduler, due: Due) -> Vec<Action> {
        let now = self.at(self.tick);
        let event = match due {
            Due::Event(Event::PieceMap { peer, answer }) => {
                match &answer {
                    MapAnswer::Map(m) if m.complete => {
                        self.claimed.insert(peer, PieceSet::full(self.w.pieces));
                    }
                    MapAnswer::Map(m) => {
                        let mut set = self.claimed.remove(&peer).unwrap_or_default();
                        if !set.fits(self.w.pieces) {
                            set = PieceSet::empty(self.w.pieces);
                        }
                        for i in m.have.iter() {
                            set.insert(i);
                        }
                        self.claimed.insert(peer, set);
                    }
                    _ => {}
                }
                Event::PieceMap { peer, answer }
            }
            Due::Event(e) => e,
            Due::Piece {
                index,
                source,
                sent,
            } => {
                if let Some(l) = self.load.get_mut(&source) {
                    *l -= 1;
                }
                let outcome = self.outcome(index, source, sent);
                if matches!(outcome, Outcome::Verified { .. }) && sched.wants(index, source) {
                    if let Source::Peer(p) = source {
                        assert!(!self.rec.banned.contains(&p), "kept a banned peer's piece");
                    }
                    self.rec.kept[index as usize].get_or_insert(source);
                }
                Event::Piece {
                    index,
                    source,
                    outcome,
                }
            }
        };
        sched.handle(event, now)
    }

    /// Timed events of the world itself: peers that leave, partial peers that ask us.
    fn schedule_world(&mut self) {
        for (i, sp) in self.w.peers.clone().iter().enumerate() {
            let p = self.ids[i];
            if let Kind::Vanishing { leaves_at, .. } = sp.kind {
                self.seq += 1;
                self.due.push(Reverse((leaves_at.max(1), self.seq)));
                self.payload
                    .insert(self.seq, Due::Event(Event::PeerLeft(p)));
            }
            if matches!(sp.kind, Kind::Partial { .. }) {
                self.seq += 1;
                self.due.push(Reverse((sp.joins_at.max(1), self.seq)));
                let found = Found {
                    peer: p,
                    complete: false,
                    goodput: 0.0,
                };
                self.payload
                    .insert(self.seq, Due::Event(Event::PeerAsked(found)));
            }
        }
    }

    fn run(mut self) -> Record {
        let limits = Limits {
            requests_per_peer: self.w.requests_per_peer,
            server_requests: self.w.server_requests,
            ..Limits::default()
        };
        let me = peer_id(200);
        let size = self.w.pieces * PIECE - PIECE / 3;
        let mut sched = Scheduler::new(me, size, PIECE, self.w.with_tracker, limits, self.t0);
        assert_eq!(sched.piece_count(), self.w.pieces);
        self.schedule_world();
        let actions = sched.start(self.t0);
        self.perform(&sched, actions);
        while !sched.is_finished() {
            let now = self.at(self.tick);
            let wake = sched
                .next_wakeup(now)
                .map(|t| (t - self.t0).as_millis().div_ceil(TICK.as_millis()) as u64);
            let next = self.due.peek().map(|Reverse((t, _))| *t);
            let at = match (next, wake) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => panic!(
                    "stalled at tick {}: nothing under way, no wake-up",
                    self.tick
                ),
            };
            assert!(at >= self.tick);
            self.tick = at;
            assert!(
                self.tick <= 2 * tick_bound(self.w),
                "still running at tick {}",
                self.tick
            );
            let actions = if next == Some(at) {
                let Reverse((_, seq)) = self.due.pop().unwrap();
                let due = self.payload.remove(&seq).unwrap();
                self.deliver(&mut sched, due)
            } else {
                sched.handle(Event::Tick, self.at(self.tick))
            };
            self.perform(&sched, actions);
        }
        self.rec.ticks = self.tick;
        self.rec
    }
}

/// Checks what every run must satisfy, whatever the server did.
fn check_common(w: &World, r: &Record) {
    let ids: Vec<PeerId> = (0..w.peers.len()).map(peer_id).collect();
    // Every peer that lied was banned, and only those. (A liar may never have been asked.)
    assert_eq!(r.banned, r.lied, "banned vs. lied");
    for (i, sp) in w.peers.iter().enumerate() {
        if r.banned.contains(&ids[i]) {
            assert!(!sp.kind.honest());
        }
    }
    // Nothing a liar sent is kept but the true pieces it sent before its first lie.
    for (k, sp) in w.peers.iter().enumerate() {
        let from_it = r
            .kept
            .iter()
            .filter(|s| **s == Some(Source::Peer(ids[k])))
            .count();
        match sp.kind {
            Kind::Liar { good, .. } => assert!(from_it <= good as usize, "{from_it} from a liar"),
            Kind::Greedy | Kind::Claimer => assert_eq!(from_it, 0),
            _ => {}
        }
    }
}

fn every_piece_kept(r: &Record) -> bool {
    r.kept.iter().all(Option::is_some)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    })]

    /// With the server reachable, every download finishes, in bounded time, with every
    /// piece verified; what no honest peer holds came from the server.
    #[test]
    fn with_the_server_up_every_download_finishes(w in world(Just(true))) {
        let r = Sim::new(&w).run();
        check_common(&w, &r);
        prop_assert_eq!(&r.finished, &Some(Action::Done), "{:?}", r);
        prop_assert!(every_piece_kept(&r));
        prop_assert!(r.ticks <= tick_bound(&w), "took {} ticks", r.ticks);
        for i in 0..w.pieces {
            // Peers that can send true bytes of piece i (a liar does, before it lies).
            let giver = w.peers.iter().any(|sp| match sp.kind {
                Kind::Busy | Kind::Greedy | Kind::Claimer => false,
                Kind::Liar { good, .. } => good > 0,
                Kind::Partial { .. } => sp.acquires[i as usize].is_some(),
                _ => true,
            });
            if !giver {
                prop_assert_eq!(r.kept[i as usize], Some(Source::Server), "piece {}", i);
            }
        }
    }

    /// With the server down, a download still ends: finished from peers, or failed.
    #[test]
    fn with_the_server_down_a_download_still_ends(w in world(Just(false))) {
        let r = Sim::new(&w).run();
        check_common(&w, &r);
        match &r.finished {
            Some(Action::Done) => prop_assert!(every_piece_kept(&r)),
            Some(Action::Fail(_)) => {}
            other => prop_assert!(false, "ended with {:?}", other),
        }
        prop_assert!(r.ticks <= tick_bound(&w), "took {} ticks", r.ticks);
        prop_assert!(r.kept.iter().all(|k| *k != Some(Source::Server)));
    }
}

/// A liar that is asked is banned, and nothing of it is kept even when the honest peers
/// could not have served everything.
#[test]
fn a_liar_holding_the_only_copy_is_banned_and_the_server_fills_in() {
    for protocol in [false, true] {
        let w = World {
            pieces: 12,
            peers: vec![SimPeer {
                kind: Kind::Liar { good: 0, protocol },
                joins_at: 0,
                acquires: vec![None; 12],
            }],
            with_tracker: true,
            server_up: true,
            server_latency: 2,
            requests_per_peer: 4,
            server_requests: 2,
        };
        let r = Sim::new(&w).run();
        assert_eq!(r.finished, Some(Action::Done));
        assert_eq!(r.banned, HashSet::from([peer_id(0)]));
        assert!(r.kept.iter().all(|k| *k == Some(Source::Server)), "{r:?}");
    }
}

/// Two honest seeders and a fast server: the peers carry most of the file.
#[test]
fn honest_seeders_carry_the_file() {
    let seeder = |latency| SimPeer {
        kind: Kind::Honest { latency },
        joins_at: 0,
        acquires: vec![None; 30],
    };
    let w = World {
        pieces: 30,
        peers: vec![seeder(1), seeder(2)],
        with_tracker: true,
        server_up: true,
        server_latency: 3,
        requests_per_peer: 4,
        server_requests: 2,
    };
    let r = Sim::new(&w).run();
    assert_eq!(r.finished, Some(Action::Done));
    let from_peers = r
        .kept
        .iter()
        .filter(|k| matches!(k, Some(Source::Peer(_))))
        .count();
    assert_eq!(from_peers, 30, "{r:?}");
}
