//! `tailcache bootstrap-new-machine`: asks the cache for its public key (`GET /pubkey`),
//! shows it with a fingerprint for the person to confirm, then writes a home-manager flake
//! for this machine: `secrets.nix` (server addresses and key; git-ignored), `.gitignore`,
//! `flake.nix` and `home.nix` using the `programs.tailcache` options of the home-manager
//! module (issue 6). The option names used are listed in [`OPTIONS_USED`].

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tailcache_store::signing::PublicKey;

use super::client::{self, CliError};
use super::config::{self, Endpoint};
use super::exit;

/// The flake the generated `flake.nix` takes tailcache from.
pub const TAILCACHE_FLAKE: &str = "github:tailcache/tailcache";

/// Every home-manager option the generated files set (the modules must declare them).
pub const OPTIONS_USED: &[&str] = &[
    "programs.tailcache.enable",
    "programs.tailcache.server",
    "programs.tailcache.cacheUrl",
    "programs.tailcache.publicKeys",
    "programs.tailcache.agent.enable",
    "programs.tailcache.agent.reseed",
    "services.bootstrap-services.enable",
    "services.bootstrap-services.template",
];

/// What kind of machine this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    Laptop,
    Desktop,
    Server,
}

impl Template {
    pub fn name(self) -> &'static str {
        match self {
            Template::Laptop => "laptop",
            Template::Desktop => "desktop",
            Template::Server => "server",
        }
    }

    /// (agent.enable, agent.reseed): a laptop shares what it has but does not reseed on
    /// battery, a desktop reseeds, a server has the cache itself.
    fn agent(self) -> (bool, bool) {
        match self {
            Template::Laptop => (true, false),
            Template::Desktop => (true, true),
            Template::Server => (false, false),
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
}

/// The files, as (name, contents).
pub fn render(m: &Machine) -> Vec<(&'static str, String)> {
    let keys: Vec<String> = m
        .keys
        .iter()
        .map(|k| format!("    {}", nix_str(&k.to_nix_string())))
        .collect();
    let secrets = format!(
        "# Written by `tailcache bootstrap-new-machine`; git-ignored (.gitignore).\n\
         # Where this machine's build server is and the key its cache signs with.\n\
         {{\n  server = {};\n  cacheUrl = {};\n  publicKeys = [\n{}\n  ];\n}}\n",
        nix_str(&m.api_url),
        nix_str(&m.cache_url),
        keys.join("\n")
    );
    let gitignore = "# Machine-specific values written by `tailcache bootstrap-new-machine`.\n\
                     secrets.nix\nresult\n"
        .to_owned();
    let flake = format!(
        r#"# Written by `tailcache bootstrap-new-machine` (template {template}).
# secrets.nix is git-ignored, so build through a `path:` flake reference, which includes
# untracked files:  home-manager switch --flake path:.#{user}
{{
  description = "Home configuration of {user} (tailcache {template} template)";

  inputs = {{
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    home-manager = {{
      url = "github:nix-community/home-manager";
      inputs.nixpkgs.follows = "nixpkgs";
    }};
    tailcache = {{
      url = {flake_url};
      inputs.nixpkgs.follows = "nixpkgs";
      inputs.home-manager.follows = "home-manager";
    }};
  }};

  outputs = {{ nixpkgs, home-manager, tailcache, ... }}:
    let
      system = {system};
    in
    {{
      homeConfigurations.{user_attr} = home-manager.lib.homeManagerConfiguration {{
        pkgs = nixpkgs.legacyPackages.${{system}};
        extraSpecialArgs = {{ inherit tailcache; }};
        modules = [ ./home.nix ];
      }};
    }};
}}
"#,
        template = m.template.name(),
        user = m.user,
        user_attr = nix_str(&m.user),
        flake_url = nix_str(TAILCACHE_FLAKE),
        system = nix_str(&m.system),
    );
    let (agent, reseed) = m.template.agent();
    let home = format!(
        r#"# Written by `tailcache bootstrap-new-machine` (template {template}).
{{ tailcache, ... }}:
let
  secrets = import ./secrets.nix;
in
{{
  imports = [ tailcache.homeManagerModules.default ];

  home.username = {user};
  home.homeDirectory = {home};
  home.stateVersion = "25.05";

  programs.tailcache = {{
    enable = true;
    server = secrets.server;
    cacheUrl = secrets.cacheUrl;
    publicKeys = secrets.publicKeys;
    agent.enable = {agent};
    agent.reseed = {reseed};
  }};

  services.bootstrap-services = {{
    enable = true;
    template = {template_str};
  }};
}}
"#,
        template = m.template.name(),
        template_str = nix_str(m.template.name()),
        user = nix_str(&m.user),
        home = nix_str(&m.home),
    );
    vec![
        ("secrets.nix", secrets),
        (".gitignore", gitignore),
        ("flake.nix", flake),
        ("home.nix", home),
    ]
}

fn nix_system() -> String {
    // Rust's and Nix's names agree for the systems the flake supports.
    format!("{}-linux", std::env::consts::ARCH)
}

/// Runs the command.
pub fn run(a: &BootstrapArgs) -> Result<u8, CliError> {
    let cache_url = config::normalise_url(&a.server)?;
    let api_url = match &a.api {
        Some(u) => config::normalise_url(u)?,
        None => default_api(&cache_url),
    };
    let files_exist: Vec<PathBuf> = ["secrets.nix", ".gitignore", "flake.nix", "home.nix"]
        .iter()
        .map(|f| a.dir.join(f))
        .filter(|p| p.exists())
        .collect();
    if !files_exist.is_empty() && !a.force {
        let names: Vec<String> = files_exist
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(CliError::NotConfirmed(format!(
            "{} already exist(s); pass --force to overwrite",
            names.join(", ")
        )));
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        return Err(CliError::Usage(
            "--timeout must be a positive number".into(),
        ));
    }
    let endpoint = Endpoint {
        url: cache_url.clone(),
        token: None,
        timeout: std::time::Duration::from_secs_f64(a.timeout),
    };
    let text = client::get_text(&endpoint, "/pubkey")?;
    let keys = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(PublicKey::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::BadReply {
            url: cache_url.clone(),
            reason: format!("/pubkey: {e}"),
        })?;
    if keys.is_empty() {
        return Err(CliError::BadReply {
            url: cache_url,
            reason: "/pubkey lists no key".into(),
        });
    }
    println!("The cache at {cache_url} signs with:");
    for k in &keys {
        println!("  {}", k.to_nix_string());
        println!("  fingerprint {}", fingerprint(k));
    }
    if !a.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::NotConfirmed(
                "cannot ask for confirmation: stdin is not a terminal; check the key above and pass --yes".into(),
            ));
        }
        print!(
            "Trust this key and write the configuration to {}? [y/N] ",
            a.dir.display()
        );
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| CliError::local("reading the answer", e))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
            return Err(CliError::NotConfirmed(
                "not confirmed; nothing written".into(),
            ));
        }
    }
    let machine = Machine {
        api_url,
        cache_url,
        keys,
        template: a.template,
        user: client::Who::current().user,
        home: std::env::var("HOME").unwrap_or_else(|_| "/home/user".into()),
        system: nix_system(),
    };
    write_files(&a.dir, &render(&machine))?;
    println!(
        "wrote secrets.nix, .gitignore, flake.nix and home.nix to {}\nnext: cd {} && home-manager switch --flake path:.#{}",
        a.dir.display(),
        a.dir.display(),
        machine.user
    );
    Ok(exit::OK)
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
