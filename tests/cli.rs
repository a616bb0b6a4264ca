//! `bt`, `bs` and `bl` (links to the `tailcache` binary) against the real server on `127.0.0.1:0`:
//! trigger → status → logs → follow until the end; `already_running`; `bt --wait`'s exit
//! code for a failing and a succeeding build; `--json` parsing into the API's model; the
//! documented message and exit code for a refused connection, an unresolvable host, a
//! server that never answers, a 401, a 5xx and a server without a build; and, in a real
//! terminal (tmux), `bs --watch` and `bl -f`. With the three-host test flake built by the
//! real server: `bt --wait` ends only when every target is ready or failed, with one line per
//! target and exit 0 only when all are ready; `bs` shows one line per host and `bs --host`
//! one host in detail.
//!
//! Builds are held in a step by gate files the test opens, so "while running" checks
//! happen while the build really runs.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::TestCache;
use common::api::{Gate, build_section, sh_step};
use common::fleet::{Fleet, FleetVariant};
use tailcache_wire::build::{BuildResult, BuildStatus};
use tailcache_wire::hosts::HostState;
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(60);

fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("tc-cli.")
        .tempdir()
        .unwrap()
}

fn start(dir: &Path, build: Option<&str>, token: Option<&str>) -> TestCache {
    let root = dir.join("store-root");
    std::fs::create_dir_all(root.join("nix/store")).unwrap();
    let mut b = TestCache::builder().store_root(&root);
    if let Some(build) = build {
        b = b.build_toml(build);
    }
    if let Some(t) = token {
        b = b.api_token(t);
    }
    b.start()
}

const TAILCACHE: &str = env!("CARGO_BIN_EXE_tailcache");

/// A directory holding `bt`, `bs` and `bl` as users get them: links to the `tailcache`
/// binary made by `tailcache install-links` (which leaves right links alone, so test
/// processes running at once agree).
fn links() -> &'static Path {
    static LINKS: OnceLock<PathBuf> = OnceLock::new();
    LINKS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-links");
        std::fs::create_dir_all(&dir).unwrap();
        let o = Command::new(TAILCACHE)
            .arg("install-links")
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        dir
    })
}

/// The program `name` as a user runs it: `tailcache`, or a link named `bt`, `bs`, `bl`.
fn bin(name: &str) -> PathBuf {
    match name {
        "bt" | "bs" | "bl" => links().join(name),
        "tailcache" => PathBuf::from(TAILCACHE),
        other => panic!("no binary {other}"),
    }
}

/// A client command with a clean environment: no config file (the user's or the system's),
/// no server/token variables, a known user.
fn cmd(dir: &Path, name: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin(name));
    c.args(args)
        .env_remove("TAILCACHE_SERVER")
        .env_remove("TAILCACHE_TOKEN")
        .env_remove("TAILCACHE_TIMEOUT")
        .env_remove("TAILCACHE_CLIENT_CONFIG")
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .env(
            "TAILCACHE_SYSTEM_CONFIG",
            dir.join("etc/tailcache/config.toml"),
        )
        .env("USER", "tester")
        .stdin(Stdio::null());
    c
}

