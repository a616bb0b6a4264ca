//! The agent end to end: real `tailcache serve` (xz, P2P on) and real
//! `tailcache agent`s on loopback. A NAR fetched by agent A from the server is then fetched
//! by agent B mostly from A (B's byte counters), and stock Nix with `require-sigs` (only the
//! server's key trusted) substitutes it through B; lying peers — a real agent whose cached
//! file has flipped bytes, and peers that send a truncated range, an endless stream or
//! another file's bytes — are banned and no bad byte is accepted or kept; a seeder killed
//! mid-transfer does not stop the fetch; a manifest signed by a key the agent does not trust
//! is refused (server only); a metered agent downloads from peers but never uploads or
//! announces; the upload cap holds; a file evicted from the reseed cache is withdrawn; a
//! cached file that rotted on disk never reaches the client, is evicted and fetched again; a
//! kept file is checked (and served) without the server; a file's proof is asked for with
//! its narinfo, and the download that follows starts from it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent::{AgentBuilder, P2pFixture};
use common::http;
use common::nix::{Fetch, assert_client_matches, assert_success, client_store, hash_part};
use common::peer::{Lie, TestPeer};
use tailcache_store::Sha256Hash;

type Setup = P2pFixture;

fn setup() -> Setup {
    P2pFixture::start("itest-p2p-agent-1")
}

#[test]
fn second_agent_fetches_from_the_first_and_nix_substitutes_through_it() {
    let s = setup();
    let size = s.file_size();
    let a = s.agent().start();
    s.fetch_through(&a);
    assert_eq!(a.metric("peer_bytes_total"), 0.0);
    assert_eq!(a.metric("server_bytes_total"), size);
    s.assert_kept_intact(&a);

    let b = s.agent().start();
    // The narinfo is the server's, byte for byte; the priority is ahead of the server's.
    let hash = common::nix::hash_part(&s.big);
    let from_b = http::get(b.url(), &format!("/{hash}.narinfo"));
    let from_server = s.server.get(&format!("/{hash}.narinfo"));
    assert_eq!(from_b.status, 200);
    assert_eq!(from_b.body, from_server.body);
    assert_eq!(
        http::get(b.url(), "/0000000000000000000000000000000a.narinfo").status,
        404
    );
    let prio = |t: String| -> u32 {
        t.lines()
            .find_map(|l| l.strip_prefix("Priority: "))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        prio(http::get(b.url(), "/nix-cache-info").text()) + 10,
        prio(s.server.get("/nix-cache-info").text())
    );

    let clients = s.store.scratch("clients");
    let client = client_store(&clients, "via-b");
    let out = Fetch::Copy.run(s.store.nix(), b.url(), &client, &s.key.public, &[&s.big]);
    assert_success("nix copy --from the agent", &out);
    assert_client_matches(&s.store, &client, &[&s.big]);

    let peer = b.metric("peer_bytes_total");
    let server = b.metric("server_bytes_total");
    assert!(
        peer > server && peer + server >= size,
        "B got {peer} bytes from peers and {server} from the server"
    );
    assert!(a.metric("uploaded_bytes") >= peer);
    assert_eq!(b.metric("peer_bans_total"), 0.0);
    assert!(b.metric("peers_known") >= 1.0);
    s.assert_kept_intact(&b);
}

#[test]
fn a_lying_peer_is_banned_and_no_bad_byte_is_accepted() {
    let s = setup();
    let a = s.agent().start();
    s.fetch_through(&a);
    // A's kept file rots on disk: one flipped byte in every MiB.
    let path = a.cached_file(&s.file_hash().to_base16());
    let mut data = std::fs::read(&path).unwrap();
    for i in (1000..data.len()).step_by(1 << 20) {
        data[i] ^= 0x55;
    }
    std::fs::write(&path, &data).unwrap();

    let b = s.agent().start();
    s.fetch_through(&b);
    assert!(b.metric("verification_failures_total") >= 1.0);
    assert_eq!(b.metric("peer_bans_total"), 1.0);
    assert!(b.metric("server_bytes_total") > 0.0);
    s.assert_kept_intact(&b);
}

/// Flips one byte in the middle of a file of `agent`'s cache; returns the true bytes.
fn rot_in_the_middle(s: &Setup, agent: &common::agent::TestAgent) -> Vec<u8> {
    let path = agent.cached_file(&s.file_hash().to_base16());
    let truth = std::fs::read(&path).unwrap();
    let mut rotten = truth.clone();
    rotten[truth.len() / 2] ^= 0x55;
    std::fs::write(&path, &rotten).unwrap();
    truth
}

