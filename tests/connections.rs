//! Both listeners of the server under hostile connection patterns, against the real server
//! binary: idle and slowloris connections are closed after their configured timeouts while a
//! client that keeps asking is not; 1100 idle connections with a descriptor limit of 1024
//! leave a fresh narinfo and `/health` answering; running out of descriptors is logged
//! once, counted, and does not stop the connections already open from being answered.
//! The agent's substituter listener (the real agent binary) closes idle and slowloris
//! connections after its `[agent.connections]` timeouts too, and counts them.
//!
//! Timings are printed (`--nocapture`) and bounded below by the configured timeouts (the
//! server cannot close earlier); above only by generous deadlines, as the machine may be
//! busy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::agent::AgentBuilder;
use common::http::{self, Conn, host_port};
use common::proc::{proc_status, raise_own_nofile};
use common::{TestCache, TestStore};

/// Far beyond any configured timeout here: "it never happened".
const DEADLINE: Duration = Duration::from_secs(60);

/// Short timeouts for both listeners.
const SHORT_TIMEOUTS: &str = "[cache.connections]\nheader_read_timeout_secs = 2\n\
    idle_timeout_secs = 3\n[api.connections]\nheader_read_timeout_secs = 2\nidle_timeout_secs = 3\n";

fn connect(base_url: &str) -> TcpStream {
    let addr = host_port(base_url);
    TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// What one watched connection saw: how long after its start the server closed it.
fn closed_after(start: Instant, closed: bool, what: &str) -> Duration {
    assert!(closed, "{what}: still open after {DEADLINE:?}");
    start.elapsed()
}

/// A client that sends a request head one byte per second and never finishes it.
fn slowloris(base_url: &str) -> Duration {
    let mut s = connect(base_url);
    let start = Instant::now();
    let head = b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut i = 0usize;
    loop {
        // The pace of the attack itself, not a synchronisation.
        let byte = head.get(i).copied().unwrap_or(b'a');
        i += 1;
        if s.write_all(&[byte]).is_err() {
            return start.elapsed();
        }
        if http::wait_closed(&mut s, Duration::from_secs(1)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "slowloris: still open after {DEADLINE:?}"
        );
    }
}

fn fmt(ds: &[Duration]) -> String {
    let min = ds.iter().min().copied().unwrap_or_default();
    let max = ds.iter().max().copied().unwrap_or_default();
    format!(
        "{} closed after {:.2}–{:.2} s",
        ds.len(),
        min.as_secs_f64(),
        max.as_secs_f64()
    )
}

#[test]
fn idle_and_slowloris_connections_are_closed_after_their_timeouts() {
    let server = TestCache::builder().extra_toml(SHORT_TIMEOUTS).start();
    let urls = [server.url().to_string(), server.api_url().to_string()];
    std::thread::scope(|scope| {
        let mut idle = Vec::new();
        let mut slow = Vec::new();
        for url in &urls {
            for _ in 0..20 {
                idle.push(scope.spawn(move || {
                    let mut s = connect(url);
                    let start = Instant::now();
                    let closed = http::wait_closed(&mut s, DEADLINE);
                    closed_after(start, closed, "idle connection")
                }));
                slow.push(scope.spawn(move || slowloris(url)));
            }
        }
        // A client that asks every second keeps its connection past the idle timeout, and
        // it is closed an idle timeout after its last answer.
        let targets = [(&urls[0], "/nix-cache-info"), (&urls[1], "/health")];
        let kept = targets
            .into_iter()
            .map(|(url, target)| {
                scope.spawn(move || {
                    let mut c = Conn::open(url);
                    for i in 0..5 {
                        if i > 0 {
                            std::thread::sleep(Duration::from_secs(1)); // the client's pace
                        }
                        let r = c.get(target).expect("a kept-alive connection answers");
                        assert_eq!(r.status, 200, "{target}: {}", r.text());
                    }
                    let start = Instant::now();
                    let closed = c.wait_closed(DEADLINE);
                    closed_after(start, closed, "kept-alive connection")
                })
            })
            .collect::<Vec<_>>();
        let idle: Vec<Duration> = idle.into_iter().map(|h| h.join().unwrap()).collect();
        let slow: Vec<Duration> = slow.into_iter().map(|h| h.join().unwrap()).collect();
        let kept: Vec<Duration> = kept.into_iter().map(|h| h.join().unwrap()).collect();
        println!("idle (idle_timeout 3 s): {}", fmt(&idle));
        println!("slowloris (header_read_timeout 2 s): {}", fmt(&slow));
        println!(
            "kept-alive, after its last answer (idle_timeout 3 s): {}",
            fmt(&kept)
        );
        // The server's clock starts at its accept, a hair before this test's may (and it
        // counts whole milliseconds), hence the 50 ms of slack below the timeouts.
        let at_least = |ds: &[Duration], secs: f64, what: &str| {
            for d in ds {
                assert!(
                    d.as_secs_f64() >= secs - 0.05,
                    "{what} closed after {d:?}, before {secs} s"
                );
            }
        };
        at_least(&idle, 3.0, "an idle connection");
        // The head deadline runs from the first byte, sent right after connecting.
        at_least(&slow, 2.0, "a slowloris connection");
        at_least(&kept, 3.0, "a kept-alive connection");
    });
    for listener in ["cache", "api"] {
        let closed = |reason| {
            server.metric(
                "tailcache_http_connections_closed_total",
                &[("listener", listener), ("reason", reason)],
            )
        };
        assert!(
            closed("idle_timeout") >= 21.0,
            "{listener}: {}",
            server.metrics()
        );
        assert!(
            closed("header_timeout") >= 20.0,
            "{listener}: {}",
            server.metrics()
        );
    }
}

/// A public key the agent is told to trust; nothing here is signed with it.
const SOME_KEY: &str =
    "tailcache-test-only-do-not-trust-1:huc2E40Qsk/7Q6Vkp15QU2Ru5HfDeT63lhu/JJeon34=";

#[test]
fn the_agents_listener_closes_idle_and_slowloris_connections() {
    let server = TestCache::builder().p2p().start();
    let agent = AgentBuilder::new(&server, SOME_KEY)
        .connections("idle_timeout_secs = 1\nheader_read_timeout_secs = 2")
        .start();
    let url = agent.url().to_string();
    let (idle, slow, kept) = std::thread::scope(|scope| {
        let idle = scope.spawn(|| {
            let mut s = connect(&url);
            let start = Instant::now();
            let closed = http::wait_closed(&mut s, DEADLINE);
            closed_after(start, closed, "idle connection to the agent")
        });
        let slow = scope.spawn(|| slowloris(&url));
        // Answered on one kept-alive connection, then closed an idle timeout later.
        let kept = scope.spawn(|| {
            let mut c = Conn::open(&url);
            for _ in 0..3 {
                let r = c
                    .get("/nix-cache-info")
                    .expect("a kept-alive connection answers");
                assert_eq!(r.status, 200, "{}", r.text());
            }
            let start = Instant::now();
            let closed = c.wait_closed(DEADLINE);
            closed_after(start, closed, "kept-alive connection to the agent")
        });
        (
            idle.join().unwrap(),
            slow.join().unwrap(),
            kept.join().unwrap(),
        )
    });
    println!(
        "agent: idle closed after {:.2} s (idle_timeout 1 s), slowloris after {:.2} s \
         (header_read_timeout 2 s), kept-alive {:.2} s after its last answer",
        idle.as_secs_f64(),
        slow.as_secs_f64(),
        kept.as_secs_f64()
    );
    // The same slack as above: the agent's clock starts at its accept.
    assert!(idle.as_secs_f64() >= 0.95, "idle closed after {idle:?}");
    assert!(
        slow.as_secs_f64() >= 1.95,
        "slowloris closed after {slow:?}"
    );
    assert!(
        kept.as_secs_f64() >= 0.95,
        "kept-alive closed after {kept:?}"
    );
    let closed = |reason| {
        agent.metric_labelled(
            "tailcache_http_connections_closed_total",
            &[("listener", "agent"), ("reason", reason)],
        )
    };
    assert!(closed("idle_timeout") >= 2.0, "{}", agent.metrics());
    assert!(closed("header_timeout") >= 1.0, "{}", agent.metrics());
    // The connection asking for the metrics is open, and counted.
    assert!(
        agent.metric_labelled("tailcache_http_connections", &[("listener", "agent")]) >= 1.0,
        "{}",
        agent.metrics()
    );
}

/// Sends one request on a fresh connection and reads the answer, with `DEADLINE`.
fn fresh_get(base_url: &str, target: &str) -> (http::Response, Duration) {
    let start = Instant::now();
    let mut s = connect(base_url);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("GET {target} on a fresh connection: {e}"));
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {target}: no answer ({text:?})"));
    let body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| raw[i + 4..].to_vec())
        .unwrap_or_default();
    let r = http::Response {
        status,
        headers: Vec::new(),
        body,
    };
    (r, start.elapsed())
}

