//! `tailcache bootstrap-new-machine`: asks the cache for its public key (`GET /pubkey`),
//! shows it with a fingerprint for the person to confirm, then writes a home-manager flake
//! for this machine: `secrets.nix` (server addresses and key; git-ignored), `.gitignore`,
//! `flake.nix`, `home.nix` using the `programs.tailcache` options of the home-manager
//! module, and the template's own file (`laptop.nix`, …: it names the template, whose values
//! the modules take as defaults); on NixOS (`--nixos`, or `/etc/NIXOS` present) also
//! `nixos-client.nix`, the system side (`services.tailcache.client`: the daemon ignores a
//! user's own substituters), which the flake exports as `nixosModules.default`.
//!
//! The files come from the one source of the per-machine flake, `cli/src/bootstrap/*.in`;
//! the flake's templates are the same files rendered with example values
//! ([`render_template`]) into one directory, `home/template` (the shared files and each
//! template's own; the flake gives each template the shared ones and its own), and
//! tests/nix_modules.rs checks that they are, runs `nix flake init` on them and evaluates
//! both with the real module system.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tailcache_store::signing::PublicKey;

use super::client::{self, CliError};
use super::config::{self, Endpoint};
use super::exit;

/// The file whose presence marks a NixOS system.
pub const NIXOS_MARKER: &str = "/etc/NIXOS";

/// The per-machine flake, with `@name@` placeholders ([`fill`]).
const FLAKE: &str = include_str!("bootstrap/flake.nix.in");
const HOME: &str = include_str!("bootstrap/home.nix.in");
const TEMPLATE: &str = include_str!("bootstrap/template.nix.in");
const SECRETS: &str = include_str!("bootstrap/secrets.nix.in");
const GITIGNORE: &str = include_str!("bootstrap/gitignore.in");
const NIXOS_CLIENT: &str = include_str!("bootstrap/nixos-client.nix.in");

/// The system side of a NixOS machine, next to the home-manager files.
pub const NIXOS_FILE: &str = "nixos-client.nix";

/// The files of the home-manager flake whatever its template (each adds its own file).
const SHARED_FILES: [&str; 4] = ["secrets.nix", ".gitignore", "flake.nix", "home.nix"];

/// What kind of machine this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    Laptop,
    Desktop,
    Server,
}

impl Template {
    pub const ALL: [Template; 3] = [Template::Laptop, Template::Desktop, Template::Server];

    pub fn name(self) -> &'static str {
        match self {
            Template::Laptop => "laptop",
            Template::Desktop => "desktop",
            Template::Server => "server",
        }
    }

    /// The template's own file in the flake, which home.nix imports: it names the template.
    pub fn file(self) -> &'static str {
        match self {
            Template::Laptop => "laptop.nix",
            Template::Desktop => "desktop.nix",
            Template::Server => "server.nix",
        }
    }

    /// What the header of the template's file says about the machine (nix/lib.nix holds
    /// what the template sets).
    fn summary(self) -> &'static str {
        match self {
            Template::Laptop => {
                "documents (~/Documents) and notes (~/Notes), shared with the desktop\n\
                 # and the server; Tailscale accepts subnet routes, no Tailscale SSH. The agent fetches\n\
                 # from peers but does not reseed (battery, hotel wifi)."
            }
            Template::Desktop => {
                "documents, notes and photos (~/Pictures, shared with the server only);\n\
                 # Tailscale accepts routes and runs Tailscale SSH. The agent reseeds what it fetched."
            }
            Template::Server => {
                "the hub: documents, notes, photos under ~/sync, plus a receive-only\n\
                 # ~/sync/backups; Tailscale SSH on, routes not accepted. No agent: this machine is the\n\
                 # cache."
            }
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// The binary cache's URL (the cache listener, e.g. http://build-server:5000).
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The build API's URL [default: the cache's host on port 8000].
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// Which machine template home.nix uses.
    #[arg(long, value_enum)]
    pub template: Template,
    /// Directory to write the configuration into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Trust the key without asking.
    #[arg(long)]
    pub yes: bool,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
    /// This is a NixOS machine: also write nixos-client.nix, the system side (default: when
    /// /etc/NIXOS exists).
    #[arg(long, conflicts_with = "home_only")]
    pub nixos: bool,
    /// Write only the home-manager files, even on NixOS.
    #[arg(long)]
    pub home_only: bool,
    /// Seconds to wait for the server.
    #[arg(
        long,
        value_name = "SECS",
        env = "TAILCACHE_TIMEOUT",
        default_value_t = 10.0
    )]
    pub timeout: f64,
}

