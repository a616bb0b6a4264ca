//! The Nix side of the deployment, judged by the real module system offline
//! (`tests/common/modules.rs`: nixpkgs' `lib` and home-manager from vendored snapshots, a
//! stand-in `pkgs`, the NixOS declarations of tests/nix/nixos.nix): the NixOS client and
//! server modules and the home-manager module evaluate, and what they render — `nix.conf`,
//! unit files, the TOML the binaries read, Atuin's settings — is exactly what is asserted
//! here; the README's examples evaluate as printed, and so do the flake templates and
//! bootstrap's output (home-only and NixOS). Also: every `.nix` file parses, the modules' pure
//! decisions (`nix/lib.nix`) pass tests/nix/lib-test.nix and broken ones fail it, and the
//! `system-update` script and the Atuin registration gate do what they say when run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::modules::{Modules, lit, path_expr, repo, strings};
use serde_json::Value;
use tailcache_cli::bootstrap::{self, Machine, Template};
use tailcache_testkit::NixEnv;
use tailcache_testkit::nix::{assert_success, stderr_of};
use tempfile::TempDir;

fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("tc-nixmods.")
        .tempdir()
        .unwrap()
}

/// A home-manager user, as every configuration needs one.
const HOME_USER: &str =
    r#"home.username = "alice"; home.homeDirectory = "/home/alice"; home.stateVersion = "25.05";"#;

/// A standalone home-manager configuration of the home module and `body`.
fn home_of(body: &str) -> String {
    format!(
        "t.home {{ modules = [ {} {{ {HOME_USER} {body} }} ]; }}",
        path_expr(&repo().join("home"))
    )
}

/// A NixOS configuration of `module` (a path under the repository) and `body`.
fn nixos_of(module: &str, body: &str) -> String {
    format!(
        "t.nixos {{ modules = [ {} {{ {body} }} ]; }}",
        path_expr(&repo().join(module))
    )
}

