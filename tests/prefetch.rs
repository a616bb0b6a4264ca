//! `tailcache prefetch` for real, outside systemd: the command the NixOS client module's
//! `tailcache-prefetch.service` runs — its `ExecStart`, read from the unit the real module
//! system renders (`common::modules`), with the real binary for the package and the TOML the
//! module writes — follows the real server building the three-host test flake
//! (`common::fleet`) into a client machine's own chroot store, whose Nix has the substituters
//! and keys of the `nix.conf` the module renders. It substitutes the ready generation, then,
//! without being asked, the next one the server builds; `tailcache switch` afterwards downloads
//! nothing: it points Nix at a dead cache and still succeeds, and the server's NAR byte
//! counters do not move. The home-manager module's unit with `autoSwitch` activates the home
//! generation by itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{FLEET_TIMEOUT, Fleet, FleetVariant};
use common::modules::{Modules, path_expr, repo};
use common::nix::is_valid;
use common::{NixEnv, TestCache};

/// The value of `Key=` in a unit file.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in\n{unit}"))
}

/// A client machine: its Nix (with the settings of the `nix.conf` a module rendered), its
/// chroot store, its state directory.
struct Machine {
    nix: NixEnv,
    root: PathBuf,
    state: PathBuf,
    activations: PathBuf,
}

impl Machine {
    /// `nix_conf` is the module's rendered nix.conf: its substituters, keys and negative TTL
    /// become this machine's (cache.nixos.org left out: there is no network here).
    fn new(dir: &Path, nix_conf: &str) -> Machine {
        let nix = NixEnv::new();
        let mut conf = std::fs::read_to_string(nix.dir().join("conf/nix.conf")).unwrap();
        for line in nix_conf.lines() {
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            if ![
                "substituters",
                "trusted-public-keys",
                "require-sigs",
                "narinfo-cache-negative-ttl",
            ]
            .contains(&key)
            {
                continue;
            }
            let value: Vec<&str> = value
                .split_whitespace()
                .filter(|v| !v.contains("cache.nixos.org"))
                .collect();
            conf.push_str(&format!("{key} = {}\n", value.join(" ")));
        }
        std::fs::write(nix.dir().join("conf/nix.conf"), conf).unwrap();
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        Machine {
            nix,
            root,
            state: dir.join("state"),
            activations: dir.join("activations.log"),
        }
    }

    fn holds(&self, path: &str) -> bool {
        is_valid(&self.nix, self.root.to_str().unwrap(), path)
    }

    /// A command line of a unit, run on this machine: the package's binary is the real one,
    /// the generated config the TOML the module wrote; the chroot store is added.
    fn command(&self, m: &Modules, exec: &str, config: &Path) -> Command {
        assert!(!exec.contains(['\'', '"']), "quoted words in {exec}");
        let mut words = exec.split_whitespace();
        let program = words.next().unwrap();
        assert!(
            program.ends_with("-tailcache-0.1.0/bin/tailcache"),
            "{exec}"
        );
        let mut c = Command::new(env!("CARGO_BIN_EXE_tailcache"));
        self.nix.configure(&mut c);
        let mut args: Vec<String> = words.map(str::to_owned).collect();
        let i = args.iter().position(|a| a == "--config").unwrap();
        std::fs::write(config, m.toml(&args[i + 1])).unwrap();
        args[i + 1] = config.to_str().unwrap().to_owned();
        c.args(&args)
            .arg("--store")
            .arg(&self.root)
            .env("TAILCACHE_SWITCH_STATE", self.state.join("applied.json"))
            .env("TAILCACHE_ACTIVATION_LOG", &self.activations)
            .env("NO_COLOR", "1")
            .env_remove("TAILCACHE_SERVER")
            .env_remove("TAILCACHE_TOKEN")
            .stdin(Stdio::null());
        c
    }

    fn activations(&self) -> String {
        std::fs::read_to_string(&self.activations).unwrap_or_default()
    }
}

/// A running follower, killed (by its pid) when dropped; its output goes to a file.
struct Follower {
    child: Child,
    log: PathBuf,
}