/// `sha256:<nix32>` of the key's text form (`name:base64`), as shown for confirmation.
pub fn fingerprint(key: &PublicKey) -> String {
    let digest = Sha256::digest(key.to_nix_string().as_bytes());
    format!("sha256:{}", tailcache_store::nixbase32::encode(&digest))
}

/// The API URL next to a cache URL: same scheme and host, port 8000.
pub fn default_api(cache_url: &str) -> String {
    let (scheme, rest) = cache_url.split_once("://").unwrap_or(("http", cache_url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        // An IPv6 literal without a port ends in `]`.
        Some((h, port)) if !port.contains(']') => h,
        _ => authority,
    };
    format!("{scheme}://{host}:8000")
}

/// A Nix string literal.
pub fn nix_str(s: &str) -> String {
    tailcache_store::nix_string::nix_string(s)
}

/// The inputs of the generated files.
#[derive(Debug, Clone)]
pub struct Machine {
    pub api_url: String,
    pub cache_url: String,
    pub keys: Vec<PublicKey>,
    pub template: Template,
    pub user: String,
    pub home: String,
    pub system: String,
    /// Also the system side (nixos-client.nix).
    pub nixos: bool,
    /// Where the files go (named in nixos-client.nix's instructions).
    pub dir: String,
}

/// The files bootstrap writes, as (name, contents).
pub fn render(m: &Machine) -> Vec<(&'static str, String)> {
    let values = Values {
        user: nix_str(&m.user),
        home_directory: nix_str(&m.home),
        system: nix_str(&m.system),
        server: nix_str(&m.api_url),
        cache_url: nix_str(&m.cache_url),
        public_keys: m.keys.iter().map(|k| nix_str(&k.to_nix_string())).collect(),
        nixos: m.nixos,
        dir: m.dir.clone(),
    };
    render_files(m.template, &values, "secrets.nix")
}

/// The flake template `<template>`: the same files with example values (user `me`, the
/// server `build-server`) and `secrets.example.nix` for `secrets.nix`. The flake's templates
/// are these files in one directory, `home/template`: the shared ones, which are the same for
/// every template, and each template's own.
pub fn render_template(template: Template) -> Vec<(&'static str, String)> {
    let values = Values {
        user: nix_str("me"),
        // An expression of the flake's `let`: follows `user` when that is edited.
        home_directory: "\"/home/${user}\"".to_owned(),
        system: nix_str("x86_64-linux"),
        server: nix_str("http://build-server:8000"),
        cache_url: nix_str("http://build-server:5000"),
        public_keys: vec![nix_str("build-server-tailcache-1:REPLACE-WITH-GET-/pubkey")],
        nixos: false,
        dir: "/home/me/nix-config".to_owned(),
    };
    render_files(template, &values, "secrets.example.nix")
}

/// What differs between machines, each a Nix expression.
struct Values {
    user: String,
    home_directory: String,
    system: String,
    server: String,
    cache_url: String,
    public_keys: Vec<String>,
    nixos: bool,
    dir: String,
}

fn render_files(
    t: Template,
    v: &Values,
    secrets_name: &'static str,
) -> Vec<(&'static str, String)> {
    let keys: Vec<String> = v.public_keys.iter().map(|k| format!("    {k}")).collect();
    let keys = keys.join("\n");
    // On NixOS the agent is the system's (one per machine, on one port), and system-update
    // switches the system too.
    let home_agent = if v.nixos {
        "    # The agent runs as a system service (nixos-client.nix).\n    agent.enable = false;"
    } else {
        "    # The agent (agent.enable, agent.reseed) is the template's; set either here to differ."
    };
    let system_update = if v.nixos {
        "\n    systemUpdate.nixos = true;   # system-update switches the system first (sudo)"
    } else {
        ""
    };
    let nixos_output = if v.nixos {
        "\n      # The system side: add it to the NixOS configuration (see nixos-client.nix).\n      \
         nixosModules.default = import ./nixos-client.nix { inherit tailcache; };"
    } else {
        ""
    };
    let vars = [
        ("template", t.name()),
        ("summary", t.summary()),
        ("user", &v.user),
        ("homeDirectory", &v.home_directory),
        ("system", &v.system),
        ("homeAgent", home_agent),
        ("systemUpdate", system_update),
        ("nixosOutput", nixos_output),
        ("dir", &v.dir),
        ("server", &v.server),
        ("cacheUrl", &v.cache_url),
        ("publicKeys", &keys),
    ];
    let mut files = vec![
        (secrets_name, fill(SECRETS, &vars)),
        (".gitignore", fill(GITIGNORE, &vars)),
        ("flake.nix", fill(FLAKE, &vars)),
        ("home.nix", fill(HOME, &vars)),
        (t.file(), fill(TEMPLATE, &vars)),
    ];
    if v.nixos {
        files.push((NIXOS_FILE, fill(NIXOS_CLIENT, &vars)));
    }
    files
}

/// Replaces each `@name@` of `template` with its value, in one pass (a value is never
/// searched for placeholders). The sources are ours, so an unknown name is a bug.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after
            .find('@')
            .unwrap_or_else(|| panic!("an unclosed placeholder in {after:?}"));
        let name = &after[..end];
        let value = vars
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no value for @{name}@"))
            .1;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn nix_system() -> String {
    // Rust's and Nix's names agree for the systems the flake supports.
    format!("{}-linux", std::env::consts::ARCH)
}

/// Refuses to overwrite files a run would write, or to replace another template's file,
/// unless `--force`.
fn refuse_to_overwrite(a: &BootstrapArgs, nixos: bool) -> Result<(), CliError> {
    let files_exist: Vec<PathBuf> = SHARED_FILES
        .into_iter()
        .chain(Template::ALL.map(Template::file))
        .chain(nixos.then_some(NIXOS_FILE))
        .map(|f| a.dir.join(f))
        .filter(|p| p.exists())
        .collect();
    if files_exist.is_empty() || a.force {
        return Ok(());
    }
    let names: Vec<String> = files_exist
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Err(CliError::NotConfirmed(format!(
        "{} already exist(s); pass --force to overwrite",
        names.join(", ")
    )))
}

/// The cache's signing keys, from its `/pubkey` (at least one).
fn fetch_keys(cache_url: &str, timeout_secs: f64) -> Result<Vec<PublicKey>, CliError> {
    let endpoint = Endpoint {
        url: cache_url.to_owned(),
        token: None,
        timeout: std::time::Duration::from_secs_f64(timeout_secs),
    };
    let text = client::get_text(&endpoint, "/pubkey")?;
    let keys = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(PublicKey::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::BadReply {
            url: cache_url.to_owned(),
            reason: format!("/pubkey: {e}"),
        })?;
    if keys.is_empty() {
        return Err(CliError::BadReply {
            url: cache_url.to_owned(),
            reason: "/pubkey lists no key".into(),
        });
    }
    Ok(keys)
}

/// Asks on the terminal whether to trust the keys shown and write to `dir`.
fn confirm(dir: &Path) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NotConfirmed(
            "cannot ask for confirmation: stdin is not a terminal; check the key above and pass --yes".into(),
        ));
    }
    print!(
        "Trust this key and write the configuration to {}? [y/N] ",
        dir.display()
    );
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::local("reading the answer", e))?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
        Ok(())
    } else {
        Err(CliError::NotConfirmed(
            "not confirmed; nothing written".into(),
        ))
    }
}

