//! The HTTP client of the build API (reqwest, blocking: the CLI does one thing at a time,
//! and reqwest shares hyper/tokio with the server, so it adds little to the build) and
//! [`CliError`]: every failure as one line a person can act on, with its exit code.

use std::error::Error as _;
use std::io::BufReader;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use tailcache_wire::build::BuildStatus;
use tailcache_wire::hosts::{HostView, HostsReply};

use super::config::Endpoint;
use super::exit;
use super::sse::SseReader;

/// Header naming the user who asks (see `server/src/api/build.rs`).
pub const HEADER_USER: &str = "x-tailcache-user";
/// Header naming the host the request comes from.
pub const HEADER_HOST: &str = "x-tailcache-host";
/// Reads of a live stream wait at least this long: the server sends a keep-alive comment
/// every 15 s, so a quiet build is not mistaken for a dead server.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(45);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot connect to {url}: connection refused; is `tailcache serve` running there? (check --server / TAILCACHE_SERVER)"
    )]
    Refused { url: String },
    #[error(
        "cannot resolve the host of {url}; check the name (--server / TAILCACHE_SERVER) and that tailscale is up"
    )]
    Dns { url: String },
    #[error(
        "{url} did not answer within {secs}s; check the server and the network, or raise --timeout"
    )]
    Timeout { url: String, secs: f64 },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "{url} refused the token ({message}); set TAILCACHE_TOKEN or `token_file` in the config file"
    )]
    Unauthorized { url: String, message: String },
    #[error("the server has no build configured: {0}")]
    NotConfigured(String),
    #[error("server error from {url}: {status}: {message}")]
    Server {
        url: String,
        status: u16,
        message: String,
    },
    #[error("unexpected reply from {url}: {reason}")]
    BadReply { url: String, reason: String },
    #[error("build {build_id} {result}")]
    BuildFailed { build_id: u64, result: String },
    #[error("{0}")]
    Usage(String),
    #[error("config file {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Local {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The person did not confirm (or could not be asked).
    #[error("{0}")]
    NotConfirmed(String),
    /// `tailcache switch`: nothing to switch to (no such target, no ready generation, a
    /// generation that is not kept).
    #[error("{0}")]
    NotAvailable(String),
    /// `tailcache switch`: the generation record failed a check (signature, contents,
    /// older than what this machine applied); nothing was changed.
    #[error("refused: {0}")]
    RecordRefused(String),
    /// `tailcache switch`: Nix could not substitute the closure; nothing was changed.
    #[error("{0}")]
    Substitute(String),
    /// `tailcache switch`: setting the profile or the activation failed.
    #[error("{0}")]
    Activation(String),
}

impl CliError {
    pub fn local(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        CliError::Local {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The documented exit code (README, "Exit codes").
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused { .. }
            | CliError::Dns { .. }
            | CliError::Timeout { .. }
            | CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::Unauthorized { .. } => exit::UNAUTHORIZED,
            CliError::NotConfigured(_) => exit::NOT_CONFIGURED,
            CliError::Server { .. } | CliError::BadReply { .. } => exit::SERVER_ERROR,
            CliError::BuildFailed { .. } => exit::BUILD_FAILED,
            CliError::Usage(_) => exit::USAGE,
            CliError::Config(_) | CliError::Local { .. } | CliError::NotConfirmed(_) => exit::LOCAL,
            CliError::NotAvailable(_) => exit::NOT_AVAILABLE,
            CliError::RecordRefused(_) => exit::REFUSED,
            CliError::Substitute(_) => exit::SUBSTITUTE_FAILED,
            CliError::Activation(_) => exit::ACTIVATION_FAILED,
        }
    }
}

/// `user@host` of this process, sent with every request.
#[derive(Debug, Clone)]
pub struct Who {
    pub user: String,
    pub host: String,
}

