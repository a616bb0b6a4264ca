//! A fleet to build: a local git repository holding a flake (no nixpkgs, only
//! `builtins.derivation`s with `/bin/sh` builders) with three hosts that share dependencies —
//! `laptop`, NixOS-shaped (`bin/switch-to-configuration`), `alice@laptop`, a home-manager
//! activation package (`activate`), and `server`, whose closure holds a derivation that always
//! fails — plus one flake input (a second local git repository) so that `nix flake update`
//! writes a real `flake.lock`. [`Fleet`] owns the repositories, the throwaway store the server
//! builds into and serves, and the signing key; [`Fleet::start`] runs `tailcache serve` on it
//! with `hosts = "auto"`, and [`TestCache::build_fleet`] triggers a build and waits until every
//! target it built is ready.
//!
//! The activation scripts append one line per call to the file named by
//! `$TAILCACHE_ACTIVATION_LOG` (nothing when it is unset):
//! `<target> <its out path> <arguments>`, e.g. `laptop /nix/store/…-nixos-system-laptop-24.05.2 switch`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tailcache_wire::hosts::{HostState, HostView, HostsReply};
use tempfile::TempDir;

use super::cache::{TestCache, TestCacheBuilder};
use super::nix::{KeyPair, NixEnv};
use serde_json::Value;

/// Real Nix builds of the fleet: generous, but bounded.
pub const FLEET_TIMEOUT: Duration = Duration::from_secs(300);

/// Which revision of each host the flake describes. Changing `laptop` changes only the
/// laptop's closure (its `fleet-motd-<laptop>` and its toplevel
/// `nixos-system-laptop-24.05.<laptop>`); changing `home` only alice's
/// (`fleet-hm-files-<home>` and `home-manager-generation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetVariant {
    pub laptop: u32,
    pub home: u32,
    /// `server` depends on `fleet-broken-0.1`, whose builder exits 1; `false` makes it build.
    pub server_fails: bool,
    /// `Some(n)`: the laptop also depends on `fleet-slow-1.0`, whose builder prints
    /// `tailcache-fleet-slow-<n>` (also in its command line, to find the process) and then
    /// sleeps for an hour — a build that runs until it is cancelled.
    pub slow: Option<u64>,
}

impl FleetVariant {
    /// Laptop and home at revision 1, the server failing.
    pub const FIRST: FleetVariant = FleetVariant {
        laptop: 1,
        home: 1,
        server_fails: true,
        slow: None,
    };

    pub fn laptop(self, rev: u32) -> Self {
        FleetVariant {
            laptop: rev,
            ..self
        }
    }

    pub fn home(self, rev: u32) -> Self {
        FleetVariant { home: rev, ..self }
    }

    pub fn slow(self, marker: u64) -> Self {
        FleetVariant {
            slow: Some(marker),
            ..self
        }
    }
}

const FLAKE: &str = r#"{
  description = "tailcache fleet test";
  inputs.data = { url = "git+file://@INPUT@"; flake = false; };
  outputs = { self, data }:
    let
      system = "@SYSTEM@";
      mk = name: script: builtins.derivation {
        inherit name system;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" script ];
      };
      greeting = builtins.readFile "${data}/greeting";
      # Shared by every host.
      lib = mk "fleet-lib-1.0" ''
        mkdir -p $out/lib
        echo "fleet library" > $out/lib/libfleet.txt
      '';
      tool = mk "fleet-tool-2.1" ''
        mkdir -p $out/bin
        printf '#!/bin/sh\ncat ${lib}/lib/libfleet.txt\n' > $out/bin/fleet-tool
        chmod +x $out/bin/fleet-tool
      '';
      motd = mk "fleet-motd-@LAPTOP@" ''
        echo "laptop revision @LAPTOP@: ${greeting}" > $out
      '';
      slow = mk "fleet-slow-1.0" ''
        echo "tailcache-fleet-slow-@SLOW@ started"
        sleep 3600
        echo done > $out
      '';
      laptop = mk "nixos-system-laptop-24.05.@LAPTOP@" ''
        mkdir -p $out/bin $out/sw
        ln -s ${tool} $out/sw/tool
        ln -s ${motd} $out/motd
        @SLOWREF@
        cat > $out/bin/switch-to-configuration <<EOF
      #!/bin/sh
      echo "laptop $out \$*" >> "\''${TAILCACHE_ACTIVATION_LOG:-/dev/null}"
      EOF
        chmod +x $out/bin/switch-to-configuration
      '';
      hmFiles = mk "fleet-hm-files-@HOME@" ''
        mkdir -p $out
        echo "home revision @HOME@" > $out/hm-version
        ln -s ${lib}/lib/libfleet.txt $out/libfleet.txt
      '';
      home = mk "home-manager-generation" ''
        mkdir -p $out
        ln -s ${hmFiles} $out/home-files
        ln -s ${tool} $out/tool
        cat > $out/activate <<EOF
      #!/bin/sh
      echo "alice@laptop $out \$*" >> "\''${TAILCACHE_ACTIVATION_LOG:-/dev/null}"
      EOF
        chmod +x $out/activate
      '';
      broken = mk "fleet-broken-0.1" ''
        echo "fleet-broken: this derivation fails on purpose"
        @BROKEN@
      '';
      server = mk "nixos-system-server-24.05.1" ''
        mkdir -p $out/bin
        ln -s ${tool} $out/tool
        ln -s ${broken} $out/broken
        printf '#!/bin/sh\necho "server $*"\n' > $out/bin/switch-to-configuration
        chmod +x $out/bin/switch-to-configuration
      '';
    in {
      nixosConfigurations.laptop.config.system.build.toplevel = laptop;
      nixosConfigurations.server.config.system.build.toplevel = server;
      homeConfigurations."alice@laptop".activationPackage = home;
    };
}
"#;

