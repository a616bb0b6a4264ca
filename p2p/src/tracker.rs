//! The tracker: the control messages peers exchange with it over the request-response
//! protocol `/tailcache/control/1` (announce, who-has, withdraw; and, between peers, which
//! pieces of a file one holds — [`PieceMap`]) and the server-side
//! [`TrackerState`] that answers them. The state is pure (time comes in as an argument) so it
//! is tested without a network; `node` wires it to the swarm when a node runs as a tracker.
//!
//! Wire encoding is postcard (ARCHITECTURE.md, "Protocols"). Every list in a message is bounded
//! twice: by the codec's byte cap and by the limits in [`TrackerLimits`].

use std::collections::HashMap;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A file as the P2P layer names it: the hash the manifest is keyed by (32 bytes).
pub type FileId = [u8; 32];

/// One file a peer holds, and whether it holds all of it (a seeder) or only part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAnnouncement {
    pub file: FileId,
    pub complete: bool,
}

/// A peer that holds a file, as the tracker tells an asker about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    #[serde(with = "peer_id_bytes")]
    pub peer_id: PeerId,
    #[serde(with = "multiaddrs_bytes")]
    pub addrs: Vec<Multiaddr>,
    pub complete: bool,
}

/// Which pieces of one file a peer holds, as it answers [`ControlRequest::Pieces`]. Bit `i`
/// of a bitmap is bit `i % 8` (least significant first) of byte `i / 8`; piece `i` is the
/// manifest's. A bitmap of another length than the asker's piece count is ignored by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceMap {
    /// The peer holds the whole file (the bitmaps are then empty).
    pub complete: bool,
    /// Pieces verified and served now.
    pub have: Vec<u8>,
    /// Pieces the peer is fetching from the server right now: likely to appear soon, so
    /// others need not fetch them from the server too.
    pub fetching: Vec<u8>,
}

impl PieceMap {
    /// An empty bitmap for `pieces` pieces.
    pub fn empty_bitmap(pieces: u64) -> Vec<u8> {
        vec![0u8; usize::try_from(pieces.div_ceil(8)).unwrap_or(usize::MAX)]
    }

    /// Bit `i` of `bitmap` (false beyond its end).
    pub fn bit(bitmap: &[u8], i: u64) -> bool {
        usize::try_from(i / 8)
            .ok()
            .and_then(|b| bitmap.get(b))
            .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
    }

    /// Sets or clears bit `i` (a no-op beyond the end).
    pub fn set_bit(bitmap: &mut [u8], i: u64, on: bool) {
        if let Some(byte) = usize::try_from(i / 8).ok().and_then(|b| bitmap.get_mut(b)) {
            if on {
                *byte |= 1 << (i % 8);
            } else {
                *byte &= !(1 << (i % 8));
            }
        }
    }
}

/// A control request, sent by a peer to the tracker (or, `Pieces`, to another peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// "I hold these files; reach me at these addresses." Adds to (or updates) what the
    /// tracker knows about the sender; it also refreshes the sender's expiry clock.
    Announce {
        files: Vec<FileAnnouncement>,
        #[serde(with = "multiaddrs_bytes")]
        listen_addrs: Vec<Multiaddr>,
    },
    /// "Who holds this file?"
    WhoHas { file: FileId },
    /// "I no longer hold these files."
    Withdraw { files: Vec<FileId> },
    /// "Which pieces of this file do you hold?" Asked of peers (any node answers it).
    Pieces { file: FileId },
}

/// The answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// How many of the announced files the tracker recorded (the rest hit a limit).
    Announced {
        accepted: u32,
    },
    /// Peers holding the file: finished seeders first, at most [`TrackerLimits::max_answer`].
    Peers {
        peers: Vec<PeerRecord>,
    },
    Withdrawn,
    /// The node asked does not run a tracker.
    NotATracker,
    /// The answer to [`ControlRequest::Pieces`]: `None` when the node holds none of the
    /// file or does not upload.
    Pieces {
        map: Option<PieceMap>,
    },
}

