//! `TestCache`: the real `tailcache serve` binary started on `127.0.0.1:0` over a
//! `TestStore`, with a generated config and a private state directory; killed on
//! drop (and the test fails with the server's stderr if it died on its own).
//!
//! The server's build-API listener is on `127.0.0.1:0` as well (optionally with a bearer
//! token and a webhook secret, and a `[build]` section given as TOML); the handle speaks
//! to both listeners and can stop the server with SIGTERM or SIGKILL.
//!
//! With `TAILCACHE_ITEST_BACKEND=reference` the builder instead serves a signed
//! `nix copy --to file://` cache of the same store with `python3 -m http.server`,
//! which checks the Nix-side machinery of `tests/nix_client.rs` against Nix's own
//! cache format (the HTTP and key tests only make sense against tailcache).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::http;
use super::narinfo::NarInfo;
use super::nix::{NixEnv, TestStore, hash_part};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const COMPRESS_TIMEOUT: Duration = Duration::from_secs(240);
/// Upper bound for a state the build API is polled for.
pub const API_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Tailcache,
    Reference,
}

fn backend() -> Backend {
    match std::env::var("TAILCACHE_ITEST_BACKEND").as_deref() {
        Ok("reference") => Backend::Reference,
        Ok("tailcache") | Err(_) => Backend::Tailcache,
        Ok(other) => panic!("TAILCACHE_ITEST_BACKEND={other}: expected tailcache or reference"),
    }
}

#[derive(Debug)]
pub struct TestCacheBuilder<'a> {
    store: Option<&'a TestStore>,
    store_root: Option<PathBuf>,
    compression: String,
    secret_keys: Vec<PathBuf>,
    priority: Option<u32>,
    state_dir: Option<PathBuf>,
    api_token: Option<String>,
    webhook_secret: Option<String>,
    build_toml: Option<String>,
    nix: Option<&'a NixEnv>,
    p2p: bool,
    extra_toml: String,
    cache_extra: String,
    api_extra: String,
    nofile: Option<u64>,
}

/// Why the server did not come up.
#[derive(Debug)]
pub struct StartError {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug)]
pub struct TestCache {
    child: Child,
    url: String,
    backend: Backend,
    dir: TempDir,
    state_dir: PathBuf,
    stdout: Arc<Mutex<String>>,
    api_url: Option<String>,
    api_token: Option<String>,
    /// The test stopped the server on purpose; its exit is not a failure.
    stopped: bool,
}

