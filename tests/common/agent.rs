//! `TestAgent`: the real `tailcache agent` binary started on `127.0.0.1:0` (HTTP and libp2p)
//! in front of a `TestCache` with P2P enabled, with a generated `[agent]` config
//! (`encoding = "server"` unless asked otherwise) and its own cache directory; killed on drop
//! like the server. `P2pFixture`: a server with P2P on in front of a throwaway store, with
//! the big path compressed, for the agent tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use tailcache_p2p::FileId;
use tailcache_store::Sha256Hash;

use super::api::metric_in;
use super::cache::{Backend, TestCache, spawn_and_wait};
use super::{KeyPair, NarInfo, TestStore, http};

#[derive(Debug, Clone)]
pub struct AgentBuilder {
    server: String,
    tracker: Option<String>,
    trusted_keys: Vec<String>,
    reseed: bool,
    metered: bool,
    upload_rate: u64,
    cache_dir: Option<PathBuf>,
    cache_max_bytes: Option<u64>,
    encoding: String,
    connections: String,
}

/// A running agent: `TestCache`'s process handling, with the agent's URL as `url()`.
#[derive(Debug)]
pub struct TestAgent {
    pub proc: TestCache,
    pub cache_dir: PathBuf,
}

impl AgentBuilder {
    /// An agent of `server` that uses its tracker and trusts `trusted_key`.
    pub fn new(server: &TestCache, trusted_key: &str) -> Self {
        AgentBuilder {
            server: server.url().to_string(),
            tracker: Some(server.tracker_addr()),
            trusted_keys: vec![trusted_key.to_string()],
            reseed: true,
            metered: false,
            upload_rate: 0,
            cache_dir: None,
            cache_max_bytes: None,
            // The server's choice unless a test asks for another: the P2P tests judge how
            // the file the server names travels, which `auto` would change once it has
            // measured a fast loopback link.
            encoding: "server".into(),
            connections: String::new(),
        }
    }

    /// `[agent] encoding`: `auto`, `server`, `none`, `zstd` or `xz`.
    pub fn encoding(mut self, encoding: &str) -> Self {
        self.encoding = encoding.to_string();
        self
    }

    /// Keys of `[agent.connections]` (TOML lines): the substituter listener's limits.
    pub fn connections(mut self, toml: &str) -> Self {
        self.connections.push_str(toml);
        self.connections.push('\n');
        self
    }

    pub fn reseed(mut self, on: bool) -> Self {
        self.reseed = on;
        self
    }

    pub fn metered(mut self, on: bool) -> Self {
        self.metered = on;
        self
    }

    /// Upload cap in bytes per second.
    pub fn upload_rate(mut self, rate: u64) -> Self {
        self.upload_rate = rate;
        self
    }

    /// Bound on the reseed cache, in bytes.
    pub fn cache_max_bytes(mut self, max: u64) -> Self {
        self.cache_max_bytes = Some(max);
        self
    }

    pub fn cache_dir(mut self, dir: &Path) -> Self {
        self.cache_dir = Some(dir.to_path_buf());
        self
    }

    pub fn start(self) -> TestAgent {
        let dir = tempfile::Builder::new()
            .prefix("tc-agent.")
            .tempdir()
            .unwrap();
        let cache_dir = self
            .cache_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("cache"));
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut cfg = format!(
            "[agent]\nserver = {}\nbind = \"127.0.0.1:0\"\nreseed = {}\nmetered = {}\n\
             upload_rate = {}\ncache_dir = {}\nmin_p2p_size = 0\nencoding = {}\n\
             listen = [\"/ip4/127.0.0.1/tcp/0\", \"/ip4/127.0.0.1/udp/0/quic-v1\"]\n",
            q(&self.server),
            self.reseed,
            self.metered,
            self.upload_rate,
            q(cache_dir.to_str().unwrap()),
            q(&self.encoding),
        );
        let keys: Vec<String> = self.trusted_keys.iter().map(|k| q(k)).collect();
        cfg.push_str(&format!("trusted_keys = [{}]\n", keys.join(", ")));
        if let Some(max) = self.cache_max_bytes {
            cfg.push_str(&format!("cache_max_bytes = {max}\n"));
        }
        if let Some(t) = &self.tracker {
            cfg.push_str(&format!("tracker = {}\n", q(t)));
        }
        if !self.connections.is_empty() {
            cfg.push_str("\n[agent.connections]\n");
            cfg.push_str(&self.connections);
        }
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, cfg).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailcache"));
        cmd.arg("agent").arg("--config").arg(&config);
        cmd.env("NO_COLOR", "1");
        cmd.env("RUST_LOG", "info,tailcache_agent=debug");
        let proc = spawn_and_wait(cmd, dir, Backend::Tailcache, &["agent listening on "])
            .unwrap_or_else(|e| panic!("agent did not start: {e:#?}"));
        TestAgent { proc, cache_dir }
    }
}

