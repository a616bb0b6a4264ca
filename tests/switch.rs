//! `tailcache switch` with real Nix and real processes. The closures are built by real Nix
//! into a throwaway server store and served by the real `tailcache serve` cache listener;
//! the generation records come from a stand-in for the build API that serves `GET
//! /hosts/<name>` replies the test writes (signed with the server's key, with another key,
//! tampered with, older), so every refusal is checked against a reply crafted for it.
//! Stock Nix substitutes into a fresh client store (a chroot store, signatures required);
//! the NixOS-shaped toplevel's `bin/switch-to-configuration` and the home-manager-shaped
//! `activate` record their arguments in files the test reads. A refusal must change
//! nothing: not the profile, not the applied-generations file, not the client store.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::nix::{is_valid, path_infos};
use common::{NixEnv, TestCache};
use tailcache_store::signing::SecretKey;
use tailcache_wire::generation::{
    ClosureDiff, GenerationRecord, PackageChange, SignedGeneration, TargetKind,
};
use tailcache_wire::hosts::{
    GenerationState, GenerationView, HostState, HostView, HostsReply, TargetOutcome,
};
use tempfile::TempDir;

/// Two versions of a NixOS-shaped system and a home-manager-shaped activation package,
/// sharing a dependency; the scripts append their arguments to files under `record`.
const CLOSURES_NIX: &str = r#"
{ nonce, record }:
let
  mk = name: script: builtins.derivation {
    inherit name nonce; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; args = [ "-c" script ];
  };
  shared = mk "shared-lib-1.0" ''echo shared ${nonce} > $out'';
  dep = v: mk "dep-${v}" ''echo ${shared} dep ${v} > $out'';
  system = v: mk "nixos-system-laptop-${v}" ''
    mkdir -p $out/bin
    echo ${dep v} > $out/dep
    printf '#!/bin/sh\necho "$*" >> ${record}/switch-args\n' > $out/bin/switch-to-configuration
    chmod +x $out/bin/switch-to-configuration
  '';
  home = mk "home-manager-generation" ''
    mkdir -p $out
    echo ${dep "1"} > $out/dep
    printf '#!/bin/sh\necho "activate $*" >> ${record}/activate-args\n' > $out/activate
    chmod +x $out/activate
  '';
in { system1 = system "1"; system2 = system "2"; dep1 = dep "1"; dep2 = dep "2"; inherit home shared; }
"#;

struct Fixture {
    nix: NixEnv,
    dir: TempDir,
    key: SecretKey,
    public: String,
    cache: TestCache,
    api: StandIn,
    paths: BTreeMap<String, String>,
}

impl Fixture {
    fn start() -> Fixture {
        let nix = NixEnv::new();
        let dir = tempfile::Builder::new()
            .prefix("tc-switch.")
            .tempdir()
            .unwrap();
        let record = dir.path().join("record");
        std::fs::create_dir_all(&record).unwrap();
        let expr = dir.path().join("closures.nix");
        std::fs::write(&expr, CLOSURES_NIX).unwrap();
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let server_root = dir.path().join("server-store");
        let attrs = ["system1", "system2", "dep1", "dep2", "home", "shared"];
        let mut args = vec![
            "--store",
            server_root.to_str().unwrap(),
            expr.to_str().unwrap(),
            "--no-out-link",
            "--argstr",
            "nonce",
            &nonce,
            "--argstr",
            "record",
            record.to_str().unwrap(),
        ];
        for a in attrs {
            args.extend(["-A", a]);
        }
        let outs = nix.run("nix-build", &args);
        let paths: BTreeMap<String, String> = attrs
            .iter()
            .zip(outs.lines())
            .map(|(a, p)| (a.to_string(), p.to_string()))
            .collect();
        assert_eq!(paths.len(), attrs.len(), "{outs}");
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let pair = nix.generate_key(&keys, "switch-server-1");
        let key = SecretKey::load(&pair.secret).unwrap();
        let cache = TestCache::builder()
            .store_root(&server_root)
            .secret_key(&pair.secret)
            .start();
        let api = StandIn::start();
        Fixture {
            nix,
            dir,
            key,
            public: pair.public,
            cache,
            api,
            paths,
        }
    }

