//! Where the build server is and which token to send: `--server URL` > env
//! `TAILCACHE_SERVER` > `server` in the config file > `http://build-server:8000`; the token
//! from env `TAILCACHE_TOKEN` > `token` > `token_file` in the config file. The config file:
//! `--config FILE` (env `TAILCACHE_CLIENT_CONFIG`), else `$XDG_CONFIG_HOME/tailcache/config.toml`
//! (else `~/.config/…`) when it exists, else the system-wide `/etc/tailcache/config.toml`
//! that the NixOS client module writes (root and system services read that one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ServerArgs;
use super::client::CliError;

/// The server used when nothing says otherwise (the host name the modules give it).
pub const DEFAULT_SERVER: &str = "http://build-server:8000";
/// Environment variable naming the server.
pub const ENV_SERVER: &str = "TAILCACHE_SERVER";
/// Environment variable holding the bearer token.
pub const ENV_TOKEN: &str = "TAILCACHE_TOKEN";
/// The system-wide config file, read when the user has none.
pub const SYSTEM_CONFIG: &str = "/etc/tailcache/config.toml";
/// Environment variable naming another system-wide config file (for tests and odd set-ups).
pub const ENV_SYSTEM_CONFIG: &str = "TAILCACHE_SYSTEM_CONFIG";

/// `config.toml` of the client.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Build-server API URL, e.g. `http://build-server:8000`.
    pub server: Option<String>,
    /// Bearer token for the POST routes (prefer `token_file`).
    pub token: Option<String>,
    /// File holding the bearer token (first line).
    pub token_file: Option<PathBuf>,
    /// Keys whose signature `tailcache switch` accepts on a generation record
    /// (`name:base64`, the cache's key from `GET /pubkey`); empty: nix.conf's
    /// `trusted-public-keys`.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

impl ClientConfig {
    /// The user's config file: `$XDG_CONFIG_HOME/tailcache/config.toml`, else under
    /// `~/.config`.
    pub fn user_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("tailcache").join("config.toml"))
    }

    /// The system-wide config file ([`SYSTEM_CONFIG`], or `$TAILCACHE_SYSTEM_CONFIG`).
    pub fn system_path() -> PathBuf {
        std::env::var_os(ENV_SYSTEM_CONFIG)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(SYSTEM_CONFIG), PathBuf::from)
    }

    /// The file to read: `explicit` (`--config`), else the user's when it exists, else the
    /// system's. Not merged: a user who writes their own file says everything in it.
    pub fn choose(explicit: Option<&Path>, user: Option<PathBuf>, system: PathBuf) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_owned();
        }
        match user {
            Some(u) if u.exists() => u,
            _ => system,
        }
    }

    /// Loads the file [`ClientConfig::choose`] picks for these arguments.
    pub fn load_for(args: &ServerArgs) -> Result<Self, CliError> {
        let path = ClientConfig::choose(
            args.config.as_deref(),
            ClientConfig::user_path(),
            ClientConfig::system_path(),
        );
        match (&args.config, ClientConfig::load(&path)) {
            // A file named on the command line must be there.
            (Some(p), Ok(_)) if !p.exists() => Err(CliError::Config(format!(
                "--config {}: no such file",
                p.display()
            ))),
            (_, r) => r,
        }
    }

    /// Loads `path`; a missing file is an empty config, a malformed one an error.
    pub fn load(path: &Path) -> Result<Self, CliError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                CliError::Config(format!(
                    "{}: {}",
                    path.display(),
                    e.message().replace('\n', " ")
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
            Err(e) => Err(CliError::local(format!("reading {}", path.display()), e)),
        }
    }
}

/// The resolved endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL without a trailing slash.
    pub url: String,
    pub token: Option<String>,
    pub timeout: Duration,
}

/// Applies the precedence rules; `env` looks up environment variables (a parameter so
/// the rules are testable).
pub fn resolve(
    args: &ServerArgs,
    env: impl Fn(&str) -> Option<String>,
    file: &ClientConfig,
) -> Result<Endpoint, CliError> {
    let url = args
        .server
        .clone()
        .or_else(|| env(ENV_SERVER).filter(|v| !v.is_empty()))
        .or_else(|| file.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let url = normalise_url(&url)?;
    let token = match env(ENV_TOKEN).filter(|v| !v.is_empty()) {
        Some(t) => Some(t),
        None => match (&file.token, &file.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(read_token_file(path)?),
            (None, None) => None,
        },
    };
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(CliError::Usage(format!(
            "--timeout {} is not a positive number of seconds",
            args.timeout
        )));
    }
    Ok(Endpoint {
        url,
        token,
        timeout: Duration::from_secs_f64(args.timeout),
    })
}