#[test]
fn eleven_hundred_idle_connections_under_a_1024_descriptor_limit() {
    raise_own_nofile(4096);
    let store = TestStore::build_small();
    // Default connection settings: the limits are derived from the descriptor limit.
    let server = TestCache::builder().store(&store).nofile(1024).start();
    let narinfo = format!("/{}.narinfo", common::nix::hash_part(store.path("leaf")));
    let urls = [server.url(), server.api_url()];
    let mut idle: Vec<TcpStream> = (0..1100).map(|i| connect(urls[i % 2])).collect();
    // Let the server take them all in (each accept makes room by closing an older idle
    // one), then ask on fresh connections.
    let (r, narinfo_latency) = fresh_get(server.url(), &narinfo);
    assert_eq!(
        r.status,
        200,
        "narinfo: {}",
        String::from_utf8_lossy(&r.body)
    );
    let (h, health_latency) = fresh_get(server.api_url(), "/health");
    assert_eq!(
        h.status,
        200,
        "/health: {}",
        String::from_utf8_lossy(&h.body)
    );
    println!(
        "1100 idle connections, RLIMIT_NOFILE 1024: fresh narinfo {:.1} ms, fresh /health \
         {:.1} ms; server threads {}, RSS {} kB",
        narinfo_latency.as_secs_f64() * 1e3,
        health_latency.as_secs_f64() * 1e3,
        proc_status(server.pid(), "Threads"),
        proc_status(server.pid(), "VmRSS"),
    );
    let evicted: f64 = ["cache", "api"]
        .iter()
        .map(|l| {
            server.metric(
                "tailcache_http_connections_closed_total",
                &[("listener", l), ("reason", "evicted")],
            )
        })
        .sum();
    assert!(evicted > 0.0, "{}", server.metrics());
    let warnings = server.stderr().matches("its limit").count();
    assert!(
        (1..=2).contains(&warnings),
        "one warning per listener expected:\n{}",
        server.stderr()
    );
    // Nothing was run out of: no accept failed for lack of descriptors.
    let fd = server.metric(
        "tailcache_http_accept_errors_total",
        &[("error", "fd_exhausted")],
    );
    assert_eq!(fd, 0.0, "{}", server.metrics());
    idle.clear();
}

