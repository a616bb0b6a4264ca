//! `TestAgent`: the real `tailcache agent` binary started on `127.0.0.1:0` (HTTP and libp2p)
//! in front of a `TestCache` with P2P enabled, with a generated `[agent]` config and its own
//! cache directory; killed on drop like the server.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cache::{Backend, TestCache, spawn_and_wait};

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
        }
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
             upload_rate = {}\ncache_dir = {}\nmin_p2p_size = 0\n\
             listen = [\"/ip4/127.0.0.1/tcp/0\", \"/ip4/127.0.0.1/udp/0/quic-v1\"]\n",
            q(&self.server),
            self.reseed,
            self.metered,
            self.upload_rate,
            q(cache_dir.to_str().unwrap()),
        );
        let keys: Vec<String> = self.trusted_keys.iter().map(|k| q(k)).collect();
        cfg.push_str(&format!("trusted_keys = [{}]\n", keys.join(", ")));
        if let Some(max) = self.cache_max_bytes {
            cfg.push_str(&format!("cache_max_bytes = {max}\n"));
        }
        if let Some(t) = &self.tracker {
            cfg.push_str(&format!("tracker = {}\n", q(t)));
        }
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, cfg).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailcache"));
        cmd.arg("agent").arg("--config").arg(&config);
        cmd.env("NO_COLOR", "1");
        cmd.env("RUST_LOG", "info,tailcache::agent=debug");
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
        let r = self.proc.get("/metrics");
        assert_eq!(r.status, 200, "agent /metrics");
        let text = r.text();
        let full = format!("tailcache_agent_{name}");
        text.lines()
            .filter(|l| {
                l.strip_prefix(full.as_str())
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
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