impl TestAgent {
    pub fn url(&self) -> &str {
        self.proc.url()
    }

    /// The value of an agent metric (`tailcache_agent_<name>`; counters end in `_total`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        let full = format!("tailcache_agent_{name}");
        text.lines()
            .filter(|l| {
                l.strip_prefix(full.as_str())
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    /// The sum of the samples of the metric `name` (in full: `tailcache_http_…`) whose
    /// labels include all of `labels`.
    pub fn metric_labelled(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&self.metrics(), name, labels)
    }

    /// `GET /metrics` of the agent (Prometheus text).
    pub fn metrics(&self) -> String {
        let r = self.proc.get("/metrics");
        assert_eq!(r.status, 200, "agent /metrics");
        r.text()
    }

    /// The value of an agent metric with one label (`compression="xz"`).
    pub fn metric_with(&self, name: &str, label: &str) -> f64 {
        let prefix = format!("tailcache_agent_{name}{{{label}}} ");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}in the agent's metrics"))
    }

    /// Path of a completed file in the agent's cache, by file hash (base16).
    pub fn cached_file(&self, file_hash_hex: &str) -> PathBuf {
        self.cache_dir.join("files").join(file_hash_hex)
    }
}

impl AgentBuilder {
    /// Fetch from `url` (e.g. a shaping proxy in front of the server) instead of the server
    /// itself; the tracker stays the server's.
    pub fn server_url(mut self, url: &str) -> Self {
        self.server = url.to_string();
        self
    }
}

/// A `tailcache serve` (xz, P2P on) of a fresh `TestStore`, signing with a key made by Nix,
/// with the big (32 MiB random, so ~32 MiB of xz) path compressed and its narinfo.
pub struct P2pFixture {
    pub store: TestStore,
    pub key: KeyPair,
    pub server: TestCache,
    pub big: String,
    pub info: NarInfo,
}

impl P2pFixture {
    pub fn start(key_name: &str) -> Self {
        let store = TestStore::build();
        let key = store.nix().generate_key(&store.scratch("keys"), key_name);
        let server = TestCache::builder()
            .store(&store)
            .secret_key(&key.secret)
            .compression("xz")
            .p2p()
            .start();
        let big = store.path("big").to_string();
        let info = server.wait_compressed(&[&big], "xz").remove(0);
        P2pFixture {
            store,
            key,
            server,
            big,
            info,
        }
    }

    pub fn nar_target(&self) -> String {
        format!("/{}", self.info.get("URL").unwrap())
    }

    pub fn file_hash(&self) -> Sha256Hash {
        Sha256Hash::parse(self.info.get("FileHash").unwrap()).unwrap()
    }

    pub fn file_id(&self) -> FileId {
        self.file_hash().into()
    }

    pub fn file_size(&self) -> f64 {
        self.info.get("FileSize").unwrap().parse().unwrap()
    }

    /// An agent of this server trusting its key.
    pub fn agent(&self) -> AgentBuilder {
        AgentBuilder::new(&self.server, &self.key.public)
    }

    /// GETs the NAR file through `agent` and checks every byte against the FileHash.
    pub fn fetch_through(&self, agent: &TestAgent) {
        let r = http::get(agent.url(), &self.nar_target());
        assert_eq!(r.status, 200, "agent stderr:\n{}", agent.proc.stderr());
        assert_eq!(r.body.len() as f64, self.file_size());
        assert!(
            Sha256Hash::digest(&r.body) == self.file_hash(),
            "the agent served bytes that are not the file"
        );
    }

    /// The file `agent` kept for reseeding is the true one.
    pub fn assert_kept_intact(&self, agent: &TestAgent) {
        let kept = std::fs::read(agent.cached_file(&self.file_hash().to_base16())).unwrap();
        assert!(
            Sha256Hash::digest(&kept) == self.file_hash(),
            "the agent kept a corrupted file"
        );
    }
}
