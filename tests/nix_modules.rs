//! The Nix side of the deployment (issue 6), checked with the Nix this machine has and without
//! nixpkgs or home-manager: every `.nix` file parses; the modules' pure decisions
//! (`nix/lib.nix`) hold under `nix-instantiate --eval` (tests/nix/lib-test.nix), and a broken
//! decision is caught; the TOML the modules write is accepted by the server's, the agent's and
//! the CLI's config parsers (unknown keys are errors there); and every option name used by
//! `bootstrap-new-machine`'s home.nix, by the templates and by the README's examples is
//! declared by the modules (tests/nix/options.nix), a misspelt one being reported.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use tailcache::cli::bootstrap::{self, Machine, OPTIONS_USED, Template};
use tailcache_testkit::NixEnv;
use tailcache_testkit::nix::{assert_success, stderr_of};
use tempfile::TempDir;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("tc-nixmods.")
        .tempdir()
        .unwrap()
}

fn parse(nix: &NixEnv, file: &Path) -> Output {
    nix.output("nix-instantiate", &["--parse", file.to_str().unwrap()])
}

/// Evaluates a test file such as tests/nix/lib-test.nix (strictly: every assertion runs).
fn eval_file(nix: &NixEnv, file: &Path) -> Output {
    nix.output(
        "nix-instantiate",
        &["--eval", "--strict", file.to_str().unwrap()],
    )
}

/// A Nix string literal for a path (the expressions below name files by absolute path).
fn lit(p: &Path) -> String {
    bootstrap::nix_str(p.to_str().unwrap())
}

fn eval(nix: &NixEnv, expr: &str) -> Output {
    nix.output(
        "nix-instantiate",
        &["--eval", "--strict", "--json", "--expr", expr],
    )
}

fn eval_json(nix: &NixEnv, expr: &str) -> Value {
    let o = eval(nix, expr);
    assert_success(&format!("evaluating {expr}"), &o);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// tests/nix/options.nix on a configuration: (declared, used, unknown).
fn check_names(nix: &NixEnv, config: &str, args: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let r = repo();
    let expr = format!(
        "import {} {{ modules = [ (/. + {}) (/. + {}) ]; config = {config}; args = {args}; }}",
        lit(&r.join("tests/nix/options.nix")),
        lit(&r.join("home")),
        lit(&r.join("nixos")),
    );
    let v = eval_json(nix, &expr);
    (
        strings(&v["declared"]),
        strings(&v["used"]),
        strings(&v["unknown"]),
    )
}

/// What the flake's `tailcache` input looks like to a home.nix (only the attribute it uses).
fn flake_stub() -> String {
    format!(
        "{{ homeManagerModules.default = /. + {}; }}",
        lit(&repo().join("home"))
    )
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

#[test]
fn every_nix_file_parses() {
    let nix = NixEnv::new();
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    files.sort();
    for expected in [
        "flake.nix",
        "nix/lib.nix",
        "nix/package.nix",
        "nix/checks.nix",
        "nixos/default.nix",
        "nixos/tests/substitute.nix",
        "home/default.nix",
        "home/tailcache.nix",
        "home/bootstrap-services.nix",
        "home/templates/laptop/home.nix",
        "home/templates/server/flake.nix",
        "tests/nix/lib-test.nix",
        "tests/nix/options.nix",
    ] {
        assert!(
            files.contains(&repo().join(expected)),
            "{expected} is missing from {files:?}"
        );
    }
    for f in &files {
        assert_success(&format!("parsing {}", f.display()), &parse(&nix, f));
    }
    // And the check itself can fail.
    let d = scratch();
    let bad = d.path().join("bad.nix");
    std::fs::write(&bad, "{ a = 1; ").unwrap();
    let o = parse(&nix, &bad);
    assert!(!o.status.success());
}

#[test]
fn the_modules_decisions_hold() {
    let nix = NixEnv::new();
    let test = repo().join("tests/nix/lib-test.nix");
    let o = eval_file(&nix, &test);
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
    let test = d.path().join("tests/nix/lib-test.nix");
    let o = eval_file(nix, &test);
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
}

/// A server module configuration with every setting the TOML depends on.
const SERVER_CFG: &str = r#"{
  stateDir = "/var/lib/tailcache";
  signingKeyFile = "/var/lib/secrets/key";
  cache = { listen = "100.64.0.1:5000"; priority = 30; compression = "zstd"; maxBytes = 1073741824; };
  api = { listen = "100.64.0.1:8000"; tokenFile = "/var/lib/secrets/token"; allow = [ "user:alice@example.com" "local" ]; };
  build = {
    repository = "https://example.invalid/config.git";
    branch = "main";
    attribute = "nixosConfigurations.desktop.config.system.build.toplevel";
    nixArgs = [ "--option" "cores" "2" ];
    webhookSecretFile = null;
  };
  p2p = { enable = true; listen = [ "/ip4/100.64.0.1/udp/5002/quic-v1" "/ip4/100.64.0.1/tcp/5002" ]; };
}"#;

const CLIENT_CFG: &str = r#"{
  server = "http://build-server:8000";
  cacheUrl = "http://build-server:5000";
  publicKeys = [ "build-server-1:AAAA" ];
  tokenFile = "/home/alice/nix-config/secrets/token";
  agent = {
    enable = true; bind = "127.0.0.1:5001"; tracker = "/ip4/100.64.0.1/tcp/5002/p2p/12D3KooWxyz";
    reseed = true; metered = false; cacheDir = null; cacheMaxBytes = 1000; uploadRate = 500;
    listen = [ "/ip4/100.64.0.2/tcp/0" ];
  };
}"#;

