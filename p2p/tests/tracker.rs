//! The tracker over the network: a tracker node and peers on loopback QUIC announce files,
//! ask who holds them, and disappear from answers when they disconnect; oversized control
//! messages are refused without harming the tracker.

mod support;

use std::sync::Arc;

use futures::{AsyncReadExt, AsyncWriteExt};
use support::*;
use tailcache_p2p::node::{CONTROL_PROTOCOL, Client, MAX_CONTROL_REQUEST, NoPieces};
use tailcache_p2p::tracker::{ControlRequest, ControlResponse, FileAnnouncement, TrackerLimits};
use tailcache_p2p::{Error, FileId};

const F: FileId = FileId::from_bytes([1; 32]);
const G: FileId = FileId::from_bytes([2; 32]);

async fn tracker(max_answer: usize) -> (Client, libp2p::Multiaddr) {
    let mut cfg = config();
    cfg.tracker = Some(TrackerLimits {
        max_answer,
        ..TrackerLimits::default()
    });
    start(cfg, Arc::new(NoPieces), quic()).await
}

async fn peer_of(
    tracker: &Client,
    tracker_addr: &libp2p::Multiaddr,
) -> (Client, libp2p::Multiaddr) {
    let (c, addr) = start(config(), Arc::new(NoPieces), quic()).await;
    c.dial(tracker.peer_id(), vec![tracker_addr.clone()])
        .await
        .unwrap();
    (c, addr)
}