impl Who {
    pub fn current() -> Who {
        let user = ["USER", "LOGNAME"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
            .or_else(user_from_passwd)
            .unwrap_or_else(|| "unknown".to_owned());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".to_owned());
        Who { user, host }
    }
}

/// The login name of this process's uid (for shells started without `$USER`, as in cron
/// or `tmux new-session` with a minimal environment).
fn user_from_passwd() -> Option<String> {
    let uid = proc_uid(0)?.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_owned())
    })
}

/// One of this process's uids from `/proc/self/status` (`Uid: real effective saved fs`):
/// `0` the real, `1` the effective one.
pub fn proc_uid(field: usize) -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(field)?
        .parse()
        .ok()
}

/// A client of one build server.
#[derive(Debug)]
pub struct Client {
    http: Http,
    endpoint: Endpoint,
    who: Who,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Result<Client, CliError> {
        let http = Http::builder()
            .connect_timeout(endpoint.timeout)
            .timeout(endpoint.timeout)
            .user_agent(concat!("tailcache-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            endpoint,
            who: Who::current(),
        })
    }

    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.endpoint.url))
            .header(HEADER_USER, &self.who.user)
            .header(HEADER_HOST, &self.who.host);
        if let Some(t) = &self.endpoint.token {
            r = r.bearer_auth(t);
        }
        r
    }

    fn send(&self, r: RequestBuilder) -> Result<Response, CliError> {
        let response = r.send().map_err(|e| self.transport_error(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.reply_error(response))
    }

    /// The error a non-success reply stands for.
    fn reply_error(&self, response: Response) -> CliError {
        let status = response.status();
        let (tag, message) = error_body(response);
        let url = self.endpoint.url.clone();
        match status {
            StatusCode::UNAUTHORIZED => CliError::Unauthorized { url, message },
            StatusCode::CONFLICT if tag.as_deref() == Some("not_configured") => {
                CliError::NotConfigured(message)
            }
            _ => CliError::Server {
                url,
                status: status.as_u16(),
                message,
            },
        }
    }
    /// Sorts a transport failure into refused / DNS / timeout / other.
    pub fn transport_error(&self, e: &reqwest::Error) -> CliError {
        let url = self.endpoint.url.clone();
        if e.is_timeout() || chain_has(e, |s| s.contains("timed out")) {
            return CliError::Timeout {
                url,
                secs: self.endpoint.timeout.as_secs_f64(),
            };
        }
        if chain_has(e, |s| {
            s.contains("dns error") || s.contains("failed to lookup")
        }) {
            return CliError::Dns { url };
        }
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return CliError::Refused { url },
                    std::io::ErrorKind::TimedOut => {
                        return CliError::Timeout {
                            url,
                            secs: self.endpoint.timeout.as_secs_f64(),
                        };
                    }
                    _ => {}
                }
            }
            source = s.source();
        }
        let reason = innermost(e);
        CliError::Unreachable { url, reason }
    }

    fn json<T: DeserializeOwned>(&self, r: Response, what: &str) -> Result<T, CliError> {
        r.json().map_err(|e| {
            if e.is_timeout() {
                self.transport_error(&e)
            } else {
                CliError::BadReply {
                    url: self.endpoint.url.clone(),
                    reason: format!("{what}: {}", innermost(&e)),
                }
            }
        })
    }

    /// `POST /build/trigger`: the reply as JSON (`status`, `build_id`, `message`, …).
    pub fn trigger(&self) -> Result<serde_json::Value, CliError> {
        let r = self.send(self.request(reqwest::Method::POST, "/build/trigger"))?;
        self.json(r, "the trigger reply")
    }

    /// `GET /build/status`.
    pub fn status(&self) -> Result<BuildStatus, CliError> {
        let r = self.send(self.request(reqwest::Method::GET, "/build/status"))?;
        self.json(r, "the status")
    }

    /// `GET /hosts`: every target; `None` from a server without per-host routes (one
    /// that predates them, or answers 404 to the route itself).
    pub fn hosts(&self) -> Result<Option<HostsReply>, CliError> {
        let r = self
            .request(reqwest::Method::GET, "/hosts")
            .send()
            .map_err(|e| self.transport_error(&e))?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(self.reply_error(r));
        }
        self.json(r, "the hosts").map(Some)
    }

    /// `GET /hosts/<name>`: `None` when the server knows no such target.
    pub fn host(&self, name: &str) -> Result<Option<HostView>, CliError> {
        let r = self
            .request(
                reqwest::Method::GET,
                &format!("/hosts/{}", path_segment(name)),
            )
            .send()
            .map_err(|e| self.transport_error(&e))?;
        if r.status() == StatusCode::NOT_FOUND {
            // The API's own 404 says `unknown_host`; a bare 404 means the route is missing.
            let (tag, _) = error_body(r);
            return match tag.as_deref() {
                Some("unknown_host" | "not_found") => Ok(None),
                _ => Err(CliError::BadReply {
                    url: self.endpoint.url.clone(),
                    reason: "the server has no /hosts routes (is it older than this client?)"
                        .to_owned(),
                }),
            };
        }
        if !r.status().is_success() {
            return Err(self.reply_error(r));
        }
        self.json(r, "the host").map(Some)
    }

    /// `GET /build/logs?lines=N`.
    pub fn logs(&self, n: usize) -> Result<Vec<String>, CliError> {
        #[derive(serde::Deserialize)]
        struct Logs {
            logs: Vec<String>,
        }
        let r = self.send(self.request(reqwest::Method::GET, &format!("/build/logs?lines={n}")))?;
        Ok(self.json::<Logs>(r, "the log")?.logs)
    }

    /// `GET /build/logs?lines=N&follow=1`: the tail, then live lines until `end`.
    pub fn follow(&self, n: usize) -> Result<SseReader<BufReader<Response>>, CliError> {
        let r = self
            .request(
                reqwest::Method::GET,
                &format!("/build/logs?lines={n}&follow=1"),
            )
            .timeout(self.endpoint.timeout.max(STREAM_READ_TIMEOUT));
        let response = self.send(r)?;
        Ok(SseReader::new(BufReader::new(response)))
    }

    /// Turns a read error of a live stream into a [`CliError`].
    pub fn stream_error(&self, e: std::io::Error) -> CliError {
        if e.kind() == std::io::ErrorKind::TimedOut || e.to_string().contains("timed out") {
            CliError::Timeout {
                url: self.endpoint.url.clone(),
                secs: self.endpoint.timeout.max(STREAM_READ_TIMEOUT).as_secs_f64(),
            }
        } else {
            CliError::Unreachable {
                url: self.endpoint.url.clone(),
                reason: format!("the live log broke off: {e}"),
            }
        }
    }
}

