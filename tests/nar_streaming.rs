//! NAR downloads whose clients stop reading, against the real server binary: hundreds of
//! stalled readers of a 32 MiB NAR (dumped on the fly) and of a precompressed file hold
//! the server's memory and threads within configured bounds, a fresh 100 MiB download
//! still completes meanwhile, and the send timeout disconnects readers that stall.
//!
//! Figures (RSS, threads, download time) are printed (`--nocapture`); only the bounds the
//! configuration promises are asserted, never a speed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::host_port;
use common::proc::{proc_status, raise_own_nofile};
use common::{TestCache, TestStore};
use sha2::Digest as _;

const DEADLINE: Duration = Duration::from_secs(300);
/// What the server may use, all stalled readers included.
const MAX_RSS_KB: u64 = 128 * 1024;
/// `cache.read_threads` in these tests (the default).
const READ_THREADS: u64 = 16;

/// Sends `GET target` and never reads the answer.
fn stalled_reader(base_url: &str, target: &str) -> TcpStream {
    let addr = host_port(base_url);
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// The uncompressed, dumped-on-the-fly NAR URL of `store_path`, whatever the narinfo
/// currently advertises.
fn uncompressed_url(server: &TestCache, store_path: &str) -> (String, u64, String) {
    let info = server.narinfo(store_path);
    let nar_hash = info.get("NarHash").unwrap().to_string();
    let nix32 = nar_hash.strip_prefix("sha256:").unwrap();
    let size = info.get("NarSize").unwrap().parse().unwrap();
    let url = format!("/nar/{}-{nix32}.nar", common::nix::hash_part(store_path));
    (url, size, nar_hash)
}

/// How a download reads: as fast as it can, or pausing `pause` before each of its first
/// `pauses` reads (of at most 64 KiB).
#[derive(Debug, Clone, Copy)]
struct Pace {
    pause: Duration,
    pauses: u32,
}

const FAST: Pace = Pace {
    pause: Duration::ZERO,
    pauses: 0,
};

/// Downloads `target` completely at `pace`; returns the body's size (checked against its
/// Content-Length), its SHA-256 in nix32 and the time it took.
fn download(base_url: &str, target: &str, pace: Pace) -> (u64, String, Duration) {
    let start = Instant::now();
    let addr = host_port(base_url);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "GET {target}: no complete head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "GET {target}: {head}");
    let length: u64 = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("GET {target}: no Content-Length in {head}"));
    let mut hasher = sha2::Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for read in 0u32.. {
        let want = if read < pace.pauses {
            std::thread::sleep(pace.pause); // the slow client's pace
            64 << 10
        } else {
            buf.len()
        };
        let n = s
            .read(&mut buf[..want])
            .unwrap_or_else(|e| panic!("GET {target}: {e}"));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n as u64;
    }
    assert_eq!(
        got, length,
        "GET {target}: body shorter or longer than its Content-Length"
    );
    let digest: [u8; 32] = hasher.finalize().into();
    (
        got,
        tailcache_store::nixbase32::encode(&digest),
        start.elapsed(),
    )
}

/// Builds a store path of `bytes` random bytes into `store`'s store.
fn build_random_path(store: &TestStore, name: &str, bytes: u64) -> String {
    let dir = store.scratch(name);
    let expr = dir.join("random.nix");
    std::fs::write(
        &expr,
        format!(
            "{{ nonce }}: builtins.derivation {{ name = \"{name}\"; inherit nonce; \
             system = builtins.currentSystem; builder = \"/bin/sh\"; PATH = \"/usr/bin:/bin\"; \
             args = [ \"-c\" \"head -c {bytes} /dev/urandom > $out\" ]; }}\n"
        ),
    )
    .unwrap();
    let root = store.root();
    let out = store.nix().run(
        "nix-build",
        &[
            "--store",
            root.to_str().unwrap(),
            expr.to_str().unwrap(),
            "--no-out-link",
            "--argstr",
            "nonce",
            store.nonce(),
        ],
    );
    out.trim().to_string()
}

/// The `tailcache_cache_nar_bytes_total` samples summed: grows while any download moves.
fn nar_bytes(server: &TestCache) -> f64 {
    server.metric("tailcache_cache_nar_bytes_total", &[])
}