/// Polls (with a deadline) until `agent`'s cached copy is gone or intact again.
fn wait_evicted_or_intact(s: &Setup, agent: &common::agent::TestAgent, truth: &[u8]) {
    let path = agent.cached_file(&s.file_hash().to_base16());
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read(&path).is_ok_and(|b| b != truth) {
        assert!(
            Instant::now() < deadline,
            "the corrupt file was not evicted"
        );
        // Polling the agent's real cache directory.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_corrupted_cached_file_never_reaches_the_client_and_is_fetched_again() {
    let s = setup();
    let a = s.agent().start();
    s.fetch_through(&a);
    let truth = rot_in_the_middle(&s, &a);

    // An HTTP client gets only true bytes: the rotten copy is refused before the response
    // starts, evicted, and the file fetched again for this request.
    let r = http::get_partial(a.url(), &s.nar_target());
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length, Some(truth.len()));
    assert!(
        r.body == truth[..r.body.len()],
        "the agent sent bytes that are not the file"
    );
    assert_eq!(r.body.len(), truth.len(), "the response was cut short");
    assert_eq!(a.metric("corrupt_files_total"), 1.0);
    wait_evicted_or_intact(&s, &a, &truth);
    s.assert_kept_intact(&a);

    // Stock Nix (require-sigs, from the agent alone): the rotten copy never reaches it; the
    // install succeeds through the agent, which fetches the file again; so does the next.
    rot_in_the_middle(&s, &a);
    let clients = s.store.scratch("clients");
    let client = client_store(&clients, "via-a");
    let out = Fetch::Copy.run(s.store.nix(), a.url(), &client, &s.key.public, &[&s.big]);
    assert_success("nix copy --from the agent with a rotten cache", &out);
    assert_client_matches(&s.store, &client, &[&s.big]);
    assert_eq!(a.metric("corrupt_files_total"), 2.0);
    wait_evicted_or_intact(&s, &a, &truth);
    s.assert_kept_intact(&a);
    let again = client_store(&clients, "via-a-again");
    let out = Fetch::Copy.run(s.store.nix(), a.url(), &again, &s.key.public, &[&s.big]);
    assert_success("nix copy --from the agent after the eviction", &out);
    assert_client_matches(&s.store, &again, &[&s.big]);
    s.assert_kept_intact(&a);
    assert_eq!(a.metric("corrupt_files_total"), 2.0);
}

#[test]
fn a_kept_file_is_checked_against_its_kept_proof_even_while_the_server_is_down() {
    let mut s = setup();
    let a = s.agent().start();
    s.fetch_through(&a);
    s.server.kill9();
    // Checked against the manifest and outboard kept beside it: no server needed.
    s.fetch_through(&a);
    assert_eq!(a.metric("corrupt_files_total"), 0.0);
    // A rotten copy is refused even when it cannot be fetched again: no byte of it goes out.
    let truth = rot_in_the_middle(&s, &a);
    let r = http::get_partial(a.url(), &s.nar_target());
    assert_eq!(r.status, 502, "served {} bytes", r.body.len());
    assert!(r.body.len() < truth.len() / 2);
    assert_eq!(a.metric("corrupt_files_total"), 1.0);
    assert!(!a.cached_file(&s.file_hash().to_base16()).exists());
}

#[test]
fn a_seeder_killed_mid_transfer_does_not_stop_the_fetch() {
    let s = setup();
    // A uploads at 2 MiB/s: B's fetch from it takes ~16 s, long enough to kill A midway.
    let mut a = s.agent().upload_rate(2 << 20).start();
    s.fetch_through(&a);
    let b = s.agent().start();
    std::thread::scope(|scope| {
        let fetch = scope.spawn(|| s.fetch_through(&b));
        let deadline = Instant::now() + Duration::from_secs(60);
        while b.metric("peer_bytes_total") == 0.0 {
            assert!(Instant::now() < deadline, "B never got a piece from A");
            assert!(!fetch.is_finished(), "B finished without a byte from A");
            // Polling B's real counters.
            std::thread::sleep(Duration::from_millis(50));
        }
        a.proc.kill9();
        fetch.join().unwrap();
    });
    let peer = b.metric("peer_bytes_total");
    assert!(peer > 0.0 && peer < s.file_size(), "peer bytes {peer}");
    assert!(b.metric("server_bytes_total") > 0.0);
    s.assert_kept_intact(&b);
}

#[test]
fn a_manifest_signed_by_an_untrusted_key_is_refused() {
    let s = setup();
    let a = s.agent().start();
    s.fetch_through(&a);
    let other = s
        .store
        .nix()
        .generate_key(&s.store.scratch("other-keys"), "itest-p2p-agent-1");
    // Same key name, different key: still refused; every byte comes from the server.
    let c = AgentBuilder::new(&s.server, &other.public).start();
    let clients = s.store.scratch("clients");
    let client = client_store(&clients, "via-c");
    let out = Fetch::Copy.run(s.store.nix(), c.url(), &client, &s.key.public, &[&s.big]);
    assert_success("nix copy --from an agent with the wrong P2P key", &out);
    assert_client_matches(&s.store, &client, &[&s.big]);
    assert_eq!(c.metric("manifests_refused_total"), 1.0);
    assert_eq!(c.metric("peer_bytes_total"), 0.0);
    assert_eq!(c.metric("server_bytes_total"), s.file_size());
}

