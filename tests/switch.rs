//! `tailcache switch` with real Nix and real processes: the real server builds the
//! three-host test flake (`tests/common/fleet.rs`) into a throwaway store and serves it; a
//! client machine (a fresh chroot store with signatures required, its own applied-generations
//! file) switches to what it built, and what must be refused is: a record signed by another
//! key, one tampered with on the way (a proxy edits the reply), a generation older than the
//! one applied, one not ready, one of another host, an unknown host. A refusal changes
//! nothing: not the profile, not the applied file, not the client store, no activation. The
//! NixOS-shaped `bin/switch-to-configuration` and the home-manager-shaped `activate` log their
//! calls to `$TAILCACHE_ACTIVATION_LOG`, which the test reads.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::fleet::{Fleet, FleetVariant};
use common::nix::is_valid;
use common::{NixEnv, TestCache};
use tailcache_store::signing::SecretKey;
use tailcache_wire::generation::SignedGeneration;
use tailcache_wire::hosts::{GenerationState, HostView};

/// The fleet built once (laptop and alice's home at generation 1, the server failed), its
/// server, and a client machine that logs activations.
struct Built {
    fleet: Fleet,
    server: TestCache,
    machine: Machine,
    log: PathBuf,
}

impl Built {
    fn start() -> Built {
        let fleet = Fleet::new(FleetVariant::FIRST);
        let server = fleet.start_built();
        let client = fleet.scratch("client");
        Built {
            machine: Machine {
                root: client.join("root"),
                state: client.join("applied.json"),
            },
            log: client.join("activation.log"),
            fleet,
            server,
        }
    }

    /// A commit that changes the laptop only, built: its generation 2.
    fn change_laptop(&self) {
        self.fleet.commit(FleetVariant::FIRST.laptop(2));
        self.server.build_fleet();
    }

    /// `tailcache switch` of the machine against `api`.
    fn switch(&self, api: &str, args: &[&str]) -> Output {
        let log = self.log.to_str().unwrap();
        self.machine.switch(
            &self.fleet.nix,
            api,
            self.server.url(),
            &self.fleet.key.public,
            args,
            &[("TAILCACHE_ACTIVATION_LOG", log)],
        )
    }

    /// The out path of generation `generation` of `host` on the server.
    fn out(&self, host: &str, generation: u64) -> String {
        self.server.out_path(host, generation)
    }

    fn activations(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().map(|l| l.trim_end().to_owned()).collect())
            .unwrap_or_default()
    }

    /// The profile link, the applied file and the activation log.
    fn snapshot(&self) -> (Option<PathBuf>, Option<Vec<u8>>, Option<Vec<u8>>) {
        (
            std::fs::read_link(self.machine.profile()).ok(),
            std::fs::read(&self.machine.state).ok(),
            std::fs::read(&self.log).ok(),
        )
    }

    fn holds(&self, path: &str) -> bool {
        is_valid(&self.fleet.nix, self.machine.root.to_str().unwrap(), path)
    }

    /// The server's signing key, to sign what a stand-in serves as the server would.
    fn key(&self) -> SecretKey {
        SecretKey::load(&self.fleet.key.secret).unwrap()
    }
}

/// A client machine: a chroot store of its own and its applied-generations file.
struct Machine {
    root: PathBuf,
    state: PathBuf,
}

impl Machine {
    fn profile(&self) -> PathBuf {
        self.root.join("nix/var/nix/profiles/system")
    }