/// Writes the fleet's `flake.nix` for `variant` into `dir` (a checkout of the repository).
/// `input` is the flake input's git repository, `system` the Nix system string.
pub fn fleet_flake(dir: &Path, input: &Path, system: &str, variant: FleetVariant) {
    let text = FLAKE
        .replace("@INPUT@", input.to_str().unwrap())
        .replace("@SYSTEM@", system)
        .replace("@LAPTOP@", &variant.laptop.to_string())
        .replace("@HOME@", &variant.home.to_string())
        .replace("@SLOW@", &variant.slow.unwrap_or(0).to_string())
        .replace(
            "@SLOWREF@",
            if variant.slow.is_some() {
                "ln -s ${slow} $out/slow"
            } else {
                ""
            },
        )
        .replace(
            "@BROKEN@",
            if variant.server_fails {
                "exit 1"
            } else {
                "echo fixed > $out"
            },
        );
    std::fs::write(dir.join("flake.nix"), text).unwrap();
}

/// Runs git in `dir` with a fixed identity and no system or user configuration; returns
/// its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=tailcache itest",
            "-c",
            "user.email=itest@tailcache.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| panic!("git {args:?}: {e}"));
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `builtins.currentSystem` under this Nix configuration.
pub fn current_system(nix: &NixEnv) -> String {
    nix.run(
        "nix",
        &[
            "eval",
            "--impure",
            "--raw",
            "--expr",
            "builtins.currentSystem",
        ],
    )
    .trim()
    .to_string()
}

/// A store at `<dir>/store` holding one added file (so it has a database before a server
/// starts on it, as a real one would), and a signing key `<name>` in `<dir>/keys`.
pub fn store_and_key(nix: &NixEnv, dir: &Path, name: &str) -> (PathBuf, KeyPair) {
    let root = dir.join("store");
    let seed = dir.join("seed");
    std::fs::write(&seed, format!("seed of {}\n", dir.display())).unwrap();
    nix.run(
        "nix-store",
        &[
            "--store",
            root.to_str().unwrap(),
            "--add",
            seed.to_str().unwrap(),
        ],
    );
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let key = nix.generate_key(&dir.join("keys"), name);
    (root, key)
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The repositories, the server's store and its key: everything but the server.
#[derive(Debug)]
pub struct Fleet {
    pub nix: NixEnv,
    dir: TempDir,
    /// The configuration repository (branch `main`) the server builds.
    pub repo: PathBuf,
    /// The flake input's repository.
    pub input: PathBuf,
    /// The store the server builds into and serves (`--store <root>`).
    pub store_root: PathBuf,
    pub key: KeyPair,
    pub system: String,
}

impl Fleet {
    /// Creates the repositories with `variant` committed, the store and a key.
    pub fn new(variant: FleetVariant) -> Fleet {
        let nix = NixEnv::new();
        let dir = tempfile::Builder::new()
            .prefix("tc-fleet.")
            .tempdir()
            .unwrap();
        let system = current_system(&nix);

        let input = dir.path().join("input");
        std::fs::create_dir_all(&input).unwrap();
        git(&input, &["init", "-q", "-b", "main"]);
        std::fs::write(input.join("greeting"), "hello from the flake input").unwrap();
        git(&input, &["add", "greeting"]);
        git(&input, &["commit", "-q", "-m", "greeting"]);

        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);

        let (store_root, key) = store_and_key(&nix, dir.path(), "fleet-1");
        let fleet = Fleet {
            nix,
            dir,
            repo,
            input,
            store_root,
            key,
            system,
        };
        fleet.commit(variant);
        fleet
    }

    /// A scratch directory that lives as long as the fleet.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Writes `variant`'s flake and commits it; returns the commit.
    pub fn commit(&self, variant: FleetVariant) -> String {
        fleet_flake(&self.repo, &self.input, &self.system, variant);
        git(&self.repo, &["add", "flake.nix"]);
        git(
            &self.repo,
            &[
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                &format!("{variant:?}"),
            ],
        );
        git(&self.repo, &["rev-parse", "HEAD"])
    }

    /// The `[build]` section: the default pipeline on the repository with
    /// `hosts = "auto"`, building into the fleet's store; `extra` is more `[build]` keys.
    pub fn build_section(&self, extra: &str) -> String {
        format!(
            "[build]\nrepository = {}\nbranch = \"main\"\nhosts = \"auto\"\n\
             nix_args = [\"--store\", {}]\nstep_timeout_secs = 300\nkill_grace_secs = 2\n{extra}\n",
            toml_str(self.repo.to_str().unwrap()),
            toml_str(self.store_root.to_str().unwrap()),
        )
    }

    /// A server builder over the fleet's store and key, with [`Fleet::build_section`]
    /// (`extra_toml` goes after it: more `[build]` keys, then other sections).
    pub fn server(&self, extra_toml: &str) -> TestCacheBuilder<'_> {
        TestCache::builder()
            .store_root(&self.store_root)
            .secret_key(&self.key.secret)
            .nix_env(&self.nix)
            .build_toml(&self.build_section(extra_toml))
    }

    /// Starts a server with `hosts = "auto"` and no compression (ready once built).
    pub fn start(&self) -> TestCache {
        self.server("").start()
    }

    /// Starts a server and builds the fleet once: two targets ready, `server` failed.
    pub fn start_built(&self) -> TestCache {
        let server = self.start();
        server.build_fleet();
        server
    }
}

