//! The agent's requests to the cache server, over one pooled `reqwest` client (keep-alive,
//! no proxy, no redirects, no content decoding — the body is passed on as the server sent
//! it): whole small bodies (narinfo, manifest, outboard), byte ranges of NAR files, and
//! streamed bodies to proxy.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use reqwest::header::RANGE;

/// Largest body read whole into memory (narinfos, manifests, outboards).
const MAX_WHOLE_BODY: u64 = 256 << 20;
/// Most bytes reserved ahead for a body from its `Content-Length` (a piece, an outboard);
/// a longer body grows the buffer as it arrives.
const MAX_PRESIZE: u64 = 16 << 20;
/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The cache server's base URL, `http://host[:port]` (no path; a trailing `/` is dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(String);

/// Why a string is not a [`ServerUrl`].
#[derive(Debug, thiserror::Error)]
#[error("server URL {url:?}: {reason}")]
pub struct BadServerUrl {
    url: String,
    reason: String,
}

impl ServerUrl {
    /// The server on this machine, at its default port.
    pub const LOCAL_DEFAULT: &str = "http://127.0.0.1:5000";
}

impl std::str::FromStr for ServerUrl {
    type Err = BadServerUrl;

    fn from_str(url: &str) -> Result<Self, BadServerUrl> {
        let bad = |reason: &str| BadServerUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported"))?;
        let host_port = rest.trim_end_matches('/');
        if host_port.is_empty() || host_port.contains('/') {
            return Err(bad("expected http://host:port"));
        }
        let base = format!("http://{host_port}");
        reqwest::Url::parse(&base).map_err(|e| bad(&e.to_string()))?;
        Ok(ServerUrl(base))
    }
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The server and the connection pool used to reach it.
#[derive(Debug, Clone)]
pub struct Server {
    base: String,
    client: reqwest::Client,
}

impl Server {
    pub fn new(url: &ServerUrl) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent("tailcache-agent")
            .build()?;
        Ok(Server {
            base: url.0.clone(),
            client,
        })
    }
}

/// A response whose body has not been read yet.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    inner: reqwest::Response,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers().get(name)?.to_str().ok()
    }

    /// Reads the whole body (bounded).
    pub async fn bytes(self) -> std::io::Result<Vec<u8>> {
        self.bytes_at_most(MAX_WHOLE_BODY).await
    }

    /// Reads the whole body, refusing one longer than `max` bytes. The buffer is sized once
    /// from `Content-Length` (within `max` and [`MAX_PRESIZE`]), not grown chunk by chunk: a
    /// 1 MiB piece would otherwise be copied about twice over and fault in fresh pages at
    /// every doubling.
    pub async fn bytes_at_most(self, max: u64) -> std::io::Result<Vec<u8>> {
        let expected = self
            .inner
            .content_length()
            .unwrap_or(0)
            .min(max)
            .min(MAX_PRESIZE);
        let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
        let mut stream = std::pin::pin!(self.into_stream());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if out.len() as u64 + chunk.len() as u64 > max {
                return Err(std::io::Error::other("response body too large"));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The body as a stream of byte chunks.
    pub fn into_stream(self) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        self.inner.bytes_stream().map_err(std::io::Error::other)
    }
}

/// Sends one request; `range` is an inclusive-exclusive byte range.
pub async fn request(
    server: &Server,
    method: &str,
    target: &str,
    range: Option<std::ops::Range<u64>>,
) -> std::io::Result<Response> {
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| std::io::Error::other(format!("bad method {method:?}")))?;
    let mut req = server
        .client
        .request(method, format!("{}{target}", server.base));
    if let Some(range) = &range {
        req = req.header(
            RANGE,
            format!("bytes={}-{}", range.start, range.end.saturating_sub(1)),
        );
    }
    let inner = req.send().await.map_err(std::io::Error::other)?;
    Ok(Response {
        status: inner.status().as_u16(),
        inner,
    })
}

/// GETs `range` of `target`: the answer must be that range (206, with the range's length
/// when the server says one); its body is read by the caller as it arrives.
pub async fn get_range(
    server: &Server,
    target: &str,
    range: std::ops::Range<u64>,
) -> std::io::Result<Response> {
    let want = range.end - range.start;
    let resp = request(server, "GET", target, Some(range)).await?;
    if resp.status != 206 {
        return Err(std::io::Error::other(format!(
            "range request for {target}: status {}",
            resp.status
        )));
    }
    match resp.inner.content_length() {
        Some(n) if n != want => Err(std::io::Error::other(format!(
            "range request for {target}: {n} bytes instead of {want}"
        ))),
        _ => Ok(resp),
    }
}