/// The bounds that keep a tracker's memory proportional to its configuration, whatever
/// peers send it.
#[derive(Debug, Clone)]
pub struct TrackerLimits {
    /// Peers remembered per file; a new one evicts the one seen least recently.
    pub max_peers_per_file: usize,
    /// Files remembered per peer; announcements beyond it are not recorded.
    pub max_files_per_peer: usize,
    /// Addresses remembered per peer.
    pub max_addrs_per_peer: usize,
    /// Peers listed in one who-has answer.
    pub max_answer: usize,
    /// A peer not heard from (announce or open connection) for this long is forgotten.
    pub expiry: Duration,
}

impl Default for TrackerLimits {
    fn default() -> Self {
        Self {
            max_peers_per_file: 64,
            max_files_per_peer: 16_384,
            max_addrs_per_peer: 8,
            max_answer: 16,
            expiry: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug)]
struct PeerEntry {
    addrs: Vec<Multiaddr>,
    last_seen: Instant,
    files: HashMap<FileId, bool>,
}

/// What the tracker knows: which peer holds which file. Pure: every method that depends on
/// time takes `now`.
#[derive(Debug)]
pub struct TrackerState {
    limits: TrackerLimits,
    peers: HashMap<PeerId, PeerEntry>,
    /// file → peers holding it (complete or not is in the peer's entry).
    files: HashMap<FileId, Vec<PeerId>>,
}

impl TrackerState {
    pub fn new(limits: TrackerLimits) -> Self {
        Self {
            limits,
            peers: HashMap::new(),
            files: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &TrackerLimits {
        &self.limits
    }

    /// Answers one control request from `from`.
    pub fn handle(
        &mut self,
        from: PeerId,
        request: ControlRequest,
        now: Instant,
    ) -> ControlResponse {
        match request {
            ControlRequest::Announce {
                files,
                listen_addrs,
            } => {
                let accepted = self.announce(from, &files, listen_addrs, now);
                ControlResponse::Announced {
                    accepted: u32::try_from(accepted).unwrap_or(u32::MAX),
                }
            }
            ControlRequest::WhoHas { file } => ControlResponse::Peers {
                peers: self.who_has(&file, Some(from), now),
            },
            ControlRequest::Withdraw { files } => {
                self.withdraw(from, &files);
                ControlResponse::Withdrawn
            }
            // The tracker holds no pieces; a node answers this itself from its source.
            ControlRequest::Pieces { .. } => ControlResponse::Pieces { map: None },
        }
    }

    /// Records that `peer` holds `files`; returns how many were recorded.
    pub fn announce(
        &mut self,
        peer: PeerId,
        files: &[FileAnnouncement],
        mut addrs: Vec<Multiaddr>,
        now: Instant,
    ) -> usize {
        addrs.truncate(self.limits.max_addrs_per_peer);
        let entry = self.peers.entry(peer).or_insert_with(|| PeerEntry {
            addrs: Vec::new(),
            last_seen: now,
            files: HashMap::new(),
        });
        entry.last_seen = now;
        if !addrs.is_empty() {
            entry.addrs = addrs;
        }
        let mut accepted = 0;
        for ann in files {
            let Some(entry) = self.peers.get_mut(&peer) else {
                break;
            };
            if let Some(complete) = entry.files.get_mut(&ann.file) {
                *complete = ann.complete;
                accepted += 1;
                continue;
            }
            if entry.files.len() >= self.limits.max_files_per_peer {
                continue;
            }
            entry.files.insert(ann.file, ann.complete);
            accepted += 1;
            self.add_holder(ann.file, peer);
        }
        accepted
    }

    fn add_holder(&mut self, file: FileId, peer: PeerId) {
        let holders = self.files.entry(file).or_default();
        let mut evicted = None;
        if holders.len() >= self.limits.max_peers_per_file {
            // Full: the holder heard from least recently makes room. The announcer was seen
            // just now and is not in the list yet, so it is never the one evicted.
            let peers = &self.peers;
            if let Some((i, _)) = holders
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| peers.get(*p).map(|e| e.last_seen))
            {
                evicted = Some(holders.swap_remove(i));
            }
        }
        holders.push(peer);
        if let Some(evicted) = evicted
            && let Some(e) = self.peers.get_mut(&evicted)
        {
            e.files.remove(&file);
        }
    }

    /// Forgets that `peer` holds `files`.
    pub fn withdraw(&mut self, peer: PeerId, files: &[FileId]) {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        for file in files {
            if entry.files.remove(file).is_some() {
                Self::drop_holder(&mut self.files, file, &peer);
            }
        }
    }

    fn drop_holder(files: &mut HashMap<FileId, Vec<PeerId>>, file: &FileId, peer: &PeerId) {
        if let Some(holders) = files.get_mut(file) {
            holders.retain(|p| p != peer);
            if holders.is_empty() {
                files.remove(file);
            }
        }
    }

    /// Forgets everything about `peer` (it disconnected or expired).
    pub fn remove_peer(&mut self, peer: &PeerId) {
        if let Some(entry) = self.peers.remove(peer) {
            for file in entry.files.keys() {
                Self::drop_holder(&mut self.files, file, peer);
            }
        }
    }

    /// Refreshes `peer`'s expiry clock (it sent us something).
    pub fn touch(&mut self, peer: &PeerId, now: Instant) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.last_seen = now;
        }
    }