fn run(dir: &Path, name: &str, args: &[&str]) -> Output {
    cmd(dir, name, args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn status_json(dir: &Path, server: &str) -> BuildStatus {
    let o = run(dir, "bs", &["--server", server, "--json"]);
    assert_eq!(o.status.code(), Some(0), "bs --json: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bs --json does not parse into BuildStatus: {e}"))
}

fn wait_status(
    dir: &Path,
    server: &str,
    what: &str,
    pred: impl Fn(&BuildStatus) -> bool,
) -> BuildStatus {
    let end = Instant::now() + DEADLINE;
    loop {
        let s = status_json(dir, server);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

fn held_build(gate: &Gate) -> String {
    build_section(
        "kill_grace_secs = 2",
        &[
            sh_step(
                "hold",
                &format!("echo hold-started; {}", gate.wait_script()),
                "",
            ),
            sh_step("finish", "echo finish-line-1; echo finish-line-2", ""),
        ],
    )
}

#[test]
fn trigger_status_logs_and_follow_until_the_end() {
    let d = scratch();
    let gate = Gate::new(d.path(), "go");
    let server = start(d.path(), Some(&held_build(&gate)), None);
    let url = server.api_url();

    let o = run(d.path(), "bt", &["--server", url, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(reply["status"], "triggered", "{reply}");
    let id = reply["build_id"].as_u64().unwrap();

    let s = wait_status(d.path(), url, "step hold", |s| {
        s.is_running && s.current_step.as_deref() == Some("hold")
    });
    assert_eq!(s.build_id, Some(id));
    let who = s.requested_by.clone().unwrap();
    assert_eq!(
        (who.user.as_str(), who.host.as_str()),
        ("tester", hostname().as_str())
    );

    // A second trigger names the running build and who asked for it.
    let o = run(d.path(), "bt", &["--server", url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let line = text(&o.stdout);
    assert!(
        line.starts_with(&format!("build {id} already running since "))
            && line.contains(&format!("(triggered by tester@{})", hostname())),
        "{line}"
    );

    let o = run(d.path(), "bs", &["--server", url]);
    let summary = text(&o.stdout);
    assert!(
        summary.contains(&format!("build {id}: step hold")),
        "{summary}"
    );
    assert!(!summary.contains('\x1b'), "colour on a pipe: {summary:?}");

    let end = Instant::now() + DEADLINE;
    loop {
        let o = run(d.path(), "bl", &["--server", url, "-n", "5"]);
        assert_eq!(o.status.code(), Some(0));
        let log = text(&o.stdout);
        assert!(log.lines().count() <= 5, "{log}");
        if log.lines().any(|l| l == "hold-started") {
            break;
        }
        assert!(Instant::now() < end, "no hold-started in {log}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let follow = cmd(d.path(), "bl", &["--server", url, "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    gate.open();
    let o = follow.wait_with_output().unwrap();
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "bl -f: {out} {}", text(&o.stderr));
    let lines: Vec<&str> = out.lines().collect();
    let a = lines
        .iter()
        .position(|l| *l == "finish-line-1")
        .expect(&out);
    assert_eq!(lines.get(a + 1), Some(&"finish-line-2"), "{out}");
    assert!(
        text(&o.stderr).contains(&format!("build {id} success")),
        "{}",
        text(&o.stderr)
    );

    let s = status_json(d.path(), url);
    assert!(!s.is_running);
    assert_eq!(s.last_status, Some(BuildResult::Success));
    // The human summary of a finished build.
    let o = run(d.path(), "bs", &["--server", url]);
    assert!(
        text(&o.stdout).contains(&format!("✓ build {id}: success")),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn bt_wait_exits_nonzero_for_a_failing_build_and_zero_for_a_good_one() {
    let d = scratch();
    let flag = d.path().join("make-it-pass");
    let build = build_section(
        "kill_grace_secs = 2",
        &[sh_step(
            "build",
            &format!(
                "if [ -e '{}' ]; then echo all-good; else echo boom-line; exit 3; fi",
                flag.display()
            ),
            "",
        )],
    );
    let server = start(d.path(), Some(&build), None);
    let url = server.api_url();

    let o = run(d.path(), "bt", &["--server", url, "--wait"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out} {}", text(&o.stderr));
    let s = status_json(d.path(), url);
    let id = s.build_id.unwrap();
    assert!(out.contains(&format!("✗ build {id} failed")), "{out}");
    assert!(
        text(&o.stderr).contains("boom-line"),
        "the log's end is shown: {}",
        text(&o.stderr)
    );

    std::fs::write(&flag, "").unwrap();
    let o = run(d.path(), "bt", &["--server", url, "--wait", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let mut docs = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
    let first = docs.next().unwrap();
    let last = docs.next().unwrap();
    assert_eq!(first["status"], "triggered");
    assert_eq!(last["result"], "success");
    assert_eq!(last["build_id"], first["build_id"]);
    assert_eq!(last["build_id"].as_u64(), Some(id + 1));
}

fn assert_fails(o: &Output, code: i32, needle: &str) {
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stderr: {err} stdout: {}",
        text(&o.stdout)
    );
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line, no backtrace: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unreachable_servers_say_what_to_check() {
    let d = scratch();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused = format!("http://127.0.0.1:{port}");
    for b in ["bt", "bs", "bl"] {
        let o = run(d.path(), b, &["--server", &refused]);
        assert_fails(
            &o,
            3,
            "connection refused; is `tailcache serve` running there?",
        );
    }

    let o = run(
        d.path(),
        "bs",
        &["--server", "http://no-such-host.invalid:8000"],
    );
    assert_fails(
        &o,
        3,
        "cannot resolve the host of http://no-such-host.invalid:8000",
    );

    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let o = run(d.path(), "bs", &["--server", &url, "--timeout", "0.5"]);
    assert_fails(&o, 3, "did not answer within 0.5s");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The same through the environment.
    let o = cmd(d.path(), "bt", &["--server", &url])
        .env("TAILCACHE_TIMEOUT", "0.5")
        .output()
        .unwrap();
    assert_fails(&o, 3, "did not answer within 0.5s");
    drop(silent);
}

/// Where the server is comes from the user's config file, else the system's (as the NixOS
/// client module writes it), else `--config FILE`; a file named with `--config` must exist.
#[test]
fn the_users_config_else_the_systems() {
    let d = scratch();
    let server = start(d.path(), None, None);
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let write = |path: PathBuf, url: &str| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("server = \"{url}\"\n")).unwrap();
    };
    // Only the system's file: it is read.
    write(d.path().join("etc/tailcache/config.toml"), server.api_url());
    let o = run(d.path(), "bs", &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // The user's file wins, whole.
    write(d.path().join("xdg/tailcache/config.toml"), &dead);
    let o = run(d.path(), "bs", &[]);
    assert_fails(&o, 3, "connection refused");
    // --config names another one.
    let other = d.path().join("other.toml");
    write(other.clone(), server.api_url());
    let o = run(
        d.path(),
        "bs",
        &["--json", "--config", other.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let missing = d.path().join("missing.toml");
    let o = run(d.path(), "bs", &["--config", missing.to_str().unwrap()]);
    assert_fails(&o, 7, "no such file");
}

/// Answers every request with `status` and `body`, `n` times.
fn canned_server(status: &'static str, body: &'static str, n: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().take(n) {
            let mut s = s.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    url
}

#[test]
fn server_errors_unauthorized_and_not_configured() {
    let d = scratch();
    let url = canned_server(
        "500 Internal Server Error",
        r#"{"status":"error","message":"the status store is gone"}"#,
        1,
    );
    let o = run(d.path(), "bs", &["--server", &url]);
    assert_fails(&o, 5, "500: the status store is gone");

    let server = start(
        d.path(),
        Some(&held_build(&Gate::new(d.path(), "x"))),
        Some("s3cret"),
    );
    let api = server.api_url();
    let o = run(d.path(), "bt", &["--server", api]);
    assert_fails(&o, 4, "set TAILCACHE_TOKEN");
    // The token from the config file, and the server from it too.
    let cfg = d.path().join("xdg/tailcache");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(d.path().join("tok"), "s3cret\n").unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        format!(
            "server = \"{api}\"\ntoken_file = \"{}\"\n",
            d.path().join("tok").display()
        ),
    )
    .unwrap();
    let o = run(d.path(), "bt", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("triggered"), "{}", text(&o.stdout));
    // A wrong token in the environment beats the file.
    let o = cmd(d.path(), "bt", &[])
        .env("TAILCACHE_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_fails(&o, 4, "refused the token");
    std::fs::remove_file(cfg.join("config.toml")).unwrap();
    let o = run(d.path(), "tailcache", &["trigger", "--server", api]);
    assert_fails(&o, 4, "set TAILCACHE_TOKEN");

    let d2 = scratch();
    let bare = start(d2.path(), None, None);
    let o = run(d2.path(), "bt", &["--server", bare.api_url()]);
    assert_fails(&o, 6, "no build is configured");
}

// --- a real terminal -------------------------------------------------------------------

struct Tmux {
    socket: PathBuf,
    session: String,
}

impl Tmux {
    /// Runs `shell_cmd` in a detached 120x30 session on a private tmux server.
    fn start(dir: &Path, shell_cmd: &str) -> Tmux {
        let t = Tmux {
            socket: dir.join("tmux.sock"),
            session: "cli".to_owned(),
        };
        let ok = Command::new("tmux")
            .arg("-S")
            .arg(&t.socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "30",
                "-s",
                &t.session,
            ])
            .arg(shell_cmd)
            .status()
            .expect("tmux is needed (scripts/test.sh installs it)");
        assert!(ok.success());
        t
    }

    fn screen(&self) -> String {
        let o = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        text(&o.stdout)
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
    }
}

/// A shell command line running `name args`, then printing its exit code and waiting, so
/// the screen stays for the test to read.
fn in_terminal(dir: &Path, name: &str, args: &[&str]) -> String {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "env -u TAILCACHE_SERVER -u TAILCACHE_TOKEN -u NO_COLOR XDG_CONFIG_HOME='{}' USER=tester TERM=xterm-256color '{}' {}; echo EXIT=$?; sleep 600",
        dir.join("xdg").display(),
        bin(name).display(),
        quoted.join(" ")
    )
}

#[test]
fn bs_watch_and_bl_follow_in_a_terminal() {
    let d = scratch();
    let gate = Gate::new(d.path(), "go");
    let server = start(d.path(), Some(&held_build(&gate)), None);
    let url = server.api_url();
    let o = run(d.path(), "bt", &["--server", url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    wait_status(d.path(), url, "step hold", |s| {
        s.current_step.as_deref() == Some("hold")
    });

    let watch_dir = d.path().join("watch");
    std::fs::create_dir_all(&watch_dir).unwrap();
    let watch = Tmux::start(
        &watch_dir,
        &in_terminal(d.path(), "bs", &["--server", url, "--watch"]),
    );
    let follow_dir = d.path().join("follow");
    std::fs::create_dir_all(&follow_dir).unwrap();
    let follow = Tmux::start(
        &follow_dir,
        &in_terminal(d.path(), "bl", &["--server", url, "-f", "-n", "20"]),
    );

    let screen = watch.wait_for("the running step", |s| s.contains("step hold"));
    assert!(!screen.contains("EXIT="), "{screen}");
    follow.wait_for("the tail", |s| {
        s.lines().any(|l| l.trim_end() == "hold-started")
    });

    gate.open();
    let screen = follow.wait_for("the end", |s| s.contains("EXIT="));
    assert!(
        screen.lines().any(|l| l.trim_end() == "finish-line-2"),
        "{screen}"
    );
    assert!(screen.contains("EXIT=0"), "{screen}");
    let screen = watch.wait_for("the end", |s| s.contains("EXIT="));
    assert!(screen.contains("success"), "{screen}");
    assert!(screen.contains("EXIT=0"), "{screen}");
    // Redrawn in place: the running line is gone from the final screen.
    assert!(!screen.contains("step hold"), "{screen}");
}

#[test]
fn install_links_makes_bt_bs_bl_and_replaces_other_files_only_when_forced() {
    // A copy of the binary (a hard link: same file system) in a directory of its own, so
    // the default directory, the binary's, can be tried.
    let home = tempfile::Builder::new()
        .prefix("tc-cli-links.")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let exe = home.path().join("tailcache");
    std::fs::hard_link(TAILCACHE, &exe).unwrap();
    let install = |args: &[&str]| {
        Command::new(&exe)
            .arg("install-links")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = install(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for name in ["bt", "bs", "bl"] {
        let link = home.path().join(name);
        // Beside the binary the link is relative.
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("tailcache"));
        let o = Command::new(&link).arg("--help").output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert!(
            text(&o.stdout).contains(&format!("Usage: {name} [OPTIONS]")),
            "{name}: {}",
            text(&o.stdout)
        );
    }
    // Again: nothing to do.
    let o = install(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("already"), "{}", text(&o.stdout));

    // Elsewhere: absolute links; a file of the same name stays unless --force.
    let other = home.path().join("bin");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("bs"), "#!/bin/sh\necho an older bs\n").unwrap();
    let o = install(&[other.to_str().unwrap()]);
    assert_fails(&o, 7, "--force");
    assert_eq!(
        std::fs::read_to_string(other.join("bs")).unwrap(),
        "#!/bin/sh\necho an older bs\n"
    );
    let o = install(&["--force", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for name in ["bt", "bs", "bl"] {
        assert_eq!(
            std::fs::read_link(other.join(name)).unwrap(),
            std::fs::canonicalize(&exe).unwrap()
        );
    }
    let o = Command::new(other.join("bl"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(text(&o.stdout).split_whitespace().next(), Some("bl"));
}

#[test]
fn completions_and_man_pages() {
    let d = scratch();
    for shell in ["bash", "zsh", "fish"] {
        for program in ["tailcache", "bt", "bs", "bl"] {
            let o = run(
                d.path(),
                "tailcache",
                &["completions", shell, "--program", program],
            );
            assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
            assert!(text(&o.stdout).contains(program), "{shell} {program}");
        }
    }
    let o = run(
        d.path(),
        "tailcache",
        &["completions", "bash", "--program", "bl"],
    );
    assert!(text(&o.stdout).contains("--follow"));
    let man = d.path().join("man");
    let o = run(d.path(), "tailcache", &["man", man.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for page in [
        "tailcache.1",
        "bt.1",
        "bs.1",
        "bl.1",
        "tailcache-bootstrap-new-machine.1",
    ] {
        let t = std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(t.starts_with(".ie") || t.contains(".TH"), "{page}: {t}");
    }
    let o = run(d.path(), "bt", &["--bogus"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bt_wait_shows_the_step_in_a_terminal() {
    let d = scratch();
    let gate = Gate::new(d.path(), "go");
    let server = start(d.path(), Some(&held_build(&gate)), None);
    let url = server.api_url();
    let term = Tmux::start(
        d.path(),
        &in_terminal(d.path(), "bt", &["--server", url, "--wait"]),
    );
    let screen = term.wait_for("the spinner on step hold", |s| s.contains(": hold ·"));
    let id = status_json(d.path(), url).build_id.unwrap();
    assert!(
        screen.contains(&format!("build {id} triggered")),
        "{screen}"
    );
    assert!(screen.contains(&format!("build {id}: hold")), "{screen}");
    gate.open();
    let screen = term.wait_for("the end", |s| s.contains("EXIT="));
    assert!(screen.contains(&format!("build {id} success")), "{screen}");
    assert!(screen.contains("EXIT=0"), "{screen}");
    // The spinner line is cleared at the end.
    assert!(!screen.contains(": hold ·"), "{screen}");
}

// --- hosts -----------------------------------------------------------------------------

/// The line of `host` in `bs`'s table, split into columns.
fn table_row(out: &str, host: &str) -> Vec<String> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no line for {host} in:\n{out}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bt_wait_follows_every_target_and_bs_shows_each_host() {
    let fleet = Fleet::new(FleetVariant::FIRST);
    // zstd: a built target is `compressing` before it is `ready`.
    let server = fleet.server("").compression("zstd").start();
    let d = scratch();
    let url = server.api_url();

    let o = run(d.path(), "bt", &["--server", url, "--wait"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out} {}", text(&o.stderr));
    assert!(out.contains("  ✓ laptop: generation 1 ready"), "{out}");
    assert!(
        out.contains("  ✓ alice@laptop: generation 1 ready"),
        "{out}"
    );
    assert!(out.contains("  ✗ server: failed"), "{out}");
    // It ended only once the built targets were servable.
    for h in server.hosts().hosts {
        let want = if h.name == "server" {
            HostState::Failed
        } else {
            HostState::Ready
        };
        assert_eq!(h.state, want, "{} when bt --wait ended: {out}", h.name);
    }

    let o = run(d.path(), "bs", &["--server", url]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!out.contains('\x1b'), "colour on a pipe: {out:?}");
    let header = out
        .lines()
        .find(|l| l.starts_with("host "))
        .unwrap_or_else(|| panic!("no table in:\n{out}"));
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["host", "kind", "state", "gen", "closure", "changes"]
    );
    let laptop = table_row(&out, "laptop");
    assert_eq!(laptop[1..4], ["nixos", "ready", "1"], "{out}");
    assert!(laptop[5].ends_with("B"), "closure size: {out}");
    assert_eq!(laptop[6..], ["first", "generation"], "{out}");
    let home = table_row(&out, "alice@laptop");
    assert_eq!(home[1..4], ["home", "ready", "1"], "{out}");
    let failed = table_row(&out, "server");
    assert_eq!(failed[1..5], ["nixos", "failed", "-", "-"], "{out}");
    assert!(out.contains("fleet-broken-0.1.drv"), "{out}");

    let o = run(d.path(), "bs", &["--server", url, "--host", "server"]);
    let detail = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        detail.contains("current: no ready generation yet"),
        "{detail}"
    );
    assert!(
        detail.lines().any(
            |l| l.trim_start().starts_with("failed derivation: /nix/store/")
                && l.ends_with("-fleet-broken-0.1.drv")
        ),
        "{detail}"
    );
    let o = run(
        d.path(),
        "bs",
        &["--server", url, "--host", "server", "--json"],
    );
    let view: tailcache_wire::hosts::HostView =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "bs --host --json is not a HostView ({e}): {}",
                text(&o.stdout)
            )
        });
    assert_eq!(
        (view.name.as_str(), view.state),
        ("server", HostState::Failed)
    );
    let o = run(d.path(), "bs", &["--server", url, "--host", "nowhere"]);
    assert_fails(&o, 8, "no target named nowhere (its targets: ");

    // The laptop changes, the server is fixed: every target ready, exit 0, and the diff.
    fleet.commit(FleetVariant {
        server_fails: false,
        ..FleetVariant::FIRST.laptop(2)
    });
    let o = run(d.path(), "bt", &["--server", url, "--wait", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let last: serde_json::Value =
        serde_json::from_str(text(&o.stdout).lines().last().unwrap()).unwrap();
    let states: Vec<(String, String)> = last["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states.len(), 3, "{last}");
    assert!(states.iter().all(|(_, s)| s == "ready"), "{last}");
    let o = run(d.path(), "bs", &["--server", url, "--host", "laptop"]);
    let detail = text(&o.stdout);
    assert!(detail.contains("current: generation 2"), "{detail}");
    assert!(detail.contains("changes since generation 1"), "{detail}");
    assert!(
        detail.contains("nixos-system-laptop: 24.05.1 → 24.05.2"),
        "{detail}"
    );
    let o = run(d.path(), "bs", &["--server", url]);
    let out = text(&o.stdout);
    assert_eq!(
        table_row(&out, "laptop")[1..4],
        ["nixos", "ready", "2"],
        "{out}"
    );
}

#[test]
fn bt_wait_shows_the_targets_in_a_terminal() {
    let fleet = Fleet::new(FleetVariant {
        server_fails: false,
        ..FleetVariant::FIRST
    });
    let server = fleet.start();
    let d = scratch();
    let url = server.api_url();
    let term = Tmux::start(
        d.path(),
        &in_terminal(d.path(), "bt", &["--server", url, "--wait"]),
    );
    let screen = term.wait_for("the end", |s| s.contains("EXIT="));
    assert!(screen.contains("build 1 success"), "{screen}");
    assert!(screen.contains("laptop: generation 1 ready"), "{screen}");
    assert!(
        screen.contains("alice@laptop: generation 1 ready"),
        "{screen}"
    );
    assert!(screen.contains("server: generation 1 ready"), "{screen}");
    assert!(screen.contains("EXIT=0"), "{screen}");
}
