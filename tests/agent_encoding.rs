//! The agent's choice of encoding end to end: real `tailcache serve` (zstd, with an xz archive
//! file per NAR, P2P on) and a real `tailcache agent` on loopback, judged by stock Nix with
//! `require-sigs` and only the server's key trusted. Pinned to the xz archive file, and to
//! the uncompressed NAR, the agent serves narinfos whose `URL`, `Compression`, `FileHash` and
//! `FileSize` name that file while every other line is the server's byte for byte, and Nix
//! substitutes a closure through it (fetching exactly those files); Nix still refuses a
//! tampered NAR: an archive file altered on the server is refused by the agent's
//! verification, a store path altered behind the server's database by Nix's NAR hash check.
//! With `auto`, nothing changes before the agent has measured its link, and afterwards each
//! narinfo names the file `choose` picks from the measurements the agent publishes; a
//! restarted agent starts from the goodput it measured before.

mod common;

use std::time::{Duration, Instant};

use common::agent::{AgentBuilder, TestAgent};
use common::cache::tamper_store_path;
use common::http;
use common::nix::{
    Fetch, assert_client_matches, assert_success, client_store, hash_part, is_valid, stderr_of,
};
use common::p2p_files::{advertised, nar_files, wait_listed};
use common::{KeyPair, NarInfo, TestCache, TestStore};
use tailcache_agent::choose::{DecodeSpeeds, Encoding, Measured, choose};
use tailcache_agent::measure::{MEASUREMENTS_FILE, Remembered};
use tailcache_p2p::files::{NarFile, NarFiles};
use tailcache_store::Compression;

/// Generous bound for background work on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(300);

/// The narinfo lines that describe the file, outside the signed fingerprint.
const FILE_KEYS: [&str; 4] = ["URL: ", "Compression: ", "FileHash: ", "FileSize: "];

struct Setup {
    store: TestStore,
    key: KeyPair,
    server: TestCache,
    paths: Vec<String>,
}

impl Setup {
    /// A server of `store` serving zstd, P2P on, `cache_extra` in `[cache]`; every path of
    /// the closure compressed.
    fn start(store: TestStore, cache_extra: &str) -> Setup {
        let key = store
            .nix()
            .generate_key(&store.scratch("keys"), "itest-encoding-1");
        let server = TestCache::builder()
            .store(&store)
            .secret_key(&key.secret)
            .compression("zstd")
            .cache_extra(cache_extra)
            .p2p()
            .start();
        let paths: Vec<String> = store.closure().iter().map(|p| p.to_string()).collect();
        server.wait_compressed(&refs(&paths), "zstd");
        Setup {
            store,
            key,
            server,
            paths,
        }
    }

    /// The small closure with its xz archive files made.
    fn with_archive() -> Setup {
        let s = Setup::start(TestStore::build_small(), "archive_compression = \"xz\"");
        wait_listed(&s.server, &s.paths(), Compression::Xz);
        s
    }

    fn agent(&self, encoding: &str) -> TestAgent {
        AgentBuilder::new(&self.server, &self.key.public)
            .encoding(encoding)
            .start()
    }

    fn paths(&self) -> Vec<&str> {
        refs(&self.paths)
    }

    /// `nix copy` of `paths` from `agent` into a fresh client store.
    fn copy(
        &self,
        agent: &TestAgent,
        name: &str,
        paths: &[&str],
    ) -> (String, std::process::Output) {
        let client = client_store(&self.store.scratch("clients"), name);
        let out = Fetch::Copy.run(
            self.store.nix(),
            agent.url(),
            &client,
            &self.key.public,
            paths,
        );
        (client, out)
    }
}

fn refs(paths: &[String]) -> Vec<&str> {
    paths.iter().map(String::as_str).collect()
}

