//! Server configuration: a TOML file (unknown keys are an error), command-line overrides, and
//! every default in one place. Nothing binds a non-loopback address unless configured to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
/// Each listener's `connections` table (`[cache.connections]`, `[api.connections]`).
pub use tailcache_listener::ConnectionConfig;

/// Environment variable naming the config file when `--config` is not given.
pub const ENV_CONFIG: &str = "TAILCACHE_CONFIG";
/// Environment variable overriding the state directory.
pub const ENV_STATE_DIR: &str = "TAILCACHE_STATE_DIR";
/// Set by systemd for units with `StateDirectory=`; used when nothing else names a state dir.
const ENV_SYSTEMD_STATE_DIR: &str = "STATE_DIRECTORY";

/// Compression applied to NARs in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Never compress: serve every NAR as dumped on the fly.
    None,
    /// xz: the smallest files, but slow to make (minutes of every core per GB) and to
    /// decode (the client's CPU bounds a substitution on any fast link).
    Xz,
    /// zstd: compressed within seconds per GB and decoded at disk speed, somewhat larger
    /// than xz (the default).
    Zstd,
}

impl Compression {
    /// The narinfo's compression this setting produces.
    pub fn kind(self) -> tailcache_store::Compression {
        match self {
            Compression::None => tailcache_store::Compression::None,
            Compression::Xz => tailcache_store::Compression::Xz,
            Compression::Zstd => tailcache_store::Compression::Zstd,
        }
    }

    /// The setting that produces `kind`, if the server can.
    pub fn from_kind(kind: tailcache_store::Compression) -> Option<Self> {
        [Compression::None, Compression::Xz, Compression::Zstd]
            .into_iter()
            .find(|c| c.kind() == kind)
    }

    /// The narinfo `Compression:` value.
    pub fn narinfo_name(self) -> &'static str {
        self.kind().name()
    }

    /// File extension after `.nar` (empty for none).
    pub fn extension(self) -> &'static str {
        self.kind().extension()
    }

    /// The level used when `compression_level` is unset: for zstd the one that keeps a
    /// just-built closure servable compressed within seconds per GB on two cores (higher
    /// levels cost far more time than the bytes they save on any but a slow link); for xz
    /// its own default preset.
    pub fn default_level(self) -> u32 {
        match self {
            Compression::None => 0,
            Compression::Xz => 6,
            Compression::Zstd => ZSTD_DEFAULT_LEVEL,
        }
    }

    /// The level of an archive file when `archive_level` is unset: the smallest files
    /// within reason (xz's default preset; zstd's highest level without `--ultra` windows),
    /// since time is what a background file has.
    pub fn archive_level(self) -> u32 {
        match self {
            Compression::None => 0,
            Compression::Xz => 6,
            Compression::Zstd => 19,
        }
    }

    /// The highest level this compression takes.
    pub fn max_level(self) -> u32 {
        match self {
            Compression::None => u32::MAX,
            Compression::Xz => 9,
            Compression::Zstd => 19,
        }
    }

    /// Parses a narinfo `Compression:` value.
    pub fn from_narinfo_name(s: &str) -> Option<Self> {
        Self::from_kind(s.parse().ok()?)
    }
}

/// zstd's level when none is configured (see [`Compression::default_level`]).
pub const ZSTD_DEFAULT_LEVEL: u32 = 3;

/// The most primary compression jobs `compression_jobs = 0` runs at once, however many cores:
/// each holds an encoder and its buffers (a few MiB at the default zstd level), so a big
/// machine's server stays as small as a laptop's; more is a configuration's choice.
pub const MAX_DEFAULT_COMPRESSION_JOBS: usize = 4;

/// The most `compression_jobs` a configuration may ask for.
const MAX_COMPRESSION_JOBS: usize = 64;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the signing key and the compressed-NAR cache. Default: `$STATE_DIRECTORY`
    /// (systemd), else `$XDG_STATE_HOME/tailcache`, else `~/.local/state/tailcache`.
    pub state_dir: Option<PathBuf>,
    /// The binary cache listener.
    pub cache: CacheConfig,
    /// The build-API listener (trigger, status, logs, metrics, status page).
    pub api: ApiConfig,
    /// What a build runs.
    pub build: BuildConfig,
    /// The server's libp2p node: tracker and seed of every compressed NAR.
    pub p2p: P2pConfig,
    /// The `[agent]` section, when one file configures both programs: `tailcache agent`
    /// reads it (its own type, in `tailcache-agent`); the server leaves it alone.
    pub agent: toml::Table,
    /// Where a summary of each finished build is sent.
    pub notify: NotifyConfig,
}

