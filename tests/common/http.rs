//! A tiny HTTP/1.1 client over `std::net::TcpStream` for the integration tests.
//! It sends the request target byte-for-byte (no normalisation), so traversal
//! attempts reach the server exactly as written.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn host_port(base_url: &str) -> &str {
    let rest = base_url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("only http:// URLs: {base_url}"));
    rest.trim_end_matches('/')
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(base_url: &str, method: &str, target: &str, extra: &[(&str, &str)]) -> Response {
    request_with_body(base_url, method, target, extra, &[])
}

/// One request with a body (sent with its `Content-Length`; none when `body` is empty
/// and the method is not POST).
pub fn request_with_body(
    base_url: &str,
    method: &str,
    target: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let addr = host_port(base_url);
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    exchange(s, addr, method, target, extra, body)
}

/// One request from the local address `source` (any of 127.0.0.0/8 reaches a server on
/// 127.0.0.1, so a test can play several peers).
pub fn request_from(
    source: std::net::IpAddr,
    base_url: &str,
    method: &str,
    target: &str,
    extra: &[(&str, &str)],
) -> Response {
    let addr = host_port(base_url);
    let to: std::net::SocketAddr = addr.parse().unwrap();
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    socket
        .bind(&std::net::SocketAddr::new(source, 0).into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket
        .connect(&to.into())
        .unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"));
    exchange(socket.into(), addr, method, target, extra, b"")
}

/// Sends the request on `s` (`Connection: close`) and reads the whole answer.
fn exchange(
    mut s: TcpStream,
    addr: &str,
    method: &str,
    target: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Response {
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {target}: reading response: {e}"));
    parse_response(&raw, method == "HEAD").unwrap_or_else(|e| {
        panic!(
            "{method} {target}: bad HTTP response ({e}): {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(300)])
        )
    })
}

pub fn get(base_url: &str, target: &str) -> Response {
    request(base_url, "GET", target, &[])
}

pub fn head(base_url: &str, target: &str) -> Response {
    request(base_url, "HEAD", target, &[])
}

pub fn post(base_url: &str, target: &str, extra: &[(&str, &str)], body: &[u8]) -> Response {
    request_with_body(base_url, "POST", target, extra, body)
}

fn parse_response(raw: &[u8], is_head: bool) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("bad status code")?;
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or("header without ':'")?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let rest = &raw[end + 4..];
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if is_head || status == 204 || status == 304 {
        if !rest.is_empty() {
            return Err(format!(
                "{} body bytes after a bodiless response",
                rest.len()
            ));
        }
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    resp.body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| "bad content-length")?;
        if rest.len() != len {
            return Err(format!(
                "content-length {len} but {} body bytes",
                rest.len()
            ));
        }
        rest.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line")?;
        let size_txt = std::str::from_utf8(&data[..eol]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_txt:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[test]
fn parses_chunked_and_fixed_bodies() {
    let r = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(r.body, b"abcde");
    let r = parse_response(
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno",
        false,
    )
    .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (404, &b"no"[..]));
    assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", false).is_err());
}

/// A kept-alive connection: several requests one after the other, as Nix's curl sends them.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    host: String,
}

impl Conn {
    pub fn open(base_url: &str) -> Conn {
        let host = host_port(base_url).to_string();
        let stream = TcpStream::connect(&host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        Conn { stream, host }
    }

    /// Sends `GET target` and reads one response with a `Content-Length` body.
    pub fn get(&mut self, target: &str) -> std::io::Result<Response> {
        let req = format!("GET {target} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.stream.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            raw.push(byte[0]);
        }
        let head = parse_response(&raw, true).map_err(std::io::Error::other)?;
        let len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| std::io::Error::other("no content-length"))?;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok(Response { body, ..head })
    }

    /// Blocks until the server closes the connection (EOF or reset), at most `deadline`;
    /// false if it is still open then. Bytes the server sends meanwhile are discarded.
    pub fn wait_closed(&mut self, deadline: Duration) -> bool {
        wait_closed(&mut self.stream, deadline)
    }
}

/// Reads from `s` until the peer closes it (EOF or reset), at most `deadline`; false if it
/// is still open then.
pub fn wait_closed(s: &mut TcpStream, deadline: Duration) -> bool {
    let end = std::time::Instant::now() + deadline;
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}
