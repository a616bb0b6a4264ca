//! Where the build server is and which token to send: `--server URL` > env
//! `TAILCACHE_SERVER` > `server` in `$XDG_CONFIG_HOME/tailcache/config.toml` (else
//! `~/.config/…`) > `http://build-server:8000`; the token from env `TAILCACHE_TOKEN` >
//! `token` > `token_file` in the config file.

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
    /// The config file's path: `$XDG_CONFIG_HOME/tailcache/config.toml`, else under `~/.config`.
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("tailcache").join("config.toml"))
    }

    /// Loads the file at [`ClientConfig::default_path`] (empty without a home directory).
    pub fn load_default() -> Result<Self, CliError> {
        match ClientConfig::default_path() {
            Some(p) => ClientConfig::load(&p),
            None => Ok(ClientConfig::default()),
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
        &ClientConfig::load_default()?,
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
        }
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