/// Build notifications: one POST per finished build (off while `url` is unset).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Where to POST, e.g. an ntfy topic on the tailnet: `http://ntfy.tailnet:8080/builds`.
    pub url: Option<String>,
    /// `text`: the summary as the body, one line per host, with ntfy's `Title`, `Tags` and
    /// `Priority` headers; `json`: the summary as a JSON object.
    pub format: NotifyFormat,
    /// File holding a token sent as `Authorization: Bearer <token>`.
    pub token_file: Option<PathBuf>,
    /// Seconds one POST may take.
    pub timeout_secs: u64,
    /// Attempts per notification (the first and the retries, with doubling delays).
    pub attempts: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            url: None,
            format: NotifyFormat::Text,
            token_file: None,
            timeout_secs: 10,
            attempts: 4,
        }
    }
}

/// The body of a build notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    Text,
    Json,
}

/// The server's P2P node. Off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pConfig {
    /// Run the tracker/seed node.
    pub enable: bool,
    /// libp2p multiaddrs to listen on; loopback by default.
    pub listen: Vec<String>,
    /// The libp2p identity (protobuf-encoded keypair); default `<state_dir>/p2p-key`,
    /// generated with mode 0600 on first start.
    pub key_file: Option<PathBuf>,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            enable: false,
            listen: default_p2p_listen(),
            key_file: None,
        }
    }
}

fn default_p2p_listen() -> Vec<String> {
    tailcache_p2p::node::loopback_listen_addrs()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The build-API listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on; loopback by default.
    pub bind: SocketAddr,
    /// File holding a bearer token; when set, POST routes need `Authorization: Bearer <token>`.
    pub token_file: Option<PathBuf>,
    /// File holding the GitHub webhook secret; when set, `POST /build/webhook` accepts push
    /// events signed with it (`X-Hub-Signature-256`).
    pub webhook_secret_file: Option<PathBuf>,
    /// Connection limit and timeouts of this listener (`[api.connections]`).
    pub connections: ConnectionConfig,
    /// tailscaled's LocalAPI socket; when it answers, each caller of trigger and cancel is
    /// identified with `whois` (node, user, tags) and recorded as such.
    pub tailscale_socket: PathBuf,
    /// Who may trigger and cancel builds: `user:<login>`, `node:<name>`, `tag:<tag>`, and
    /// `local` (callers on this machine, e.g. the build timer). Empty: everyone who passes
    /// the token check. Needs the LocalAPI: without it nobody but `local` can be checked.
    pub allow: Vec<AllowEntry>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            token_file: None,
            webhook_secret_file: None,
            connections: ConnectionConfig::default(),
            tailscale_socket: PathBuf::from("/run/tailscale/tailscaled.sock"),
            allow: Vec::new(),
        }
    }
}

/// One entry of `[api] allow`, parsed from `user:…`, `node:…`, `tag:…` or `local`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AllowEntry {
    /// A tailnet user's login name (`alice@example.com`, `alice@github`).
    User(String),
    /// A node's short name, as `tailscale status` shows it.
    Node(String),
    /// An ACL tag, with its `tag:` prefix.
    Tag(String),
    /// A caller on a loopback address.
    Local,
}

impl TryFrom<String> for AllowEntry {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let entry = match s.split_once(':') {
            _ if s == "local" => AllowEntry::Local,
            Some(("user", v)) if !v.is_empty() => AllowEntry::User(v.to_owned()),
            Some(("node", v)) if !v.is_empty() => AllowEntry::Node(v.to_owned()),
            Some(("tag", v)) if !v.is_empty() => AllowEntry::Tag(s.clone()),
            _ => {
                return Err(format!(
                    "api.allow entry {s:?}: expected user:<login>, node:<name>, tag:<tag> or local"
                ));
            }
        };
        Ok(entry)
    }
}

