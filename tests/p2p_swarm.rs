//! Swarming of partial files: agents that fetch the same NAR at the same
//! time (or one after another) announce it as partial at once, serve each other the pieces
//! they have verified, and pull disjoint pieces from the server — so the server sends each
//! byte about once however many agents fetch. The server sits behind a shaping proxy (a
//! real TCP relay with a shared byte budget, standing for the server's uplink) so that the
//! server is the scarce link, as in the benchmark; stock Nix with `require-sigs` still
//! substitutes through an agent that joins afterwards, and a metered agent in the swarm
//! never uploads. Through a slow uplink, the start of a piece from the server reaches the
//! client while the rest of it is still on the way.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::agent::{AgentBuilder, P2pFixture, TestAgent};
use common::http;
use common::nix::{Fetch, assert_client_matches, assert_success, client_store};
use tailcache_agent::fetch::STREAM_STEP;
use tailcache_p2p::manifest::DEFAULT_PIECE_SIZE;
use tailcache_p2p::node::{RateLimit, TokenBucket};

/// The shaped server uplink, bytes per second.
const UPLINK: f64 = 8.0 * 1024.0 * 1024.0;

/// A TCP relay on 127.0.0.1 in front of `upstream` whose server-to-client direction, over
/// all connections together, is held to `rate` bytes per second (a token bucket).
struct Shaper {
    url: String,
    /// Bytes relayed from the server to clients.
    egress: Arc<AtomicU64>,
}

fn shaper(upstream_url: &str, rate: f64) -> Shaper {
    let upstream = upstream_url
        .strip_prefix("http://")
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let egress = Arc::new(AtomicU64::new(0));
    let bucket = Arc::new(Mutex::new(TokenBucket::new(
        RateLimit {
            bytes_per_sec: rate as u64,
            burst: 64 * 1024,
        },
        tokio::time::Instant::now(),
    )));
    let counted = egress.clone();
    // The relay lives as long as the test process.
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
                let _ = s_out.shutdown(Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            let bucket = bucket.clone();
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let wait = bucket
                        .lock()
                        .unwrap()
                        .reserve(n as u64, tokio::time::Instant::now());
                    // Shaping (the link's rate), not synchronisation.
                    std::thread::sleep(wait);
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    counted.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = c_out.shutdown(Shutdown::Write);
            });
        }
    });
    Shaper { url, egress }
}

struct Setup {
    fx: P2pFixture,
    shaper: Shaper,
}

fn setup() -> Setup {
    let fx = P2pFixture::start("itest-p2p-swarm-1");
    let shaper = shaper(fx.server.url(), UPLINK);
    Setup { fx, shaper }
}

impl std::ops::Deref for Setup {
    type Target = P2pFixture;
    fn deref(&self) -> &P2pFixture {
        &self.fx
    }
}

impl Setup {
    /// An agent that reaches the server through the shaper (the tracker directly).
    fn agent(&self) -> TestAgent {
        AgentBuilder::new(&self.server, &self.key.public)
            .server_url(&self.shaper.url)
            .start()
    }

    /// Per agent (server bytes, peer bytes, uploaded), printed for the record.
    fn report(&self, label: &str, agents: &[TestAgent]) -> Vec<(f64, f64, f64)> {
        let size = self.file_size();
        let figures: Vec<(f64, f64, f64)> = agents
            .iter()
            .map(|a| {
                (
                    a.metric("server_bytes_total"),
                    a.metric("peer_bytes_total"),
                    a.metric("uploaded_bytes"),
                )
            })
            .collect();
        for (i, (s, p, u)) in figures.iter().enumerate() {
            eprintln!(
                "{label}: agent {i}: server {:.2} F, peers {:.2} F, uploaded {:.2} F",
                s / size,
                p / size,
                u / size
            );
        }
        eprintln!(
            "{label}: server egress through the shaper {:.2} F",
            self.shaper.egress.load(Ordering::Relaxed) as f64 / size
        );
        figures
    }
}

#[test]
fn agents_starting_together_share_the_servers_bytes_and_nix_substitutes_after() {
    let s = setup();
    let size = s.file_size();
    let agents: Vec<TestAgent> = (0..4).map(|_| s.agent()).collect();
    let start = Barrier::new(agents.len());
    std::thread::scope(|scope| {
        for a in &agents {
            let start = &start;
            let s = &s;
            scope.spawn(move || {
                start.wait();
                s.fetch_through(a);
            });
        }
    });
    let figures = s.report("together", &agents);
    let total_server: f64 = figures.iter().map(|f| f.0).sum();
    for (i, (server, peers, _)) in figures.iter().enumerate() {
        assert!(
            *server < 0.6 * size,
            "agent {i} took {server} of {size} bytes from the server"
        );
        assert!(*peers > 0.0, "agent {i} got nothing from peers");
        assert!(server + peers >= size);
    }
    assert!(
        total_server <= 1.5 * size,
        "the agents took {total_server} bytes from the server for a {size}-byte file"
    );
    let uploaded: f64 = figures.iter().map(|f| f.2).sum();
    let from_peers: f64 = figures.iter().map(|f| f.1).sum();
    assert!(
        uploaded >= from_peers,
        "uploaded {uploaded} < received {from_peers}"
    );
    for a in &agents {
        assert_eq!(a.metric("peer_bans_total"), 0.0);
        assert_eq!(a.metric("verification_failures_total"), 0.0);
        s.assert_kept_intact(a);
    }

    // A latecomer: stock Nix (require-sigs, only the server's key) through a fifth agent,
    // which finds the four as seeders.
    let late = s.agent();
    let clients = s.store.scratch("clients");
    let client = client_store(&clients, "via-late");
    let out = Fetch::Copy.run(s.store.nix(), late.url(), &client, &s.key.public, &[&s.big]);
    assert_success("nix copy --from the late agent", &out);
    assert_client_matches(&s.store, &client, &[&s.big]);
    let late_figures = s.report("late", std::slice::from_ref(&late));
    assert!(
        late_figures[0].1 >= 0.75 * size && late_figures[0].0 < 0.25 * size,
        "the latecomer took {} bytes from peers and {} from the server",
        late_figures[0].1,
        late_figures[0].0
    );
}