/// Resolves from the real environment and config file.
pub fn endpoint(args: &ServerArgs) -> Result<Endpoint, CliError> {
    resolve(
        args,
        |k| std::env::var(k).ok(),
        &ClientConfig::load_for(args)?,
    )
}

fn read_token_file(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::local(format!("reading token_file {}", path.display()), e))?;
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

/// `host:port` becomes `http://host:port`; a trailing slash goes.
pub fn normalise_url(url: &str) -> Result<String, CliError> {
    let url = url.trim().trim_end_matches('/');
    if url.is_empty() {
        return Err(CliError::Usage("the server URL is empty".to_owned()));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_owned())
    } else if url.contains("://") {
        Err(CliError::Usage(format!(
            "{url}: only http:// and https:// servers are supported"
        )))
    } else {
        Ok(format!("http://{url}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(server: Option<&str>) -> ServerArgs {
        ServerArgs {
            server: server.map(str::to_owned),
            timeout: 10.0,
            config: None,
        }
    }

    #[test]
    fn the_users_file_else_the_systems() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        let system = dir.path().join("system.toml");
        let named = dir.path().join("named.toml");
        let pick = |explicit: Option<&Path>| {
            ClientConfig::choose(explicit, Some(user.clone()), system.clone())
        };
        // No user file: the system's (also without a home directory at all).
        assert_eq!(pick(None), system);
        assert_eq!(ClientConfig::choose(None, None, system.clone()), system);
        std::fs::write(&user, "server = \"http://user:1\"\n").unwrap();
        assert_eq!(pick(None), user);
        assert_eq!(pick(Some(&named)), named);
        std::fs::write(&system, "server = \"http://system:2\"\n").unwrap();
        let c = ClientConfig::load(&ClientConfig::choose(None, None, system.clone())).unwrap();
        assert_eq!(c.server.as_deref(), Some("http://system:2"));
        // A --config file that is not there is an error, not an empty config.
        let mut a = args(None);
        a.config = Some(dir.path().join("missing.toml"));
        let e = ClientConfig::load_for(&a).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
    }

    #[test]
    fn precedence_flag_env_file_default() {
        let file = ClientConfig {
            server: Some("http://from-file:1".into()),
            token: Some("file-token".into()),
            ..Default::default()
        };
        let env = |k: &str| match k {
            ENV_SERVER => Some("http://from-env:2".to_owned()),
            _ => None,
        };
        let no_env = |_: &str| None;
        let flag = resolve(&args(Some("from-flag:3/")), env, &file).unwrap();
        assert_eq!(flag.url, "http://from-flag:3");
        assert_eq!(
            resolve(&args(None), env, &file).unwrap().url,
            "http://from-env:2"
        );
        let f = resolve(&args(None), no_env, &file).unwrap();
        assert_eq!(f.url, "http://from-file:1");
        assert_eq!(f.token.as_deref(), Some("file-token"));
        let d = resolve(&args(None), no_env, &ClientConfig::default()).unwrap();
        assert_eq!(d.url, DEFAULT_SERVER);
        assert_eq!(d.token, None);
    }

    #[test]
    fn env_token_wins_and_token_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        std::fs::write(&p, "secret-1\n").unwrap();
        let file = ClientConfig {
            server: None,
            token_file: Some(p),
            ..Default::default()
        };
        let no_env = |_: &str| None;
        let r = resolve(&args(None), no_env, &file).unwrap();
        assert_eq!(r.token.as_deref(), Some("secret-1"));
        let env = |k: &str| (k == ENV_TOKEN).then(|| "env-tok".to_owned());
        assert_eq!(
            resolve(&args(None), env, &file).unwrap().token.as_deref(),
            Some("env-tok")
        );
    }

    #[test]
    fn unknown_config_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "sever = \"x\"\n").unwrap();
        let e = ClientConfig::load(&p).unwrap_err();
        assert!(e.to_string().contains("sever"), "{e}");
        assert!(ClientConfig::load(&dir.path().join("missing")).is_ok());
    }

    #[test]
    fn urls() {
        assert_eq!(normalise_url("h:1").unwrap(), "http://h:1");
        assert!(normalise_url("ftp://h").is_err());
        assert!(normalise_url(" ").is_err());
    }
}
