//! The data protocol between two nodes on loopback: exact ranges over QUIC and over TCP,
//! refusals (not found, no free upload slot, metered mode), the upload rate cap, and the
//! piece maps peers answer (none from a metered node).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tailcache_p2p::Error;
use tailcache_p2p::node::{
    Client, DATA_PROTOCOL, NoPieces, NodeEvent, PieceSource, RangeReader, RateLimit, Refusal,
    UploadPolicy, read_data_request,
};
use tailcache_p2p::tracker::FileId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const F: FileId = FileId::from_bytes([7; 32]);
const MIB: usize = 1024 * 1024;

/// A seeder holding `bytes` as F, and a leecher connected to it.
async fn pair(
    seeder_cfg: tailcache_p2p::node::NodeConfig,
    source: Arc<dyn PieceSource>,
    listen: libp2p::Multiaddr,
) -> (Client, Client) {
    let (seeder, addr) = start(seeder_cfg, source, listen).await;
    let (leecher, _) = start(config(), Arc::new(NoPieces), quic()).await;
    leecher.dial(seeder.peer_id(), vec![addr]).await.unwrap();
    (seeder, leecher)
}

async fn fetch_exact(seeder: &Client, leecher: &Client, bytes: &[u8], offset: usize, len: usize) {
    let mut r = leecher
        .fetch_range(seeder.peer_id(), F, offset as u64, len as u64)
        .await
        .unwrap();
    let mut got = Vec::with_capacity(len);
    tokio::time::timeout(DEADLINE, r.read_to_end(&mut got))
        .await
        .expect("transfer within the deadline")
        .unwrap();
    assert_eq!(got.len(), len);
    assert!(got == bytes[offset..offset + len], "bytes differ");
}

