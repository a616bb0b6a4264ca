//! `tailcache bootstrap-new-machine` against the real server: the files it writes parse
//! with `nix-instantiate --parse` and, under the real module system (`common::modules`),
//! give this user, home and system a home-manager configuration with the server's real key
//! and addresses (and with `--nixos` the system side, a NixOS client configuration); they are
//! not overwritten without `--force`; without `--yes` and without a terminal it refuses.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::TestCache;
use common::modules::{Modules, path_expr};
use tempfile::TempDir;

fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("tc-boot.")
        .tempdir()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn bootstrap(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tailcache"))
        .arg("bootstrap-new-machine")
        .args(args)
        .env("USER", "alice")
        .env("HOME", "/home/alice")
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `nix-instantiate` with a private, empty configuration (never the machine's).
fn nix_instantiate(scratch: &Path, args: &[&str]) -> Output {
    let conf = scratch.join("nixconf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("nix.conf"),
        "experimental-features = nix-command\n",
    )
    .unwrap();
    std::fs::write(conf.join("empty.conf"), "").unwrap();
    Command::new("nix-instantiate")
        .args(args)
        .env("NIX_CONF_DIR", &conf)
        .env("NIX_USER_CONF_FILES", conf.join("empty.conf"))
        .env("XDG_CACHE_HOME", scratch.join("cache"))
        .env("NIX_STATE_DIR", scratch.join("nix-state"))
        .output()
        .expect("nix-instantiate is needed (scripts/test.sh installs nix-bin)")
}

fn eval_json(scratch: &Path, expr: &str) -> serde_json::Value {
    let o = nix_instantiate(scratch, &["--eval", "--strict", "--json", "--expr", expr]);
    assert!(o.status.success(), "{expr}: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// What the real module system makes of the machine flake in `dir`: its home
/// configuration's name, system and the values bootstrap sets.
fn machine(m: &Modules, dir: &Path) -> serde_json::Value {
    m.json(&format!(
        "let mc = t.machine {}; c = mc.config; in {{ inherit (mc) name system; \
           inherit (c.home) username homeDirectory; \
           tailcache = {{ inherit (c.programs.tailcache) server cacheUrl publicKeys; agent = c.programs.tailcache.agent.enable; }}; \
           template = c.services.bootstrap-services.template; \
           substituters = c.nix.settings.substituters; \
           nixos = if mc.nixosModule == null then null else \
             (t.nixos {{ modules = [ mc.nixosModule {{ networking.hostName = \"laptop\"; }} ]; }}).nix.settings.substituters; }}",
        path_expr(dir)
    ))
}

#[test]
fn writes_parsing_files_with_the_real_key_and_refuses_to_overwrite() {
    let d = scratch();
    let root = d.path().join("store-root");
    std::fs::create_dir_all(root.join("nix/store")).unwrap();
    let server = TestCache::builder().store_root(&root).start();
    let pubkey = server.get("/pubkey").text().trim().to_owned();
    assert!(pubkey.contains(':'), "{pubkey}");
    let out = d.path().join("machine");
    let out_s = out.to_str().unwrap();
    let api = server.api_url().to_owned();

    // No terminal to ask on and no --yes: refused, nothing written.
    let o = bootstrap(
        d.path(),
        &[
            "--server",
            server.url(),
            "--template",
            "laptop",
            "--dir",
            out_s,
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("stdin is not a terminal"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).contains(&pubkey),
        "the key is shown: {}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stdout).contains("fingerprint sha256:"),
        "{}",
        text(&o.stdout)
    );
    assert!(!out.exists());

    let o = bootstrap(
        d.path(),
        &[
            "--server",
            server.url(),
            "--api",
            &api,
            "--template",
            "laptop",
            "--dir",
            out_s,
            "--yes",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for f in ["secrets.nix", "flake.nix", "home.nix", "laptop.nix"] {
        let p = out.join(f);
        let o = nix_instantiate(d.path(), &["--parse", p.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "{f} does not parse: {}",
            text(&o.stderr)
        );
    }
    let gitignore = std::fs::read_to_string(out.join(".gitignore")).unwrap();
    assert!(gitignore.lines().any(|l| l == "secrets.nix"), "{gitignore}");

    let secrets = eval_json(d.path(), &format!("import {}/secrets.nix", out_s));
    assert_eq!(secrets["publicKeys"], serde_json::json!([pubkey]));
    assert_eq!(secrets["cacheUrl"], server.url().trim_end_matches('/'));
    assert_eq!(secrets["server"], api.trim_end_matches('/'));

    // The flake's one home configuration, for this user and system, under the real module
    // system with the real key and addresses.
    let m = Modules::new();
    let c = machine(&m, &out);
    assert_eq!(c["name"], "alice");
    assert_eq!(c["system"], format!("{}-linux", std::env::consts::ARCH));
    assert_eq!(c["username"], "alice");
    assert_eq!(c["homeDirectory"], "/home/alice");
    assert_eq!(c["tailcache"]["publicKeys"], serde_json::json!([pubkey]));
    assert_eq!(c["tailcache"]["server"], api.trim_end_matches('/'));
    assert_eq!(
        c["tailcache"]["cacheUrl"],
        server.url().trim_end_matches('/')
    );
    assert_eq!(c["tailcache"]["agent"], true);
    assert_eq!(c["template"], "laptop");
    assert_eq!(
        c["substituters"][1],
        server.url().trim_end_matches('/'),
        "{c}"
    );
    assert_eq!(c["nixos"], serde_json::Value::Null);
    let flake = eval_json(d.path(), &format!("(import {out_s}/flake.nix).inputs"));
    assert_eq!(flake["tailcache"]["url"], "github:tailcache/tailcache");
    assert!(flake["home-manager"]["url"].is_string());
    assert!(flake["nixpkgs"]["url"].is_string());

    // Existing files stay unless --force.
    std::fs::write(out.join("home.nix"), "# mine\n{ }\n").unwrap();
    let o = bootstrap(
        d.path(),
        &[
            "--server",
            server.url(),
            "--template",
            "server",
            "--dir",
            out_s,
            "--yes",
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(out.join("home.nix")).unwrap(),
        "# mine\n{ }\n"
    );
    let o = bootstrap(
        d.path(),
        &[
            "--server",
            server.url(),
            "--template",
            "server",
            "--dir",
            out_s,
            "--yes",
            "--force",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // The machine follows one template: the laptop's file made way for the server's.
    assert!(out.join("server.nix").exists());
    assert!(!out.join("laptop.nix").exists());
    assert!(
        text(&o.stdout).contains("removed laptop.nix"),
        "{}",
        text(&o.stdout)
    );
    let c = machine(&m, &out);
    assert_eq!(c["template"], "server");
    assert_eq!(c["tailcache"]["agent"], false);

    // A NixOS machine: the system side too, and the home agent left to the system.
    let nixos = d.path().join("nixos-machine");
    let o = desktop(d.path(), server.url(), &nixos, "--nixos");
    assert!(
        text(&o.stdout).contains("nixos-client.nix"),
        "{}",
        text(&o.stdout)
    );
    let snippet = std::fs::read_to_string(nixos.join("nixos-client.nix")).unwrap();
    assert!(
        snippet.contains(&format!("path:{}", nixos.display())),
        "{snippet}"
    );
    let c = machine(&m, &nixos);
    assert_eq!(c["tailcache"]["agent"], false);
    assert_eq!(
        c["nixos"],
        serde_json::json!([
            "http://127.0.0.1:5001",
            server.url().trim_end_matches('/'),
            "https://cache.nixos.org/"
        ])
    );
    // --home-only keeps to the home-manager files.
    let home_only = d.path().join("home-only");
    desktop(d.path(), server.url(), &home_only, "--home-only");
    assert!(!home_only.join("nixos-client.nix").exists());
}

/// Bootstraps a desktop into `out` with `flag`, which must succeed.
fn desktop(scratch: &Path, cache: &str, out: &Path, flag: &str) -> Output {
    let o = bootstrap(
        scratch,
        &[
            "--server",
            cache,
            "--template",
            "desktop",
            "--dir",
            out.to_str().unwrap(),
            "--yes",
            flag,
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    o
}

#[test]
fn an_unreachable_cache_is_reported() {
    let d = scratch();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = d.path().join("m");
    let o = bootstrap(
        d.path(),
        &[
            "--server",
            &url,
            "--template",
            "desktop",
            "--dir",
            out.to_str().unwrap(),
            "--yes",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("connection refused"),
        "{}",
        text(&o.stderr)
    );
    assert!(!out.exists());
}
