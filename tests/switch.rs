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

use common::fleet::{Fleet, FleetVariant};
use common::nix::{is_valid, path_infos};
use common::{NixEnv, TestCache};
use tailcache_store::signing::SecretKey;
use tailcache_wire::generation::{ClosureDiff, GenerationRecord, SignedGeneration, TargetKind};
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
    hosts: Arc<Mutex<BTreeMap<String, HostView>>>,
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
        let hosts = Arc::default();
        let api = StandIn::hosts(Arc::clone(&hosts));
        Fixture {
            nix,
            dir,
            key,
            public: pair.public,
            cache,
            api,
            hosts,
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

    /// Serves generation `generation` of a new target, ready, with its first record.
    fn serve_new(
        &self,
        target: &str,
        kind: TargetKind,
        generation: u64,
        out: &str,
    ) -> GenerationRecord {
        let r = self.record(target, kind, generation, out, ClosureDiff::default());
        self.serve(&[(self.signed(&r), GenerationState::Ready)]);
        r
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
        self.hosts.lock().unwrap().insert(view.name.clone(), view);
    }

    /// `tailcache switch` against the stand-in API, substituting from the real cache into
    /// the client store; the keys Nix trusts are the server's.
    fn switch(&self, args: &[&str]) -> Output {
        self.switch_with(args, &[])
    }

    fn switch_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let machine = Machine {
            root: self.client_root(),
            state: self.state_file(),
        };
        machine.switch(
            &self.nix,
            &self.api.url,
            self.cache.url(),
            &self.public,
            args,
            env,
        )
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
            .env("USER", "tester")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
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

#[test]
fn home_targets_are_user_at_hostname_and_nixos_ones_can_boot() {
    let f = Fixture::start();
    let sys1 = f.path("system1").to_owned();
    f.serve_new("laptop", TargetKind::Nixos, 1, &sys1);
    let home_name = format!("tester@{}", hostname());
    let home = f.path("home").to_owned();
    f.serve_new(&home_name, TargetKind::Home, 1, &home);
    let client = f.client_root();
    let client = client.to_str().unwrap();

    // --home: $USER@hostname; `activate` runs, no profile is set.
    let out = ok("home switch", &f.switch(&["--home"]));
    assert!(
        out.contains(&format!("{home_name} (home): generation 1")),
        "{out}"
    );
    assert!(out.contains("first generation of"), "{out}");
    assert!(is_valid(&f.nix, client, &home));
    assert_eq!(f.lines("activate-args"), ["activate "]);
    assert!(std::fs::symlink_metadata(f.profile()).is_err());
    let o = f.switch(&["--home", "--host", "laptop"]);
    refused(
        "--home on nixos",
        &o,
        2,
        "is a nixos target, not a home-manager one",
    );
    let o = f.switch(&["--home", "--action", "boot"]);
    refused("boot of home", &o, 2, "--action boot is for NixOS targets");

    // --action boot: the profile moves, switch-to-configuration gets `boot`.
    let out = ok("boot", &f.switch(&["--host", "laptop", "--action", "boot"]));
    assert!(out.contains("✓ laptop is at generation 1 (boot)"), "{out}");
    assert_eq!(profile_target(&f.profile()), sys1);
    assert_eq!(f.lines("switch-args"), ["boot"]);
    // Booted, not switched: `switch` still has something to do.
    ok("switch", &f.switch(&["--host", "laptop"]));
    assert_eq!(f.lines("switch-args"), ["boot", "switch"]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.state_file()).unwrap()).unwrap();
    let applied = &state["servers"][&f.public]["laptop"];
    assert_eq!(applied["generation"], 1, "{state}");
    assert_eq!(applied["action"], "switch", "{state}");
    assert_eq!(applied["out_path"], sys1.as_str(), "{state}");
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
fn nix_must_require_signatures() {
    let f = Fixture::start();
    let sys1 = f.path("system1").to_owned();
    f.serve_new("laptop", TargetKind::Nixos, 1, &sys1);
    let before = f.snapshot();
    let o = f.switch(&["--host", "laptop", "--nix-option", "require-sigs", "false"]);
    refused("require-sigs false", &o, 7, "require-sigs = false");
    assert_eq!(f.snapshot(), before);
    assert!(!is_valid(&f.nix, f.client_root().to_str().unwrap(), &sys1));
}

/// The whole loop with the real server: it builds the three-host test flake, and a fresh
/// client switches its laptop and alice's home to exactly what it built; a second commit
/// gives the laptop a new generation the client switches to; then what must be refused is.
#[test]
fn switch_to_what_the_real_server_built() {
    let fleet = Fleet::new(FleetVariant::FIRST);
    let server = fleet.start_built();
    let api = server.api_url().to_owned();
    let machine = Machine {
        root: fleet.scratch("client").join("root"),
        state: fleet.scratch("client").join("applied.json"),
    };
    let log = fleet.scratch("client").join("activation.log");
    let log_s = log.to_str().unwrap().to_owned();
    let env = [("TAILCACHE_ACTIVATION_LOG", log_s.as_str())];
    let switch = |api: &str, args: &[&str]| {
        machine.switch(&fleet.nix, api, server.url(), &fleet.key.public, args, &env)
    };
    let activations = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().map(|l| l.trim_end().to_owned()).collect())
            .unwrap_or_default()
    };
    let root = machine.root.to_str().unwrap().to_owned();
    let laptop1 = server.host("laptop");
    let out1 = laptop1.generations[0]
        .signed
        .parse_unverified()
        .unwrap()
        .out_path;

    let started = Instant::now();
    let out = ok("laptop", &switch(&api, &["--host", "laptop"]));
    let first = started.elapsed();
    assert!(out.contains("laptop (nixos): generation 1"), "{out}");
    assert!(out.contains("signed by fleet-1"), "{out}");
    assert!(is_valid(&fleet.nix, &root, &out1), "{out1} not substituted");
    assert_eq!(profile_target(&machine.profile()), out1);
    assert_eq!(activations(), [format!("laptop {out1} switch")]);

    let started = Instant::now();
    let out = ok("laptop unchanged", &switch(&api, &["--host", "laptop"]));
    let unchanged = started.elapsed();
    assert!(out.contains("laptop is already at generation 1"), "{out}");
    assert_eq!(activations().len(), 1);

    let home = server.host("alice@laptop");
    let home_out = home.generations[0]
        .signed
        .parse_unverified()
        .unwrap()
        .out_path;
    let out = ok("home", &switch(&api, &["--home", "--host", "alice@laptop"]));
    assert!(out.contains("alice@laptop (home): generation 1"), "{out}");
    assert!(is_valid(&fleet.nix, &root, &home_out));
    assert_eq!(activations()[1], format!("alice@laptop {home_out}"));
    assert_eq!(
        profile_target(&machine.profile()),
        out1,
        "home moved the system profile"
    );

    // The failing host has nothing ready.
    let o = switch(&api, &["--host", "server"]);
    refused("failed host", &o, 8, "server has no ready generation yet");

    // A new commit changes the laptop only.
    fleet.commit(FleetVariant::FIRST.laptop(2));
    server.build_fleet();
    let out2 = server.host("laptop").generations[0]
        .signed
        .parse_unverified()
        .unwrap()
        .out_path;
    assert_ne!(out2, out1);
    let before = machine_snapshot(&machine, &log);
    let dry = ok("dry run", &switch(&api, &["--host", "laptop", "--dry-run"]));
    assert!(dry.contains("laptop (nixos): generation 2"), "{dry}");
    assert!(dry.contains("changes since generation 1"), "{dry}");
    assert!(dry.contains("this machine: generation 1 (switch"), "{dry}");
    assert!(dry.contains("dry run: nothing was fetched"), "{dry}");
    assert_eq!(
        machine_snapshot(&machine, &log),
        before,
        "--dry-run changed something"
    );
    assert!(!is_valid(&fleet.nix, &root, &out2));
    eprintln!("tailcache switch --dry-run:\n{dry}");

    // Refusals against the real server's records, each changing nothing.
    // Another key: the client trusts someone else's.
    let other = SecretKey::generate("someone-else-1").unwrap();
    let other = other.public().to_nix_string();
    let o = switch(&api, &["--host", "laptop", "--trusted-key", &other]);
    refused(
        "another key",
        &o,
        9,
        "not signed by a trusted key (signed by: fleet-1; trusted: someone-else-1)",
    );
    // Tampered with on the way: a proxy edits the laptop's record.
    let proxy = StandIn::proxy(&api, |path, body| {
        if path == "/hosts/laptop" {
            body.replace("nixos-system-laptop-24.05.2", "nixos-system-laptop-24.05.1")
        } else {
            body
        }
    });
    let o = switch(&proxy.url, &["--host", "laptop"]);
    refused(
        "tampered",
        &o,
        9,
        "the signature by fleet-1 does not match the record",
    );
    // Older than applied: this machine remembers a later generation of the laptop.
    let saved = std::fs::read(&machine.state).unwrap();
    let mut state: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    state["servers"][&fleet.key.public]["laptop"]["generation"] = 7.into();
    let bumped = serde_json::to_vec_pretty(&state).unwrap();
    std::fs::write(&machine.state, &bumped).unwrap();
    let o = switch(&api, &["--host", "laptop"]);
    refused(
        "older",
        &o,
        9,
        "generation 2 of laptop is older than generation 7, which this machine applied",
    );
    assert_eq!(std::fs::read(&machine.state).unwrap(), bumped);
    std::fs::write(&machine.state, &saved).unwrap();
    assert_eq!(
        machine_snapshot(&machine, &log),
        before,
        "a refusal changed something"
    );
    assert!(
        !is_valid(&fleet.nix, &root, &out2),
        "a refused closure was fetched"
    );

    let started = Instant::now();
    let out = ok("laptop changed", &switch(&api, &["--host", "laptop"]));
    let changed = started.elapsed();
    assert!(out.contains("laptop is at generation 2 (switch)"), "{out}");
    assert!(is_valid(&fleet.nix, &root, &out2));
    assert_eq!(profile_target(&machine.profile()), out2);
    assert_eq!(
        activations().last().unwrap(),
        &format!("laptop {out2} switch")
    );

    // Rolling back on purpose to the kept generation 1 (already in the store).
    let out = ok(
        "rollback",
        &switch(&api, &["--host", "laptop", "--generation", "1"]),
    );
    assert!(
        out.contains("going back from generation 2 to generation 1"),
        "{out}"
    );
    assert_eq!(profile_target(&machine.profile()), out1);

    eprintln!(
        "switch timings against the real server: first {:.3}s, unchanged {:.3}s, changed {:.3}s",
        first.as_secs_f64(),
        unchanged.as_secs_f64(),
        changed.as_secs_f64()
    );
}

/// The profile link, the applied file and the activation log of a machine.
fn machine_snapshot(
    m: &Machine,
    log: &Path,
) -> (Option<PathBuf>, Option<Vec<u8>>, Option<Vec<u8>>) {
    (
        std::fs::read_link(m.profile()).ok(),
        std::fs::read(&m.state).ok(),
        std::fs::read(log).ok(),
    )
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

    /// Serves `GET /hosts` and `GET /hosts/<name>` from `hosts`.
    fn hosts(hosts: Arc<Mutex<BTreeMap<String, HostView>>>) -> StandIn {
        StandIn::start(move |path| {
            let hosts = hosts.lock().unwrap();
            if path == "/hosts" {
                let reply = HostsReply {
                    hosts: hosts.values().cloned().collect(),
                };
                return (200, serde_json::to_string(&reply).unwrap());
            }
            match path.strip_prefix("/hosts/").and_then(|n| hosts.get(n)) {
                Some(v) => (200, serde_json::to_string(v).unwrap()),
                None => (
                    404,
                    r#"{"status":"unknown_host","message":"no such host"}"#.to_owned(),
                ),
            }
        })
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