/// Writes a JSON value as TOML, as `pkgs.formats.toml` would.
fn write_toml(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml::to_string(v).unwrap()).unwrap();
    path
}

#[test]
fn the_toml_the_modules_write_is_what_the_binaries_read() {
    let nix = NixEnv::new();
    let d = scratch();
    let lib = lit(&repo().join("nix/lib.nix"));

    let server = eval_json(&nix, &format!("(import {lib}).serverConfig {SERVER_CFG}"));
    let path = write_toml(d.path(), "server.toml", &server);
    let c = tailcache::config::Config::from_file(&path).unwrap();
    assert_eq!(c.cache.bind.to_string(), "100.64.0.1:5000");
    assert_eq!(c.api.bind.to_string(), "100.64.0.1:8000");
    assert_eq!(
        c.api.allow,
        [
            tailcache::config::AllowEntry::User("alice@example.com".into()),
            tailcache::config::AllowEntry::Local
        ]
    );
    assert_eq!(c.cache.compression, tailcache::config::Compression::Zstd);
    assert_eq!(c.cache.nar_cache_max_bytes, 1 << 30);
    assert_eq!(
        c.build.repository.as_deref(),
        Some("https://example.invalid/config.git")
    );
    assert_eq!(c.build.nix_args, ["--option", "cores", "2"]);
    assert!(c.p2p.enable);
    assert_eq!(c.state_dir(), Path::new("/var/lib/tailcache"));
    // Secrets are not in the file (it lands in the store); they come from credentials.
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(!file.contains("/var/lib/secrets"), "{file}");
    assert_eq!(c.api.token_file, None);
    assert!(c.cache.secret_key_files.is_empty());
    let args = eval_json(
        &nix,
        &format!("(import {lib}).serverArgs {SERVER_CFG} \"/etc/tailcache.toml\""),
    );
    assert_eq!(
        strings(&args),
        [
            "serve",
            "--config",
            "/etc/tailcache.toml",
            "--secret-key-file",
            "%d/signing-key",
            "--token-file",
            "%d/api-token"
        ]
    );
    // The server's parser is strict, so a misnamed key would have been caught above.
    let mut typo = server.clone();
    typo["cache"]["listen"] = Value::from("127.0.0.1:5000");
    let path = write_toml(d.path(), "typo.toml", &typo);
    let err = tailcache::config::Config::from_file(&path).unwrap_err();
    assert!(format!("{err:#}").contains("listen"), "{err:#}");

    let agent = eval_json(&nix, &format!("(import {lib}).agentConfig {CLIENT_CFG}"));
    let path = write_toml(d.path(), "agent.toml", &agent);
    let a = tailcache::config::Config::from_file(&path).unwrap().agent;
    assert_eq!(a.server, "http://build-server:5000");
    assert_eq!(a.trusted_keys, ["build-server-1:AAAA"]);
    assert!(a.reseed && !a.metered);
    assert_eq!((a.cache_max_bytes, a.upload_rate), (1000, 500));
    assert_eq!(
        a.tracker.as_deref(),
        Some("/ip4/100.64.0.1/tcp/5002/p2p/12D3KooWxyz")
    );
    assert_eq!(a.bind.to_string(), "127.0.0.1:5001");
    assert_eq!(a.listen, ["/ip4/100.64.0.2/tcp/0"]);
    assert_eq!(a.cache_dir, None);

    let client = eval_json(&nix, &format!("(import {lib}).clientConfig {CLIENT_CFG}"));
    let path = write_toml(d.path(), "client.toml", &client);
    let c = tailcache::cli::config::ClientConfig::load(&path).unwrap();
    assert_eq!(c.server.as_deref(), Some("http://build-server:8000"));
    assert_eq!(
        c.token_file.as_deref(),
        Some(Path::new("/home/alice/nix-config/secrets/token"))
    );
    assert_eq!(c.token, None);
}

