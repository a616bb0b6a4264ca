//! A minimal HTTP/1.1 client for the agent's requests to the cache server (one request per
//! connection, `Connection: close`): whole small bodies (narinfo, manifest, outboard), byte
//! ranges of NAR files, and streamed bodies to proxy. Fixed-length and chunked bodies.

use bytes::Bytes;
use futures::Stream;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Largest body read whole into memory (narinfos, manifests, outboards).
const MAX_WHOLE_BODY: u64 = 256 << 20;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The server's base URL, split for connecting.
#[derive(Debug, Clone)]
pub struct ServerUrl {
    host_port: String,
}

impl ServerUrl {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("server URL {url:?}: only http:// is supported"))?;
        let host_port = rest.trim_end_matches('/');
        if host_port.is_empty() || host_port.contains('/') {
            anyhow::bail!("server URL {url:?}: expected http://host:port");
        }
        Ok(ServerUrl {
            host_port: host_port.to_owned(),
        })
    }
}

/// A response whose body has not been read yet.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Empty,
    Length(BufReader<TcpStream>, u64),
    Chunked(BufReader<TcpStream>),
    UntilClose(BufReader<TcpStream>),
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads the whole body (bounded).
    pub async fn bytes(self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut stream = std::pin::pin!(self.into_stream());
        use futures::StreamExt as _;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if out.len() as u64 + chunk.len() as u64 > MAX_WHOLE_BODY {
                return Err(std::io::Error::other("response body too large"));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The body as a stream of byte chunks.
    pub fn into_stream(self) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        futures::stream::try_unfold(Some(self.body), |state| async move {
            let Some(body) = state else { return Ok(None) };
            read_next(body).await
        })
    }
}

async fn read_next(body: Body) -> std::io::Result<Option<(Bytes, Option<Body>)>> {
    const CHUNK: usize = 64 * 1024;
    match body {
        Body::Empty => Ok(None),
        Body::Length(_, 0) => Ok(None),
        Body::Length(mut r, left) => {
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.truncate(n);
            Ok(Some((
                Bytes::from(buf),
                Some(Body::Length(r, left - n as u64)),
            )))
        }
        Body::UntilClose(mut r) => {
            let mut buf = vec![0u8; CHUNK];
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((Bytes::from(buf), Some(Body::UntilClose(r)))))
        }
        Body::Chunked(mut r) => {
            let mut line = String::new();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; size];
            r.read_exact(&mut buf).await?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
            Ok(Some((Bytes::from(buf), Some(Body::Chunked(r)))))
        }
    }
}

/// Sends one request; `range` is an inclusive-exclusive byte range.
pub async fn request(
    server: &ServerUrl,
    method: &str,
    target: &str,
    range: Option<std::ops::Range<u64>>,
) -> std::io::Result<Response> {
    let stream = TcpStream::connect(&server.host_port).await?;
    let _ = stream.set_nodelay(true);
    let mut r = BufReader::new(stream);
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: tailcache-agent\r\n",
        server.host_port
    );
    if let Some(range) = &range {
        req.push_str(&format!(
            "Range: bytes={}-{}\r\n",
            range.start,
            range.end.saturating_sub(1)
        ));
    }
    req.push_str("\r\n");
    r.get_mut().write_all(req.as_bytes()).await?;

    let mut head_len = 0;
    let mut status_line = String::new();
    head_len += r.read_line(&mut status_line).await?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await?;
        head_len += n;
        if n == 0 || head_len > MAX_HEAD {
            return Err(std::io::Error::other(
                "truncated or oversized response head",
            ));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut resp = Response {
        status,
        headers,
        body: Body::Empty,
    };
    if method == "HEAD" || status == 204 || status == 304 {
        return Ok(resp);
    }
    resp.body = if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        Body::Chunked(r)
    } else if let Some(len) = resp.header("content-length") {
        let len = len
            .parse()
            .map_err(|_| std::io::Error::other("bad content-length"))?;
        Body::Length(r, len)
    } else {
        Body::UntilClose(r)
    };
    Ok(resp)
}

/// GETs `range` of `target`; the body must be exactly that range (206).
pub async fn get_range(
    server: &ServerUrl,
    target: &str,
    range: std::ops::Range<u64>,
) -> std::io::Result<Vec<u8>> {
    let want = range.end - range.start;
    let resp = request(server, "GET", target, Some(range)).await?;
    if resp.status != 206 {
        return Err(std::io::Error::other(format!(
            "range request for {target}: status {}",
            resp.status
        )));
    }
    let body = resp.bytes().await?;
    if body.len() as u64 != want {
        return Err(std::io::Error::other(format!(
            "range request for {target}: {} bytes instead of {want}",
            body.len()
        )));
    }
    Ok(body)
}