/// The narinfo text of `path` from `base_url` (the server or an agent).
fn narinfo_text(base_url: &str, path: &str) -> String {
    let r = http::get(base_url, &format!("/{}.narinfo", hash_part(path)));
    assert_eq!(
        r.status,
        200,
        "narinfo of {path} from {base_url}: {}",
        r.text()
    );
    r.text()
}

/// Every line but the four file lines, in order.
fn unsigned_lines_removed(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !FILE_KEYS.iter().any(|k| l.starts_with(k)))
        .collect()
}

/// The agent's narinfo names `file`; every other line (the signed ones, `Sig`, `Deriver`,
/// `CA`) is the server's, byte for byte and in the same order.
fn assert_advertises(server_text: &str, agent_text: &str, file: &NarFile) {
    assert_eq!(
        unsigned_lines_removed(agent_text),
        unsigned_lines_removed(server_text),
        "agent:\n{agent_text}\nserver:\n{server_text}"
    );
    for key in [
        "StorePath: ",
        "NarHash: ",
        "NarSize: ",
        "References: ",
        "Sig: ",
    ] {
        assert!(agent_text.contains(&format!("\n{key}")) || agent_text.starts_with(key));
    }
    let info = NarInfo::parse(agent_text).unwrap();
    assert_eq!(advertised(&info), *file, "agent:\n{agent_text}");
}

/// The agent's narinfos of every path name the file in `compression` from the server's list
/// (HEAD answered as GET); returns the files.
fn assert_all_advertise(s: &Setup, agent: &TestAgent, compression: Compression) -> Vec<NarFile> {
    let mut files = Vec::new();
    for path in s.paths() {
        let file = nar_files(&s.server, path).get(compression).unwrap().clone();
        let from_agent = narinfo_text(agent.url(), path);
        assert_advertises(&narinfo_text(s.server.url(), path), &from_agent, &file);
        let head = http::head(agent.url(), &format!("/{}.narinfo", hash_part(path)));
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("content-length"),
            Some(from_agent.len().to_string().as_str()),
            "HEAD of {path}"
        );
        files.push(file);
    }
    files
}

#[test]
fn nix_substitutes_a_closure_through_the_agent_from_the_xz_archive_files() {
    let s = Setup::with_archive();
    let agent = s.agent("xz");
    let files = assert_all_advertise(&s, &agent, Compression::Xz);
    // The narinfo the server serves still names its primary file.
    for path in s.paths() {
        assert_eq!(s.server.narinfo(path).get("Compression"), Some("zstd"));
    }
    let (client, out) = s.copy(&agent, "xz", &s.paths());
    assert_success("nix copy --from the agent (xz)", &out);
    assert_client_matches(&s.store, &client, &s.paths());
    // Nix fetched exactly the xz files, through the agent's verified piecewise fetch.
    let xz_bytes: u64 = files.iter().map(|f| f.file_size).sum();
    assert_eq!(agent.metric("server_bytes_total"), xz_bytes as f64);
    assert_eq!(agent.metric("verification_failures_total"), 0.0);
    assert!(
        agent.metric_with("narinfo_rewrites_total", "compression=\"xz\"") >= files.len() as f64
    );
    assert_eq!(agent.metric("file_lists_failed_total"), 0.0);
    for f in &files {
        let kept = agent.cached_file(&f.file_hash.to_base16());
        assert!(
            kept.is_file(),
            "{} was not fetched piecewise and kept",
            f.url
        );
    }
}

#[test]
fn nix_substitutes_a_closure_through_the_agent_from_the_uncompressed_nars() {
    let s = Setup::with_archive();
    let agent = s.agent("none");
    let files = assert_all_advertise(&s, &agent, Compression::None);
    for (path, f) in s.paths().iter().zip(&files) {
        let info = s.store.info(path);
        assert_eq!(f.file_size, info.nar_size, "{path}");
    }
    let (client, out) = s.copy(&agent, "none", &s.paths());
    assert_success("nix copy --from the agent (none)", &out);
    assert_client_matches(&s.store, &client, &s.paths());
    let nar_bytes: u64 = files.iter().map(|f| f.file_size).sum();
    assert_eq!(agent.metric("server_bytes_total"), nar_bytes as f64);
    assert!(
        agent.metric_with("narinfo_rewrites_total", "compression=\"none\"") >= files.len() as f64
    );
}