#[test]
fn peers_that_send_a_short_an_endless_or_another_files_stream_are_banned() {
    let s = setup();
    let truth: Arc<[u8]> = Arc::from(s.server.get(&s.nar_target()).body);
    assert!(Sha256Hash::digest(&truth) == s.file_hash());
    // Another file of the same size: the true one backwards.
    let other: Arc<[u8]> = truth.iter().rev().copied().collect();
    let lies = [
        ("truncated", Lie::Truncated),
        ("endless", Lie::Endless),
        ("wrong file", Lie::WrongFile(other)),
    ];
    for (what, lie) in lies {
        let liar = TestPeer::liar(&s.server, s.file_id(), truth.clone(), lie);
        let b = s.agent().start();
        s.fetch_through(&b);
        assert_eq!(
            b.metric("peer_bans_total"),
            1.0,
            "{what}: the liar was not banned"
        );
        assert_eq!(
            b.metric("peer_bytes_total"),
            0.0,
            "{what}: bytes from the liar kept"
        );
        assert_eq!(b.metric("server_bytes_total"), s.file_size(), "{what}");
        s.assert_kept_intact(&b);
        drop(liar);
    }
}

#[test]
fn a_metered_agent_downloads_from_peers_but_never_uploads_or_announces() {
    let s = setup();
    let observer = TestPeer::observer(&s.server);
    let a = s.agent().start();
    s.fetch_through(&a);
    assert_eq!(observer.who_has(s.file_id()).len(), 1, "A is listed");

    let m = s.agent().metered(true).start();
    s.fetch_through(&m);
    assert!(
        m.metric("peer_bytes_total") > 0.0,
        "metered still downloads from peers"
    );
    assert_eq!(
        observer.who_has(s.file_id()).len(),
        1,
        "only A is listed, never M"
    );

    let c = s.agent().start();
    s.fetch_through(&c);
    assert!(c.metric("peer_bytes_total") > 0.0);
    assert_eq!(
        m.metric("uploaded_bytes"),
        0.0,
        "the metered agent uploaded"
    );
    assert_eq!(c.metric("peer_bans_total"), 0.0);
}

#[test]
fn a_seeder_never_uploads_faster_than_its_cap() {
    let s = setup();
    let rate = 4u64 << 20;
    // The agent's token bucket holds one second of its rate (at least 1 MiB).
    let burst = rate.max(1 << 20) as f64;
    let a = s.agent().upload_rate(rate).start();
    s.fetch_through(&a);
    let b = s.agent().start();
    let started = Instant::now();
    s.fetch_through(&b);
    let elapsed = started.elapsed().as_secs_f64();
    let uploaded = a.metric("uploaded_bytes");
    assert!(uploaded >= b.metric("peer_bytes_total") && uploaded > 0.0);
    assert!(
        uploaded <= burst + rate as f64 * elapsed,
        "A uploaded {uploaded} bytes in {elapsed:.2} s with a cap of {rate} B/s"
    );
}

#[test]
fn a_file_evicted_from_the_reseed_cache_is_withdrawn_from_the_tracker() {
    let s = setup();
    let many = s.store.path("many").to_string();
    let many_info = s.server.wait_compressed(&[&many], "xz").remove(0);
    let many_target = format!("/{}", many_info.get("URL").unwrap());
    let many_id = Sha256Hash::parse(many_info.get("FileHash").unwrap())
        .unwrap()
        .into();
    let many_size: u64 = many_info.get("FileSize").unwrap().parse().unwrap();
    // Room for the big file, not for both.
    let a = s
        .agent()
        .cache_max_bytes(s.file_size() as u64 + many_size / 2)
        .start();
    let observer = TestPeer::observer(&s.server);
    s.fetch_through(&a);
    assert_eq!(observer.who_has(s.file_id()).len(), 1);
    let r = http::get(a.url(), &many_target);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, many_size);
    // The whole response arrives only once the file is kept, announced and what it pushed
    // out withdrawn.
    assert!(!a.cached_file(&s.file_hash().to_base16()).exists());
    assert_eq!(
        observer.who_has(s.file_id()),
        vec![],
        "the evicted file is still listed"
    );
    assert_eq!(observer.who_has(many_id).len(), 1);
}

#[test]
fn the_proof_is_asked_for_with_the_narinfo_and_the_download_starts_from_it() {
    let s = setup();
    let narinfo = format!("/{}.narinfo", hash_part(&s.big));
    // Narinfo, then NAR: the download takes the proof asked for with the narinfo.
    let a = s.agent().start();
    let info = http::get(a.url(), &narinfo);
    assert_eq!(info.status, 200);
    assert_eq!(info.text(), s.server.get(&narinfo).text());
    s.fetch_through(&a);
    assert_eq!(a.metric("proofs_prefetched_total"), 1.0);
    s.assert_kept_intact(&a);
    // The NAR alone: the proof is asked for by the download itself.
    let b = s.agent().start();
    s.fetch_through(&b);
    assert_eq!(b.metric("proofs_prefetched_total"), 0.0);
}