/// The `status` tag and the message of an error reply (`{"status", "message"}`, see
/// `server/src/api/error.rs`); a reply without that JSON gives its short text or the reason phrase.
fn error_body(response: Response) -> (Option<String>, String) {
    let status = response.status();
    let text = response.text().unwrap_or_default();
    let body: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let tag = body
        .as_ref()
        .and_then(|b| b.get("status")?.as_str().map(str::to_owned));
    let message = body
        .as_ref()
        .and_then(|b| b.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() || t.len() > 200 {
                status.canonical_reason().unwrap_or("").to_owned()
            } else {
                t.to_owned()
            }
        });
    (tag, message)
}

/// A target name as one URL path segment: unreserved characters and `@` stay, the rest is
/// percent-encoded (names come from flake attributes, so this is rarely needed).
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A plain GET of a text resource (the cache's `/pubkey`), same error sorting.
pub fn get_text(endpoint: &Endpoint, path: &str) -> Result<String, CliError> {
    let client = Client::new(endpoint.clone())?;
    let r = client.send(client.request(reqwest::Method::GET, path))?;
    r.text().map_err(|e| client.transport_error(&e))
}

fn chain_has(e: &reqwest::Error, pred: impl Fn(&str) -> bool) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if pred(&s.to_string()) {
            return true;
        }
        source = s.source();
    }
    false
}

/// The most specific message of an error chain (reqwest's own is "error sending request").
fn innermost(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}