/// What a build runs: the default pipeline (git fetch → `nix flake update` → `nix build`)
/// from `repository`, or the explicit `steps`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildConfig {
    /// Git URL or path of the configuration repository; unset (and no `steps`) means builds
    /// are not configured and triggers are refused.
    pub repository: Option<String>,
    /// Branch to build.
    pub branch: String,
    /// Where the checkout lives (default `<state_dir>/checkout`).
    pub checkout_dir: Option<PathBuf>,
    /// Flake attribute to build, e.g. `nixosConfigurations.desktop.config.system.build.toplevel`:
    /// a fleet of one target (left at its default when `targets` or `hosts` is set).
    pub attribute: String,
    /// The targets to build, from one commit and one lock file, in one `nix build`.
    pub targets: Vec<TargetConfig>,
    /// `"auto"`: every `nixosConfigurations.<name>` (its toplevel) and
    /// `homeConfigurations.<name>` (its activation package) of the flake.
    pub hosts: Option<HostsConfig>,
    /// Generations kept (and GC-rooted) per target.
    pub keep_generations: usize,
    /// A trigger for a newer commit while a build runs cancels it and builds the new one.
    pub supersede: bool,
    /// Nix's `builders` for the build step (`--option builders …`), e.g.
    /// `"ssh://builder aarch64-linux"`; on NixOS prefer `nix.buildMachines`.
    pub builders: Option<String>,
    /// Extra arguments for `nix flake update` and `nix build` (e.g. `--option …`).
    pub nix_args: Vec<String>,
    /// Time limit of one step, in seconds.
    pub step_timeout_secs: u64,
    /// Seconds between SIGTERM and SIGKILL when a step is cancelled or times out.
    pub kill_grace_secs: u64,
    /// Triggers during a build schedule exactly one follow-up build.
    pub coalesce: bool,
    /// Log lines kept in memory for `GET /build/logs`.
    pub log_lines: usize,
    /// Build log files kept on disk.
    pub log_files_kept: usize,
    /// Explicit steps; when present they replace the default pipeline.
    pub steps: Vec<StepConfig>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            repository: None,
            branch: "main".to_owned(),
            checkout_dir: None,
            attribute: DEFAULT_ATTRIBUTE.to_owned(),
            targets: Vec::new(),
            hosts: None,
            keep_generations: 3,
            supersede: false,
            builders: None,
            nix_args: Vec::new(),
            step_timeout_secs: 4 * 3600,
            kill_grace_secs: 10,
            coalesce: false,
            log_lines: 1000,
            log_files_kept: 20,
            steps: Vec::new(),
        }
    }
}

/// The attribute the one-target shorthand builds by default.
pub const DEFAULT_ATTRIBUTE: &str = "default";

/// One build target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The host's name (`laptop`, `alice@laptop`): letters, digits and `._@+-`.
    pub name: String,
    /// Flake output attribute, e.g. `nixosConfigurations.laptop.config.system.build.toplevel`.
    pub attribute: String,
    /// `nixos`, `home` or `package` (how a client activates it).
    pub kind: tailcache_wire::generation::TargetKind,
}

/// `hosts = "auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostsConfig {
    Auto,
}

/// One explicit build step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    pub name: String,
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Default: `build.step_timeout_secs`.
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    /// What to take from the step: nothing, the commit (`git rev-parse HEAD` in `cwd`), or
    /// the new store paths it prints.
    #[serde(default)]
    pub capture: CaptureConfig,
}

/// What a step's run yields besides its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureConfig {
    #[default]
    Nothing,
    Commit,
    OutPaths,
}