    /// `tailcache switch` against the API at `api`, substituting from the cache at `cache`
    /// into this machine's store, with `key` the one Nix trusts (`trusted-public-keys`).
    fn switch(
        &self,
        nix: &NixEnv,
        api: &str,
        cache: &str,
        key: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tailcache"));
        nix.configure(&mut c);
        c.args(["switch", "--server", api])
            .arg("--store")
            .arg(&self.root)
            .arg("--state-file")
            .arg(&self.state)
            .args(["--nix-option", "substituters", cache])
            .args(["--nix-option", "trusted-public-keys", key])
            .args(args)
            .env_remove("TAILCACHE_SERVER")
            .env_remove("TAILCACHE_TOKEN")
            .env_remove("TAILCACHE_SWITCH_STATE")
            .env_remove("TAILCACHE_CLIENT_CONFIG")
            .env(
                "TAILCACHE_SYSTEM_CONFIG",
                self.root.join("etc/tailcache/config.toml"),
            )
            .env("USER", "tester")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(what: &str, o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: stdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn refused(what: &str, o: &Output, code: i32, needle: &str) {
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: stdout:\n{}\nstderr:\n{err}",
        text(&o.stdout)
    );
    assert!(err.contains(needle), "{what}: {needle:?} not in {err:?}");
    assert!(!err.contains("panicked"), "{err}");
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

fn profile_target(profile: &Path) -> String {
    let link = std::fs::read_link(profile).unwrap();
    let link = profile.parent().unwrap().join(link);
    std::fs::read_link(link)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn switch_to_what_the_real_server_built() {
    let b = Built::start();
    let api = b.server.api_url().to_owned();
    let out1 = b.out("laptop", 1);

    let started = Instant::now();
    let out = ok("laptop", &b.switch(&api, &["--host", "laptop"]));
    let first = started.elapsed();
    assert!(out.contains("laptop (nixos): generation 1"), "{out}");
    assert!(out.contains("signed by fleet-1"), "{out}");
    assert!(out.contains("first generation of laptop"), "{out}");
    assert!(b.holds(&out1), "{out1} not substituted");
    assert_eq!(profile_target(&b.machine.profile()), out1);
    assert_eq!(b.activations(), [format!("laptop {out1} switch")]);

    // Already there: said so, nothing run again.
    let before = b.snapshot();
    let started = Instant::now();
    let out = ok("laptop unchanged", &b.switch(&api, &["--host", "laptop"]));
    let unchanged = started.elapsed();
    assert!(
        out.contains("laptop is already at generation 1") && out.contains("nothing to do"),
        "{out}"
    );
    assert_eq!(b.snapshot(), before);

    // The home-manager target: `activate` runs, the system profile stays.
    let home = b.out("alice@laptop", 1);
    let out = ok(
        "home",
        &b.switch(&api, &["--home", "--host", "alice@laptop"]),
    );
    assert!(out.contains("alice@laptop (home): generation 1"), "{out}");
    assert!(b.holds(&home));
    assert_eq!(b.activations()[1], format!("alice@laptop {home}"));
    assert_eq!(profile_target(&b.machine.profile()), out1);
    let o = b.switch(&api, &["--home", "--host", "laptop"]);
    refused(
        "--home of a nixos target",
        &o,
        2,
        "laptop is a nixos target",
    );
    let o = b.switch(&api, &["--host", "alice@laptop", "--action", "boot"]);
    refused(
        "boot of a home target",
        &o,
        2,
        "--action boot is for NixOS targets",
    );

    // Nothing to switch to: the failed host, an unknown one.
    let o = b.switch(&api, &["--host", "server"]);
    refused("failed host", &o, 8, "server has no ready generation yet");
    let o = b.switch(&api, &["--host", "desktop"]);
    refused(
        "unknown host",
        &o,
        8,
        "the server builds no target named desktop; its targets: alice@laptop (home), laptop (nixos), server (nixos)",
    );

    // A new commit changes the laptop only. The dry run shows the change and does nothing.
    b.change_laptop();
    let out2 = b.out("laptop", 2);
    assert_ne!(out2, out1);
    let before = b.snapshot();
    let dry = ok(
        "dry run",
        &b.switch(&api, &["--host", "laptop", "--dry-run"]),
    );
    assert!(dry.contains("laptop (nixos): generation 2"), "{dry}");
    assert!(
        dry.contains("changes since generation 1: 2 paths added, 2 removed"),
        "{dry}"
    );
    assert!(
        dry.contains("nixos-system-laptop: 24.05.1 → 24.05.2"),
        "{dry}"
    );
    assert!(dry.contains("this machine: generation 1 (switch"), "{dry}");
    assert!(dry.contains("dry run: nothing was fetched"), "{dry}");
    assert_eq!(b.snapshot(), before, "--dry-run changed something");
    assert!(!b.holds(&out2));
    eprintln!("tailcache switch --dry-run:\n{dry}");

    // Refused, each changing nothing.
    // Signed by another key than the one this machine trusts.
    let other = SecretKey::generate("someone-else-1").unwrap();
    let other = other.public().to_nix_string();
    let o = b.switch(&api, &["--host", "laptop", "--trusted-key", &other]);
    refused(
        "another key",
        &o,
        9,
        "not signed by a trusted key (signed by: fleet-1; trusted: someone-else-1)",
    );
    // The same from the config file's trusted_keys.
    let cfg = b.fleet.nix.dir().join("config/tailcache");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        format!("trusted_keys = [\"{other}\"]\n"),
    )
    .unwrap();
    let o = b.switch(&api, &["--host", "laptop"]);
    refused("config key", &o, 9, "trusted: someone-else-1)");
    std::fs::remove_file(cfg.join("config.toml")).unwrap();
    // Tampered with on the way: a proxy points the record at generation 1's system.
    let proxy = StandIn::proxy(&api, |path, body| {
        if path == "/hosts/laptop" {
            body.replace("nixos-system-laptop-24.05.2", "nixos-system-laptop-24.05.1")
        } else {
            body
        }
    });
    let o = b.switch(&proxy.url, &["--host", "laptop"]);
    refused(
        "tampered",
        &o,
        9,
        "the signature by fleet-1 does not match the record",
    );
    // Older than applied: this machine remembers a later generation of the laptop.
    let saved = std::fs::read(&b.machine.state).unwrap();
    let mut state: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    state["servers"][&b.fleet.key.public]["laptop"]["generation"] = 7.into();
    let bumped = serde_json::to_vec_pretty(&state).unwrap();
    std::fs::write(&b.machine.state, &bumped).unwrap();
    let o = b.switch(&api, &["--host", "laptop"]);
    refused(
        "older",
        &o,
        9,
        "generation 2 of laptop is older than generation 7, which this machine applied",
    );
    assert_eq!(std::fs::read(&b.machine.state).unwrap(), bumped);
    std::fs::write(&b.machine.state, &saved).unwrap();
    // Nix without signature checks.
    let o = b.switch(
        &api,
        &["--host", "laptop", "--nix-option", "require-sigs", "false"],
    );
    refused("require-sigs false", &o, 7, "require-sigs = false");
    assert_eq!(b.snapshot(), before, "a refusal changed something");
    assert!(!b.holds(&out2), "a refused closure was fetched");

    // The changed host.
    let started = Instant::now();
    let out = ok("laptop changed", &b.switch(&api, &["--host", "laptop"]));
    let changed = started.elapsed();
    assert!(
        out.contains("✓ laptop is at generation 2 (switch)"),
        "{out}"
    );
    assert!(b.holds(&out2));
    assert_eq!(profile_target(&b.machine.profile()), out2);
    assert_eq!(
        b.activations().last().unwrap(),
        &format!("laptop {out2} switch")
    );

    // Back to generation 1 on purpose, for the next boot.
    let out = ok(
        "rollback",
        &b.switch(
            &api,
            &["--host", "laptop", "--generation", "1", "--action", "boot"],
        ),
    );
    assert!(
        out.contains(
            "going back from generation 2 to generation 1 of laptop, as --generation 1 asks"
        ),
        "{out}"
    );
    assert_eq!(profile_target(&b.machine.profile()), out1);
    assert_eq!(
        b.activations().last().unwrap(),
        &format!("laptop {out1} boot")
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&b.machine.state).unwrap()).unwrap();
    let applied = &state["servers"][&b.fleet.key.public]["laptop"];
    assert_eq!(applied["generation"], 1, "{state}");
    assert_eq!(applied["action"], "boot", "{state}");

    eprintln!(
        "switch timings against the real server: first {:.3}s, unchanged {:.3}s, changed {:.3}s",
        first.as_secs_f64(),
        unchanged.as_secs_f64(),
        changed.as_secs_f64()
    );
}

/// What only a server of another shape could send, served by a stand-in in front of the
/// real one that signs with the real server's key: a home target named after this machine
/// (`$USER@hostname`, what `--home` takes), a generation not ready yet, and a genuine record
/// of one host served under another host's name.
#[test]
fn home_is_user_at_hostname_and_what_a_server_should_not_send_is_refused() {
    let b = Built::start();
    let api = b.server.api_url().to_owned();
    let home_name = format!("tester@{}", hostname());
    let stand_in = {
        let api = api.clone();
        let key = b.key();
        let home_name = home_name.clone();
        StandIn::start(move |path| {
            let real = |p: &str| -> HostView {
                serde_json::from_slice(&common::http::get(&api, p).body).unwrap()
            };
            // The view of `host` renamed to `name`, its records re-signed under that name.
            let renamed = |host: &str, name: &str| {
                let mut v = real(&format!("/hosts/{host}"));
                v.name = name.to_owned();
                for g in &mut v.generations {
                    let mut r = g.signed.parse_unverified().unwrap();
                    r.target = name.to_owned();
                    g.signed = SignedGeneration::sign(&r, std::slice::from_ref(&key));
                }
                v
            };
            let view = match path.strip_prefix("/hosts/") {
                Some(n) if n == home_name => renamed("alice@laptop", &home_name),
                Some("compressing") => {
                    let mut v = renamed("laptop", "compressing");
                    for g in &mut v.generations {
                        g.state = GenerationState::Compressing;
                    }
                    v.current = None;
                    v
                }
                Some("swapped") => {
                    let mut v = real("/hosts/laptop");
                    v.name = "swapped".to_owned();
                    v
                }
                _ => {
                    let r = common::http::get(&api, path);
                    return (r.status, r.text());
                }
            };
            (200, serde_json::to_string(&view).unwrap())
        })
    };

    let home = b.out("alice@laptop", 1);
    let out = ok("--home", &b.switch(&stand_in.url, &["--home"]));
    assert!(
        out.contains(&format!("{home_name} (home): generation 1")),
        "{out}"
    );
    assert!(b.holds(&home));
    assert_eq!(b.activations(), [format!("alice@laptop {home}")]);
    assert!(std::fs::symlink_metadata(b.machine.profile()).is_err());

    let before = b.snapshot();
    let o = b.switch(&stand_in.url, &["--host", "compressing"]);
    refused(
        "no ready generation",
        &o,
        8,
        "compressing has no ready generation yet",
    );
    let o = b.switch(
        &stand_in.url,
        &["--host", "compressing", "--generation", "1"],
    );
    refused(
        "not ready",
        &o,
        8,
        "generation 1 of compressing is not ready yet",
    );
    let o = b.switch(&stand_in.url, &["--host", "swapped"]);
    refused(
        "another host's record",
        &o,
        9,
        "the server's reply for swapped carries a record of laptop",
    );
    assert_eq!(b.snapshot(), before, "a refusal changed something");
    assert!(
        !b.holds(&b.out("laptop", 1)),
        "a refused closure was fetched"
    );
}

/// A stand-in for the build API: answers each GET with what `answer(path)` returns (a
/// status code and a JSON body), one connection per request.
struct StandIn {
    url: String,
}

impl StandIn {
    fn start(answer: impl Fn(&str) -> (u16, String) + Send + 'static) -> StandIn {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut head = String::new();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let _ = r.read_line(&mut head);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let (status, body) = answer(&path);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} -\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        StandIn { url }
    }

    /// A proxy of the real API at `api` that passes every reply through `edit(path, body)`.
    fn proxy(api: &str, edit: impl Fn(&str, String) -> String + Send + 'static) -> StandIn {
        let api = api.to_owned();
        StandIn::start(move |path| {
            let r = common::http::get(&api, path);
            (r.status, edit(path, r.text()))
        })
    }
}