#[test]
fn an_archive_file_altered_on_the_server_is_refused_by_the_agent_and_nix_fails() {
    let s = Setup::with_archive();
    let leaf = s.store.path("leaf").to_string();
    let xz = nar_files(&s.server, &leaf)
        .get(Compression::Xz)
        .unwrap()
        .clone();
    // Altered in place, same size: the server serves it as it is now.
    let on_disk = s.server.nar_file_path(&xz.url);
    let mut data = std::fs::read(&on_disk).unwrap();
    assert_eq!(data.len() as u64, xz.file_size);
    let middle = data.len() / 2;
    data[middle] ^= 0x55;
    std::fs::write(&on_disk, &data).unwrap();

    let agent = s.agent("xz");
    let (client, out) = s.copy(&agent, "tampered-xz", &[&leaf]);
    assert!(
        !out.status.success(),
        "nix copy accepted an altered archive file:\n{}",
        stderr_of(&out)
    );
    assert!(!is_valid(s.store.nix(), &client, &leaf));
    assert!(agent.metric("verification_failures_total") >= 1.0);
    assert!(
        !agent.cached_file(&xz.file_hash.to_base16()).exists(),
        "the agent kept the altered file"
    );
}

#[test]
fn a_store_path_altered_behind_the_servers_database_is_refused_by_nix_through_the_agent() {
    let s = Setup::with_archive();
    let leaf = s.store.path("leaf").to_string();
    tamper_store_path(&s.store, &leaf, b"leaf-content");
    let agent = s.agent("none");
    let file = nar_files(&s.server, &leaf)
        .get(Compression::None)
        .unwrap()
        .clone();
    assert_advertises(
        &narinfo_text(s.server.url(), &leaf),
        &narinfo_text(agent.url(), &leaf),
        &file,
    );
    let (client, out) = s.copy(&agent, "tampered-none", &[&leaf]);
    assert!(!out.status.success(), "nix copy accepted a tampered NAR");
    let err = stderr_of(&out);
    assert!(
        err.contains("hash mismatch"),
        "nix copy failed for another reason:\n{err}"
    );
    assert!(!is_valid(s.store.nix(), &client, &leaf));
}

/// What the agent publishes of its measurements, as `choose` takes them.
fn measured(agent: &TestAgent) -> Measured {
    let positive = |v: f64| (v > 0.0).then_some(v);
    Measured {
        goodput: positive(agent.metric_with("goodput_bytes_per_second", "route=\"pieces\"")),
        uncompressed_goodput: positive(
            agent.metric_with("goodput_bytes_per_second", "route=\"uncompressed\""),
        ),
        decode: DecodeSpeeds {
            zstd: positive(agent.metric_with("decode_bytes_per_second", "compression=\"zstd\"")),
            xz: positive(agent.metric_with("decode_bytes_per_second", "compression=\"xz\"")),
        },
    }
}