#[test]
fn agents_arriving_one_after_another_fetch_from_those_before_them() {
    let s = setup();
    let size = s.file_size();
    let agents: Vec<TestAgent> = (0..3).map(|_| s.agent()).collect();
    std::thread::scope(|scope| {
        let mut fetches = Vec::new();
        for (i, a) in agents.iter().enumerate() {
            if i > 0 {
                // The next one arrives once the one before holds a quarter of the file.
                let before = &agents[i - 1];
                let deadline = Instant::now() + Duration::from_secs(120);
                while before.metric("server_bytes_total") + before.metric("peer_bytes_total")
                    < size / 4.0
                {
                    assert!(
                        Instant::now() < deadline,
                        "agent {} made no progress",
                        i - 1
                    );
                    // Polling the agent's real counters.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let s = &s;
            fetches.push(scope.spawn(move || s.fetch_through(a)));
        }
        for f in fetches {
            f.join().unwrap();
        }
    });
    let figures = s.report("staggered", &agents);
    let total_server: f64 = figures.iter().map(|f| f.0).sum();
    assert!(
        total_server <= 1.5 * size,
        "the agents took {total_server} bytes from the server for a {size}-byte file"
    );
    for (i, (server, peers, _)) in figures.iter().enumerate().skip(1) {
        assert!(
            *server < 0.75 * size && *peers > 0.0,
            "agent {i}: {server} bytes from the server, {peers} from peers"
        );
    }
    for a in &agents {
        s.assert_kept_intact(a);
    }
}

#[test]
fn a_metered_agent_in_the_swarm_downloads_but_never_uploads() {
    let s = setup();
    let size = s.file_size();
    let sharing: Vec<TestAgent> = (0..2).map(|_| s.agent()).collect();
    let metered = AgentBuilder::new(&s.server, &s.key.public)
        .server_url(&s.shaper.url)
        .metered(true)
        .start();
    let start = Barrier::new(3);
    std::thread::scope(|scope| {
        for a in sharing.iter().chain(std::iter::once(&metered)) {
            let start = &start;
            let s = &s;
            scope.spawn(move || {
                start.wait();
                s.fetch_through(a);
            });
        }
    });
    let figures = s.report("metered", std::slice::from_ref(&metered));
    assert_eq!(figures[0].2, 0.0, "a metered agent uploaded");
    assert!(figures[0].0 + figures[0].1 >= size);
    // The others got nothing from it: what they did not fetch themselves came from each
    // other, and they were never told it holds anything.
    let theirs = s.report("sharing", &sharing);
    let uploaded: f64 = theirs.iter().map(|f| f.2).sum();
    let from_peers: f64 = theirs.iter().map(|f| f.1).sum::<f64>() + figures[0].1;
    assert!(
        uploaded >= from_peers,
        "uploaded {uploaded} < received {from_peers}"
    );
    for a in &sharing {
        s.assert_kept_intact(a);
    }
}

/// A piece from the server is verified and passed on as it arrives, not once whole: through
/// an uplink of 64 KiB/s, the client has the file's first two steps (checked against the
/// file) while less than one piece has left the server — the proof and the two pieces the
/// agent asks for at once included. Waiting for whole pieces, the client's first byte would
/// come only after a whole piece had.
#[test]
fn a_piece_from_the_server_reaches_the_client_as_it_arrives() {
    let fx = P2pFixture::start("itest-p2p-stream-1");
    let slow = shaper(fx.server.url(), 64.0 * 1024.0);
    let agent = AgentBuilder::new(&fx.server, &fx.key.public)
        .server_url(&slow.url)
        .start();
    let truth = http::get(fx.server.url(), &fx.nar_target()).body;
    let want = 2 * STREAM_STEP as usize;
    assert!(truth.len() > 2 * DEFAULT_PIECE_SIZE as usize);

    let mut conn = TcpStream::connect(http::host_port(agent.url())).unwrap();
    write!(
        conn,
        "GET {} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
        fx.nar_target()
    )
    .unwrap();
    let (mut got, mut buf) = (Vec::new(), vec![0u8; 16 * 1024]);
    let mut body_at = None;
    while body_at.is_none_or(|at| got.len() < at + want) {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the agent closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if body_at.is_none() {
            body_at = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
    }
    let egress = slow.egress.load(Ordering::Relaxed);
    let at = body_at.unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..at])
    );
    assert!(
        egress < u64::from(DEFAULT_PIECE_SIZE),
        "{egress} bytes had left the server before the client had {want}"
    );
    assert!(
        got[at..at + want] == truth[..want],
        "bytes that are not the file"
    );
    eprintln!("the client had {want} bytes when the server had sent {egress}");
}