/// Runs the command.
pub fn run(a: &BootstrapArgs) -> Result<u8, CliError> {
    let cache_url = config::normalise_url(&a.server)?;
    let api_url = match &a.api {
        Some(u) => config::normalise_url(u)?,
        None => default_api(&cache_url),
    };
    let nixos = a.nixos || (!a.home_only && is_nixos(Path::new(NIXOS_MARKER)));
    refuse_to_overwrite(a, nixos)?;
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        return Err(CliError::Usage(
            "--timeout must be a positive number".into(),
        ));
    }
    let keys = fetch_keys(&cache_url, a.timeout)?;
    println!("The cache at {cache_url} signs with:");
    for k in &keys {
        println!("  {}", k.to_nix_string());
        println!("  fingerprint {}", fingerprint(k));
    }
    if !a.yes {
        confirm(&a.dir)?;
    }
    let machine = Machine {
        api_url,
        cache_url,
        keys,
        template: a.template,
        user: client::Who::current().user,
        home: std::env::var("HOME").unwrap_or_else(|_| "/home/user".into()),
        system: nix_system(),
        nixos,
        dir: absolute(&a.dir).display().to_string(),
    };
    let files = render(&machine);
    write_files(&a.dir, &files)?;
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    println!("wrote {} to {}", names.join(", "), a.dir.display());
    let replaced = remove_other_templates(&a.dir, a.template)?;
    if !replaced.is_empty() {
        println!(
            "removed {} (the template is now {})",
            replaced.join(", "),
            a.template.name()
        );
    }
    if nixos {
        println!(
            "next, the system: add nixosModules.default of this flake to the NixOS \
             configuration (see {NIXOS_FILE}) and rebuild once"
        );
    }
    println!(
        "next: cd {} && home-manager switch --flake path:.#{}",
        a.dir.display(),
        machine.user
    );
    Ok(exit::OK)
}