#[test]
fn system_update_is_valid_bash_in_the_right_order() {
    let nix = NixEnv::new();
    let script = eval_json(
        &nix,
        &format!(
            "(import {}).systemUpdateScript {{ flake = \"/home/alice/nix-config\"; nixos = true; homeManager = true; gcOlderThan = \"30d\"; }}",
            lit(&repo().join("nix/lib.nix"))
        ),
    );
    let script = script.as_str().unwrap();
    let d = scratch();
    let path = d.path().join("system-update");
    std::fs::write(&path, script).unwrap();
    let o = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .unwrap();
    assert_success(&format!("bash -n {script}"), &o);
    let at = |s: &str| {
        script
            .find(s)
            .unwrap_or_else(|| panic!("{s:?} not in {script}"))
    };
    assert!(at("flake update") < at("nixos-rebuild switch"));
    assert!(at("nixos-rebuild switch") < at("home-manager switch"));
    assert!(at("home-manager switch") < at("nix-collect-garbage"));
}

fn generated_home(dir: &Path, template: Template) -> PathBuf {
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
    };
    std::fs::create_dir_all(dir).unwrap();
    for (name, contents) in bootstrap::render(&machine) {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    dir.join("home.nix")
}

#[test]
fn bootstrap_output_uses_only_declared_options() {
    let nix = NixEnv::new();
    let d = scratch();
    let args = format!("{{ tailcache = {}; }}", flake_stub());
    for template in [Template::Laptop, Template::Desktop, Template::Server] {
        let home = generated_home(&d.path().join(template.name()), template);
        let (declared, mut used, unknown) = check_names(&nix, &lit(&home), &args);
        assert_eq!(unknown, Vec::<String>::new(), "{}", home.display());
        used.sort();
        let mut listed: Vec<String> = OPTIONS_USED.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(used, listed, "bootstrap's OPTIONS_USED is out of date");
        for name in OPTIONS_USED {
            assert!(declared.iter().any(|d| d == name), "{name} is not declared");
        }
    }

    // A misspelt option and a wrong type are reported.
    let home = generated_home(&d.path().join("typo"), Template::Desktop);
    let t = std::fs::read_to_string(&home).unwrap();
    assert!(t.contains("agent.reseed = true;"), "{t}");
    std::fs::write(
        &home,
        t.replace("agent.reseed = true;", "agent.reseeed = true;")
            .replace("agent.enable = true;", "agent.enable = \"yes\";"),
    )
    .unwrap();
    let (_, _, unknown) = check_names(&nix, &lit(&home), &args);
    assert_eq!(
        unknown,
        [
            "programs.tailcache.agent.enable is not a bool",
            "programs.tailcache.agent.reseeed is not declared"
        ]
    );
}

#[test]
fn the_generated_flake_matches_this_flake() {
    let nix = NixEnv::new();
    let d = scratch();
    let home = generated_home(&d.path().join("m"), Template::Laptop);
    let dir = home.parent().unwrap();
    // home.nix imports the module this flake exports as homeManagerModules.default.
    let outputs = format!(
        "((import {}).outputs {{ self = outputs; nixpkgs = throw \"no nixpkgs\"; home-manager = throw \"no home-manager\"; }})",
        lit(&repo().join("flake.nix"))
    );
    let imported = eval_json(
        &nix,
        &format!(
            "let outputs = {outputs}; in map toString (import {} {{ tailcache = outputs; }}).imports",
            lit(&home)
        ),
    );
    assert_eq!(strings(&imported), [repo().join("home").to_str().unwrap()]);
    // The generated flake's tailcache input follows inputs this flake has.
    let generated = eval_json(
        &nix,
        &format!("(import {}).inputs.tailcache", lit(&dir.join("flake.nix"))),
    );
    let ours = eval_json(
        &nix,
        &format!(
            "builtins.attrNames (import {}).inputs",
            lit(&repo().join("flake.nix"))
        ),
    );
    for follows in generated["inputs"].as_object().unwrap().keys() {
        assert!(
            strings(&ours).contains(follows),
            "the generated flake makes {follows} follow, which this flake lacks"
        );
    }
    let names = eval_json(
        &nix,
        &format!(
            "let outputs = {outputs}; in {{ hm = builtins.attrNames outputs.homeManagerModules; templates = builtins.mapAttrs (_: t: builtins.pathExists (t.path + \"/flake.nix\")) outputs.templates; nixos = builtins.isPath outputs.nixosModules.default; }}"
        ),
    );
    assert_eq!(strings(&names["hm"]), ["default", "services", "tailcache"]);
    assert_eq!(
        names["templates"],
        serde_json::json!({"desktop": true, "laptop": true, "server": true})
    );
    assert_eq!(names["nixos"], true);
}