/// A secret file as an operator writes one: owner-only, with a trailing newline.
fn write_secret(path: &Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn toml_str(p: &Path) -> String {
    let s = p.to_str().unwrap();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl<'a> TestCacheBuilder<'a> {
    pub fn store(mut self, store: &'a TestStore) -> Self {
        self.store_root = Some(store.root());
        self.store = Some(store);
        self
    }

    /// A store root that is not a `TestStore` (e.g. one without a database).
    pub fn store_root(mut self, root: &Path) -> Self {
        self.store_root = Some(root.to_path_buf());
        self
    }

    pub fn compression(mut self, c: &str) -> Self {
        self.compression = c.to_string();
        self
    }

    pub fn secret_key(mut self, path: &Path) -> Self {
        self.secret_keys.push(path.to_path_buf());
        self
    }

    /// A state directory that outlives this server (to start another on it); by default
    /// each server gets a fresh one.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    pub fn priority(mut self, p: u32) -> Self {
        self.priority = Some(p);
        self
    }

    /// POST routes then need `Authorization: Bearer <token>`.
    pub fn api_token(mut self, token: &str) -> Self {
        self.api_token = Some(token.to_string());
        self
    }

    /// Enables `POST /build/webhook` with this HMAC secret.
    pub fn webhook_secret(mut self, secret: &str) -> Self {
        self.webhook_secret = Some(secret.to_string());
        self
    }

    /// The `[build]` section (and `[[build.steps]]`), as TOML, appended to the config.
    pub fn build_toml(mut self, toml: &str) -> Self {
        self.build_toml = Some(toml.to_string());
        self
    }

    /// Runs the P2P tracker/seed node on loopback (`[p2p] enable = true`).
    pub fn p2p(mut self) -> Self {
        self.p2p = true;
        self
    }

    /// More configuration (TOML tables such as `[cache.connections]`), appended to the file.
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(toml);
        self
    }

    /// More keys of the `[cache]` table (TOML lines).
    pub fn cache_extra(mut self, toml: &str) -> Self {
        self.cache_extra.push_str(toml);
        self.cache_extra.push('\n');
        self
    }

    /// More keys of the `[api]` table (TOML lines).
    pub fn api_extra(mut self, toml: &str) -> Self {
        self.api_extra.push_str(toml);
        self
    }

    /// Starts the server with both its soft and hard `RLIMIT_NOFILE` at `n` (through
    /// `prlimit`), so that raising soft to hard at start-up gains nothing.
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Runs the server (and so its build steps) under this private Nix configuration.
    pub fn nix_env(mut self, nix: &'a NixEnv) -> Self {
        self.nix = Some(nix);
        self
    }

    /// Starts the server and waits for its listening line; panics if it fails.
    pub fn start(self) -> TestCache {
        self.try_start()
            .unwrap_or_else(|e| panic!("server did not start: {e:#?}"))
    }

    pub fn try_start(self) -> Result<TestCache, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("tc-cache.")
            .tempdir()
            .unwrap();
        match backend() {
            Backend::Tailcache => self.start_tailcache(dir),
            Backend::Reference => Ok(self.start_reference(dir)),
        }
    }

    fn start_tailcache(self, dir: TempDir) -> Result<TestCache, StartError> {
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let mut cfg = format!(
            "state_dir = {}\n\n[cache]\nbind = \"127.0.0.1:0\"\nstore_dir = \"/nix/store\"\n\
             compression = \"{}\"\ncompression_level = 1\n",
            toml_str(&state_dir),
            self.compression
        );
        if let Some(root) = &self.store_root {
            cfg.push_str(&format!("store_root = {}\n", toml_str(root)));
        }
        if let Some(p) = self.priority {
            cfg.push_str(&format!("priority = {p}\n"));
        }
        if !self.secret_keys.is_empty() {
            let keys: Vec<String> = self.secret_keys.iter().map(|k| toml_str(k)).collect();
            cfg.push_str(&format!("secret_key_files = [{}]\n", keys.join(", ")));
        }
        cfg.push_str(&self.cache_extra);
        // Every server runs the API listener, and its default port is fixed.
        cfg.push_str("\n[api]\nbind = \"127.0.0.1:0\"\n");
        cfg.push_str(&self.api_extra);
        {
            if let Some(token) = &self.api_token {
                let f = dir.path().join("api-token");
                write_secret(&f, token);
                cfg.push_str(&format!("token_file = {}\n", toml_str(&f)));
            }
            if let Some(secret) = &self.webhook_secret {
                let f = dir.path().join("webhook-secret");
                write_secret(&f, secret);
                cfg.push_str(&format!("webhook_secret_file = {}\n", toml_str(&f)));
            }
        }
        if self.p2p {
            cfg.push_str("\n[p2p]\nenable = true\n");
        }
        if let Some(build) = &self.build_toml {
            cfg.push('\n');
            cfg.push_str(build);
            cfg.push('\n');
        }
        cfg.push_str(&self.extra_toml);
        let config = dir.path().join("config.toml");
        std::fs::write(&config, cfg).unwrap();
        let bin = env!("CARGO_BIN_EXE_tailcache");
        let mut cmd = match self.nofile {
            // prlimit execs the server: the pid stays the server's.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("serve").arg("--config").arg(&config);
        if let Some(nix) = self.nix {
            nix.configure(&mut cmd);
        }
        // Keep the server's own logging readable in failure reports.
        cmd.env("NO_COLOR", "1");
        let markers = &["cache listening on ", "api listening on "];
        let mut cache = spawn_and_wait(cmd, dir, Backend::Tailcache, markers)?;
        cache.state_dir = state_dir;
        cache.api_token = self.api_token;
        Ok(cache)
    }

    fn start_reference(self, dir: TempDir) -> TestCache {
        let store = self.store.expect("the reference backend needs .store()");
        let key = match self.secret_keys.first() {
            Some(k) => k.clone(),
            None => store.nix().generate_key(dir.path(), "reference-1").secret,
        };
        let cache = dir.path().join("refcache");
        store.copy_to_file_cache(&cache, &self.compression, &key);
        let mut args = vec![
            "store".to_string(),
            "copy-log".into(),
            "--from".into(),
            store.root().to_str().unwrap().into(),
            "--to".into(),
            format!("file://{}", cache.display()),
        ];
        args.extend(
            store
                .closure()
                .iter()
                .filter_map(|p| store.info(p).deriver.clone()),
        );
        store
            .nix()
            .run("nix", &args.iter().map(String::as_str).collect::<Vec<_>>());
        let mut cmd = Command::new("python3");
        cmd.args([
            "-u",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&cache)
        .arg("0");
        let mut c = spawn_and_wait(cmd, dir, Backend::Reference, &["Serving HTTP on "])
            .unwrap_or_else(|e| panic!("reference server: {e:#?}"));
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = c
            .url
            .split(" port ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap()
            .to_string();
        c.url = format!("http://127.0.0.1:{port}");
        c
    }
}

pub fn spawn_and_wait(
    mut cmd: Command,
    dir: TempDir,
    backend: Backend,
    markers: &[&'static str],
) -> Result<TestCache, StartError> {
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let stdout = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = sync_channel::<Vec<String>>(1);
    let pipe = child.stdout.take().unwrap();
    let collected = Arc::clone(&stdout);
    let markers = markers.to_vec();
    // Drains stdout for the server's whole life, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut found: Vec<Option<String>> = vec![None; markers.len()];
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            collected.lock().unwrap().push_str(&line);
            collected.lock().unwrap().push('\n');
            for (marker, slot) in markers.iter().zip(found.iter_mut()) {
                if slot.is_none()
                    && let Some(pos) = line.find(marker)
                {
                    *slot = Some(line[pos + marker.len()..].trim().to_string());
                }
            }
            if found.iter().all(Option::is_some)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(found.iter().flatten().cloned().collect());
            }
        }
    });
    let fail = |child: &mut Child, dir: &TempDir| {
        let _ = child.kill();
        let status = child.wait().ok();
        StartError {
            status,
            stdout: stdout.lock().unwrap().clone(),
            stderr: std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default(),
        }
    };
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(urls) => {
            let mut urls = urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string());
            let url = urls.next().unwrap();
            Ok(TestCache {
                child,
                url,
                backend,
                state_dir: dir.path().join("state"),
                dir,
                stdout,
                api_url: urls.next(),
                api_token: None,
                stopped: false,
            })
        }
        Err(RecvTimeoutError::Disconnected) => {
            // stdout closed: the process is exiting; collect its real status.
            let status = child.wait().ok();
            Err(StartError {
                status,
                stdout: stdout.lock().unwrap().clone(),
                stderr: std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default(),
            })
        }
        Err(RecvTimeoutError::Timeout) => Err(fail(&mut child, &dir)),
    }
}