#[test]
fn running_out_of_descriptors_is_logged_once_and_counted() {
    raise_own_nofile(4096);
    // A limit above what 256 descriptors allow: accepts fail with EMFILE.
    let server = TestCache::builder()
        .nofile(256)
        .extra_toml("[cache.connections]\nmax_connections = 2000\n")
        .start();
    assert!(
        server
            .stderr()
            .contains("more than the file descriptor limit")
    );
    let mut kept = Conn::open(server.api_url());
    assert_eq!(kept.get("/health").unwrap().status, 200);
    let start = Instant::now();
    let _flood: Vec<TcpStream> = (0..400).map(|_| connect(server.url())).collect();
    // Wait until the server has run out (it logs it).
    while !server.stderr().contains("cannot accept connections") {
        assert!(start.elapsed() < DEADLINE, "no EMFILE: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(50)); // polling the server's log
    }
    // The connection already open is still answered, many times over, while accepts fail.
    for _ in 0..20 {
        let r = kept.get("/health").expect("the open connection answers");
        assert_eq!(r.status, 200);
    }
    let r = kept.get("/metrics").unwrap();
    let failed: f64 = r
        .text()
        .lines()
        .filter(|l| {
            l.starts_with("tailcache_http_accept_errors_total")
                && l.contains("error=\"fd_exhausted\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(failed >= 1.0, "{}", r.text());
    // Backing off, not spinning: a busy loop would fail millions of accepts by now.
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        failed < 200.0 * (elapsed + 1.0),
        "{failed} failed accepts in {elapsed:.1} s"
    );
    let logged = server.stderr().matches("cannot accept connections").count();
    assert_eq!(logged, 1, "{}", server.stderr());
    println!(
        "400 connections with RLIMIT_NOFILE 256: {failed} accepts failed (EMFILE) in \
         {elapsed:.1} s, {logged} log line, the open connection answered throughout"
    );
}