impl TestCache {
    /// `GET /hosts`, parsed into the wire model.
    pub fn hosts(&self) -> HostsReply {
        let r = self.api_get("/hosts");
        assert_eq!(r.status, 200, "GET /hosts: {}", r.text());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("GET /hosts does not parse ({e}): {}", r.text()))
    }

    /// `GET /hosts/<name>`, parsed into the wire model.
    pub fn host(&self, name: &str) -> HostView {
        let r = self.api_get(&format!("/hosts/{name}"));
        assert_eq!(r.status, 200, "GET /hosts/{name}: {}", r.text());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("GET /hosts/{name} does not parse ({e}): {}", r.text()))
    }

    /// The out path of generation `generation` of `host` (from its record, unverified).
    pub fn out_path(&self, host: &str, generation: u64) -> String {
        let view = self.host(host);
        let g = view
            .generations
            .iter()
            .find(|g| g.generation == generation)
            .unwrap_or_else(|| panic!("{host} has no generation {generation}: {view:?}"));
        g.signed.parse_unverified().unwrap().out_path
    }

    /// Polls `GET /hosts` until `pred` holds; panics after [`FLEET_TIMEOUT`].
    pub fn wait_hosts(&self, what: &str, pred: impl Fn(&HostsReply) -> bool) -> HostsReply {
        let deadline = Instant::now() + FLEET_TIMEOUT;
        loop {
            let h = self.hosts();
            if pred(&h) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "hosts never became {what} within {FLEET_TIMEOUT:?}; last: {h:#?}\nlog: {:?}\nstderr:\n{}",
                self.logs(80),
                self.stderr()
            );
            // Polling the server's real state.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Triggers a build, waits for it to be recorded and then for every target to be
    /// settled (`ready`, or `failed`); returns the build id and the hosts.
    pub fn build_fleet(&self) -> (u64, HostsReply) {
        let id = self.trigger_build();
        self.wait_build_recorded(id);
        let hosts = self.wait_hosts("settled (ready or failed)", |h| {
            h.hosts
                .iter()
                .all(|v| matches!(v.state, HostState::Ready | HostState::Failed))
        });
        (id, hosts)
    }

    /// Waits (up to [`FLEET_TIMEOUT`], real builds take a while) until build `id` is over
    /// and recorded in the history; returns the status.
    pub fn wait_build_recorded(&self, id: u64) -> Value {
        let deadline = Instant::now() + FLEET_TIMEOUT;
        loop {
            let s = self.build_status();
            let newest = s["history"][0]["build_id"].as_u64();
            if s["is_running"].as_bool() == Some(false) && newest == Some(id) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "build {id} was not recorded within {FLEET_TIMEOUT:?}; log: {:?}\nstderr:\n{}",
                self.logs(80),
                self.stderr()
            );
            // Polling the server's real state.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