    fn path(&self, name: &str) -> &str {
        &self.paths[name]
    }

    fn record_dir(&self) -> PathBuf {
        self.dir.path().join("record")
    }

    fn client_root(&self) -> PathBuf {
        self.dir.path().join("client")
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("state/applied.json")
    }

    fn profile(&self) -> PathBuf {
        self.client_root().join("nix/var/nix/profiles/system")
    }

    /// The record of `generation` of `target` for the closure at `out`.
    fn record(
        &self,
        target: &str,
        kind: TargetKind,
        generation: u64,
        out: &str,
        diff: ClosureDiff,
    ) -> GenerationRecord {
        let server_root = self.dir.path().join("server-store");
        let closure: Vec<String> = self
            .nix
            .run(
                "nix-store",
                &["--store", server_root.to_str().unwrap(), "-qR", out],
            )
            .lines()
            .map(str::to_owned)
            .collect();
        let refs: Vec<&str> = closure.iter().map(String::as_str).collect();
        let size = path_infos(&self.nix, server_root.to_str().unwrap(), &refs)
            .iter()
            .map(|i| i.nar_size)
            .sum();
        GenerationRecord {
            target: target.into(),
            kind,
            attribute: match kind {
                TargetKind::Home => format!("homeConfigurations.\"{target}\".activationPackage"),
                _ => format!("nixosConfigurations.{target}.config.system.build.toplevel"),
            },
            generation,
            out_path: out.into(),
            build_id: generation + 10,
            commit: Some(format!("{generation:0>40}")),
            lock_hash: None,
            built_at: "2026-12-01T12:00:00Z".parse().unwrap(),
            closure_nar_size: size,
            closure_paths: closure.len() as u64,
            diff,
        }
    }

    fn signed(&self, r: &GenerationRecord) -> SignedGeneration {
        SignedGeneration::sign(r, std::slice::from_ref(&self.key))
    }

    /// Serves `records` (newest first) as the kept generations of their target, in place
    /// of what was served for it.
    fn serve(&self, records: &[(SignedGeneration, GenerationState)]) {
        let first = records[0].0.parse_unverified().unwrap();
        let view = HostView {
            name: first.target.clone(),
            kind: first.kind,
            attribute: first.attribute.clone(),
            state: match records[0].1 {
                GenerationState::Ready => HostState::Ready,
                GenerationState::Compressing => HostState::Compressing,
            },
            current: records
                .iter()
                .find(|(_, s)| *s == GenerationState::Ready)
                .map(|(r, _)| r.parse_unverified().unwrap().generation),
            last_outcome: Some(TargetOutcome {
                target: first.target.clone(),
                build_id: first.build_id,
                result: "built".into(),
                generation: Some(first.generation),
                failed_derivations: vec![],
                error: None,
            }),
            generations: records
                .iter()
                .map(|(signed, state)| GenerationView {
                    generation: signed.parse_unverified().unwrap().generation,
                    state: *state,
                    signed: signed.clone(),
                })
                .collect(),
        };
        self.api.set(view);
    }

    /// `tailcache switch` against the stand-in API, substituting from the real cache into
    /// the client store; the keys Nix trusts are the server's.
    fn switch(&self, args: &[&str]) -> Output {
        self.switch_with(args, &[])
    }

    fn switch_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let client = self.client_root();
        let state = self.state_file();
        let mut c = Command::new(env!("CARGO_BIN_EXE_tailcache"));
        self.nix.configure(&mut c);
        c.args(["switch", "--server", &self.api.url])
            .arg("--store")
            .arg(&client)
            .arg("--state-file")
            .arg(&state)
            .args(["--nix-option", "substituters", self.cache.url()])
            .args(["--nix-option", "trusted-public-keys", &self.public])
            .args(args)
            .env_remove("TAILCACHE_SERVER")
            .env_remove("TAILCACHE_TOKEN")
            .env_remove("TAILCACHE_SWITCH_STATE")
            .env("USER", "tester")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.record_dir().join(file))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Everything a switch may change.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            profile: std::fs::read_link(self.profile()).ok(),
            state: std::fs::read(self.state_file()).ok(),
            switch_args: self.lines("switch-args"),
            activate_args: self.lines("activate-args"),
            profiles: std::fs::read_dir(self.profile().parent().unwrap())
                .map(|d| d.map(|e| e.unwrap().file_name()).collect())
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    profile: Option<PathBuf>,
    state: Option<Vec<u8>>,
    switch_args: Vec<String>,
    activate_args: Vec<String>,
    profiles: Vec<std::ffi::OsString>,
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