    /// Forgets every peer not heard from within the expiry; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let expiry = self.limits.expiry;
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_seen) > expiry)
            .map(|(p, _)| *p)
            .collect();
        for p in &stale {
            self.remove_peer(p);
        }
        stale.len()
    }

    /// The peers holding `file`, at most `max_answer`: finished seeders first, then partial
    /// holders, each group most recently seen first. `asker` is left out of its own answer;
    /// expired peers are left out even before [`TrackerState::expire`] runs.
    pub fn who_has(&self, file: &FileId, asker: Option<PeerId>, now: Instant) -> Vec<PeerRecord> {
        let Some(holders) = self.files.get(file) else {
            return Vec::new();
        };
        let mut found: Vec<(&PeerId, &PeerEntry, bool)> = holders
            .iter()
            .filter(|p| Some(**p) != asker)
            .filter_map(|p| {
                let e = self.peers.get(p)?;
                let complete = *e.files.get(file)?;
                (now.saturating_duration_since(e.last_seen) <= self.limits.expiry)
                    .then_some((p, e, complete))
            })
            .collect();
        found.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.last_seen.cmp(&a.1.last_seen)));
        found
            .into_iter()
            .take(self.limits.max_answer)
            .map(|(p, e, complete)| PeerRecord {
                peer_id: *p,
                addrs: e.addrs.clone(),
                complete,
            })
            .collect()
    }

    /// How many peers the tracker knows.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// How many files have at least one known holder.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}