/// Replaces each store path's hash with `…`, so texts compare whatever the hashes are.
fn unhash(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("/nix/store/") {
        out.push_str(&rest[..i + 11]);
        let after = &rest[i + 11..];
        if after.len() > 33 && after.as_bytes()[32] == b'-' {
            out.push('…');
            rest = &after[32..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of `Key=` in a unit file (the first one).
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in\n{unit}"))
}

/// The store path of the file given after `flag` on a command line.
fn arg_after<'a>(command: &'a str, flag: &str) -> &'a str {
    let mut words = command.split_whitespace();
    words.find(|w| *w == flag);
    words
        .next()
        .unwrap_or_else(|| panic!("no {flag} in {command}"))
}

#[test]
fn every_nix_file_parses() {
    let nix = NixEnv::new();
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    files.sort();
    for expected in [
        "flake.nix",
        "nix/lib.nix",
        "nix/client-options.nix",
        "nix/package.nix",
        "nix/checks.nix",
        "nixos/default.nix",
        "nixos/client.nix",
        "nixos/tests/substitute.nix",
        "home/default.nix",
        "home/tailcache.nix",
        "home/bootstrap-services.nix",
        "home/template/flake.nix",
        "home/template/home.nix",
        "home/template/laptop.nix",
        "tests/nix/lib-test.nix",
        "tests/nix/eval.nix",
        "tests/nix/pkgs.nix",
        "tests/nix/nixos.nix",
    ] {
        assert!(
            files.contains(&repo().join(expected)),
            "{expected} is missing from {files:?}"
        );
    }
    for f in &files {
        let o = nix.output("nix-instantiate", &["--parse", f.to_str().unwrap()]);
        assert_success(&format!("parsing {}", f.display()), &o);
    }
    // And the check itself can fail.
    let d = scratch();
    let bad = d.path().join("bad.nix");
    std::fs::write(&bad, "{ a = 1; ").unwrap();
    let o = nix.output("nix-instantiate", &["--parse", bad.to_str().unwrap()]);
    assert!(!o.status.success());
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name();
        if entry.file_type().unwrap().is_dir() {
            if name != "target" && name != ".git" {
                nix_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "nix") {
            out.push(path);
        }
    }
}

/// Evaluates a test file such as tests/nix/lib-test.nix (strictly: every assertion runs).
fn eval_file(nix: &NixEnv, file: &Path) -> Output {
    nix.output(
        "nix-instantiate",
        &["--eval", "--strict", file.to_str().unwrap()],
    )
}

#[test]
fn the_modules_decisions_hold() {
    let nix = NixEnv::new();
    let o = eval_file(&nix, &repo().join("tests/nix/lib-test.nix"));
    assert_success("tests/nix/lib-test.nix", &o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "true");
}

/// A copy of nix/lib.nix with one decision broken, judged by the same test file.
fn broken_lib(nix: &NixEnv, from: &str, to: &str) -> String {
    let d = scratch();
    std::fs::create_dir_all(d.path().join("nix")).unwrap();
    std::fs::create_dir_all(d.path().join("tests/nix")).unwrap();
    let lib = std::fs::read_to_string(repo().join("nix/lib.nix")).unwrap();
    assert!(
        lib.contains(from),
        "nix/lib.nix no longer contains {from:?}"
    );
    std::fs::write(d.path().join("nix/lib.nix"), lib.replace(from, to)).unwrap();
    std::fs::copy(
        repo().join("tests/nix/lib-test.nix"),
        d.path().join("tests/nix/lib-test.nix"),
    )
    .unwrap();
    let o = eval_file(nix, &d.path().join("tests/nix/lib-test.nix"));
    assert!(
        !o.status.success(),
        "the broken lib passed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    stderr_of(&o)
}

#[test]
fn broken_decisions_are_caught() {
    let nix = NixEnv::new();
    // The original design's `defaultFolders // folders`: an override loses its siblings.
    let err = broken_lib(
        &nix,
        "value = (defaults.${n} or { }) // (overrides.${n} or { });",
        "value = overrides.${n} or defaults.${n};",
    );
    assert!(err.contains("override-keeps-siblings"), "{err}");
    assert!(!err.contains("substituters-agent-first"), "{err}");
    // The agent listed after the server.
    let err = broken_lib(
        &nix,
        "optional agent.enable \"http://${agent.bind}\" ++ [ cacheUrl ]",
        "[ cacheUrl ] ++ optional agent.enable \"http://${agent.bind}\"",
    );
    assert!(err.contains("substituters-agent-first"), "{err}");
    // A secret in the store accepted.
    let err = broken_lib(
        &nix,
        "else if hasPrefix \"/nix/store/\" value then",
        "else if false then",
    );
    assert!(err.contains("secret-paths"), "{err}");
    // A user trusted through a group they are not in.
    let err = broken_lib(
        &nix,
        "builtins.any (t: t == user || builtins.elem t (map (g: \"@${g}\") groups)) trusted",
        "builtins.any (t: t == user || builtins.substring 0 1 t == \"@\") trusted",
    );
    assert!(err.contains("daemon-honours-user"), "{err}");
}

/// The key the client fixtures trust: a real one, since the agent parses its keys at load.
const CLIENT_KEY: &str = "build-server-1:huc2E40Qsk/7Q6Vkp15QU2Ru5HfDeT63lhu/JJeon34=";

/// The agent's trusted keys as Nix writes them.
fn agent_keys(a: &tailcache_agent::AgentConfig) -> Vec<String> {
    a.trusted_keys.iter().map(|k| k.to_nix_string()).collect()
}

// --- home-manager ---------------------------------------------------------------------------

/// The home-manager side of a machine with everything on: the exact nix.conf and user units
/// home-manager writes, and the TOML files the binaries read.
#[test]
fn home_manager_client_renders_nix_conf_and_units() {
    let m = Modules::new();
    let s = m.json(&format!(
        "t.homeSummary ({})",
        home_of(
            r#"programs.tailcache = {
                 enable = true;
                 server = "http://build-server:8000";
                 cacheUrl = "http://build-server:5000";
                 publicKeys = [ "build-server-1:huc2E40Qsk/7Q6Vkp15QU2Ru5HfDeT63lhu/JJeon34=" ];
                 tokenFile = "/home/alice/nix-config/secrets/tailcache-token";
                 agent = { enable = true; reseed = true; encoding = "xz"; tracker = "/ip4/100.64.0.1/tcp/5002/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"; };
                 prefetch = { enable = true; interval = 30; };
                 autoSwitch = true;
               };"#
        )
    ));
    assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
    assert_eq!(s["failedAssertions"], serde_json::json!([]), "{s}");

    let nix_conf = m.read(s["nixConf"].as_str().unwrap());
    eprintln!("~/.config/nix/nix.conf:\n{nix_conf}");
    assert_eq!(
        nix_conf,
        "# WARNING: this file is generated from the nix.settings option in\n\
         # your Home Manager configuration at $XDG_CONFIG_HOME/nix/nix.conf.\n\
         # Do not edit it!\n\
         narinfo-cache-negative-ttl = 60\n\
         require-sigs = true\n\
         substituters = http://127.0.0.1:5001 http://build-server:5000 https://cache.nixos.org\n\
         trusted-public-keys = build-server-1:huc2E40Qsk/7Q6Vkp15QU2Ru5HfDeT63lhu/JJeon34= cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\n\
         \n"
    );

    let units = s["units"].as_object().unwrap();
    let mut names: Vec<&String> = units.keys().collect();
    names.sort();
    assert_eq!(
        names,
        ["tailcache-agent.service", "tailcache-prefetch.service"]
    );
    let agent = m.read(units["tailcache-agent.service"].as_str().unwrap());
    let prefetch = m.read(units["tailcache-prefetch.service"].as_str().unwrap());
    eprintln!("tailcache-agent.service:\n{agent}\ntailcache-prefetch.service:\n{prefetch}");
    assert_eq!(
        unhash(&agent),
        "[Install]\n\
         WantedBy=default.target\n\
         \n\
         [Service]\n\
         ExecStart=/nix/store/…-tailcache-0.1.0/bin/tailcache agent --config /nix/store/…-tailcache-agent.toml\n\
         NoNewPrivileges=true\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         \n\
         [Unit]\n\
         Description=tailcache agent: local substituter with peer-assisted fetches\n"
    );
    assert_eq!(
        unhash(&prefetch),
        "[Install]\n\
         WantedBy=default.target\n\
         \n\
         [Service]\n\
         CPUSchedulingPolicy=idle\n\
         Environment=PATH=/nix/store/…-nix-2.28.4/bin:/usr/bin:/bin\n\
         ExecStart=/nix/store/…-tailcache-0.1.0/bin/tailcache prefetch --config /nix/store/…-tailcache-client.toml --home --interval 30 --auto-switch switch\n\
         IOSchedulingClass=idle\n\
         Nice=19\n\
         Restart=always\n\
         RestartSec=30\n\
         \n\
         [Unit]\n\
         After=tailcache-agent.service\n\
         Description=tailcache prefetch: substitute each new home-manager generation the build server makes ready\n\
         Wants=tailcache-agent.service\n"
    );
    assert_eq!(
        strings(&s["wants"]),
        [
            "systemd/user/default.target.wants/tailcache-agent.service",
            "systemd/user/default.target.wants/tailcache-prefetch.service"
        ]
    );

    // The TOML files, read by the binaries' strict parsers.
    let d = scratch();
    let exec = unit_value(&agent, "ExecStart");
    let path = d.path().join("agent.toml");
    std::fs::write(&path, m.toml(arg_after(exec, "--config"))).unwrap();
    // The agent's loader parses every value: the URL, the keys and the tracker are typed.
    let a = tailcache_agent::AgentConfig::from_file(&path).unwrap();
    assert_eq!(a.server.to_string(), "http://build-server:5000");
    assert_eq!(agent_keys(&a), [CLIENT_KEY]);
    assert!(a.reseed && !a.metered);
    assert_eq!(
        a.tracker.map(|t| t.to_string()).as_deref(),
        Some("/ip4/100.64.0.1/tcp/5002/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
    );
    assert_eq!(a.bind.to_string(), "127.0.0.1:5001");
    assert_eq!(a.cache_dir, None);
    assert_eq!(a.encoding, tailcache_agent::choose::Encoding::Xz);
    let exec = unit_value(&prefetch, "ExecStart");
    let client_toml = arg_after(exec, "--config");
    assert_eq!(client_toml, s["tailcacheConfig"].as_str().unwrap());
    let path = d.path().join("client.toml");
    std::fs::write(&path, m.toml(client_toml)).unwrap();
    let c = tailcache_cli::config::ClientConfig::load(&path).unwrap();
    assert_eq!(c.server.as_deref(), Some("http://build-server:8000"));
    assert_eq!(
        c.token_file.as_deref(),
        Some(Path::new("/home/alice/nix-config/secrets/tailcache-token"))
    );
    assert_eq!(c.trusted_keys, [CLIENT_KEY]);
    // The command line the unit runs is one the binary takes.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tailcache"))
        .args(exec.split_whitespace().skip(1))
        .arg("--help")
        .output()
        .unwrap();
    assert_success("the prefetch unit's command line", &o);
}

/// Nothing that follows the server runs unless asked; the settings are there either way.
#[test]
fn home_manager_prefetch_only_when_asked() {
    let m = Modules::new();
    let s = m.json(&format!(
        "t.homeSummary ({})",
        home_of(r#"programs.tailcache = { enable = true; publicKeys = [ "k-1:AAAA" ]; };"#)
    ));
    assert_eq!(s["units"], serde_json::json!({}), "{s}");
    assert_eq!(
        s["nixSettings"]["substituters"],
        serde_json::json!(["http://build-server:5000", "https://cache.nixos.org"])
    );
    // The same with autoSwitch alone: the unit that applies must also fetch.
    let s = m.json(&format!(
        "t.homeSummary ({})",
        home_of(
            r#"programs.tailcache = { enable = true; publicKeys = [ "k-1:AAAA" ]; autoSwitch = true; };"#
        )
    ));
    let units: Vec<&String> = s["units"].as_object().unwrap().keys().collect();
    assert_eq!(units, ["tailcache-prefetch.service"]);
}

/// `system-update` runs `home-manager switch` for a flake's first application and after
/// changes to it; the module keeps the CLI installed.
#[test]
fn home_module_installs_the_home_manager_cli() {
    let m = Modules::new();
    let s = m.json(&format!(
        "t.homeSummary ({})",
        home_of(r#"programs.tailcache.enable = true;"#)
    ));
    assert_eq!(s["homeManagerCli"], true);
    let packages = strings(&s["packages"]);
    assert!(
        packages.iter().any(|p| p.starts_with("home-manager-")),
        "{packages:?}"
    );
    // A user who does not want it says so.
    let s = m.json(&format!(
        "t.homeSummary ({})",
        home_of(r#"programs.tailcache.enable = true; programs.home-manager.enable = false;"#)
    ));
    assert_eq!(s["homeManagerCli"], false);
}

/// A systemd user manager has no network-online.target: a unit ordered after it waits for
/// nothing and misleads.
#[test]
fn user_units_do_not_wait_for_network_online() {
    let m = Modules::new();
    for body in [
        "programs.tailcache = { enable = true; agent.enable = true; };",
        "programs.tailcache = { enable = true; agent.enable = true; prefetch.enable = true; };",
    ] {
        let s = m.json(&format!("t.homeSummary ({})", home_of(body)));
        let units = s["units"].as_object().unwrap();
        assert!(!units.is_empty(), "{s}");
        for (name, path) in units {
            let text = m.read(path.as_str().unwrap());
            assert!(!text.contains("network-online"), "{name}:\n{text}");
        }
    }
}

/// Nix remembers a missing narinfo for an hour by default; the cache fills after each build.
#[test]
fn the_negative_narinfo_ttl_suits_a_cache_that_fills() {
    let m = Modules::new();
    let ttl = |config: String| {
        m.json(&format!(
            "({config}).nix.settings.narinfo-cache-negative-ttl or \"Nix's default, 3600\""
        ))
    };
    assert_eq!(ttl(home_of("programs.tailcache.enable = true;")), 60);
    assert_eq!(
        ttl(home_of(
            "programs.tailcache = { enable = true; negativeTtl = 5; };"
        )),
        5
    );
    assert_eq!(
        ttl(nixos_of(
            "nixos/client.nix",
            r#"services.tailcache.client = { enable = true; publicKeys = [ "k-1:AAAA" ]; };"#
        )),
        60
    );
}

/// home-manager as a NixOS module (its real nixos/ module on the NixOS declarations): the
/// daemon ignores a non-trusted user's substituters and keys, and the module says so,
/// pointing at the NixOS client module — unless the user is trusted (by name or group), the
/// system already lists them, or the client module is on.
#[test]
fn home_module_warns_when_the_daemon_will_ignore_its_settings() {
    let m = Modules::new();
    let warnings = |system: &str| -> Vec<String> {
        let v = m.json(&format!(
            "(t.nixos {{ modules = [ t.flake.nixosModules.client t.homeManagerNixos {{
                users.users.alice = {{ isNormalUser = true; home = \"/home/alice\"; extraGroups = [ \"wheel\" ]; }};
                home-manager.users.alice = {{ imports = [ {home} ]; {HOME_USER}
                  programs.tailcache = {{ enable = true; publicKeys = [ \"srv-1:AAAA\" ]; }}; }};
                {system}
              }} ]; }}).warnings",
            home = path_expr(&repo().join("home")),
        ));
        strings(&v)
    };
    let w = warnings("");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("alice profile: programs.tailcache: the Nix daemon"),
        "{w:?}"
    );
    assert!(
        w[0].contains("alice is not in its\nnix.settings.trusted-users"),
        "{w:?}"
    );
    assert!(w[0].contains("tailcache.nixosModules.client"), "{w:?}");
    assert_eq!(
        warnings("nix.settings.trusted-users = [ \"alice\" ];"),
        Vec::<String>::new()
    );
    assert_eq!(
        warnings("nix.settings.trusted-users = [ \"@wheel\" ];"),
        Vec::<String>::new()
    );
    assert_eq!(
        warnings("nix.settings.trusted-users = [ \"@users\" ];").len(),
        1
    );
    assert_eq!(
        warnings(
            "nix.settings.substituters = [ \"http://build-server:5000\" ]; \
             nix.settings.trusted-public-keys = [ \"srv-1:AAAA\" ];"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        warnings(
            "services.tailcache.client = { enable = true; publicKeys = [ \"srv-1:AAAA\" ]; };"
        ),
        Vec::<String>::new()
    );
    // Both agents on one machine compete for the port.
    let w = warnings(
        "services.tailcache.client = { enable = true; publicKeys = [ \"srv-1:AAAA\" ]; agent.enable = true; }; \
         home-manager.users.alice.programs.tailcache.agent.enable = true;",
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("the system already runs the agent"), "{w:?}");
}

#[test]
fn services_without_a_template_evaluate() {
    let m = Modules::new();
    // mkIf walks its content even when the condition is false: a null template must not be
    // looked up.
    let s = m.json(&format!(
        "({}).services.bootstrap-services.folders",
        home_of("services.bootstrap-services.enable = false;")
    ));
    assert_eq!(s, serde_json::json!({}));
    let s = m.json(&format!(
        "({}).services.syncthing.settings.folders.documents.devices",
        home_of(
            r#"services.bootstrap-services = { enable = true; template = "laptop";
                 syncthing.devices.desktop.id = "DESKTOP-ID"; folders.documents.path = "/data/documents"; };"#
        )
    ));
    // The override kept the template's devices (the ones with a known id).
    assert_eq!(s, serde_json::json!(["desktop"]));
}

#[test]
fn clients_point_atuin_at_the_self_hosted_server() {
    let m = Modules::new();
    let atuin = |body: &str| -> Value {
        let s = m.json(&format!("t.homeSummary ({})", home_of(body)));
        assert_eq!(s["atuinEnabled"], true);
        s["atuin"].clone()
    };
    let public = atuin("programs.tailcache = { enable = true; atuin.enable = true; };");
    assert_eq!(public["sync_address"], "https://api.atuin.sh");
    assert_eq!(public["search_mode"], "fuzzy");
    let own = atuin(
        r#"programs.tailcache = { enable = true; server = "http://100.64.0.1:8000"; atuin = { enable = true; selfHosted = true; }; };"#,
    );
    assert_eq!(own["sync_address"], "http://100.64.0.1:8888");
    assert_eq!(own["auto_sync"], true);
    let port = atuin(
        r#"programs.tailcache = { enable = true; atuin = { enable = true; selfHosted = true; port = 9000; }; };"#,
    );
    assert_eq!(port["sync_address"], "http://build-server:9000");
}

// --- NixOS ----------------------------------------------------------------------------------

/// The NixOS client: the exact /etc/nix/nix.conf and units NixOS would write, the agent as a
/// hardened system service, and the follower at idle priority.
#[test]
fn nixos_client_renders_nix_conf_and_units() {
    let m = Modules::new();
    let s = m.json(&format!(
        "t.nixosSummary ({})",
        nixos_of(
            "nixos/client.nix",
            r#"networking.hostName = "laptop";
               services.tailcache.client = {
                 enable = true;
                 server = "http://build-server:8000";
                 cacheUrl = "http://build-server:5000";
                 publicKeys = [ "build-server-1:huc2E40Qsk/7Q6Vkp15QU2Ru5HfDeT63lhu/JJeon34=" ];
                 agent = { enable = true; reseed = true; };
                 prefetch.enable = true;
               };"#
        )
    ));
    assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
    assert_eq!(s["failedAssertions"], serde_json::json!([]), "{s}");
    let nix_conf = s["nixConf"].as_str().unwrap();
    eprintln!("/etc/nix/nix.conf:\n{nix_conf}");
    assert_eq!(
        nix_conf,
        "allowed-users = *\n\
         narinfo-cache-negative-ttl = 60\n\
         require-sigs = true\n\
         substituters = http://127.0.0.1:5001 http://build-server:5000 https://cache.nixos.org/\n\
         trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= build-server-1:huc2E40Qsk/7Q6Vkp15QU2Ru5HfDeT63lhu/JJeon34=\n\
         trusted-substituters = \n\
         trusted-users = root\n\n\n"
    );
    assert_eq!(
        strings(&s["nixSettings"]["substituters"]),
        [
            "http://127.0.0.1:5001",
            "http://build-server:5000",
            "https://cache.nixos.org/"
        ]
    );

    let units = &s["units"];
    let agent = units["tailcache-agent.service"].as_str().unwrap();
    let prefetch = units["tailcache-prefetch.service"].as_str().unwrap();
    eprintln!("tailcache-agent.service:\n{agent}\ntailcache-prefetch.service:\n{prefetch}");
    for line in [
        "User=tailcache-agent",
        "StateDirectory=tailcache-agent",
        "CacheDirectory=tailcache-agent",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=",
        "PrivateTmp=true",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged",
        "After=network-online.target tailscaled.service",
    ] {
        assert!(agent.lines().any(|l| l == line), "{line} not in\n{agent}");
    }
    assert_eq!(
        unhash(prefetch),
        "[Unit]\n\
         After=network-online.target tailscaled.service nix-daemon.socket tailcache-agent.service\n\
         Description=tailcache prefetch: substitute each new generation of laptop the build server makes ready\n\
         Wants=network-online.target tailcache-agent.service\n\
         \n\
         [Service]\n\
         Environment=\"PATH=/nix/store/…-nix-2.28.4/bin\"\n\
         Environment=\"RUST_LOG=info\"\n\
         X-RestartIfChanged=false\n\
         CPUSchedulingPolicy=idle\n\
         ExecStart=/nix/store/…-tailcache-0.1.0/bin/tailcache prefetch --config /nix/store/…-tailcache-client.toml --host laptop --interval 60\n\
         IOSchedulingClass=idle\n\
         Nice=19\n\
         PrivateTmp=true\n\
         ProtectHome=true\n\
         Restart=always\n\
         RestartSec=30\n\
         StateDirectory=tailcache-switch\n\
         StateDirectoryMode=0700\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    );
    assert_eq!(
        s["users"]["tailcache-agent"],
        serde_json::json!({"group": "tailcache-agent", "home": "/var/lib/tailcache-agent", "isSystemUser": true})
    );
    assert_eq!(strings(&s["packages"]), ["tailcache-0.1.0"]);

    // /etc/tailcache/config.toml and the agent's TOML, read by the binaries.
    let d = scratch();
    let etc = s["etc"]["tailcache/config.toml"].as_str().unwrap();
    assert_eq!(
        etc,
        arg_after(unit_value(prefetch, "ExecStart"), "--config")
    );
    let path = d.path().join("config.toml");
    std::fs::write(&path, m.toml(etc)).unwrap();
    let c = tailcache_cli::config::ClientConfig::load(&path).unwrap();
    assert_eq!(c.server.as_deref(), Some("http://build-server:8000"));
    assert_eq!(c.trusted_keys, [CLIENT_KEY]);
    let path = d.path().join("agent.toml");
    std::fs::write(
        &path,
        m.toml(arg_after(unit_value(agent, "ExecStart"), "--config")),
    )
    .unwrap();
    let a = tailcache_agent::AgentConfig::from_file(&path).unwrap();
    assert_eq!(
        a.cache_dir.as_deref(),
        Some(Path::new("/var/cache/tailcache-agent"))
    );
    assert!(a.reseed);
    assert_eq!(agent_keys(&a), [CLIENT_KEY]);
    // Not set: the module's default is the agent's.
    assert_eq!(a.encoding, tailcache_agent::choose::Encoding::Auto);
}

/// The follower runs only when asked: prefetch, or autoSwitch (which fetches what it applies);
/// autoSwitch is passed on, and an activation may touch homes.
#[test]
fn nixos_prefetch_and_auto_switch_are_activated_as_configured() {
    let m = Modules::new();
    let follower = |body: &str| -> Option<String> {
        let s = m.json(&format!(
            "t.nixosSummary ({})",
            nixos_of(
                "nixos/client.nix",
                &format!(
                    r#"networking.hostName = "desk"; services.tailcache.client = {{ enable = true; publicKeys = [ "k-1:AAAA" ]; {body} }};"#
                )
            )
        ));
        assert!(s["units"].get("tailcache-agent.service").is_none(), "{s}");
        s["units"]["tailcache-prefetch.service"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(follower(""), None);
    let p = follower("prefetch.enable = true; prefetch.interval = 600;").unwrap();
    assert!(
        unit_value(&p, "ExecStart").ends_with("--host desk --interval 600"),
        "{p}"
    );
    let p = follower(r#"autoSwitch = "boot";"#).unwrap();
    assert!(
        unit_value(&p, "ExecStart").ends_with("--host desk --interval 60 --auto-switch boot"),
        "{p}"
    );
    assert!(!p.contains("ProtectHome"), "{p}");
    let p = follower(r#"autoSwitch = "switch"; host = "desktop";"#).unwrap();
    assert!(
        unit_value(&p, "ExecStart").ends_with("--host desktop --interval 60 --auto-switch switch"),
        "{p}"
    );
    // A client without the cache's key would be refused everything: an assertion says so.
    let s = m.json(&format!(
        "t.nixosSummary ({})",
        nixos_of(
            "nixos/client.nix",
            "services.tailcache.client.enable = true;"
        )
    ));
    let failed = strings(&s["failedAssertions"]);
    assert!(failed[0].contains("publicKeys"), "{failed:?}");
}

/// `trusted = true` adds the server's user to trusted-users; root stays trusted, on NixOS
/// before 24.11 (where root was the option's default, replaced by any definition) and since.
#[test]
fn server_module_keeps_root_among_trusted_users() {
    let m = Modules::new();
    for release in ["24.05", "26.05"] {
        let users = m.json(&format!(
            "(t.nixos {{ release = \"{release}\"; modules = [ {} {{ services.tailcache.server = {{ enable = true; trusted = true; }}; }} ]; }}).nix.settings.trusted-users",
            path_expr(&repo().join("nixos"))
        ));
        assert_eq!(strings(&users), ["root", "tailcache"], "NixOS {release}");
        let users = m.json(&format!(
            "(t.nixos {{ release = \"{release}\"; modules = [ {} {{ services.tailcache.server.enable = true; }} ]; }}).nix.settings.trusted-users",
            path_expr(&repo().join("nixos"))
        ));
        assert_eq!(strings(&users), ["root"], "NixOS {release}");
    }
}

/// A server module configuration with every setting its TOML depends on.
const SERVER_CFG: &str = r#"services.tailcache.server = {
  enable = true;
  signingKeyFile = "/var/lib/secrets/key";
  openFirewall = true;
  cache = { listen = "100.64.0.1:5000"; priority = 30; compression = "zstd"; archiveCompression = "xz"; maxBytes = 1073741824; };
  api = { listen = "100.64.0.1:8000"; tokenFile = "/var/lib/secrets/token"; allow = [ "user:alice@example.com" "local" ]; };
  build = {
    repository = "https://example.invalid/config.git";
    hosts = "auto";
    keepGenerations = 4;
    supersede = true;
    builders = "ssh://arm aarch64-linux";
    nixArgs = [ "--option" "cores" "2" ];
    schedule = "daily";
  };
  notify = { url = "http://ntfy.tailnet:8080/builds"; format = "json"; tokenFile = "/var/lib/secrets/ntfy"; };
  p2p = { enable = true; listen = [ "/ip4/100.64.0.1/udp/5002/quic-v1" "/ip4/100.64.0.1/tcp/5002" ]; };
};"#;

/// The server module under the real lib: its unit (hardening, credentials), timer, firewall,
/// and the TOML it writes, read by the server's strict parser.
#[test]
fn server_module_renders_units_and_the_config_the_server_reads() {
    let m = Modules::new();
    let s = m.json(&format!(
        "t.nixosSummary ({})",
        nixos_of("nixos", SERVER_CFG)
    ));
    assert_eq!(s["failedAssertions"], serde_json::json!([]), "{s}");
    let unit = s["units"]["tailcache-server.service"].as_str().unwrap();
    let exec = unit_value(unit, "ExecStart");
    assert_eq!(
        unhash(exec),
        "/nix/store/…-tailcache-0.1.0/bin/tailcache serve --config /nix/store/…-tailcache-server.toml \
         --secret-key-file %d/signing-key --token-file %d/api-token --notify-token-file %d/notify-token"
    );
    for line in [
        "LoadCredential=signing-key:/var/lib/secrets/key",
        "LoadCredential=api-token:/var/lib/secrets/token",
        "User=tailcache",
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "Requires=tailcache-store-db.service",
        // systemd's soft limit is 1024 otherwise; the server raises soft to hard.
        "LimitNOFILE=65536",
        // Build steps go with the server.
        "KillMode=control-group",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} not in\n{unit}");
    }
    let timer = s["units"]["tailcache-server-trigger.timer"]
        .as_str()
        .unwrap();
    assert!(timer.contains("OnCalendar=daily\n"), "{timer}");
    assert_eq!(
        s["firewall"]["interfaces"]["tailscale0"],
        serde_json::json!({"allowedTCPPorts": [5000, 8000, 5002], "allowedUDPPorts": [5002]})
    );
    assert_eq!(s["firewall"]["allowedTCPPorts"], serde_json::json!([]));

    let d = scratch();
    let path = d.path().join("server.toml");
    let text = m.toml(arg_after(exec, "--config"));
    assert!(!text.contains("/var/lib/secrets"), "{text}");
    std::fs::write(&path, &text).unwrap();
    let c = tailcache_server::config::Config::from_file(&path).unwrap();
    // Valid as a whole too (e.g. the archive compression against the primary one).
    tailcache_server::config::Config::load(&tailcache_server::config::ServeOverrides {
        config: Some(path.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.cache.bind.to_string(), "100.64.0.1:5000");
    assert_eq!(c.api.bind.to_string(), "100.64.0.1:8000");
    assert_eq!(
        c.api.allow,
        [
            tailcache_server::config::AllowEntry::User("alice@example.com".into()),
            tailcache_server::config::AllowEntry::Local
        ]
    );
    assert_eq!(
        c.cache.compression,
        tailcache_server::config::Compression::Zstd
    );
    assert_eq!(
        c.cache.archive_compression,
        tailcache_server::config::Compression::Xz
    );
    assert_eq!(c.cache.archive_level, None);
    assert_eq!(c.cache.nar_cache_max_bytes, 1 << 30);
    assert_eq!(c.build.nix_args, ["--option", "cores", "2"]);
    assert_eq!(
        c.build.hosts,
        Some(tailcache_server::config::HostsConfig::Auto)
    );
    assert_eq!(c.build.attribute, "default");
    assert_eq!(c.build.keep_generations, 4);
    assert!(c.build.supersede);
    assert_eq!(c.build.builders.as_deref(), Some("ssh://arm aarch64-linux"));
    assert_eq!(
        c.notify.format,
        tailcache_server::config::NotifyFormat::Json
    );
    assert!(c.p2p.enable);
    assert_eq!(c.api.token_file, None);
    // The parser is strict, so a misnamed key would have been caught above.
    let typo = text.replace("bind = \"100.64.0.1:5000\"", "listen = \"100.64.0.1:5000\"");
    assert_ne!(typo, text);
    std::fs::write(&path, typo).unwrap();
    let err = tailcache_server::config::Config::from_file(&path).unwrap_err();
    assert!(format!("{err:#}").contains("listen"), "{err:#}");
}

/// The Atuin sync server on the tailnet address, registration gated to the first account.
#[test]
fn server_runs_atuin_with_registration_closed_after_the_first_account() {
    let m = Modules::new();
    let summary = |atuin: &str| -> Value {
        m.json(&format!(
            "t.nixosSummary ({})",
            nixos_of(
                "nixos",
                &format!(
                    r#"services.tailcache.server = {{ enable = true; openFirewall = true;
                         api.listen = "100.64.0.1:8000"; atuin = {{ enable = true; {atuin} }}; }};"#
                )
            )
        ))
    };
    let s = summary("");
    assert_eq!(s["failedAssertions"], serde_json::json!([]), "{s}");
    assert_eq!(s["postgresql"], true);
    let atuin = s["units"]["atuin.service"].as_str().unwrap();
    eprintln!("atuin.service:\n{atuin}");
    for line in [
        "Environment=\"ATUIN_HOST=100.64.0.1\"",
        "Environment=\"ATUIN_PORT=8888\"",
        "Environment=\"ATUIN_OPEN_REGISTRATION=false\"",
        "EnvironmentFile=-/run/tailcache-atuin/registration",
    ] {
        assert!(atuin.lines().any(|l| l == line), "{line} not in\n{atuin}");
    }
    let pre = unit_value(atuin, "ExecStartPre");
    assert!(pre.starts_with('+'), "{pre}");
    assert!(
        pre.ends_with(" gate /run/tailcache-atuin/registration"),
        "{pre}"
    );
    let timer = s["units"]["tailcache-atuin-registration.timer"]
        .as_str()
        .unwrap();
    assert!(timer.contains("OnUnitActiveSec=1min\n"), "{timer}");
    assert_eq!(
        s["firewall"]["interfaces"]["tailscale0"]["allowedTCPPorts"],
        serde_json::json!([5000, 8000, 8888])
    );

    // Open or closed for good: no gate.
    let s = summary(r#"registration = "open"; port = 9000;"#);
    let atuin = s["units"]["atuin.service"].as_str().unwrap();
    assert!(
        atuin.contains("ATUIN_OPEN_REGISTRATION=true") && atuin.contains("ATUIN_PORT=9000"),
        "{atuin}"
    );
    assert!(!atuin.contains("ExecStartPre"), "{atuin}");
    assert!(
        s["units"]
            .get("tailcache-atuin-registration.timer")
            .is_none()
    );
}

/// The gate itself, run with stand-ins for psql (an account count), runuser and systemctl.
#[test]
fn the_atuin_gate_opens_registration_until_an_account_exists() {
    let m = Modules::new();
    let s = m.json(&format!(
        "t.nixosSummary ({})",
        nixos_of(
            "nixos",
            "services.tailcache.server = { enable = true; atuin.enable = true; };"
        )
    ));
    let pre = unit_value(
        s["units"]["atuin.service"].as_str().unwrap(),
        "ExecStartPre",
    );
    let script_path = pre.trim_start_matches('+').split(' ').next().unwrap();
    let d = scratch();
    let script = d.path().join("gate");
    std::fs::write(&script, m.read(script_path)).unwrap();
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let count = d.path().join("count");
    let log = d.path().join("log");
    let stub = |name: &str, body: String| {
        use std::os::unix::fs::PermissionsExt as _;
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    // runuser -u postgres -- psql …: drop the user switch.
    stub("runuser", "shift 3; exec \"$@\"".to_owned());
    stub(
        "psql",
        format!(
            "[ -f '{c}' ] || {{ echo 'relation \"users\" does not exist' >&2; exit 1; }}; cat '{c}'",
            c = count.display()
        ),
    );
    stub(
        "systemctl",
        format!("echo \"systemctl $*\" >> '{}'", log.display()),
    );
    let file = d.path().join("run/registration");
    let run = |mode: &str| {
        let o = std::process::Command::new("bash")
            .arg(&script)
            .arg(mode)
            .arg(&file)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert_success(&format!("gate {mode}"), &o);
    };
    let env = || std::fs::read_to_string(&file).unwrap();
    let restarts = || std::fs::read_to_string(&log).unwrap_or_default();

    // Before Atuin made its tables: open.
    run("gate");
    assert_eq!(env(), "ATUIN_OPEN_REGISTRATION=true\n");
    // No account yet: open, and nothing to close.
    std::fs::write(&count, "0\n").unwrap();
    run("gate");
    assert_eq!(env(), "ATUIN_OPEN_REGISTRATION=true\n");
    run("close");
    assert_eq!(restarts(), "");
    // The first account: the timer restarts the server, whose gate closes registration.
    std::fs::write(&count, "1\n").unwrap();
    run("close");
    assert_eq!(restarts(), "systemctl restart atuin.service\n");
    run("gate");
    assert_eq!(env(), "ATUIN_OPEN_REGISTRATION=false\n");
    // Closed: the timer leaves it alone.
    run("close");
    assert_eq!(restarts(), "systemctl restart atuin.service\n");
}

// --- the flake, its templates, bootstrap's output, the README --------------------------------

#[test]
fn the_flake_exports_home_modules_under_both_names() {
    let m = Modules::new();
    let v = m.json(
        "{ home = builtins.attrNames t.flake.homeModules; \
           old = t.flake.homeManagerModules == t.flake.homeModules; \
           nixos = builtins.attrNames t.flake.nixosModules; \
           templates = builtins.attrNames t.flake.templates; }",
    );
    assert_eq!(strings(&v["home"]), ["default", "services", "tailcache"]);
    assert_eq!(v["old"], true);
    assert_eq!(strings(&v["nixos"]), ["client", "default", "server"]);
    assert_eq!(strings(&v["templates"]), ["desktop", "laptop", "server"]);
}

/// The flake's templates are bootstrap's files rendered with example values, in one
/// directory, `home/template`: the files every template shares, once (they render the same for
/// each), and each template's own `<template>.nix`. So there is one place to edit them
/// (cli/src/bootstrap/*.in). After editing it,
/// `TAILCACHE_WRITE_TEMPLATES=1 cargo test --test nix_modules flake_templates` rewrites them.
#[test]
fn flake_templates_are_rendered_from_the_bootstrap_source() {
    let write = std::env::var_os("TAILCACHE_WRITE_TEMPLATES").is_some();
    let dir = repo().join("home/template");
    let mut expected: BTreeMap<&str, String> = BTreeMap::new();
    for t in Template::ALL {
        let files = bootstrap::render_template(t);
        let own: Vec<&str> = files
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| Template::ALL.iter().any(|o| o.file() == *name))
            .collect();
        assert_eq!(own, [t.file()], "{t:?}");
        for (name, text) in files {
            if let Some(before) = expected.insert(name, text.clone()) {
                assert_eq!(
                    before, text,
                    "{name} renders differently for {t:?}: only <template>.nix may"
                );
            }
        }
    }
    let mut stale = Vec::new();
    for (name, text) in &expected {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_ref() != Some(text) {
            stale.push(path);
        }
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort_unstable();
    let expected_names: Vec<&str> = expected.keys().copied().collect();
    assert_eq!(present, expected_names, "files in {}", dir.display());
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what cli/src/bootstrap/*.in renders; edit those, then run \
         TAILCACHE_WRITE_TEMPLATES=1 cargo test --test nix_modules flake_templates"
    );
}

/// `nix flake init -t <this flake>#<template>` in an empty directory, by the real Nix: the
/// directory's files and their contents. The flake is a copy of what its templates need
/// (flake.nix, nix/, home/), locked with empty stand-ins for nixpkgs and home-manager, which
/// templates never read; the store is one of its own whose store directory is a real
/// directory, since `nix flake init` reads the template at its store path.
fn nix_flake_init(nix: &NixEnv, scratch: &Path, template: &str) -> BTreeMap<String, String> {
    let flake = scratch.join("flake");
    if !flake.exists() {
        for part in ["flake.nix", "nix", "home"] {
            copy_tree(&repo().join(part), &flake.join(part));
        }
        let stub = scratch.join("stub");
        std::fs::create_dir_all(&stub).unwrap();
        std::fs::write(stub.join("flake.nix"), "{ outputs = _: { }; }\n").unwrap();
        let stub = format!("path:{}", stub.display());
        let o = nix_flakes(nix, scratch, &flake)
            .args(["flake", "lock", "--override-input", "nixpkgs", &stub])
            .args(["--override-input", "home-manager", &stub])
            .output()
            .unwrap();
        assert_success("nix flake lock", &o);
    }
    let out = scratch.join(format!("init-{template}"));
    std::fs::create_dir_all(&out).unwrap();
    let o = nix_flakes(nix, scratch, &out)
        .args(["flake", "init", "-t"])
        .arg(format!("path:{}#{template}", flake.display()))
        .output()
        .unwrap();
    assert_success(&format!("nix flake init -t #{template}"), &o);
    std::fs::read_dir(&out)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_file(), "{:?}", e.path());
            let text = std::fs::read_to_string(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), text)
        })
        .collect()
}

/// `nix` with flakes, run in `dir`, on a store of its own under `scratch`.
fn nix_flakes(nix: &NixEnv, scratch: &Path, dir: &Path) -> std::process::Command {
    let s = scratch.join("flake-store");
    let store = format!(
        "local?store={}&state={}&log={}",
        s.join("store").display(),
        s.join("state").display(),
        s.join("log").display()
    );
    let mut c = nix.command("nix");
    c.current_dir(dir)
        .args(["--extra-experimental-features", "flakes", "--store", &store]);
    c
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// What a machine flake in `dir` gives `home-manager switch`: the summary of its one home
/// configuration, with its name and system.
fn machine_summary(m: &Modules, dir: &Path) -> Value {
    m.json(&format!(
        "let mc = t.machine {}; in {{ inherit (mc) name system; summary = t.homeSummary mc.config; \
           template = mc.config.services.bootstrap-services.template; \
           folders = mc.config.services.bootstrap-services.folders; \
           agent = {{ inherit (mc.config.programs.tailcache.agent) enable reseed; }}; \
           prefetch = mc.config.programs.tailcache.prefetch.enable; \
           systemUpdateNixos = mc.config.programs.tailcache.systemUpdate.nixos; \
           hasNixos = mc.nixosModule != null; }}",
        path_expr(dir)
    ))
}

/// What `nix flake init` gives each template: exactly bootstrap's files with the example
/// values, the shared ones and the template's own; and that, with its example secrets,
/// evaluates under the real module system to that template's machine.
#[test]
fn flake_templates_evaluate_with_the_real_module_system() {
    let m = Modules::new();
    let d = scratch();
    for t in Template::ALL {
        let name = t.name();
        let files = nix_flake_init(&m.nix, d.path(), name);
        let rendered: BTreeMap<String, String> = bootstrap::render_template(t)
            .into_iter()
            .map(|(n, text)| (n.to_owned(), text))
            .collect();
        let names: Vec<&String> = files.keys().collect();
        assert_eq!(names, rendered.keys().collect::<Vec<_>>(), "{name}");
        for (file, text) in &rendered {
            assert_eq!(&files[file], text, "{name}: {file}");
        }
        let ignore = &files[".gitignore"];
        assert!(ignore.lines().any(|l| l == "secrets.nix"), "{ignore}");
        // The template, with its example secrets in place of the git-ignored file.
        let dir = d.path().join(format!("init-{name}"));
        std::fs::copy(dir.join("secrets.example.nix"), dir.join("secrets.nix")).unwrap();
        let v = machine_summary(&m, &dir);
        assert_eq!(v["name"], "me", "{name}");
        assert_eq!(v["system"], "x86_64-linux");
        assert_eq!(v["template"], name);
        assert_eq!(
            v["summary"]["failedAssertions"],
            serde_json::json!([]),
            "{name}"
        );
        assert_eq!(v["summary"]["warnings"], serde_json::json!([]), "{name}");
        assert_eq!(v["prefetch"], true);
        assert_eq!(v["hasNixos"], false);
        // The template's agent: a laptop's fetches, a desktop's reseeds, a server has none.
        assert_eq!(v["agent"]["enable"], t != Template::Server, "{name}");
        assert_eq!(v["agent"]["reseed"], t == Template::Desktop, "{name}");
        let folders = v["folders"].as_object().unwrap();
        assert!(folders.contains_key("documents"), "{name}: {folders:?}");
        assert_eq!(
            v["summary"]["nixSettings"]["trusted-public-keys"][0],
            "build-server-tailcache-1:REPLACE-WITH-GET-/pubkey"
        );
    }

    // Without the template's file, home.nix says so.
    let dir = d.path().join("init-laptop");
    std::fs::remove_file(dir.join("laptop.nix")).unwrap();
    let e = m.error(&format!(
        "t.homeSummary (t.machine {}).config",
        path_expr(&dir)
    ));
    assert!(
        e.contains("Failed assertions")
            && e.contains("the template's file (laptop.nix, desktop.nix or server.nix) is missing"),
        "{e}"
    );
    // With two, the module system reports the conflict.
    let dir = d.path().join("init-desktop");
    std::fs::copy(
        d.path().join("init-server/server.nix"),
        dir.join("server.nix"),
    )
    .unwrap();
    let e = m.error(&format!(
        "(t.machine {}).config.programs.tailcache.template",
        path_expr(&dir)
    ));
    assert!(
        e.contains("template' has conflicting definition values")
            && e.contains("/server.nix")
            && e.contains("/desktop.nix"),
        "{e}"
    );
}

/// What bootstrap writes for alice's machine, written into `dir`.
fn generated(dir: &Path, template: Template, nixos: bool) {
    let key = tailcache_store::signing::SecretKey::generate("build-server-tailcache-1")
        .unwrap()
        .public();
    let machine = Machine {
        api_url: "http://build-server:8000".into(),
        cache_url: "http://build-server:5000".into(),
        keys: vec![key],
        template,
        user: "alice".into(),
        home: "/home/alice".into(),
        system: "x86_64-linux".into(),
        nixos,
        dir: dir.display().to_string(),
    };
    std::fs::create_dir_all(dir).unwrap();
    for (name, contents) in bootstrap::render(&machine) {
        std::fs::write(dir.join(name), contents).unwrap();
    }
}

/// Bootstrap's output for each template, home-only and NixOS, under the real module system:
/// home-manager's configuration, and on NixOS the system side it exports, as a NixOS
/// configuration that imports it.
#[test]
fn bootstrap_output_evaluates_with_the_real_module_system() {
    let m = Modules::new();
    let d = scratch();
    for template in Template::ALL {
        for nixos in [false, true] {
            let what = format!("{} nixos={nixos}", template.name());
            let dir = d.path().join(format!("{}-{nixos}", template.name()));
            generated(&dir, template, nixos);
            let v = machine_summary(&m, &dir);
            assert_eq!(v["name"], "alice", "{what}");
            assert_eq!(
                v["summary"]["failedAssertions"],
                serde_json::json!([]),
                "{what}"
            );
            assert_eq!(v["summary"]["warnings"], serde_json::json!([]), "{what}");
            assert_eq!(v["hasNixos"], nixos, "{what}");
            assert_eq!(v["systemUpdateNixos"], nixos, "{what}");
            assert_eq!(v["prefetch"], true, "{what}");
            let wants_agent = template != Template::Server;
            // On NixOS the agent is the system's.
            assert_eq!(v["agent"]["enable"], wants_agent && !nixos, "{what}");
            assert_eq!(
                v["agent"]["reseed"],
                template == Template::Desktop && !nixos,
                "{what}"
            );
            if !nixos {
                continue;
            }
            let s = m.json(&format!(
                "t.nixosSummary (t.nixos {{ modules = [ (t.machine {}).nixosModule {{ networking.hostName = \"alice-laptop\"; }} ]; }})",
                path_expr(&dir)
            ));
            assert_eq!(s["failedAssertions"], serde_json::json!([]), "{what}");
            let subs = strings(&s["nixSettings"]["substituters"]);
            let expected: Vec<&str> = if wants_agent {
                vec![
                    "http://127.0.0.1:5001",
                    "http://build-server:5000",
                    "https://cache.nixos.org/",
                ]
            } else {
                vec!["http://build-server:5000", "https://cache.nixos.org/"]
            };
            assert_eq!(subs, expected, "{what}");
            let units = s["units"].as_object().unwrap();
            assert_eq!(
                units.contains_key("tailcache-agent.service"),
                wants_agent,
                "{what}"
            );
            let prefetch = units["tailcache-prefetch.service"].as_str().unwrap();
            assert!(
                unit_value(prefetch, "ExecStart").contains("--host alice-laptop"),
                "{what}: {prefetch}"
            );
            let keys = strings(&s["nixSettings"]["trusted-public-keys"]);
            assert!(
                keys.iter()
                    .any(|k| k.starts_with("build-server-tailcache-1:")),
                "{what}: {keys:?}"
            );
        }
    }

    // A misspelt option and a wrong type are reported by the module system.
    let dir = d.path().join("typo");
    generated(&dir, Template::Desktop, false);
    let home = dir.join("home.nix");
    let t = std::fs::read_to_string(&home).unwrap();
    // The agent's settings are the template's defaults; home.nix is where a machine sets them.
    let anchor = "    prefetch.enable = true;\n";
    assert!(t.contains(anchor), "{t}");
    let with = |line: &str| t.replace(anchor, &format!("{anchor}    {line}\n"));
    std::fs::write(&home, with("agent.reseeed = true;")).unwrap();
    let e = m.error(&format!("(t.machine {}).config.programs", path_expr(&dir)));
    assert!(
        e.contains("programs.tailcache.agent.reseeed") && e.contains("does not exist"),
        "{e}"
    );
    std::fs::write(&home, with("agent.enable = \"yes\";")).unwrap();
    let e = m.error(&format!(
        "(t.machine {}).config.programs.tailcache.agent.enable",
        path_expr(&dir)
    ));
    assert!(
        e.contains("programs.tailcache.agent.enable") && e.contains("not of type"),
        "{e}"
    );
}

/// The README's Nix examples, each marked `<!-- evaluated: nixos -->` or
/// `<!-- evaluated: home -->` right before its block.
fn readme_examples() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut rest = readme.as_str();
    while let Some(i) = rest.find("<!-- evaluated: ") {
        let after = &rest[i + 16..];
        let end = after.find(" -->").unwrap();
        let kind = after[..end].to_owned();
        let body = &after[end..];
        let start = body.find("```nix\n").unwrap() + 7;
        let stop = body[start..].find("```").unwrap();
        out.push((kind, body[start..start + stop].to_owned()));
        rest = &body[start + stop..];
    }
    out
}

/// The README's examples, exactly as printed, with the tailcache flake as their `tailcache`
/// argument: each evaluates, and what it yields is what the README says around it.
#[test]
fn readme_examples_evaluate_as_printed() {
    let m = Modules::new();
    let d = scratch();
    let examples = readme_examples();
    let kinds: Vec<&str> = examples.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["nixos", "nixos", "home"],
        "the README shows the server, a NixOS client and a home-manager client"
    );
    let mut summaries = Vec::new();
    for (i, (kind, block)) in examples.iter().enumerate() {
        let path = d.path().join(format!("example{i}.nix"));
        std::fs::write(&path, block).unwrap();
        let expr = match kind.as_str() {
            "nixos" => format!(
                "t.nixosSummary (t.nixos {{ modules = [ {} ]; specialArgs.tailcache = t.flake; }})",
                path_expr(&path)
            ),
            "home" => format!(
                "t.homeSummary (t.home {{ modules = [ {} ]; extraSpecialArgs.tailcache = t.flake; }})",
                path_expr(&path)
            ),
            other => panic!("unknown kind {other}"),
        };
        let s = m.json(&expr);
        assert_eq!(
            s["failedAssertions"],
            serde_json::json!([]),
            "README example:\n{block}"
        );
        assert_eq!(
            s["warnings"],
            serde_json::json!([]),
            "README example:\n{block}"
        );
        summaries.push(s);
    }
    // The server.
    let server = &summaries[0];
    assert!(
        server["units"]
            .get("tailcache-server.service")
            .is_some_and(|u| u.as_str().unwrap().contains("LoadCredential=signing-key:")),
        "{server}"
    );
    assert!(server["units"].get("atuin.service").is_some(), "{server}");
    // The NixOS client: the substituters and keys the README states.
    let client = &summaries[1];
    assert_eq!(
        strings(&client["nixSettings"]["substituters"]),
        [
            "http://127.0.0.1:5001",
            "http://build-server:5000",
            "https://cache.nixos.org/"
        ]
    );
    assert!(
        client["units"]
            .get("tailcache-prefetch.service")
            .is_some_and(|u| u.as_str().unwrap().contains("--auto-switch boot")),
        "{client}"
    );
    // home-manager only.
    let home = &summaries[2];
    assert_eq!(
        strings(&home["nixSettings"]["substituters"]),
        [
            "http://127.0.0.1:5001",
            "http://build-server:5000",
            "https://cache.nixos.org"
        ]
    );
    assert_eq!(home["atuin"]["sync_address"], "http://build-server:8888");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let conf = m.read(home["nixConf"].as_str().unwrap());
    for line in conf.lines().filter(|l| l.starts_with("substituters")) {
        assert!(readme.contains(line), "the README does not show {line:?}");
    }
}

/// `system-update` with `sudo`, `tailcache` and `nix-collect-garbage` replaced by stubs that
/// record their arguments: the system switch (as root, with everything spelled out), then the
/// home switch, then garbage collection; the script's arguments reach both switches, and
/// `--dry-run` collects no garbage. The arguments root's switch gets are accepted by the
/// real `tailcache switch`.
#[test]
fn system_update_switches_to_what_the_server_built() {
    let nix = NixEnv::new();
    let d = scratch();
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = d.path().join("log");
    let stub = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let log_args = format!(
        "printf '%s|' \"$@\" >> '{}'; echo >> '{}'",
        log.display(),
        log.display()
    );
    stub(
        "sudo",
        &format!("printf 'sudo ' >> '{}'; exec \"$@\"", log.display()),
    );
    stub(
        "tailcache",
        &format!("printf 'tailcache|' >> '{}'; {log_args}", log.display()),
    );
    stub(
        "nix-collect-garbage",
        &format!("printf 'gc|' >> '{}'; {log_args}", log.display()),
    );
    let lib = lit(repo().join("nix/lib.nix").to_str().unwrap());
    let client = r#"{ server = "http://build-server:8000"; cacheUrl = "http://build-server:5000";
      publicKeys = [ "build-server-1:AAAA" ]; agent = { enable = true; bind = "127.0.0.1:5001"; }; }"#;
    let eval = |expr: &str| -> Value {
        let o = nix.output(
            "nix-instantiate",
            &["--eval", "--strict", "--json", "--expr", expr],
        );
        assert_success(expr, &o);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let script = eval(&format!(
        "let l = import {lib}; in l.systemUpdateScript {{ tailcache = {}; systemArgs = \
         l.systemSwitchArgs {client}; nixos = true; homeManager = true; \
         gcOlderThan = \"30d\"; }}",
        lit(bin.join("tailcache").to_str().unwrap())
    ));
    let script = script.as_str().unwrap();
    for word in [
        "flake update",
        "nixos-rebuild",
        "home-manager switch",
        "nix build",
    ] {
        assert!(!script.contains(word), "{word:?} in {script}");
    }
    let path = d.path().join("system-update");
    std::fs::write(&path, script).unwrap();
    let run = |args: &[&str]| {
        let _ = std::fs::remove_file(&log);
        let o = std::process::Command::new("bash")
            .arg(&path)
            .args(args)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert_success(&format!("system-update {args:?}"), &o);
        std::fs::read_to_string(&log).unwrap()
    };
    let system = "tailcache|switch|--server|http://build-server:8000|--trusted-key|\
                  build-server-1:AAAA|--nix-option|extra-substituters|\
                  http://127.0.0.1:5001 http://build-server:5000|--nix-option|\
                  extra-trusted-public-keys|build-server-1:AAAA|";
    assert_eq!(
        run(&[]),
        format!(
            "sudo {system}\ntailcache|switch|--home|\ngc|--delete-older-than|30d|\n\
             sudo gc|--delete-older-than|30d|\n"
        )
    );
    assert_eq!(
        run(&["--dry-run"]),
        format!("sudo {system}--dry-run|\ntailcache|switch|--home|--dry-run|\n")
    );

    // The real binary parses root's arguments: it gets as far as asking the server.
    let args = eval(&format!("(import {lib}).systemSwitchArgs {client}"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tailcache"))
        .arg("switch")
        .args(strings(&args))
        .args(["--dry-run", "--host", "laptop", "--timeout", "2"])
        .env("XDG_CONFIG_HOME", d.path().join("xdg"))
        .env("TAILCACHE_SYSTEM_CONFIG", d.path().join("none.toml"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "tailcache switch {args}: {}",
        stderr_of(&o)
    );
}
