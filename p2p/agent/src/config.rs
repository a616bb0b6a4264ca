//! The agent's configuration: the `[agent]` section of a TOML file — the file format the
//! server reads too, so one file may configure both; the other sections are the server's
//! and are left to it — command-line overrides, and every default in one place. Values are
//! parsed when the file is loaded: a bad URL, multiaddr or key is an error at start-up that
//! names its key, and a misspelt key in `[agent]` is refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use tailcache_listener::ConnectionConfig;
use tailcache_p2p::libp2p::Multiaddr;
use tailcache_p2p::node::{PeerAddr, loopback_listen_addrs};
use tailcache_store::signing::PublicKey;

use crate::choose::Encoding;
use crate::error::{Error, Result};
use crate::http_client::ServerUrl;

/// Environment variable naming the config file when `--config` is not given (the server's
/// too: one file may hold both sections).
pub const ENV_CONFIG: &str = "TAILCACHE_CONFIG";

/// `tailcache agent`: a substituter on 127.0.0.1 in front of the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The cache server's URL (`http://host:5000`).
    #[serde(deserialize_with = "parse::server")]
    pub server: ServerUrl,
    /// The tracker's address, `<multiaddr>/p2p/<peerid>` (the server prints it). Unset:
    /// every byte comes from the server.
    #[serde(deserialize_with = "parse::tracker")]
    pub tracker: Option<PeerAddr>,
    /// Where the local substituter listens (loopback).
    pub bind: SocketAddr,
    /// Public keys (Nix format) allowed to sign P2P manifests: the server's.
    #[serde(deserialize_with = "parse::trusted_keys")]
    pub trusted_keys: Vec<PublicKey>,
    /// Keep fetched files and upload them to peers.
    pub reseed: bool,
    /// Download from peers but never upload.
    pub metered: bool,
    /// Fetched files, partial downloads and the agent's libp2p key.
    pub cache_dir: Option<PathBuf>,
    /// Upper bound of the completed files kept; least recently used go first.
    pub cache_max_bytes: u64,
    /// Files smaller than this come from the server alone.
    pub min_p2p_size: u64,
    /// Uploads served at once.
    pub upload_slots: usize,
    /// Upload rate cap in bytes per second (0: none).
    pub upload_rate: u64,
    /// libp2p multiaddrs to listen on.
    #[serde(deserialize_with = "parse::listen")]
    pub listen: Vec<Multiaddr>,
    /// Piece requests in flight to one peer at once.
    pub requests_per_peer: usize,
    /// Range requests in flight to the server at once (the scarce link).
    pub server_requests: usize,
    /// Which of a NAR's files the narinfos name: `auto` (the fastest on this link),
    /// `server` (the server's narinfo as it is), or one pinned: `none`, `zstd`, `xz`.
    pub encoding: Encoding,
    /// Connection limit and timeouts of the substituter's listener (`[agent.connections]`).
    #[serde(deserialize_with = "parse::connections")]
    pub connections: ConnectionConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            server: ServerUrl::LOCAL_DEFAULT
                .parse()
                .unwrap_or_else(|_| unreachable!()),
            tracker: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 5001)),
            trusted_keys: Vec::new(),
            reseed: false,
            metered: false,
            cache_dir: None,
            cache_max_bytes: 10 << 30,
            min_p2p_size: 1 << 20,
            upload_slots: 8,
            upload_rate: 0,
            listen: loopback_listen_addrs(),
            requests_per_peer: 4,
            server_requests: 2,
            encoding: Encoding::Auto,
            connections: ConnectionConfig::default(),
        }
    }
}

/// The file as the agent reads it: its own section; the server's sections are not its
/// business.
#[derive(Deserialize)]
struct File {
    #[serde(default)]
    agent: AgentConfig,
    #[serde(flatten)]
    _server: toml::Table,
}