/// PeerId on the wire: its multihash bytes.
mod peer_id_bytes {
    use libp2p::PeerId;
    use serde::{Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(p: &PeerId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&p.to_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        let bytes: Vec<u8> = serde_bytes_vec(d)?;
        PeerId::from_bytes(&bytes).map_err(D::Error::custom)
    }

    pub(super) fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A list of Multiaddrs on the wire: each as its binary encoding.
mod multiaddrs_bytes {
    use libp2p::Multiaddr;
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

    #[derive(Serialize, Deserialize)]
    struct Raw(#[serde(with = "raw_bytes")] Vec<u8>);

    mod raw_bytes {
        use serde::{Deserializer, Serializer};
        pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            super::super::peer_id_bytes::serde_bytes_vec(d)
        }
    }

    pub fn serialize<S: Serializer>(addrs: &[Multiaddr], s: S) -> Result<S::Ok, S::Error> {
        let raw: Vec<Raw> = addrs.iter().map(|a| Raw(a.to_vec())).collect();
        raw.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
        let raw = Vec::<Raw>::deserialize(d)?;
        raw.into_iter()
            .map(|r| Multiaddr::try_from(r.0).map_err(D::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u8) -> FileId {
        [n; 32]
    }

    fn ann(n: u8, complete: bool) -> FileAnnouncement {
        FileAnnouncement {
            file: file(n),
            complete,
        }
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
            .parse()
            .unwrap()
    }

    fn limits() -> TrackerLimits {
        TrackerLimits {
            max_peers_per_file: 8,
            max_files_per_peer: 4,
            max_addrs_per_peer: 2,
            max_answer: 3,
            expiry: Duration::from_secs(600),
        }
    }

    #[test]
    fn who_has_lists_seeders_first_bounded_and_not_the_asker() {
        let t0 = Instant::now();
        let mut t = TrackerState::new(limits());
        let partial: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let seeders: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
        // Partial holders are announced last, so "most recent first" alone would put them
        // first: the seeders-first rule must win.
        for (i, p) in seeders.iter().enumerate() {
            t.announce(*p, &[ann(1, true)], vec![addr(1000 + i as u16)], t0);
        }
        for (i, p) in partial.iter().enumerate() {
            let at = t0 + Duration::from_secs(1 + i as u64);
            t.announce(*p, &[ann(1, false)], vec![addr(2000 + i as u16)], at);
        }
        let asker = PeerId::random();
        let now = t0 + Duration::from_secs(10);
        let got = t.who_has(&file(1), Some(asker), now);
        assert_eq!(got.len(), 3, "bounded by max_answer");
        assert!(got[0].complete && got[1].complete && !got[2].complete);
        let got_seeders: Vec<PeerId> = got[..2].iter().map(|r| r.peer_id).collect();
        assert!(seeders.iter().all(|s| got_seeders.contains(s)));
        // The most recently seen partial holder comes first among partial ones.
        assert_eq!(got[2].peer_id, partial[2]);
        assert_eq!(got[2].addrs, vec![addr(2002)]);

        // A seeder asking is not told about itself.
        let got = t.who_has(&file(1), Some(seeders[0]), now);
        assert!(got.iter().all(|r| r.peer_id != seeders[0]));
        assert!(t.who_has(&file(9), None, now).is_empty());
    }

    #[test]
    fn a_full_file_evicts_the_holder_seen_least_recently() {
        let t0 = Instant::now();
        let mut t = TrackerState::new(TrackerLimits {
            max_peers_per_file: 2,
            max_answer: 10,
            ..limits()
        });
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        t.announce(a, &[ann(1, true)], vec![], t0);
        t.announce(b, &[ann(1, true)], vec![], t0 + Duration::from_secs(1));
        t.announce(c, &[ann(1, false)], vec![], t0 + Duration::from_secs(2));
        let got: Vec<PeerId> = t
            .who_has(&file(1), None, t0 + Duration::from_secs(3))
            .iter()
            .map(|r| r.peer_id)
            .collect();
        assert_eq!(got.len(), 2);
        assert!(got.contains(&b) && got.contains(&c) && !got.contains(&a));
    }

    #[test]
    fn files_and_addresses_per_peer_are_bounded() {
        let t0 = Instant::now();
        let mut t = TrackerState::new(limits());
        let p = PeerId::random();
        let files: Vec<FileAnnouncement> = (0..10).map(|n| ann(n, true)).collect();
        let accepted = t.announce(p, &files, (0..5).map(|i| addr(3000 + i)).collect(), t0);
        assert_eq!(accepted, 4);
        assert_eq!(t.file_count(), 4);
        assert!(t.who_has(&file(5), None, t0).is_empty());
        let rec = &t.who_has(&file(0), None, t0)[0];
        assert_eq!(rec.addrs.len(), 2);
        // Re-announcing a known file (now partial) is accepted and updates it.
        assert_eq!(t.announce(p, &[ann(0, false)], vec![], t0), 1);
        assert!(!t.who_has(&file(0), None, t0)[0].complete);
        assert_eq!(
            t.who_has(&file(0), None, t0)[0].addrs.len(),
            2,
            "addrs kept"
        );
    }

    #[test]
    fn peers_not_seen_within_the_expiry_are_forgotten() {
        let t0 = Instant::now();
        let mut t = TrackerState::new(limits());
        let (old, fresh) = (PeerId::random(), PeerId::random());
        t.announce(old, &[ann(1, true)], vec![], t0);
        t.announce(
            fresh,
            &[ann(1, true)],
            vec![],
            t0 + Duration::from_secs(300),
        );
        let later = t0 + Duration::from_secs(601);
        let got = t.who_has(&file(1), None, later);
        assert_eq!(
            got.len(),
            1,
            "expired peers are hidden before expire() runs"
        );
        assert_eq!(got[0].peer_id, fresh);
        assert_eq!(t.expire(later), 1);
        assert_eq!(t.peer_count(), 1);
        // A touch keeps a peer alive.
        t.touch(&fresh, later);
        assert_eq!(t.expire(later + Duration::from_secs(599)), 0);
        assert_eq!(t.expire(later + Duration::from_secs(601)), 1);
        assert_eq!((t.peer_count(), t.file_count()), (0, 0));
    }

    #[test]
    fn remove_and_withdraw_forget_holdings() {
        let t0 = Instant::now();
        let mut t = TrackerState::new(limits());
        let (a, b) = (PeerId::random(), PeerId::random());
        t.announce(a, &[ann(1, true), ann(2, true)], vec![], t0);
        t.announce(b, &[ann(1, false)], vec![], t0);
        t.withdraw(a, &[file(2)]);
        assert!(t.who_has(&file(2), None, t0).is_empty());
        assert_eq!(t.file_count(), 1);
        t.remove_peer(&a);
        let got = t.who_has(&file(1), None, t0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].peer_id, b);
        t.remove_peer(&b);
        assert_eq!((t.peer_count(), t.file_count()), (0, 0));
    }

    #[test]
    fn handle_dispatches_requests() {
        let t0 = Instant::now();
        let mut t = TrackerState::new(limits());
        let (a, b) = (PeerId::random(), PeerId::random());
        let r = t.handle(
            a,
            ControlRequest::Announce {
                files: vec![ann(1, true)],
                listen_addrs: vec![addr(1)],
            },
            t0,
        );
        assert_eq!(r, ControlResponse::Announced { accepted: 1 });
        let r = t.handle(b, ControlRequest::WhoHas { file: file(1) }, t0);
        let ControlResponse::Peers { peers } = r else {
            panic!("{r:?}")
        };
        assert_eq!(peers[0].peer_id, a);
        let r = t.handle(
            a,
            ControlRequest::Withdraw {
                files: vec![file(1)],
            },
            t0,
        );
        assert_eq!(r, ControlResponse::Withdrawn);
        assert_eq!(t.file_count(), 0);
    }

    #[test]
    fn messages_round_trip_through_postcard() {
        let resp = ControlResponse::Peers {
            peers: vec![PeerRecord {
                peer_id: PeerId::random(),
                addrs: vec![addr(4001), "/ip6/::1/tcp/4002".parse().unwrap()],
                complete: true,
            }],
        };
        let bytes = postcard::to_stdvec(&resp).unwrap();
        let back: ControlResponse = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, resp);
        let req = ControlRequest::Announce {
            files: vec![ann(3, false)],
            listen_addrs: vec![addr(5)],
        };
        let back: ControlRequest =
            postcard::from_bytes(&postcard::to_stdvec(&req).unwrap()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn a_garbled_peer_id_is_a_decode_error() {
        let resp = ControlResponse::Peers {
            peers: vec![PeerRecord {
                peer_id: PeerId::random(),
                addrs: vec![],
                complete: true,
            }],
        };
        let mut bytes = postcard::to_stdvec(&resp).unwrap();
        // Variant tag, list length, byte-string length, then the multihash code: break it.
        bytes[3] = 0xff;
        assert!(postcard::from_bytes::<ControlResponse>(&bytes).is_err());
    }
}