fn change(name: &str, before: &str, after: &str, size_delta: i64) -> PackageChange {
    PackageChange {
        name: name.into(),
        before: vec![before.into()],
        after: vec![after.into()],
        size_delta,
    }
}

#[test]
fn switch_substitutes_sets_the_profile_and_activates() {
    let f = Fixture::start();
    let sys1 = f.path("system1").to_owned();
    let r1 = f.record(
        "laptop",
        TargetKind::Nixos,
        1,
        &sys1,
        ClosureDiff::default(),
    );
    f.serve(&[(f.signed(&r1), GenerationState::Ready)]);

    let started = Instant::now();
    let out = ok("first switch", &f.switch(&["--host", "laptop"]));
    let first = started.elapsed();
    assert!(
        out.contains("laptop (nixos): generation 1 from build 11"),
        "{out}"
    );
    assert!(out.contains("signed by switch-server-1"), "{out}");
    assert!(out.contains("first generation of laptop"), "{out}");
    assert!(
        out.contains("✓ laptop is at generation 1 (switch)"),
        "{out}"
    );
    let client = f.client_root();
    for p in [&sys1, f.path("dep1"), f.path("shared")] {
        assert!(
            is_valid(&f.nix, client.to_str().unwrap(), p),
            "{p} not substituted"
        );
    }
    assert_eq!(profile_target(&f.profile()), sys1);
    assert_eq!(f.lines("switch-args"), ["switch"]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.state_file()).unwrap()).unwrap();
    let applied = &state["servers"][&f.public]["laptop"];
    assert_eq!(applied["generation"], 1, "{state}");
    assert_eq!(applied["out_path"], sys1.as_str(), "{state}");

    // Unchanged: said so, nothing run again.
    let before = f.snapshot();
    let started = Instant::now();
    let out = ok("unchanged switch", &f.switch(&["--host", "laptop"]));
    let unchanged = started.elapsed();
    assert!(
        out.contains("laptop is already at generation 1") && out.contains("nothing to do"),
        "{out}"
    );
    assert_eq!(f.snapshot(), before);

    // A new generation: the diff is shown, the profile moves, the script runs again.
    let sys2 = f.path("system2").to_owned();
    let diff = ClosureDiff {
        previous: Some(1),
        added: vec![f.path("dep2").into(), sys2.clone()],
        removed: vec![f.path("dep1").into(), sys1.clone()],
        packages: vec![
            change("dep", "1", "2", 0),
            change("nixos-system-laptop", "1", "2", 0),
        ],
    };
    let r2 = f.record("laptop", TargetKind::Nixos, 2, &sys2, diff);
    f.serve(&[
        (f.signed(&r2), GenerationState::Ready),
        (f.signed(&r1), GenerationState::Ready),
    ]);
    let dry = ok("dry run", &f.switch(&["--host", "laptop", "--dry-run"]));
    assert!(
        dry.contains("changes since generation 1: 2 paths added, 2 removed"),
        "{dry}"
    );
    assert!(dry.contains("dep: 1 → 2"), "{dry}");
    assert!(dry.contains("this machine: generation 1 (switch"), "{dry}");
    assert!(dry.contains("dry run: nothing was fetched"), "{dry}");
    assert_eq!(f.snapshot(), before, "--dry-run changed something");
    assert!(!is_valid(&f.nix, client.to_str().unwrap(), &sys2));

    let started = Instant::now();
    let out = ok("second switch", &f.switch(&["--host", "laptop"]));
    let changed = started.elapsed();
    assert!(out.contains("dep: 1 → 2"), "{out}");
    assert_eq!(profile_target(&f.profile()), sys2);
    assert_eq!(f.lines("switch-args"), ["switch", "switch"]);

    // Back to generation 1 on purpose, as `boot`.
    let out = ok(
        "rollback",
        &f.switch(&["--host", "laptop", "--generation", "1", "--action", "boot"]),
    );
    assert!(
        out.contains(
            "going back from generation 2 to generation 1 of laptop, as --generation 1 asks"
        ),
        "{out}"
    );
    assert_eq!(profile_target(&f.profile()), sys1);
    assert_eq!(f.lines("switch-args"), ["switch", "switch", "boot"]);

    // The home-manager target: $USER@hostname with --home; `activate` runs, no profile set.
    let home_name = format!("tester@{}", hostname());
    let home = f.path("home").to_owned();
    let rh = f.record(
        &home_name,
        TargetKind::Home,
        1,
        &home,
        ClosureDiff::default(),
    );
    f.serve(&[(f.signed(&rh), GenerationState::Ready)]);
    let profile_before = std::fs::read_link(f.profile()).unwrap();
    let out = ok("home switch", &f.switch(&["--home"]));
    assert!(
        out.contains(&format!("{home_name} (home): generation 1")),
        "{out}"
    );
    assert!(is_valid(&f.nix, client.to_str().unwrap(), &home));
    assert_eq!(f.lines("activate-args"), ["activate "]);
    assert_eq!(std::fs::read_link(f.profile()).unwrap(), profile_before);
    // --home refuses a NixOS target.
    let o = f.switch(&["--home", "--host", "laptop"]);
    refused(
        "--home on nixos",
        &o,
        2,
        "is a nixos target, not a home-manager one",
    );

    eprintln!(
        "switch timings: first {:.3}s, unchanged {:.3}s, changed {:.3}s",
        first.as_secs_f64(),
        unchanged.as_secs_f64(),
        changed.as_secs_f64()
    );
}