/// Command-line overrides for `agent`; each wins over the file's `[agent]` section.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentOverrides {
    /// Config file (TOML); only its `[agent]` section is used.
    #[arg(long, env = ENV_CONFIG)]
    pub config: Option<PathBuf>,
    /// The cache server's URL.
    #[arg(long)]
    pub server: Option<ServerUrl>,
    /// The tracker, `<multiaddr>/p2p/<peer id>`.
    #[arg(long)]
    pub tracker: Option<PeerAddr>,
    /// Address of the local substituter.
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Public key allowed to sign P2P manifests (repeatable).
    #[arg(long = "trusted-key", value_parser = parse::public_key)]
    pub trusted_keys: Vec<PublicKey>,
    /// Directory for fetched files and the agent's libp2p key.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Keep fetched files and upload them to peers.
    #[arg(long)]
    pub reseed: bool,
    /// Never upload.
    #[arg(long)]
    pub metered: bool,
}

impl AgentConfig {
    /// The `[agent]` section of the file (if any) with overrides applied.
    pub fn load(o: &AgentOverrides) -> Result<Self> {
        let mut a = match &o.config {
            Some(path) => Self::from_file(path)?,
            None => AgentConfig::default(),
        };
        if let Some(v) = &o.server {
            a.server = v.clone();
        }
        if let Some(v) = &o.tracker {
            a.tracker = Some(v.clone());
        }
        if let Some(v) = o.bind {
            a.bind = v;
        }
        if !o.trusted_keys.is_empty() {
            a.trusted_keys = o.trusted_keys.clone();
        }
        if let Some(v) = &o.cache_dir {
            a.cache_dir = Some(v.clone());
        }
        a.reseed |= o.reseed;
        a.metered |= o.metered;
        Ok(a)
    }

    /// The `[agent]` section of a config file (defaults when it has none).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| Error::ConfigParse {
            path: path.to_owned(),
            source,
        })
    }

    /// The `[agent]` section of a config file's text.
    pub fn from_toml(text: &str) -> std::result::Result<Self, toml::de::Error> {
        toml::from_str::<File>(text).map(|f| f.agent)
    }

    /// `<cache>/tailcache-agent` by XDG rules, unless `cache_dir` names one.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(d) = &self.cache_dir {
            return d.clone();
        }
        let env_dir = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(d) = env_dir("XDG_CACHE_HOME") {
            return PathBuf::from(d).join("tailcache-agent");
        }
        if let Some(h) = env_dir("HOME") {
            return PathBuf::from(h).join(".cache/tailcache-agent");
        }
        PathBuf::from("tailcache-agent-cache")
    }
}

/// Parsers of the typed values, each naming its key in its error.
mod parse {
    use super::*;
    use serde::de::Error as _;