/// The binary cache listener and what it serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Address to listen on. Loopback by default; in production the tailnet address.
    pub bind: SocketAddr,
    /// The logical store directory that store paths name.
    pub store_dir: String,
    /// Physical root of the store: the store is at `<root><store_dir>` and its database at
    /// `<root>/nix/var/nix/db/db.sqlite` (`/` for the machine's own store).
    pub store_root: PathBuf,
    /// `Priority` in `nix-cache-info` (lower is preferred; cache.nixos.org uses 40).
    pub priority: u32,
    /// Background compression for NARs.
    pub compression: Compression,
    /// Compression level (xz 0–9, zstd 1–19); unset: the compression's default
    /// ([`Compression::default_level`]).
    pub compression_level: Option<u32>,
    /// A second, smaller file per NAR for slow links, made in the background after the
    /// `compression` file, on one thread at idle priority; the narinfo keeps naming the
    /// `compression` file, `GET /p2p/files/<hash>` lists both. `none` (the default): off.
    /// Must differ from `compression`.
    pub archive_compression: Compression,
    /// Level of the archive file (xz 0–9, zstd 1–19); unset: xz 6, zstd 19
    /// ([`Compression::archive_level`]).
    pub archive_level: Option<u32>,
    /// Threads for one compression job. xz: 0 is one per core. zstd: 0 and 1 are one
    /// thread; 2 or more start that many workers per job (faster, but their buffers stay
    /// in the allocator and raise the server's resident memory).
    pub compression_threads: u32,
    /// NARs compressed at once for their primary file, each by its own worker thread; 0:
    /// one job per core (at most [`MAX_DEFAULT_COMPRESSION_JOBS`]), fewer when each job
    /// runs several threads (xz with `compression_threads = 0` runs one job). A build's
    /// closure is many paths, so parallel jobs make it servable sooner.
    pub compression_jobs: usize,
    /// Secret key files (Nix format) to sign narinfos with; empty means
    /// `<state_dir>/secret-key`, generated on first start.
    pub secret_key_files: Vec<PathBuf>,
    /// Upper bound of the compressed-NAR directory; least recently served files go first.
    pub nar_cache_max_bytes: u64,
    /// Paths that may wait for compression; more requests are dropped and retried later.
    pub compression_queue: usize,
    /// Blocking reads (of NARs being dumped, compressed files, build logs) running at once
    /// for all downloads together. A download holds a thread only while one chunk is read,
    /// so stalled clients hold none.
    pub read_threads: usize,
    /// Memory for big (256 KiB) body chunks, all downloads together; beyond it downloads
    /// read 64 KiB at a time. Bounds what stalled clients hold, with 64 KiB each.
    pub read_buffer_bytes: usize,
    /// Connection limit and timeouts of this listener (`[cache.connections]`).
    pub connections: ConnectionConfig,
}

impl CacheConfig {
    /// The compression level in effect: the configured one or the compression's default.
    pub fn level(&self) -> u32 {
        self.compression_level
            .unwrap_or_else(|| self.compression.default_level())
    }

    /// The primary lane's jobs in effect: the configured number or, for 0, one encoder thread
    /// per core: as many jobs as the cores divided by each job's threads, at most
    /// [`MAX_DEFAULT_COMPRESSION_JOBS`].
    pub fn jobs(&self) -> usize {
        if self.compression_jobs > 0 {
            return self.compression_jobs;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_job = match (self.compression, self.compression_threads) {
            (Compression::Xz, 0) => cores,
            (Compression::None, _) | (_, 0) => 1,
            (_, t) => t as usize,
        };
        (cores / per_job).clamp(1, MAX_DEFAULT_COMPRESSION_JOBS)
    }

    /// The archive file's level in effect: the configured one or the archive default.
    pub fn archive_level(&self) -> u32 {
        self.archive_level
            .unwrap_or_else(|| self.archive_compression.archive_level())
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 5000)),
            store_dir: tailcache_store::store_path::DEFAULT_STORE_DIR.to_owned(),
            store_root: PathBuf::from("/"),
            priority: 30,
            compression: Compression::Zstd,
            compression_level: None,
            archive_compression: Compression::None,
            archive_level: None,
            compression_threads: 0,
            compression_jobs: 0,
            secret_key_files: Vec::new(),
            nar_cache_max_bytes: 20 << 30,
            compression_queue: 1024,
            read_threads: 16,
            read_buffer_bytes: 16 << 20,
            connections: ConnectionConfig::default(),
        }
    }
}

/// Command-line overrides for `serve`; each wins over the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeOverrides {
    /// Config file (TOML).
    #[arg(long, env = ENV_CONFIG)]
    pub config: Option<PathBuf>,
    /// Address for the binary cache listener.
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Address for the build-API listener.
    #[arg(long)]
    pub api_bind: Option<SocketAddr>,
    /// Physical root of the Nix store (`/` for the machine's own).
    #[arg(long)]
    pub store_root: Option<PathBuf>,
    /// Directory for the signing key and compressed NARs.
    #[arg(long, env = ENV_STATE_DIR)]
    pub state_dir: Option<PathBuf>,
    /// Background compression of NARs.
    #[arg(long, value_enum)]
    pub compression: Option<Compression>,
    /// Secret key file to sign with (repeatable).
    #[arg(long = "secret-key-file")]
    pub secret_key_files: Vec<PathBuf>,
    /// File holding the API bearer token (`api.token_file`); the NixOS module passes it out
    /// of systemd's credentials directory.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// File holding the GitHub webhook secret (`api.webhook_secret_file`).
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// File holding the bearer token of build notifications (`notify.token_file`).
    #[arg(long)]
    pub notify_token_file: Option<PathBuf>,
}