impl Follower {
    fn start(mut c: Command, log: PathBuf) -> Follower {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        c.stdout(out).stderr(err);
        Follower {
            child: c.spawn().unwrap(),
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits, with a generous deadline, until `done(what it said)`; fails with its output.
    fn wait_until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + FLEET_TIMEOUT;
        while !done(&self.output()) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the follower ended ({status}):\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not after {FLEET_TIMEOUT:?}; the follower said:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sum of the server's NAR byte counters (`GET /metrics`).
fn nar_bytes_served(server: &TestCache) -> u64 {
    let text = common::http::get(server.api_url(), "/metrics").text();
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("tailcache_cache_nar_bytes_total"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        text.contains("tailcache_cache_nar_bytes_total"),
        "no NAR byte counter in /metrics:\n{text}"
    );
    total as u64
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_prefetch_unit_fetches_each_new_generation_and_switch_then_downloads_nothing() {
    let fleet = Fleet::new(FleetVariant::FIRST);
    let server = fleet.start_built();
    let m = Modules::new();

    // The NixOS client module, configured for this server, under the real module system.
    let summary = m.json(&format!(
        "t.nixosSummary (t.nixos {{ modules = [ {} {{
            networking.hostName = \"laptop\";
            services.tailcache.client = {{
              enable = true;
              server = \"{api}\";
              cacheUrl = \"{cache}\";
              publicKeys = [ \"{key}\" ];
              prefetch = {{ enable = true; interval = 1; }};
            }};
          }} ]; }})",
        path_expr(&repo().join("nixos/client.nix")),
        api = server.api_url(),
        cache = server.url().trim_end_matches('/'),
        key = fleet.key.public,
    ));
    let unit = summary["units"]["tailcache-prefetch.service"]
        .as_str()
        .unwrap();
    eprintln!("tailcache-prefetch.service:\n{unit}");
    let exec_nixos = unit_value(unit, "ExecStart");
    assert!(
        exec_nixos.ends_with(" --host laptop --interval 1"),
        "{exec_nixos}"
    );
    let dir = fleet.scratch("laptop");
    let machine = Machine::new(&dir, summary["nixConf"].as_str().unwrap());

    let out1 = server.out_path("laptop", 1);
    assert!(!machine.holds(&out1));
    let mut follower = Follower::start(
        machine.command(&m, exec_nixos, &dir.join("client.toml")),
        dir.join("prefetch.log"),
    );
    follower.wait_until("generation 1 prefetched", |said| {
        said.contains("laptop: generation 1 substituted in")
    });
    assert!(machine.holds(&out1));

    // A new commit changes the laptop; the server builds it; nobody asks the machine.
    fleet.commit(FleetVariant::FIRST.laptop(2));
    server.build_fleet();
    let out2 = server.out_path("laptop", 2);
    assert_ne!(out1, out2);
    follower.wait_until("generation 2 prefetched", |said| {
        said.contains("laptop: generation 2 substituted in")
    });
    assert!(machine.holds(&out2));
    follower.stop();
    let said = follower.output();
    eprintln!("tailcache prefetch said:\n{said}");
    assert!(
        said.contains("laptop: generation 2 substituted in"),
        "{said}"
    );
    // Kept from garbage collection until it is applied.
    let root = machine.state.join("prefetched-laptop");
    assert_eq!(
        std::fs::read_link(&root).unwrap().to_str().unwrap(),
        out2,
        "{said}"
    );
    assert_eq!(machine.activations(), "", "prefetch applied something");

    // The switch afterwards: Nix pointed at a dead cache, nothing served.
    // The counters do count: the prefetches were served from there.
    let served = nar_bytes_served(&server);
    assert!(served > 0, "no NAR bytes counted for the prefetches");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut switch = Command::new(env!("CARGO_BIN_EXE_tailcache"));
    machine.nix.configure(&mut switch);
    let o = switch
        .args(["switch", "--host", "laptop", "--config"])
        .arg(dir.join("client.toml"))
        .arg("--store")
        .arg(&machine.root)
        .args(["--nix-option", "substituters", &dead])
        .env("TAILCACHE_SWITCH_STATE", machine.state.join("applied.json"))
        .env("TAILCACHE_ACTIVATION_LOG", &machine.activations)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("{out2} is already in the store")),
        "{out}"
    );
    assert!(
        out.contains("✓ laptop is at generation 2 (switch)"),
        "{out}"
    );
    assert_eq!(machine.activations(), format!("laptop {out2} switch\n"));
    assert_eq!(
        nar_bytes_served(&server),
        served,
        "the switch downloaded from the server"
    );

    // --once looks once: nothing left to fetch; a record this machine cannot trust is
    // refused (and ends a single look with the switch's exit code).
    let once = |extra: &[&str]| {
        let mut c = machine.command(&m, exec_nixos, &dir.join("once.toml"));
        c.arg("--once").args(extra).output().unwrap()
    };
    let o = once(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains(&format!("laptop: generation 2 is in the store ({out2})")),
        "{}",
        text(&o)
    );
    let stranger = tailcache_store::signing::SecretKey::generate("stranger-1")
        .unwrap()
        .public()
        .to_nix_string();
    let o = once(&["--trusted-key", &stranger]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not signed by a trusted key"),
        "{}",
        text(&o)
    );

    // The home-manager module's unit with autoSwitch: it fetches and activates alice's home
    // generation by itself.
    let home = m.json(&format!(
        "t.homeSummary (t.home {{ modules = [ {} {{
            home.username = \"alice\"; home.homeDirectory = \"/home/alice\"; home.stateVersion = \"25.05\";
            programs.tailcache = {{
              enable = true;
              server = \"{api}\";
              cacheUrl = \"{cache}\";
              publicKeys = [ \"{key}\" ];
              host = \"alice@laptop\";
              prefetch.interval = 1;
              autoSwitch = true;
            }};
          }} ]; }})",
        path_expr(&repo().join("home")),
        api = server.api_url(),
        cache = server.url().trim_end_matches('/'),
        key = fleet.key.public,
    ));
    let unit = m.read(
        home["units"]["tailcache-prefetch.service"]
            .as_str()
            .unwrap(),
    );
    let exec = unit_value(&unit, "ExecStart");
    assert!(
        exec.contains("--host alice@laptop --home --interval 1 --auto-switch switch"),
        "{exec}"
    );
    let home_out = server.out_path("alice@laptop", 1);
    let mut follower = Follower::start(
        machine.command(&m, exec, &dir.join("home.toml")),
        dir.join("home-prefetch.log"),
    );
    let activated = format!("alice@laptop {home_out} \n");
    follower.wait_until("alice's generation activated", |_| {
        machine.activations().ends_with(&activated)
    });
    follower.stop();
    assert!(machine.holds(&home_out));
    // Activated once, not at every look.
    assert_eq!(machine.activations().matches("alice@laptop").count(), 1);
}
