//! The agent end to end (issue 5, "Tests"): real `tailcache serve` (xz, P2P on) and real
//! `tailcache agent`s on loopback. A NAR fetched by agent A from the server is then fetched
//! by agent B mostly from A (B's byte counters), and stock Nix with `require-sigs` (only the
//! server's key trusted) substitutes it through B; a peer whose cached file is corrupted is
//! banned and no bad byte is accepted or kept; a seeder killed mid-transfer does not stop the
//! fetch; a manifest signed by a key the agent does not trust is refused (server only).

mod common;

use std::time::{Duration, Instant};

use common::agent::{AgentBuilder, TestAgent};
use common::nix::{assert_client_matches, assert_success, client_store, nix_copy_from};
use common::{KeyPair, NarInfo, TestCache, TestStore, http};
use tailcache_store::Sha256Hash;

struct Setup {
    store: TestStore,
    key: KeyPair,
    server: TestCache,
    /// The big (32 MiB random, so ~32 MiB of xz) path and its narinfo.
    big: String,
    info: NarInfo,
}

fn setup() -> Setup {
    let store = TestStore::build();
    let key = store
        .nix()
        .generate_key(&store.scratch("keys"), "itest-p2p-agent-1");
    let server = TestCache::builder()
        .store(&store)
        .secret_key(&key.secret)
        .compression("xz")
        .p2p()
        .start();
    let big = store.path("big").to_string();
    let info = server.wait_compressed(&[&big], "xz").remove(0);
    Setup {
        store,
        key,
        server,
        big,
        info,
    }
}

impl Setup {
    fn nar_target(&self) -> String {
        format!("/{}", self.info.get("URL").unwrap())
    }

    fn file_hash(&self) -> Sha256Hash {
        Sha256Hash::parse(self.info.get("FileHash").unwrap()).unwrap()
    }

    fn file_size(&self) -> f64 {
        self.info.get("FileSize").unwrap().parse().unwrap()
    }

    fn agent(&self) -> AgentBuilder {
        AgentBuilder::new(&self.server, &self.key.public)
    }

    /// GETs the NAR file through `agent` and checks every byte against the FileHash.
    fn fetch_through(&self, agent: &TestAgent) {
        let r = http::get(agent.url(), &self.nar_target());
        assert_eq!(r.status, 200, "agent stderr:\n{}", agent.proc.stderr());
        assert_eq!(r.body.len() as f64, self.file_size());
        assert!(
            Sha256Hash::digest(&r.body) == self.file_hash(),
            "the agent served bytes that are not the file"
        );
    }

    fn assert_kept_intact(&self, agent: &TestAgent) {
        let kept = std::fs::read(agent.cached_file(&self.file_hash().to_base16())).unwrap();
        assert!(
            Sha256Hash::digest(&kept) == self.file_hash(),
            "the agent kept a corrupted file"
        );
    }
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
    let out = nix_copy_from(s.store.nix(), b.url(), &client, &s.key.public, &[&s.big]);
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
    let out = nix_copy_from(s.store.nix(), c.url(), &client, &s.key.public, &[&s.big]);
    assert_success("nix copy --from an agent with the wrong P2P key", &out);
    assert_client_matches(&s.store, &client, &[&s.big]);
    assert_eq!(c.metric("manifests_refused_total"), 1.0);
    assert_eq!(c.metric("peer_bytes_total"), 0.0);
    assert_eq!(c.metric("server_bytes_total"), s.file_size());
}