    fn string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
        String::deserialize(d)
    }

    pub fn server<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<ServerUrl, D::Error> {
        string(d)?
            .parse()
            .map_err(|e| D::Error::custom(format!("agent.server: {e}")))
    }

    pub fn tracker<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<PeerAddr>, D::Error> {
        string(d)?
            .parse()
            .map(Some)
            .map_err(|e| D::Error::custom(format!("agent.tracker: {e}")))
    }

    pub fn public_key(s: &str) -> std::result::Result<PublicKey, String> {
        PublicKey::parse(s).map_err(|e| format!("invalid public key {s:?}: {e}"))
    }

    /// A list of strings, each parsed by `parse`; an error names `key`.
    fn list<'de, D: Deserializer<'de>, T>(
        d: D,
        key: &str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> std::result::Result<Vec<T>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| parse(s).map_err(|e| D::Error::custom(format!("agent.{key}: {e}"))))
            .collect()
    }

    pub fn trusted_keys<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Vec<PublicKey>, D::Error> {
        list(d, "trusted_keys", public_key)
    }

    /// The listener's settings, refused (naming the table) when the listener could not
    /// serve with them.
    pub fn connections<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<ConnectionConfig, D::Error> {
        let c = ConnectionConfig::deserialize(d)?;
        c.validate()
            .map_err(|e| D::Error::custom(format!("agent.connections: {e}")))?;
        Ok(c)
    }

    pub fn listen<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Vec<Multiaddr>, D::Error> {
        list(d, "listen", |a| {
            a.parse()
                .map_err(|e| format!("invalid multiaddr {a:?}: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "tailcache-test-only-do-not-trust-1:huc2E40Qsk/7Q6Vkp15QU2Ru5HfDeT63lhu/JJeon34=";

    #[test]
    fn defaults_bind_loopback_and_upload_nothing() {
        let c = AgentConfig::default();
        assert!(c.bind.ip().is_loopback());
        assert!(!c.reseed && !c.metered);
        assert_eq!(c.server.to_string(), "http://127.0.0.1:5000");
        assert!(
            c.listen
                .iter()
                .all(|a| a.to_string().starts_with("/ip4/127.0.0.1/"))
        );
    }

    #[test]
    fn the_agent_section_parses_into_typed_values_and_the_rest_is_the_servers() {
        let peer = tailcache_p2p::libp2p::PeerId::random();
        let text = format!(
            "state_dir = \"/s\"\n[cache]\npriority = 10\n[agent]\nserver = \"http://h:5000\"\n\
             reseed = true\nupload_rate = 1000\ntracker = \"/ip4/10.0.0.1/tcp/5002/p2p/{peer}\"\n\
             trusted_keys = [\"{KEY}\"]\nlisten = [\"/ip4/10.0.0.2/tcp/0\"]\n"
        );
        let c = AgentConfig::from_toml(&text).unwrap();
        assert_eq!(c.server.to_string(), "http://h:5000");
        assert!(c.reseed);
        assert_eq!(c.upload_rate, 1000);
        assert_eq!(c.tracker.unwrap().peer, peer);
        assert_eq!(c.trusted_keys[0].to_nix_string(), KEY);
        assert_eq!(c.listen[0].to_string(), "/ip4/10.0.0.2/tcp/0");
        // No [agent] section: the defaults.
        let c = AgentConfig::from_toml("[cache]\npriority = 10\n").unwrap();
        assert_eq!(c.bind.port(), 5001);
        assert_eq!(c.encoding, Encoding::Auto);
        assert_eq!(c.connections.idle_timeout_secs, 60);
        assert_eq!(c.connections.max_connections, None);
        let c = AgentConfig::from_toml(
            "[agent]\nreseed = true\n[agent.connections]\nmax_connections = 9\n\
             idle_timeout_secs = 1\n",
        )
        .unwrap();
        assert_eq!(c.connections.max_connections, Some(9));
        assert_eq!(c.connections.idle_timeout_secs, 1);
        assert_eq!(c.connections.send_timeout_secs, 60);
        for (name, want) in [
            ("auto", Encoding::Auto),
            ("server", Encoding::Server),
            ("none", Encoding::None),
            ("zstd", Encoding::Zstd),
            ("xz", Encoding::Xz),
        ] {
            let c = AgentConfig::from_toml(&format!("[agent]\nencoding = \"{name}\"\n")).unwrap();
            assert_eq!(c.encoding, want);
        }
    }

    #[test]
    fn bad_values_are_refused_naming_their_key() {
        for (text, key) in [
            ("[agent]\nreseeed = true\n", "reseeed"),
            ("[agent]\nserver = \"https://h\"\n", "agent.server"),
            ("[agent]\nencoding = \"gzip\"\n", "encoding"),
            (
                "[agent.connections]\nidle_timeout_secs = 0\n",
                "agent.connections",
            ),
            ("[agent.connections]\nidle_timeout = 5\n", "idle_timeout"),
            ("[agent]\nserver = \"h:5000\"\n", "agent.server"),
            (
                "[agent]\ntracker = \"/ip4/1.2.3.4/tcp/1\"\n",
                "agent.tracker",
            ),
            ("[agent]\ntracker = \"nonsense\"\n", "agent.tracker"),
            (
                "[agent]\ntrusted_keys = [\"k:AAAA\"]\n",
                "agent.trusted_keys",
            ),
            (
                "[agent]\nlisten = [\"/ip4/1.2.3.4/tcpp/1\"]\n",
                "agent.listen",
            ),
        ] {
            let err = AgentConfig::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn overrides_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[agent]\nserver = \"http://a:1\"\nbind = \"127.0.0.1:7\"\n",
        )
        .unwrap();
        let o = AgentOverrides {
            config: Some(path.clone()),
            server: Some("http://b:2".parse().unwrap()),
            reseed: true,
            ..Default::default()
        };
        let c = AgentConfig::load(&o).unwrap();
        assert_eq!(c.server.to_string(), "http://b:2");
        assert_eq!(c.bind.port(), 7);
        assert!(c.reseed);
        std::fs::write(&path, "[agent]\nbind = 5\n").unwrap();
        let err = AgentConfig::load(&o).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