fn ann(file: FileId, complete: bool) -> FileAnnouncement {
    FileAnnouncement { file, complete }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_who_has_and_disconnect() {
    let (t, t_addr) = tracker(2).await;
    let (a, a_addr) = peer_of(&t, &t_addr).await;
    let (b, b_addr) = peer_of(&t, &t_addr).await;
    let (c, c_addr) = peer_of(&t, &t_addr).await;
    let (asker, _) = peer_of(&t, &t_addr).await;
    let tp = t.peer_id();

    // A and B hold G partly, C entirely; only A and C hold F.
    assert_eq!(
        a.announce(tp, vec![ann(F, false), ann(G, false)], vec![a_addr.clone()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        b.announce(tp, vec![ann(G, false)], vec![b_addr.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        c.announce(tp, vec![ann(F, true), ann(G, true)], vec![c_addr.clone()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(t.tracker_counts().await.unwrap(), Some((3, 2)));

    // Seeders first, then partial holders; at most two answers though three hold G.
    let g = asker.who_has(tp, G).await.unwrap();
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].peer_id, c.peer_id());
    assert!(g[0].complete);
    assert_eq!(g[0].addrs, vec![c_addr.clone()]);
    assert!(!g[1].complete);
    assert!([a.peer_id(), b.peer_id()].contains(&g[1].peer_id));

    let f = asker.who_has(tp, F).await.unwrap();
    let ids: Vec<_> = f.iter().map(|r| (r.peer_id, r.complete)).collect();
    assert_eq!(ids, vec![(c.peer_id(), true), (a.peer_id(), false)]);

    // The answers carry addresses good enough to reach the peer.
    asker.dial(f[0].peer_id, f[0].addrs.clone()).await.unwrap();

    // C goes away: the tracker forgets it once the connection closes.
    let mut events = t.subscribe();
    c.shutdown().await.unwrap();
    wait_event(&mut events, disconnected(c.peer_id())).await;
    let f = asker.who_has(tp, F).await.unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].peer_id, a.peer_id());
    let g = asker.who_has(tp, G).await.unwrap();
    assert!(g.iter().all(|r| !r.complete && r.peer_id != c.peer_id()));
    assert_eq!(t.tracker_counts().await.unwrap(), Some((2, 2)));

    // Withdrawing is heard too.
    a.withdraw(tp, vec![F]).await.unwrap();
    assert!(asker.who_has(tp, F).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_a_tracker_says_so() {
    let (a, a_addr) = start(config(), Arc::new(NoPieces), quic()).await;
    let (b, _) = start(config(), Arc::new(NoPieces), quic()).await;
    b.dial(a.peer_id(), vec![a_addr]).await.unwrap();
    let r = b
        .request(a.peer_id(), ControlRequest::WhoHas { file: F })
        .await
        .unwrap();
    assert_eq!(r, ControlResponse::NotATracker);
    assert!(matches!(
        b.who_has(a.peer_id(), F).await,
        Err(Error::UnexpectedResponse { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_control_messages_are_refused() {
    let (t, t_addr) = tracker(16).await;
    let (a, a_addr) = peer_of(&t, &t_addr).await;
    let tp = t.peer_id();

    // Our own client refuses to send one.
    let files: Vec<_> = (0..MAX_CONTROL_REQUEST / 33 + 10)
        .map(|i| ann(FileId::from_bytes([(i % 251) as u8; 32]), true))
        .collect();
    match a.announce(tp, files, vec![a_addr.clone()]).await {
        Err(Error::MessageTooLarge { size, max }) => {
            assert!(size > max);
            assert_eq!(max, MAX_CONTROL_REQUEST as u64);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }

    // A hostile peer speaking the protocol by hand: it claims a 4 GiB request and keeps
    // sending. The tracker must close the stream without answering (and without trying to
    // buffer 4 GiB), and go on serving.
    let mut control = a.stream_control();
    let mut s = control.open_stream(tp, CONTROL_PROTOCOL).await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let junk = vec![0u8; 64 * 1024];
    let mut answer = Vec::new();
    let outcome = tokio::time::timeout(DEADLINE, async {
        // Writes may start failing once the tracker resets the stream; either way the
        // read side must end with nothing in it.
        for _ in 0..16 {
            if s.write_all(&junk).await.is_err() {
                break;
            }
        }
        let _ = s.close().await;
        s.read_to_end(&mut answer).await
    })
    .await
    .expect("the tracker closes the stream in time");
    assert!(answer.is_empty(), "no response to an oversized request");
    drop(outcome);

    assert_eq!(
        a.announce(tp, vec![ann(F, true)], vec![a_addr])
            .await
            .unwrap(),
        1
    );
    let (b, _) = peer_of(&t, &t_addr).await;
    assert_eq!(b.who_has(tp, F).await.unwrap()[0].peer_id, a.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_outlives_the_idle_timeout() {
    // Short enough to wait for, long enough that A's keepalive (every third of it) still
    // lands on a starved machine: at 600 ms it missed once in 90 runs at load 18 on 2 cores.
    let short = |mut cfg: tailcache_p2p::node::NodeConfig| {
        cfg.idle_timeout = std::time::Duration::from_secs(4);
        cfg
    };
    let mut cfg = short(config());
    cfg.tracker = Some(TrackerLimits::default());
    let (t, t_addr) = start(cfg, Arc::new(NoPieces), quic()).await;
    let tp = t.peer_id();
    let mut events = t.subscribe();

    // A connects first and keeps its connection; B connects later and does not. B's
    // connection goes idle and closes after A's would have, had A not kept it.
    let (a, a_addr) = start(short(config()), Arc::new(NoPieces), quic()).await;
    a.dial(tp, vec![t_addr.clone()]).await.unwrap();
    a.keep_connected(tp, true).await.unwrap();
    a.announce(tp, vec![ann(F, true)], vec![a_addr])
        .await
        .unwrap();
    let (b, _) = start(short(config()), Arc::new(NoPieces), quic()).await;
    let mut b_events = b.subscribe();
    b.dial(tp, vec![t_addr]).await.unwrap();
    b.announce(tp, vec![ann(G, true)], vec![]).await.unwrap();

    wait_event(&mut events, disconnected(b.peer_id())).await;
    // Both ends must have seen the close before B asks again, or B's request could go out
    // on the connection that is being torn down.
    wait_event(&mut b_events, disconnected(tp)).await;
    assert!(t.connected_peers().await.unwrap().contains(&a.peer_id()));
    let f = b.who_has(tp, F).await.unwrap();
    assert_eq!(f.len(), 1, "A is still listed");
    assert_eq!(f[0].peer_id, a.peer_id());
    // B's reconnect to ask was a new connection; what it announced before was forgotten.
    assert!(a.who_has(tp, G).await.unwrap().is_empty());
}