impl TestCache {
    pub fn builder<'a>() -> TestCacheBuilder<'a> {
        TestCacheBuilder {
            store: None,
            store_root: None,
            compression: "none".into(),
            secret_keys: Vec::new(),
            priority: None,
            state_dir: None,
            api_token: None,
            webhook_secret: None,
            build_toml: None,
            nix: None,
            p2p: false,
            extra_toml: String::new(),
            cache_extra: String::new(),
            api_extra: String::new(),
            nofile: None,
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_reference(&self) -> bool {
        self.backend == Backend::Reference
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM; the server's exit is then expected, not a failure.
    pub fn sigterm(&mut self) {
        self.stopped = true;
        let status = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        self.stopped = true;
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the server to exit on its own; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            // Polling the process's real state.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The listener of the build API, no trailing slash.
    pub fn api_url(&self) -> &str {
        self.api_url
            .as_deref()
            .expect("the reference backend has no API listener")
    }

    /// The token POST routes need, when one was configured.
    pub fn api_token(&self) -> Option<&str> {
        self.api_token.as_deref()
    }

    /// The P2P tracker's first address (`<multiaddr>/p2p/<peer id>`), as printed at start.
    pub fn tracker_addr(&self) -> String {
        let out = self.stdout();
        out.lines()
            .find_map(|l| l.strip_prefix("p2p listening on "))
            .unwrap_or_else(|| panic!("no p2p listening line in:\n{out}"))
            .trim()
            .to_string()
    }

    /// Everything the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn get(&self, target: &str) -> http::Response {
        http::get(&self.url, target)
    }

    pub fn head(&self, target: &str) -> http::Response {
        http::head(&self.url, target)
    }

    /// The narinfo of a path; it must exist and parse the way Nix parses it.
    pub fn narinfo(&self, store_path: &str) -> NarInfo {
        let r = self.get(&format!("/{}.narinfo", hash_part(store_path)));
        assert_eq!(r.status, 200, "narinfo of {store_path}: {}", r.text());
        NarInfo::parse(&r.text()).unwrap_or_else(|e| panic!("narinfo of {store_path}: {e}"))
    }

    /// Polls the narinfos (which also queues their compression) until every
    /// one advertises `method`; panics at the deadline naming the laggards.
    pub fn wait_compressed(&self, paths: &[&str], method: &str) -> Vec<NarInfo> {
        let deadline = Instant::now() + COMPRESS_TIMEOUT;
        loop {
            let infos: Vec<NarInfo> = paths.iter().map(|p| self.narinfo(p)).collect();
            let pending: Vec<&str> = paths
                .iter()
                .zip(&infos)
                .filter(|(_, i)| i.get("Compression") != Some(method))
                .map(|(p, _)| *p)
                .collect();
            if pending.is_empty() {
                return infos;
            }
            assert!(
                Instant::now() < deadline,
                "after {COMPRESS_TIMEOUT:?} these narinfos still do not advertise {method}: {pending:?}\nstderr:\n{}",
                self.stderr()
            );
            // Polling a real condition (the server's answer), not waiting blind.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Corrupts one byte of the NAR the cache currently advertises for
    /// `store_path`: the first occurrence of `needle` in the served content.
    /// Uncompressed tailcache NARs are dumped on the fly, so the byte is flipped
    /// in the served physical store; compressed ones (and the reference cache's
    /// files) are rewritten in place, recompressed so only the NAR hash breaks.
    pub fn tamper_nar(&self, store: &TestStore, store_path: &str, needle: &[u8]) {
        let info = self.narinfo(store_path);
        let url = info.get("URL").unwrap().to_string();
        let compression = info.get("Compression").unwrap_or("bzip2").to_string();
        if self.backend == Backend::Tailcache && compression == "none" {
            tamper_store_path(store, store_path, needle);
            return;
        }
        let file = match self.backend {
            Backend::Reference => self.dir.path().join("refcache").join(&url),
            Backend::Tailcache => self.nar_file_path(&url),
        };
        let data = std::fs::read(&file).unwrap();
        let mut nar = filter(&compression, "-dc", &data);
        assert!(
            flip(&mut nar, needle),
            "{needle:?} not in the NAR of {store_path}"
        );
        let changed = filter(&compression, "-1c", &nar);
        std::fs::write(&file, changed).unwrap();
    }
}

impl TestCache {
    /// Where the server keeps the compressed file `url` (`nar/<file hash>.nar.<ext>`, as a
    /// narinfo or a file list names it) on disk: somewhere under its state directory.
    pub fn nar_file_path(&self, url: &str) -> PathBuf {
        let file_name = url.rsplit('/').next().unwrap();
        find_file(&self.state_dir(), file_name)
            .unwrap_or_else(|| panic!("no {file_name} under the server's state dir"))
    }
}

/// Flips the first byte of `needle` in a file of `store_path` in the physical store the
/// server serves, behind its database's back (the file keeps its size).
pub fn tamper_store_path(store: &TestStore, store_path: &str, needle: &[u8]) {
    assert!(
        tamper_tree(&store.physical(store_path), needle),
        "{needle:?} not found under {store_path}"
    );
}

impl Drop for TestCache {
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(status) = exited
            && !self.stopped
            && !std::thread::panicking()
        {
            panic!(
                "the server exited during the test ({status}); stderr:\n{}",
                self.stderr()
            );
        }
    }
}

/// Runs `xz`/`zstd` with `flag` over `data`.
fn filter(compression: &str, flag: &str, data: &[u8]) -> Vec<u8> {
    if compression == "none" {
        return data.to_vec();
    }
    let tool = match compression {
        "xz" => "xz",
        "zstd" => "zstd",
        other => panic!("cannot rewrite {other} files"),
    };
    let mut child = Command::new(tool)
        .arg(flag)
        .arg("-q")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{tool} {flag} failed");
    out.stdout
}

/// Decompresses a served file (`xz`, `zstd` or `none`).
pub fn decompress(compression: &str, data: &[u8]) -> Vec<u8> {
    filter(compression, "-dc", data)
}

fn flip(data: &mut [u8], needle: &[u8]) -> bool {
    match data.windows(needle.len()).position(|w| w == needle) {
        Some(pos) => {
            data[pos] ^= 0x01;
            true
        }
        None => false,
    }
}

/// Flips the needle's first byte in the first regular file under `path` that
/// contains it (the file keeps its size, so only the content hash changes).
fn tamper_tree(path: &Path, needle: &[u8]) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        return entries.iter().any(|e| tamper_tree(e, needle));
    }
    if !meta.is_file() {
        return false;
    }
    let mut data = std::fs::read(path).unwrap();
    if !flip(&mut data, needle) {
        return false;
    }
    let mode = meta.permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o200)).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    true
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(name))
        {
            return Some(p);
        }
    }
    None
}