async fn twenty_mib_range(listen: libp2p::Multiaddr) {
    let bytes = pseudo_random(20 * MIB + 4096, 42);
    let source = Arc::new(MemSource::with(F, bytes.clone()));
    let (seeder, leecher) = pair(config(), source, listen).await;
    let mut events = seeder.subscribe();
    fetch_exact(&seeder, &leecher, &bytes, 1234, 20 * MIB).await;
    let done = wait_event(&mut events, |e| {
        matches!(e, NodeEvent::UploadFinished { .. })
    })
    .await;
    assert_eq!(
        done,
        NodeEvent::UploadFinished {
            peer: leecher.peer_id(),
            bytes: 20 * MIB as u64,
            ok: true
        }
    );
    assert_eq!(seeder.stats().uploaded_bytes, 20 * MIB as u64);
    assert_eq!(leecher.stats().downloaded_bytes, 20 * MIB as u64);
    // A second range on the same connection, from the other end of the file.
    fetch_exact(&seeder, &leecher, &bytes, bytes.len() - 1000, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_an_exact_20_mib_range_over_quic() {
    twenty_mib_range(quic()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_an_exact_20_mib_range_over_tcp() {
    // The seeder listens on TCP only, so the connection is TCP + noise + yamux.
    twenty_mib_range(tcp()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_the_peer_does_not_hold_is_refused() {
    let source = Arc::new(MemSource::with(F, vec![1; 1000]));
    let (seeder, leecher) = pair(config(), source, quic()).await;
    for (file, offset, len) in [(FileId::from_bytes([9; 32]), 0, 10), (F, 990, 11)] {
        match leecher
            .fetch_range(seeder.peer_id(), file, offset, len)
            .await
        {
            Err(Error::Refused { peer, reason }) => {
                assert_eq!(peer, seeder.peer_id());
                assert_eq!(reason, Refusal::NotFound);
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    assert_eq!(seeder.stats().refused_not_found, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metered_node_never_uploads() {
    let source = Arc::new(MemSource::with(F, vec![1; 1000]));
    let mut cfg = config();
    cfg.upload = UploadPolicy::Disabled;
    let (seeder, leecher) = pair(cfg, source, quic()).await;
    match leecher.fetch_range(seeder.peer_id(), F, 0, 1000).await {
        Err(Error::Refused { reason, .. }) => assert_eq!(reason, Refusal::NoUpload),
        other => panic!("expected NoUpload, got {other:?}"),
    }
    let stats = seeder.stats();
    assert_eq!((stats.refused_no_upload, stats.uploaded_bytes), (1, 0));
}

/// Serves its first request from a pipe the test writes into (so the upload stays open as
/// long as the test wants), every later one from memory.
struct GatedSource {
    gate: Mutex<Option<tokio::io::DuplexStream>>,
    mem: MemSource,
}

impl PieceSource for GatedSource {
    fn open(&self, file: &FileId, offset: u64, len: u64) -> Option<RangeReader> {
        if let Some(pipe) = self.gate.lock().unwrap().take() {
            return Some(Box::new(pipe));
        }
        self.mem.open(file, offset, len)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_refuses_beyond_its_upload_slots() {
    let bytes = pseudo_random(MIB, 7);
    let (mut pipe_in, pipe_out) = tokio::io::duplex(64 * 1024);
    let source = Arc::new(GatedSource {
        gate: Mutex::new(Some(pipe_out)),
        mem: MemSource::with(F, bytes.clone()),
    });
    let mut cfg = config();
    cfg.upload = UploadPolicy::Enabled {
        slots: 1,
        rate: None,
    };
    let (seeder, leecher) = pair(cfg, source, quic()).await;
    let mut events = seeder.subscribe();

    // The first upload is accepted and holds the only slot until the pipe is fed.
    let mut first = leecher
        .fetch_range(seeder.peer_id(), F, 0, MIB as u64)
        .await
        .unwrap();
    match leecher.fetch_range(seeder.peer_id(), F, 0, 10).await {
        Err(Error::Refused { reason, .. }) => assert_eq!(reason, Refusal::Busy),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(seeder.stats().refused_busy, 1);

    let feed = tokio::spawn(async move {
        pipe_in.write_all(&bytes).await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, first.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    feed.await.unwrap();
    assert_eq!(got, pseudo_random(MIB, 7));
    wait_event(&mut events, |e| {
        matches!(e, NodeEvent::UploadFinished { ok: true, .. })
    })
    .await;

    // The slot is free again.
    let mut r = leecher
        .fetch_range(seeder.peer_id(), F, 100, 10)
        .await
        .unwrap();
    let mut small = Vec::new();
    r.read_to_end(&mut small).await.unwrap();
    assert_eq!(small, pseudo_random(MIB, 7)[100..110]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_is_an_error_not_a_short_read() {
    // The pipe delivers half the range and then ends.
    let (mut pipe_in, pipe_out) = tokio::io::duplex(64 * 1024);
    let source = Arc::new(GatedSource {
        gate: Mutex::new(Some(pipe_out)),
        mem: MemSource::default(),
    });
    let (seeder, leecher) = pair(config(), source, quic()).await;
    let mut r = leecher
        .fetch_range(seeder.peer_id(), F, 0, 2000)
        .await
        .unwrap();
    pipe_in.write_all(&[5; 1000]).await.unwrap();
    drop(pipe_in);
    let mut got = Vec::new();
    let res = tokio::time::timeout(DEADLINE, r.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(res.is_err(), "a truncated range must fail, got {res:?}");
    assert!(got.len() <= 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_respect_the_rate_cap() {
    let rate = RateLimit {
        bytes_per_sec: 4 * MIB as u64,
        burst: 256 * 1024,
    };
    let len = 3 * MIB;
    let bytes = pseudo_random(len, 9);
    let mut cfg = config();
    cfg.upload = UploadPolicy::Enabled {
        slots: 4,
        rate: Some(rate),
    };
    let (seeder, leecher) = pair(cfg, Arc::new(MemSource::with(F, bytes.clone())), quic()).await;

    // Two concurrent ranges share the one cap.
    let started = Instant::now();
    let half = len / 2;
    let (a, b) = tokio::join!(
        fetch_exact(&seeder, &leecher, &bytes, 0, half),
        fetch_exact(&seeder, &leecher, &bytes, half, len - half),
    );
    let ((), ()) = (a, b);
    let elapsed = started.elapsed();

    // The bucket's own accounting saw every byte.
    let (granted, throttled) = seeder.upload_accounting().await.unwrap();
    assert_eq!(granted, len as u64);
    assert!(throttled > Duration::ZERO);
    // Sanity check against the clock, one-sided: at most burst + rate·t bytes can have
    // left by time t, so the transfer cannot have been faster than this.
    let floor = (len as f64 - rate.burst as f64) / rate.bytes_per_sec as f64;
    assert!(
        elapsed.as_secs_f64() >= 0.95 * floor,
        "{len} bytes in {elapsed:?}, cap allows no less than {floor:.2} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_ranges_is_served_in_full() {
    // libp2p-stream hands a node's inbound streams over one at a time and drops a stream
    // that arrives while the previous one has not been taken yet; a burst of requests on one
    // connection makes that happen even on an idle machine. Every range must still arrive.
    let bytes = pseudo_random(MIB, 3);
    let mut cfg = config();
    cfg.upload = UploadPolicy::Enabled {
        slots: 64,
        rate: None,
    };
    let (seeder, leecher) = pair(cfg, Arc::new(MemSource::with(F, bytes.clone())), quic()).await;
    for round in 0..30 {
        let fetches =
            (0..32).map(|i| fetch_exact(&seeder, &leecher, &bytes, i * 4096 + round, 4096));
        futures::future::join_all(fetches).await;
    }
    assert_eq!(seeder.stats().uploads_done, 30 * 32);
}

/// A node that takes every data stream and drops it unread, as an overloaded node would.
fn dropping_peer(client: &Client) {
    let mut incoming = client.stream_control().accept(DATA_PROTOCOL).unwrap();
    tokio::spawn(async move {
        while let Some((_, stream)) = futures::StreamExt::next(&mut incoming).await {
            drop(stream);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_dropped_unread_are_a_transport_failure_not_a_broken_protocol() {
    let mut cfg = config();
    cfg.serve_data = false;
    let (dropper, addr) = start(cfg, Arc::new(NoPieces), quic()).await;
    dropping_peer(&dropper);
    let (leecher, _) = start(config(), Arc::new(NoPieces), quic()).await;
    leecher.dial(dropper.peer_id(), vec![addr]).await.unwrap();
    match leecher.fetch_range(dropper.peer_id(), F, 0, 10).await {
        Err(Error::StreamFailed { peer, reason }) => {
            assert_eq!(peer, dropper.peer_id());
            assert!(reason.contains("8 times"), "{reason}");
        }
        other => panic!("expected StreamFailed, got {other:?}"),
    }

    // A node that answers with something that is not a header broke the protocol.
    let mut cfg = config();
    cfg.serve_data = false;
    let (garbler, addr) = start(cfg, Arc::new(NoPieces), quic()).await;
    let mut incoming = garbler.stream_control().accept(DATA_PROTOCOL).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = futures::StreamExt::next(&mut incoming).await {
            let _ = read_data_request(&mut stream).await;
            let _ = futures::AsyncWriteExt::write_all(&mut stream, &[0, 0, 0, 2, 0xff, 0xff]).await;
            let _ = futures::AsyncWriteExt::close(&mut stream).await;
        }
    });
    leecher.dial(garbler.peer_id(), vec![addr]).await.unwrap();
    match leecher.fetch_range(garbler.peer_id(), F, 0, 10).await {
        Err(Error::Protocol { peer, .. }) => assert_eq!(peer, garbler.peer_id()),
        other => panic!("expected Protocol, got {other:?}"),
    }
}

/// Not a test: measures one 200 MiB transfer over loopback QUIC and TCP.
/// `cargo test --release -p tailcache-p2p --test node -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_200_mib_quic_vs_tcp() {
    let len = 200 * MIB;
    let bytes = pseudo_random(len, 1);
    for (name, listen) in [("quic", quic()), ("tcp", tcp())] {
        let source = Arc::new(MemSource::with(F, bytes.clone()));
        let (seeder, leecher) = pair(config(), source, listen).await;
        let started = Instant::now();
        let mut r = leecher
            .fetch_range(seeder.peer_id(), F, 0, len as u64)
            .await
            .unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        let mut mismatch = false;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            mismatch |= buf[..n] != bytes[total..total + n];
            total += n;
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(total, len);
        assert!(!mismatch);
        println!(
            "{name}: {} MiB in {secs:.2} s = {:.0} MiB/s",
            len / MIB,
            len as f64 / MIB as f64 / secs
        );
        seeder.shutdown().await.unwrap();
        leecher.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_nobody_fails_with_a_dial_error() {
    let (a, _) = start(config(), Arc::new(NoPieces), quic()).await;
    // A port just bound and released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let peer = libp2p::PeerId::random();
    let res = tokio::time::timeout(DEADLINE, a.dial(peer, vec![nowhere]))
        .await
        .unwrap();
    assert!(
        matches!(res, Err(Error::Dial { peer: p, .. }) if p == peer),
        "{res:?}"
    );
}

/// Holds pieces 0 and 2 of F (of 10) and is fetching piece 5 from the server.
struct PartialSource;

impl PieceSource for PartialSource {
    fn open(&self, _: &FileId, _: u64, _: u64) -> Option<RangeReader> {
        None
    }

    fn pieces(&self, file: &FileId) -> Option<tailcache_p2p::tracker::PieceMap> {
        use tailcache_p2p::tracker::{PieceMap, PieceSet};
        (*file == F).then(|| {
            let mut have = PieceSet::empty(10);
            have.insert(0);
            have.insert(2);
            let mut fetching = PieceSet::empty(10);
            fetching.insert(5);
            PieceMap {
                complete: false,
                have,
                fetching,
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_answer_which_pieces_they_hold_unless_metered() {
    let (seeder, leecher) = pair(config(), Arc::new(PartialSource), quic()).await;
    let mut events = seeder.subscribe();
    let map = leecher.pieces(seeder.peer_id(), F).await.unwrap().unwrap();
    assert!(!map.complete);
    let held: Vec<u64> = (0..10).filter(|i| map.have.contains(*i)).collect();
    assert_eq!(held, vec![0, 2]);
    let soon: Vec<u64> = (0..10).filter(|i| map.fetching.contains(*i)).collect();
    assert_eq!(soon, vec![5]);
    // The holder learns that the asker is fetching F.
    let asked = wait_event(&mut events, |e| {
        matches!(e, NodeEvent::PieceMapAsked { .. })
    })
    .await;
    assert_eq!(
        asked,
        NodeEvent::PieceMapAsked {
            peer: leecher.peer_id(),
            file: F
        }
    );
    assert_eq!(
        leecher
            .pieces(seeder.peer_id(), FileId::from_bytes([8; 32]))
            .await
            .unwrap(),
        None
    );
    assert_eq!(seeder.pieces(leecher.peer_id(), F).await.unwrap(), None);

    let mut metered = config();
    metered.upload = UploadPolicy::Disabled;
    let (quiet, asker) = pair(metered, Arc::new(PartialSource), quic()).await;
    assert_eq!(asker.pieces(quiet.peer_id(), F).await.unwrap(), None);
}