#[test]
fn hundreds_of_stalled_nar_readers_hold_memory_and_threads_bounded() {
    raise_own_nofile(4096);
    let store = TestStore::build();
    let big = store.path("big").to_string();
    let hundred = build_random_path(&store, "hundred-mib", 100 << 20);
    let server = TestCache::builder()
        .store(&store)
        .compression("zstd")
        // Long enough that no stalled reader is dropped while this test measures.
        .extra_toml("[cache.connections]\nsend_timeout_secs = 3600\n")
        .start();
    let pid = server.pid();
    let (nar_url, nar_size, _) = uncompressed_url(&server, &big);
    assert!(nar_size > 32 << 20, "{nar_size}");
    let compressed = server.wait_compressed(&[&big], "zstd");
    let zst_url = format!("/{}", compressed[0].get("URL").unwrap());
    let (hundred_url, hundred_size, hundred_hash) = uncompressed_url(&server, &hundred);
    let before = (proc_status(pid, "VmRSS"), proc_status(pid, "Threads"));

    let mut stalled: Vec<TcpStream> = (0..600)
        .map(|_| stalled_reader(server.url(), &nar_url))
        .collect();
    stalled.extend((0..200).map(|_| stalled_reader(server.url(), &zst_url)));
    // Wait until sending has stopped moving (every reader's client and kernel buffers
    // full), polling the server's byte counter once a second.
    let start = Instant::now();
    let mut last = -1.0;
    let mut peak = (0, 0);
    loop {
        let sent = nar_bytes(&server);
        peak = (
            peak.0.max(proc_status(pid, "VmRSS")),
            peak.1.max(proc_status(pid, "Threads")),
        );
        if sent == last {
            break;
        }
        last = sent;
        assert!(
            start.elapsed() < DEADLINE,
            "the stalled readers never settled"
        );
        std::thread::sleep(Duration::from_secs(1)); // polling the server's counter
    }
    println!(
        "settled after {:.1} s with {:.0} MiB sent",
        start.elapsed().as_secs_f64(),
        last / f64::from(1 << 20)
    );
    let (size, hash, took) = download(server.url(), &hundred_url, FAST);
    assert_eq!(size, hundred_size);
    assert_eq!(
        format!("sha256:{hash}"),
        hundred_hash,
        "the 100 MiB NAR is corrupt"
    );
    let during = (
        peak.0.max(proc_status(pid, "VmRSS")),
        peak.1.max(proc_status(pid, "Threads")),
    );
    drop(stalled);
    let gone = Instant::now();
    while server.metric("tailcache_http_connections", &[("listener", "cache")]) > 0.0 {
        assert!(gone.elapsed() < DEADLINE, "stalled readers never went away");
        std::thread::sleep(Duration::from_millis(100)); // polling the server's gauge
    }
    let after = (proc_status(pid, "VmRSS"), proc_status(pid, "Threads"));
    println!(
        "before: RSS {} kB, {} threads; 600 stalled readers of a {nar_size}-byte NAR (on the \
         fly) + 200 of its zstd file: peak RSS {} kB, {} threads; fresh {hundred_size}-byte \
         download meanwhile: {:.2} s; after they left: RSS {} kB, {} threads",
        before.0,
        before.1,
        during.0,
        during.1,
        took.as_secs_f64(),
        after.0,
        after.1
    );
    assert!(
        during.0 <= MAX_RSS_KB,
        "RSS {} kB with stalled readers",
        during.0
    );
    assert!(
        during.1 <= before.1 + READ_THREADS + 4,
        "{} threads with stalled readers ({} before)",
        during.1,
        before.1
    );
}

#[test]
fn readers_that_stall_past_the_send_timeout_are_disconnected() {
    let store = TestStore::build();
    let big = store.path("big").to_string();
    let server = TestCache::builder()
        .store(&store)
        .extra_toml("[cache.connections]\nsend_timeout_secs = 2\n")
        .start();
    let (nar_url, _, _) = uncompressed_url(&server, &big);
    let mut stalled: Vec<TcpStream> = (0..20)
        .map(|_| stalled_reader(server.url(), &nar_url))
        .collect();
    // A reader that pauses for less than the send timeout is never disconnected.
    let slow = std::thread::spawn({
        let base = server.url().to_string();
        let url = nar_url.clone();
        let pace = Pace {
            pause: Duration::from_secs(1),
            pauses: 5,
        };
        move || download(&base, &url, pace)
    });
    let start = Instant::now();
    let closed = || {
        server.metric(
            "tailcache_http_connections_closed_total",
            &[("listener", "cache"), ("reason", "send_timeout")],
        )
    };
    while closed() < 20.0 {
        assert!(start.elapsed() < DEADLINE, "{}", server.metrics());
        std::thread::sleep(Duration::from_millis(100)); // polling the server's counter
    }
    let took = start.elapsed();
    for s in &mut stalled {
        // Drains what the kernel buffered, then meets the end.
        assert!(
            common::http::wait_closed(s, DEADLINE),
            "a stalled reader is still connected"
        );
    }
    println!(
        "20 stalled readers disconnected {:.1} s after they stopped reading (send_timeout 2 s)",
        took.as_secs_f64()
    );
    let (_, size, hash) = uncompressed_url(&server, &big);
    let (got, got_hash, _) = slow.join().unwrap();
    assert_eq!((got, format!("sha256:{got_hash}")), (size, hash));
    assert_eq!(closed(), 20.0, "only the stalled readers are disconnected");
}