#[test]
fn refused_records_change_nothing() {
    let f = Fixture::start();
    let sys1 = f.path("system1").to_owned();
    let sys2 = f.path("system2").to_owned();
    let r1 = f.record(
        "laptop",
        TargetKind::Nixos,
        1,
        &sys1,
        ClosureDiff::default(),
    );
    let r2 = f.record(
        "laptop",
        TargetKind::Nixos,
        2,
        &sys2,
        ClosureDiff::default(),
    );
    f.serve(&[
        (f.signed(&r2), GenerationState::Ready),
        (f.signed(&r1), GenerationState::Ready),
    ]);
    ok("switch to 2", &f.switch(&["--host", "laptop"]));
    assert_eq!(profile_target(&f.profile()), sys2);
    let before = f.snapshot();
    let client = f.client_root();
    let client = client.to_str().unwrap();

    // Signed by another key.
    let other = SecretKey::generate("someone-else-1").unwrap();
    let r3 = f.record(
        "laptop",
        TargetKind::Nixos,
        3,
        f.path("system1"),
        ClosureDiff::default(),
    );
    f.serve(&[(
        SignedGeneration::sign(&r3, std::slice::from_ref(&other)),
        GenerationState::Ready,
    )]);
    let o = f.switch(&["--host", "laptop"]);
    refused(
        "another key",
        &o,
        9,
        "not signed by a trusted key (signed by: someone-else-1; trusted: switch-server-1)",
    );
    assert_eq!(f.snapshot(), before);

    // Tampered with: a genuine record of generation 2 whose text now names generation 3.
    let mut tampered = f.signed(&r2);
    tampered.record = tampered
        .record
        .replace("\"generation\":2", "\"generation\":3");
    assert!(tampered.record.contains("\"generation\":3"));
    f.serve(&[(tampered, GenerationState::Ready)]);
    let o = f.switch(&["--host", "laptop"]);
    refused(
        "tampered",
        &o,
        9,
        "the signature by switch-server-1 does not match the record",
    );
    assert_eq!(f.snapshot(), before);

    // Older than applied: the server offers generation 1 as its newest.
    f.serve(&[(f.signed(&r1), GenerationState::Ready)]);
    let o = f.switch(&["--host", "laptop"]);
    refused(
        "older",
        &o,
        9,
        "generation 1 of laptop is older than generation 2, which this machine applied",
    );
    assert_eq!(f.snapshot(), before);
    // Even as a dry run it says so and changes nothing.
    let o = f.switch(&["--host", "laptop", "--dry-run"]);
    refused("older, dry run", &o, 9, "older than generation 2");
    assert_eq!(f.snapshot(), before);

    // Not ready: generation 3 (a genuine record) is still compressing, and it is asked for.
    let r3 = f.record(
        "laptop",
        TargetKind::Nixos,
        3,
        &sys1,
        ClosureDiff::default(),
    );
    f.serve(&[
        (f.signed(&r3), GenerationState::Compressing),
        (f.signed(&r2), GenerationState::Ready),
    ]);
    let o = f.switch(&["--host", "laptop", "--generation", "3"]);
    refused(
        "not ready",
        &o,
        8,
        "generation 3 of laptop is not ready yet",
    );
    assert_eq!(f.snapshot(), before);
    // Without --generation the newest ready one (2, applied) is taken: nothing to do.
    let out = ok("newest ready", &f.switch(&["--host", "laptop"]));
    assert!(out.contains("already at generation 2"), "{out}");

    // Unknown host: the known ones are named.
    let o = f.switch(&["--host", "desktop"]);
    refused(
        "unknown host",
        &o,
        8,
        "the server builds no target named desktop; its targets: laptop (nixos)",
    );
    assert_eq!(f.snapshot(), before);

    // A key that does not trust the server's: from the config file instead of nix.conf.
    let cfg = f.nix.dir().join("config/tailcache");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        format!("trusted_keys = [\"{}\"]\n", other.public().to_nix_string()),
    )
    .unwrap();
    let o = f.switch(&["--host", "laptop"]);
    refused("config key", &o, 9, "trusted: someone-else-1");
    std::fs::remove_file(cfg.join("config.toml")).unwrap();

    // Nothing of the refused generations reached the client store.
    assert!(is_valid(&f.nix, client, &sys2));
    assert!(
        !is_valid(&f.nix, client, &sys1),
        "a refused closure was fetched"
    );
}

