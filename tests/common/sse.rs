//! A Server-Sent Events client for the integration tests (the `text/event-stream` format
//! of the HTML Living Standard, §9.2): one GET on a fresh connection, the body read
//! incrementally (chunked or until close), and events handed out as they arrive.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::http::host_port;

/// One dispatched event: `event:` (None for the default `message`) and the `data:` lines
/// joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Decodes `Transfer-Encoding: chunked` as the bytes arrive.
#[derive(Debug)]
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                self.done = true;
                return Ok(0);
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}"))
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..n])?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= got;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(got)
    }
}

/// An open event stream.
pub struct EventStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    socket: TcpStream,
    body: Box<dyn BufRead + Send>,
    /// Set once the server closed the stream.
    pub closed: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("closed", &self.closed)
            .finish()
    }
}

impl EventStream {
    /// `GET target` with `Accept: text/event-stream`; returns once the headers arrived.
    pub fn open(base_url: &str, target: &str) -> EventStream {
        let addr = host_port(base_url);
        let socket = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        );
        (&socket).write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(socket.try_clone().unwrap());
        let mut status_line = String::new();
        reader
            .read_line(&mut status_line)
            .unwrap_or_else(|e| panic!("GET {target}: no response: {e}"));
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("GET {target}: bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header {line:?}"));
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body: Box<dyn BufRead + Send> = if chunked {
            Box::new(BufReader::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            }))
        } else {
            Box::new(reader)
        };
        EventStream {
            status,
            headers,
            socket,
            body,
            closed: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next event, or None when the server closed the stream. Panics when nothing
    /// arrives within `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut event = None;
        let mut data: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no complete event within {timeout:?}");
            self.socket.set_read_timeout(Some(left)).unwrap();
            let mut line = String::new();
            let n = self
                .body
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("event stream: {e} (nothing within {timeout:?}?)"));
            if n == 0 {
                self.closed = true;
                return None;
            }
            let line = line.strip_suffix('\n').unwrap_or(&line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                if data.is_some() || event.is_some() {
                    return Some(SseEvent {
                        event,
                        data: data.unwrap_or_default(),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => event = Some(value.to_string()),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                _ => {}
            }
        }
    }

    /// Reads until the `end` event: the `data` lines before it and the end event itself.
    /// Panics if the stream closes first or the whole thing takes longer than `timeout`.
    pub fn until_end(&mut self, timeout: Duration) -> (Vec<String>, SseEvent) {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some(e) if e.event.as_deref() == Some("end") => return (lines, e),
                Some(e) if e.event.is_none() || e.event.as_deref() == Some("message") => {
                    lines.push(e.data)
                }
                Some(_) => {}
                None => panic!(
                    "the event stream closed without an `end` event; lines so far: {lines:?}"
                ),
            }
        }
    }

    /// After `end`: the server must close the stream (nothing but comments before that).
    pub fn expect_closed(&mut self, timeout: Duration) {
        if let Some(e) = self.next_event(timeout) {
            panic!("an event after `end`: {e:?}");
        }
    }
}

#[test]
fn reads_events_split_across_chunks() {
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = BufReader::new(s.try_clone().unwrap());
        loop {
            let mut l = String::new();
            req.read_line(&mut l).unwrap();
            if l.trim().is_empty() {
                break;
            }
        }
        let body = ": keep-alive\n\ndata: one\n\ndata: two\r\ndata: lines\n\nevent: end\ndata: {\"result\":\"success\"}\n\n";
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in body.as_bytes().chunks(7) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        s.write_all(&out).unwrap();
    });
    let mut es = EventStream::open(&url, "/build/logs?follow=1");
    assert_eq!(es.status, 200);
    let (lines, end) = es.until_end(Duration::from_secs(10));
    assert_eq!(lines, ["one", "two\nlines"]);
    assert_eq!(end.data, "{\"result\":\"success\"}");
    es.expect_closed(Duration::from_secs(10));
    server.join().unwrap();
}