#[test]
fn templates_use_only_declared_options() {
    let nix = NixEnv::new();
    let d = scratch();
    let lib = lit(&repo().join("nix/lib.nix"));
    for t in ["laptop", "desktop", "server"] {
        // The flake template, with its example secrets in place of the git-ignored file.
        let dir = d.path().join(t);
        std::fs::create_dir_all(&dir).unwrap();
        let src = repo().join("home/templates").join(t);
        for f in ["flake.nix", "home.nix", "secrets.example.nix", ".gitignore"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let ignore = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
        assert!(ignore.lines().any(|l| l == "secrets.nix"), "{ignore}");
        std::fs::copy(dir.join("secrets.example.nix"), dir.join("secrets.nix")).unwrap();
        let args = format!("{{ tailcache = {}; user = \"alice\"; }}", flake_stub());
        let (_, used, unknown) = check_names(&nix, &lit(&dir.join("home.nix")), &args);
        assert_eq!(unknown, Vec::<String>::new(), "template {t}");
        assert!(
            used.iter()
                .any(|u| u == "services.bootstrap-services.template"),
            "{used:?}"
        );
        let chosen = eval_json(
            &nix,
            &format!(
                "(import {} {{ tailcache = {}; user = \"alice\"; }}).services.bootstrap-services.template",
                lit(&dir.join("home.nix")),
                flake_stub()
            ),
        );
        assert_eq!(chosen, t);

        // What the template sets through the module: folder and Tailscale fields it declares.
        let (_, used, unknown) = check_names(
            &nix,
            &format!(
                "{{ services.bootstrap-services = {{ inherit ((import {lib}).templates.{t}) folders tailscale; }}; }}"
            ),
            "{ }",
        );
        assert_eq!(unknown, Vec::<String>::new(), "template {t}");
        assert!(
            used.contains(&"services.bootstrap-services.folders.documents.devices".to_owned()),
            "{used:?}"
        );
    }
}

/// The ```nix blocks of the README's module section.
fn readme_examples() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("## NixOS and home-manager modules")
        .expect("README has a \"NixOS and home-manager modules\" section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let section = &section[..end];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(i) = rest.find("```nix\n") {
        let body = &rest[i + 7..];
        let j = body.find("```").unwrap();
        blocks.push(body[..j].to_owned());
        rest = &body[j..][3..];
    }
    blocks
}

#[test]
fn readme_examples_use_only_declared_options() {
    let nix = NixEnv::new();
    let d = scratch();
    let blocks = readme_examples();
    assert!(
        blocks.len() >= 2,
        "the README shows a server and a client configuration"
    );
    let mut all_used = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let path = d.path().join(format!("example{i}.nix"));
        std::fs::write(&path, block).unwrap();
        assert_success(&format!("parsing {block}"), &parse(&nix, &path));
        let args = format!("{{ tailcache = {}; }}", flake_stub());
        let (_, used, unknown) = check_names(&nix, &lit(&path), &args);
        assert_eq!(unknown, Vec::<String>::new(), "README example:\n{block}");
        all_used.extend(used);
    }
    for name in [
        "services.tailcache.server.enable",
        "services.tailcache.server.signingKeyFile",
        "services.tailcache.server.build.repository",
        "programs.tailcache.agent.enable",
        "services.bootstrap-services.folders.documents.path",
    ] {
        assert!(
            all_used.iter().any(|u| u == name),
            "the README's examples do not show {name}: {all_used:?}"
        );
    }
}
