//! The status page `GET /` in a real browser: headless Chromium (Debian `chromium`) loads it
//! while a build runs, and the DOM it ends with must show the cache's public key and a log
//! line the build printed only after the page had subscribed to the live log (the server's
//! LogTail counts each `Follow`, which is how the test knows). After two builds of the
//! three-host fleet (real Nix) it must show a card per host — state, generation, closure
//! size, what changed, the failing derivation — and the build history as an SVG chart; a
//! screenshot of that page is kept under `<target>/test-artifacts/status-page.png`.

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestCache;
use common::api::{Gate, build_section, sh_step};
use common::fleet::{Fleet, FleetVariant};

const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

/// Chromium under `timeout`, stopped (with its children) when dropped.
struct Browser {
    child: Child,
    stderr: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // `timeout` passes SIGTERM on to chromium.
            let _ = Command::new("kill")
                .args(["-s", "TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

fn chromium(profile: &Path, args: &[&str]) -> Browser {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("chromium").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "headless Chromium is required for this test: apt-get install chromium"
    );
    let stderr = profile.with_extension("stderr");
    let child = Command::new("timeout")
        .args([
            "-k",
            "5",
            &BROWSER_TIMEOUT.as_secs().to_string(),
            "chromium",
        ])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
    Browser { child, stderr }
}

/// Waits for the browser and returns its stdout; panics with its stderr if it failed.
fn finish(mut b: Browser) -> String {
    let mut out = String::new();
    b.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = b.child.wait().unwrap();
    assert!(
        status.success(),
        "chromium failed ({status}):\n{}",
        std::fs::read_to_string(&b.stderr).unwrap_or_default()
    );
    out
}

/// How many `Follow` requests LogTail has handled (one per live-log subscriber).
fn follows(server: &TestCache) -> f64 {
    server.metric(
        "tailcache_actor_messages_handled_total",
        &[("actor", "LogTail"), ("message", "Follow")],
    )
}

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_status_page_shows_the_key_and_live_log_lines_in_chromium() {
    let d = tempfile::Builder::new()
        .prefix("tc-page.")
        .tempdir()
        .unwrap();
    let nonce = format!("{}", std::process::id());
    let gate = Gate::new(d.path(), "go");
    // The log also echoes each step's command line, so the lines looked for are put
    // together by the shell and never appear in the script's text.
    let steps = [sh_step(
        "live",
        &format!(
            "echo page-$(echo before)-{nonce}; {}; echo page-$(echo live)-{nonce}",
            gate.wait_script()
        ),
        "",
    )];
    let root = d.path().join("store-root");
    std::fs::create_dir_all(root.join("nix/store")).unwrap();
    let server = TestCache::builder()
        .store_root(&root)
        .build_toml(&build_section("kill_grace_secs = 2", &steps))
        .start();
    let pubkey = server.get("/pubkey");
    assert_eq!(pubkey.status, 200);
    let pubkey = pubkey.text().trim().to_string();
    assert!(pubkey.contains(':'), "public key {pubkey:?}");

    let t = server.trigger("page-tester", "itest-host");
    let id = t["build_id"].as_u64().expect("build_id");
    server.wait_step(id, "live");
    server.wait_log_line(&format!("page-before-{nonce}"));

    let before = follows(&server);
    let page = format!("{}/", server.api_url());
    // Virtual time stands still while the live log's request is open, so the DOM is
    // dumped only after the build ended (or the budget ran out once it had).
    let browser = chromium(
        &d.path().join("profile"),
        &["--virtual-time-budget=10000", "--dump-dom", &page],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while follows(&server) <= before {
        assert!(
            Instant::now() < deadline,
            "the page never subscribed to /build/logs?follow=1"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    gate.open();
    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s:?}");
    let dom = finish(browser);

    for id_attr in ["id=\"pubkey\"", "id=\"status\"", "id=\"log\""] {
        assert!(dom.contains(id_attr), "no {id_attr} in the page:\n{dom}");
    }
    assert!(
        dom.contains(&pubkey),
        "the key {pubkey} is not shown:\n{dom}"
    );
    assert!(
        dom.contains(&format!("page-before-{nonce}")),
        "the earlier log line is not shown:\n{dom}"
    );
    assert!(
        dom.contains(&format!("page-live-{nonce}")),
        "the line printed after the page subscribed is not shown:\n{dom}"
    );
    assert!(
        dom.contains("page-tester"),
        "who triggered the build is not shown:\n{dom}"
    );
}

#[test]
fn the_status_page_shows_a_card_per_host_and_the_build_history() {
    let fleet = Fleet::new(FleetVariant::FIRST);
    let server = fleet.start_built();
    fleet.commit(FleetVariant::FIRST.laptop(2));
    server.build_fleet();
    let d = fleet.scratch("page");
    let page = format!("{}/", server.api_url());
    let dom = finish(chromium(
        &d.join("profile"),
        &["--virtual-time-budget=10000", "--dump-dom", &page],
    ));

    let cards: Vec<&str> = dom.split("class=\"host-card ").skip(1).collect();
    assert_eq!(cards.len(), 3, "three host cards:\n{dom}");
    let card = |name: &str| -> &str {
        let needle = format!("data-host=\"{name}\"");
        let c = cards
            .iter()
            .find(|c| c.contains(&needle))
            .unwrap_or_else(|| panic!("no card for {name}:\n{dom}"));
        // The card's own markup ends where the next one begins.
        c.split("</div></div>").next().unwrap_or(c)
    };
    let laptop = card("laptop");
    assert!(laptop.starts_with("ready"), "{laptop}");
    for want in [
        "generation 2",
        "current 2",
        "fleet-motd 1 → 2",
        "+2 −2 paths",
    ] {
        assert!(
            laptop.contains(want),
            "laptop card lacks {want:?}: {laptop}"
        );
    }
    let home = card("alice@laptop");
    assert!(
        home.starts_with("ready") && home.contains("generation 1"),
        "{home}"
    );
    let failed = card("server");
    assert!(failed.starts_with("failed"), "{failed}");
    assert!(failed.contains("-fleet-broken-0.1.drv"), "{failed}");

    let chart = dom
        .split("id=\"history-chart\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no history chart:\n{dom}"));
    let chart = chart.split("</svg>").next().unwrap();
    assert_eq!(
        chart.matches("<rect").count(),
        2,
        "one bar per build: {chart}"
    );
    assert!(chart.contains("class=\"bar failed\""), "{chart}");

    let shot = artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let browser = chromium(
        &d.join("profile-shot"),
        &[
            "--virtual-time-budget=5000",
            "--window-size=1280,1400",
            "--hide-scrollbars",
            &format!("--screenshot={}", shot.display()),
            &page,
        ],
    );
    finish(browser);
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    eprintln!("status page screenshot: {}", shot.display());
}