/// Whether this is NixOS: `marker` (/etc/NIXOS) exists.
pub fn is_nixos(marker: &Path) -> bool {
    marker.exists()
}

fn absolute(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir()
            .map(|c| c.join(dir))
            .unwrap_or_else(|_| dir.to_owned())
    }
}

/// Removes the files of templates other than `t` (there with `--force` only): home.nix
/// imports whichever template's file is beside it, and a machine follows one template.
fn remove_other_templates(dir: &Path, t: Template) -> Result<Vec<&'static str>, CliError> {
    let mut removed = Vec::new();
    for other in Template::ALL.into_iter().filter(|o| *o != t) {
        let path = dir.join(other.file());
        if path.exists() {
            std::fs::remove_file(&path)
                .map_err(|e| CliError::local(format!("removing {}", path.display()), e))?;
            removed.push(other.file());
        }
    }
    Ok(removed)
}

fn write_files(dir: &Path, files: &[(&str, String)]) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| CliError::local(dir.display().to_string(), e))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| CliError::local(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_placeholders_once() {
        assert_eq!(
            fill("a @x@ b @y@@x@", &[("x", "@y@"), ("y", "1")]),
            "a @y@ b 1@y@"
        );
    }

    #[test]
    fn every_placeholder_has_a_value() {
        for t in Template::ALL {
            for (name, text) in render_template(t) {
                assert!(!text.contains('@'), "{t:?} {name}: {text}");
            }
        }
    }

    #[test]
    fn nixos_is_told_by_its_marker() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("NIXOS");
        assert!(!is_nixos(&marker));
        std::fs::write(&marker, "").unwrap();
        assert!(is_nixos(&marker));
    }

    #[test]
    fn api_next_to_cache() {
        assert_eq!(
            default_api("http://build-server:5000"),
            "http://build-server:8000"
        );
        assert_eq!(default_api("http://h"), "http://h:8000");
        assert_eq!(default_api("https://[::1]:5000/x"), "https://[::1]:8000");
    }

    #[test]
    fn nix_strings_escape_interpolation() {
        assert_eq!(nix_str("a\"b${c}\\"), "\"a\\\"b\\${c}\\\\\"");
    }
}