impl Config {
    /// Reads the file (if any) and applies overrides.
    pub fn load(o: &ServeOverrides) -> anyhow::Result<Self> {
        let mut config = match &o.config {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = o.bind {
            config.cache.bind = v;
        }
        if let Some(v) = o.api_bind {
            config.api.bind = v;
        }
        if let Some(v) = &o.store_root {
            config.cache.store_root = v.clone();
        }
        if let Some(v) = &o.state_dir {
            config.state_dir = Some(v.clone());
        }
        if let Some(v) = o.compression {
            config.cache.compression = v;
        }
        if !o.secret_key_files.is_empty() {
            config.cache.secret_key_files = o.secret_key_files.clone();
        }
        if let Some(v) = &o.token_file {
            config.api.token_file = Some(v.clone());
        }
        if let Some(v) = &o.webhook_secret_file {
            config.api.webhook_secret_file = Some(v.clone());
        }
        if let Some(v) = &o.notify_token_file {
            config.notify.token_file = Some(v.clone());
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses a config file; unknown keys and bad values name the file and the problem.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.validate_listeners()?;
        validate_build(&self.build)?;
        validate_notify(&self.notify)
    }

    /// The cache's settings and both listeners' limits.
    fn validate_listeners(&self) -> anyhow::Result<()> {
        let c = &self.cache;
        if !c.store_dir.starts_with('/') || c.store_dir.ends_with('/') || c.store_dir.len() < 2 {
            anyhow::bail!("cache.store_dir must be an absolute path without a trailing slash");
        }
        let max_level = c.compression.max_level();
        if c.level() > max_level {
            anyhow::bail!("cache.compression_level {} is above {max_level}", c.level());
        }
        validate_archive(c)?;
        if c.compression_jobs > MAX_COMPRESSION_JOBS {
            anyhow::bail!(
                "cache.compression_jobs {} is above {MAX_COMPRESSION_JOBS}",
                c.compression_jobs
            );
        }
        if c.compression_queue == 0 {
            anyhow::bail!("cache.compression_queue must be at least 1");
        }
        if c.read_threads == 0 {
            anyhow::bail!("cache.read_threads must be at least 1");
        }
        for (name, l) in [("cache", &c.connections), ("api", &self.api.connections)] {
            l.validate()
                .map_err(|e| anyhow::anyhow!("{name}.connections: {e}"))?;
        }
        Ok(())
    }

    /// The state directory, resolved from config, systemd, XDG or the home directory.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        let env_dir = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(d) = env_dir(ENV_SYSTEMD_STATE_DIR) {
            // systemd may pass several colon-separated directories; the first is ours.
            let s = d.to_string_lossy().into_owned();
            return PathBuf::from(s.split(':').next().unwrap_or(&s));
        }
        if let Some(d) = env_dir("XDG_STATE_HOME") {
            return PathBuf::from(d).join("tailcache");
        }
        if let Some(h) = env_dir("HOME") {
            return PathBuf::from(h).join(".local/state/tailcache");
        }
        PathBuf::from("tailcache-state")
    }
}

/// The archive file: after a primary one, in another compression.
fn validate_archive(c: &CacheConfig) -> anyhow::Result<()> {
    let archive = c.archive_compression;
    let name = archive.narinfo_name();
    if archive == Compression::None {
        if let Some(level) = c.archive_level {
            anyhow::bail!(
                "cache.archive_level = {level} needs cache.archive_compression (\"xz\" or \"zstd\")"
            );
        }
        return Ok(());
    }
    if c.compression == Compression::None {
        anyhow::bail!(
            "cache.archive_compression = \"{name}\" needs cache.compression: the archive file is \
             made after the primary compressed file, and with compression = \"none\" there is none"
        );
    }
    if archive == c.compression {
        anyhow::bail!(
            "cache.archive_compression = \"{name}\" is the same as cache.compression: clients \
             tell a NAR's files apart by their compression, so the archive file must use the \
             other one (or \"none\" to turn it off)"
        );
    }
    let max = archive.max_level();
    if c.archive_level() > max {
        anyhow::bail!(
            "cache.archive_level {} is above {max}, the highest {name} level",
            c.archive_level()
        );
    }
    Ok(())
}