#[test]
fn a_nixos_switch_of_the_real_system_needs_root_and_nix_must_require_signatures() {
    let f = Fixture::start();
    let sys1 = f.path("system1").to_owned();
    let r1 = f.record(
        "laptop",
        TargetKind::Nixos,
        1,
        &sys1,
        ClosureDiff::default(),
    );
    f.serve(&[(f.signed(&r1), GenerationState::Ready)]);
    let before = f.snapshot();
    let o = f.switch(&["--host", "laptop", "--nix-option", "require-sigs", "false"]);
    refused("require-sigs false", &o, 7, "require-sigs = false");
    assert_eq!(f.snapshot(), before);
    assert!(!is_valid(&f.nix, f.client_root().to_str().unwrap(), &sys1));
}

/// A stand-in for the build API's `/hosts` routes, answering from what the test sets.
struct StandIn {
    url: String,
    hosts: Arc<Mutex<BTreeMap<String, HostView>>>,
}

impl StandIn {
    fn start() -> StandIn {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let hosts: Arc<Mutex<BTreeMap<String, HostView>>> = Arc::default();
        let served = Arc::clone(&hosts);
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
                let hosts = served.lock().unwrap();
                let (status, body) = if path == "/hosts" {
                    let reply = HostsReply {
                        hosts: hosts.values().cloned().collect(),
                    };
                    ("200 OK", serde_json::to_string(&reply).unwrap())
                } else {
                    let name = path.strip_prefix("/hosts/").unwrap_or("");
                    match hosts.get(name) {
                        Some(v) => ("200 OK", serde_json::to_string(v).unwrap()),
                        None => (
                            "404 Not Found",
                            r#"{"status":"not_found","message":"not found"}"#.to_owned(),
                        ),
                    }
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        StandIn { url, hosts }
    }

    /// Serves `view` (replacing the host of that name).
    fn set(&self, view: HostView) {
        self.hosts.lock().unwrap().insert(view.name.clone(), view);
    }
}