/// Waits for the agent's decoding speeds (it calibrates in the background).
fn wait_calibrated(agent: &TestAgent) {
    let deadline = Instant::now() + DEADLINE;
    while measured(agent).decode.xz.is_none() || measured(agent).decode.zstd.is_none() {
        assert!(
            Instant::now() < deadline,
            "decoding speeds never measured:\n{}",
            agent.proc.stderr()
        );
        // Polling the agent's real metrics.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fetches the big path's NAR file through the agent: a download to measure.
fn fetch_big(s: &Setup, agent: &TestAgent) {
    let big = s.store.path("big").to_string();
    let url = s.server.narinfo(&big).get("URL").unwrap().to_string();
    let r = http::get(agent.url(), &format!("/{url}"));
    assert_eq!(r.status, 200);
}

/// Checks that each narinfo the agent serves names what `choose` picks from `m`; returns
/// how many it rewrote.
fn assert_narinfos_follow(s: &Setup, agent: &TestAgent, m: &Measured) -> usize {
    let mut rewrites = 0;
    for path in s.paths() {
        let files: NarFiles = nar_files(&s.server, path);
        let server_text = narinfo_text(s.server.url(), path);
        let agent_text = narinfo_text(agent.url(), path);
        match choose(Encoding::Auto, &files, Compression::Zstd, m) {
            None => assert_eq!(agent_text, server_text, "{path} with {m:?}"),
            Some(file) => {
                assert_advertises(&server_text, &agent_text, file);
                rewrites += 1;
            }
        }
    }
    eprintln!(
        "measured {m:?}: {rewrites} of {} narinfos rewritten",
        s.paths.len()
    );
    rewrites
}

#[test]
fn with_auto_the_narinfos_follow_the_measurements_and_nix_substitutes() {
    // The big (32 MiB) path gives the agent a download to measure.
    let s = Setup::start(TestStore::build(), "");
    let agent = s.agent("auto");
    // Nothing measured yet: every narinfo is the server's, byte for byte.
    assert_eq!(measured(&agent).goodput_of(Compression::None), None);
    for path in s.paths() {
        assert_eq!(
            narinfo_text(agent.url(), path),
            narinfo_text(s.server.url(), path)
        );
    }
    wait_calibrated(&agent);

    // One NAR file through the agent: now its link is measured.
    fetch_big(&s, &agent);
    let m = measured(&agent);
    assert!(m.goodput.is_some(), "{m:?}");

    // Each narinfo names what `choose` picks from exactly these measurements.
    let rewrites = assert_narinfos_follow(&s, &agent, &m);
    let counted: f64 = ["none", "xz"]
        .iter()
        .map(|c| agent.metric_with("narinfo_rewrites_total", &format!("compression=\"{c}\"")))
        .sum();
    assert_eq!(counted, rewrites as f64);

    let (client, out) = s.copy(&agent, "auto", &s.paths());
    assert_success("nix copy --from the agent (auto)", &out);
    assert_client_matches(&s.store, &client, &s.paths());
    eprintln!("after nix copy: {:?}", measured(&agent));
}

#[test]
fn a_restarted_agent_starts_from_what_it_measured_before() {
    let s = Setup::start(TestStore::build(), "");
    let cache = s.store.scratch("agent-cache");
    let file = cache.join(MEASUREMENTS_FILE);
    let start = || {
        AgentBuilder::new(&s.server, &s.key.public)
            .encoding("auto")
            // Nothing kept: the second agent downloads the big file again.
            .reseed(false)
            .cache_dir(&cache)
            .start()
    };
    let first = start();
    wait_calibrated(&first);
    fetch_big(&s, &first);
    let before = measured(&first);
    assert!(before.goodput.is_some(), "a goodput after a download");
    let want = Remembered {
        pieces: before.goodput,
        uncompressed: None,
        zstd_decode: before.decode.zstd,
        xz_decode: before.decode.xz,
    };
    // The agent writes the file when a measurement changes (in the background).
    let deadline = Instant::now() + DEADLINE;
    while Remembered::read(&file) != want {
        assert!(
            Instant::now() < deadline,
            "{} never held {want:?}: {:?}\n{}",
            file.display(),
            Remembered::read(&file),
            first.proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(first);

    // Restarted: the same measurements before any download or calibration (that waits
    // until the agent has been idle a minute), and the narinfos follow them at once.
    let second = start();
    let m = measured(&second);
    assert_eq!(m, before, "remembered");
    assert_narinfos_follow(&s, &second, &m);
    // Its first download replaces the remembered goodput (it is the link now).
    fetch_big(&s, &second);
    assert_ne!(measured(&second).goodput, before.goodput);
}