/// The build's settings: pipeline, targets and retention.
fn validate_build(b: &BuildConfig) -> anyhow::Result<()> {
    if b.log_lines == 0 || b.log_files_kept == 0 {
        anyhow::bail!("build.log_lines and build.log_files_kept must be at least 1");
    }
    let fleet = !b.targets.is_empty() || b.hosts.is_some();
    if fleet && b.attribute != DEFAULT_ATTRIBUTE {
        anyhow::bail!(
            "build.attribute is the one-target shorthand: leave it out with build.targets or build.hosts"
        );
    }
    if !b.targets.is_empty() && b.hosts.is_some() {
        anyhow::bail!("build.targets and build.hosts = \"auto\" exclude each other");
    }
    if fleet && !b.steps.is_empty() {
        anyhow::bail!(
            "build.targets and build.hosts apply to the default pipeline, not to build.steps"
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for t in &b.targets {
        if !tailcache_actors::fleet::target::valid_target_name(&t.name) {
            anyhow::bail!(
                "build.targets: {:?} cannot name a target (letters, digits and ._@+- only, not starting with . or -)",
                t.name
            );
        }
        if tailcache_actors::fleet::target::parse_attr_path(&t.attribute).is_none() {
            anyhow::bail!("build.targets: {:?} is not an attribute path", t.attribute);
        }
        if !names.insert(&t.name) {
            anyhow::bail!("build.targets: {:?} is named twice", t.name);
        }
    }
    if b.keep_generations == 0 {
        anyhow::bail!("build.keep_generations must be at least 1");
    }
    for step in &b.steps {
        if step.capture == CaptureConfig::Commit && step.cwd.is_none() {
            anyhow::bail!(
                "build step {:?}: capture = \"commit\" needs a cwd",
                step.name
            );
        }
    }
    Ok(())
}

/// Where and how build notifications go.
fn validate_notify(n: &NotifyConfig) -> anyhow::Result<()> {
    if let Some(url) = &n.url
        && !url.starts_with("http://")
    {
        anyhow::bail!(
            "notify.url {url:?}: only http:// URLs are supported (this build has no TLS client); \
             use a receiver on the tailnet, e.g. ntfy at http://ntfy.tailnet:8080/topic"
        );
    }
    if n.attempts == 0 || n.timeout_secs == 0 {
        anyhow::bail!("notify.attempts and notify.timeout_secs must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bind_loopback() {
        let c = Config::default();
        assert!(c.cache.bind.ip().is_loopback());
        assert!(c.api.bind.ip().is_loopback());
        assert_eq!(c.cache.bind.port(), 5000);
        assert_eq!(c.api.bind.port(), 8000);
        assert_eq!(c.cache.compression, Compression::Zstd);
        assert_eq!(c.cache.level(), ZSTD_DEFAULT_LEVEL);
        assert!(!c.p2p.enable);
        assert!(
            c.p2p
                .listen
                .iter()
                .all(|a| a.starts_with("/ip4/127.0.0.1/"))
        );
    }

    #[test]
    fn compression_jobs_default_to_one_encoder_thread_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let jobs = |toml: &str| toml::from_str::<Config>(toml).unwrap().cache.jobs();
        let per_core = cores.clamp(1, MAX_DEFAULT_COMPRESSION_JOBS);
        assert_eq!(jobs(""), per_core, "zstd, one thread a job");
        assert_eq!(jobs("[cache]\ncompression = \"none\"\n"), per_core);
        // xz's multi-threaded encoder already uses every core: one job.
        assert_eq!(jobs("[cache]\ncompression = \"xz\"\n"), 1);
        assert_eq!(
            jobs("[cache]\ncompression = \"xz\"\ncompression_threads = 1\n"),
            per_core
        );
        assert_eq!(
            jobs("[cache]\ncompression_threads = 2\n"),
            (cores / 2).clamp(1, MAX_DEFAULT_COMPRESSION_JOBS)
        );
        assert_eq!(jobs("[cache]\ncompression_jobs = 3\n"), 3);
        let c: Config = toml::from_str("[cache]\ncompression_jobs = 65\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("cache.compression_jobs 65 is above 64"),
            "{err}"
        );
    }

    #[test]
    fn the_agent_section_is_left_to_the_agent_and_p2p_typos_are_rejected() {
        // `tailcache agent` checks its own section (tailcache-agent's config tests).
        let c: Config =
            toml::from_str("[agent]\nserver = \"http://h:5000\"\nreseed = true\n").unwrap();
        assert!(c.agent.contains_key("server"));
        assert!(toml::from_str::<Config>("[p2p]\nenabled = true\n").is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<Config>("[cache]\nbindd = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("bindd"), "{err}");
        assert!(toml::from_str::<Config>("colour = 1\n").is_err());
    }

    #[test]
    fn file_values_and_overrides_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "state_dir = \"/s\"\n[cache]\ncompression = \"zstd\"\npriority = 10\n",
        )
        .unwrap();
        let o = ServeOverrides {
            config: Some(path),
            bind: Some("127.0.0.1:0".parse().unwrap()),
            token_file: Some("/run/credentials/t/api-token".into()),
            ..Default::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!(
            c.api.token_file.as_deref(),
            Some(Path::new("/run/credentials/t/api-token"))
        );
        assert_eq!(c.api.webhook_secret_file, None);
        assert_eq!(c.cache.compression, Compression::Zstd);
        assert_eq!(c.cache.priority, 10);
        assert_eq!(c.cache.bind.port(), 0);
        assert_eq!(c.state_dir(), PathBuf::from("/s"));
    }

    #[test]
    fn build_steps_parse() {
        let c: Config = toml::from_str(
            "[build]\nrepository = \"/r\"\n[[build.steps]]\nname = \"a\"\nprogram = \"/bin/sh\"\n\
             args = [\"-c\", \"true\"]\ncapture = \"out-paths\"\n",
        )
        .unwrap();
        assert_eq!(c.build.steps.len(), 1);
        assert_eq!(c.build.steps[0].capture, CaptureConfig::OutPaths);
        assert!(toml::from_str::<Config>("[[build.steps]]\nname = \"a\"\n").is_err());
        assert!(toml::from_str::<Config>("[api]\nport = 1\n").is_err());
    }

    #[test]
    fn allow_entries_parse_and_typos_are_errors() {
        let c: Config = toml::from_str(
            "[api]\nallow = [\"user:alice@github\", \"node:laptop\", \"tag:ci\", \"local\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.api.allow,
            [
                AllowEntry::User("alice@github".into()),
                AllowEntry::Node("laptop".into()),
                AllowEntry::Tag("tag:ci".into()),
                AllowEntry::Local,
            ]
        );
        for bad in ["alice", "users:alice", "tag:", "node:"] {
            let err = toml::from_str::<Config>(&format!("[api]\nallow = [{bad:?}]\n")).unwrap_err();
            assert!(err.to_string().contains("expected user:"), "{bad}: {err}");
        }
        let c = Config::default();
        assert!(c.api.allow.is_empty());
        assert_eq!(
            c.api.tailscale_socket,
            Path::new("/run/tailscale/tailscaled.sock")
        );
    }

    #[test]
    fn connection_settings_parse_per_listener() {
        let c: Config = toml::from_str(
            "[cache.connections]\nmax_connections = 10\nidle_timeout_secs = 5\n\
             [api.connections]\nsend_timeout_secs = 7\n",
        )
        .unwrap();
        assert_eq!(c.cache.connections.max_connections, Some(10));
        assert_eq!(c.cache.connections.idle_timeout_secs, 5);
        assert_eq!(c.api.connections.send_timeout_secs, 7);
        assert_eq!(c.api.connections.max_connections, None);
        assert!(toml::from_str::<Config>("[api.connections]\nidle_timeout = 5\n").is_err());
        let zero: Config = toml::from_str("[cache.connections]\nidle_timeout_secs = 0\n").unwrap();
        assert!(zero.validate().is_err());
    }

    #[test]
    fn fleet_keys_parse_and_conflicts_are_refused() {
        let ok = |text: &str| {
            let c: Config = toml::from_str(text).unwrap();
            c.validate().map(|()| c)
        };
        let c = ok(
            "[build]\nrepository = \"/r\"\nhosts = \"auto\"\nkeep_generations = 5\n\
                    supersede = true\nbuilders = \"ssh://b aarch64-linux\"\n",
        )
        .unwrap();
        assert_eq!(c.build.hosts, Some(HostsConfig::Auto));
        assert_eq!(c.build.keep_generations, 5);
        assert!(c.build.supersede);
        assert_eq!(c.build.builders.as_deref(), Some("ssh://b aarch64-linux"));
        let c = ok("[[build.targets]]\nname = \"alice@laptop\"\n\
                    attribute = 'homeConfigurations.\"alice@laptop\".activationPackage'\nkind = \"home\"\n")
        .unwrap();
        assert_eq!(
            c.build.targets[0].kind,
            tailcache_wire::generation::TargetKind::Home
        );
        assert_eq!(Config::default().build.keep_generations, 3);
        assert!(toml::from_str::<Config>("[build]\nhosts = \"all\"\n").is_err());
        assert!(
            toml::from_str::<Config>(
                "[[build.targets]]\nname = \"a\"\nattribute = \"x\"\nkind = \"darwin\"\n"
            )
            .is_err()
        );
        for bad in [
            "[build]\nhosts = \"auto\"\nattribute = \"x\"\n",
            "[build]\nhosts = \"auto\"\n[[build.targets]]\nname = \"a\"\nattribute = \"x\"\nkind = \"nixos\"\n",
            "[[build.targets]]\nname = \"a/b\"\nattribute = \"x\"\nkind = \"nixos\"\n",
            "[[build.targets]]\nname = \"a\"\nattribute = \"x..y\"\nkind = \"nixos\"\n",
            "[[build.targets]]\nname = \"a\"\nattribute = \"x\"\nkind = \"nixos\"\n[[build.targets]]\nname = \"a\"\nattribute = \"y\"\nkind = \"home\"\n",
            "[build]\nhosts = \"auto\"\n[[build.steps]]\nname = \"s\"\nprogram = \"/bin/true\"\n",
            "[build]\nkeep_generations = 0\n",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn notify_section() {
        let c: Config = toml::from_str(
            "[notify]\nurl = \"http://ntfy.tailnet:8080/builds\"\nformat = \"json\"\nattempts = 2\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.notify.format, NotifyFormat::Json);
        assert_eq!(c.notify.timeout_secs, 10);
        let https: Config = toml::from_str("[notify]\nurl = \"https://ntfy.sh/x\"\n").unwrap();
        assert!(
            https
                .validate()
                .unwrap_err()
                .to_string()
                .contains("http://")
        );
        assert!(toml::from_str::<Config>("[notify]\nformat = \"xml\"\n").is_err());
        assert!(toml::from_str::<Config>("[notify]\ntopic = \"x\"\n").is_err());
    }

    #[test]
    fn archive_settings_default_off_and_are_checked_at_load() {
        let check = |text: &str| {
            let c: Config = toml::from_str(text).unwrap();
            c.validate().map(|()| c)
        };
        let c = check("").unwrap();
        assert_eq!(c.cache.archive_compression, Compression::None);
        let c = check("[cache]\narchive_compression = \"xz\"\n").unwrap();
        assert_eq!(c.cache.archive_level(), 6);
        let c = check("[cache]\ncompression = \"xz\"\narchive_compression = \"zstd\"\n").unwrap();
        assert_eq!(c.cache.archive_level(), 19);
        let c = check("[cache]\narchive_compression = \"xz\"\narchive_level = 9\n").unwrap();
        assert_eq!(c.cache.archive_level(), 9);
        for (bad, says) in [
            (
                "[cache]\narchive_compression = \"zstd\"\n",
                "is the same as cache.compression",
            ),
            (
                "[cache]\ncompression = \"xz\"\narchive_compression = \"xz\"\n",
                "is the same as cache.compression",
            ),
            (
                "[cache]\ncompression = \"none\"\narchive_compression = \"xz\"\n",
                "needs cache.compression",
            ),
            (
                "[cache]\narchive_compression = \"xz\"\narchive_level = 10\n",
                "cache.archive_level 10 is above 9",
            ),
            (
                "[cache]\ncompression = \"xz\"\narchive_compression = \"zstd\"\narchive_level = 22\n",
                "cache.archive_level 22 is above 19",
            ),
            (
                "[cache]\narchive_level = 3\n",
                "needs cache.archive_compression",
            ),
        ] {
            let err = check(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(toml::from_str::<Config>("[cache]\narchive_compression = \"bz2\"\n").is_err());
        // The command line's compression is checked against the file's archive too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[cache]\narchive_compression = \"xz\"\n").unwrap();
        let o = ServeOverrides {
            config: Some(path),
            compression: Some(Compression::Xz),
            ..Default::default()
        };
        let err = Config::load(&o).unwrap_err().to_string();
        assert!(err.contains("is the same as cache.compression"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        let c: Config =
            toml::from_str("[cache]\ncompression = \"xz\"\ncompression_level = 12\n").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("[cache]\ncompression_level = 20\n").unwrap();
        assert!(c.validate().is_err());
        // An unset level follows the compression: xz's default is a valid xz preset.
        let c: Config = toml::from_str("[cache]\ncompression = \"xz\"\n").unwrap();
        assert_eq!(c.cache.level(), 6);
        assert!(c.validate().is_ok());
        assert!(toml::from_str::<Config>("[cache]\ncompression = \"lz4\"\n").is_err());
    }
}
