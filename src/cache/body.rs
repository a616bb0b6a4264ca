//! Serving bytes from a blocking reader (a NAR being dumped, a compressed file, a build log)
//! as an HTTP body with memory and threads bounded by configuration, not by the number of
//! clients, and single-range `Range` requests (RFC 9110 §14).
//!
//! The body is pulled: only when the connection asks for the next chunk does a blocking
//! thread read one [`CHUNK`] and hand the reader back. A client that stops reading stops
//! the pulling, so a stalled download holds its reader's small state and the one chunk the
//! connection buffers, but no thread (the listener's send timeout then drops it). The reads
//! of all downloads together run on at most [`ReadPool`]'s number of threads.

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;

use super::error::{CacheError, CacheResult};

/// Bytes per chunk read from the source: what one download holds in memory at a time
/// (with the connection's buffer of the same size), so hundreds of stalled readers stay
/// within tens of MiB.
pub const CHUNK: usize = 64 * 1024;

/// Runs the blocking reads of response bodies, at most `threads` at once.
#[derive(Debug, Clone)]
pub struct ReadPool {
    slots: Arc<Semaphore>,
}

impl ReadPool {
    pub fn new(threads: usize) -> Self {
        ReadPool {
            slots: Arc::new(Semaphore::new(threads.max(1))),
        }
    }

    /// A body fed by `reader`, one chunk per request of the connection. `on_bytes` is
    /// called with each chunk's size as it is handed to the connection (for counters).
    pub fn body<R, F>(&self, reader: R, on_bytes: F) -> Body
    where
        R: Read + Send + 'static,
        F: Fn(u64) + Send + 'static,
    {
        let slots = self.slots.clone();
        let chunks = futures::stream::unfold(Some(reader), move |reader| {
            let slots = slots.clone();
            async move {
                let mut reader = reader?;
                let Ok(slot) = slots.acquire_owned().await else {
                    return None;
                };
                let read = tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    let mut buf = BytesMut::zeroed(CHUNK);
                    let r = read_full(&mut reader, &mut buf).map(|n| {
                        buf.truncate(n);
                        buf.freeze()
                    });
                    (reader, r)
                })
                .await;
                match read {
                    Ok((_, Ok(chunk))) if chunk.is_empty() => None,
                    Ok((reader, Ok(chunk))) => {
                        Some((Ok::<Bytes, std::io::Error>(chunk), Some(reader)))
                    }
                    // The client sees a truncated body (its length no longer matches), which
                    // Nix reports as a failed download rather than accepting corrupt data.
                    Ok((_, Err(e))) => {
                        tracing::warn!("stream aborted: {e}");
                        Some((Err(e), None))
                    }
                    Err(e) => Some((Err(std::io::Error::other(e)), None)),
                }
            }
        });
        let counted = futures::StreamExt::inspect(chunks, move |c| {
            if let Ok(c) = c {
                on_bytes(c.len() as u64);
            }
        });
        Body::from_stream(counted)
    }

    /// Builds a 200/206 response for `resource`, honouring `Range`, with an empty body for
    /// HEAD. `open(offset)` returns a reader positioned at `offset`; it runs on a read
    /// thread.
    pub fn respond<R, O, F>(
        &self,
        headers: &HeaderMap,
        head: bool,
        resource: Resource,
        open: O,
        on_bytes: F,
    ) -> CacheResult<Response>
    where
        R: Read + Send + 'static,
        O: FnOnce(u64) -> std::io::Result<R> + Send + 'static,
        F: Fn(u64) + Send + 'static,
    {
        let span = parse_range(headers, resource.size)?;
        let (status, start, len) = match span {
            Span::Full => (StatusCode::OK, 0, resource.size),
            Span::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        };
        let body = if head {
            Body::empty()
        } else {
            self.body(LazyReader::new(move || open(start)).take(len), on_bytes)
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(resource.content_type),
        );
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Span::Partial { start, end } = span {
            let v = format!("bytes {start}-{end}/{}", resource.size);
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        Ok(response)
    }
}

/// Reads until `buf` is full or the source ends, so chunks are large even when the source
/// yields small reads (NAR headers, small files).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The part of a resource of `size` bytes a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// No usable `Range` header: the whole resource, 200.
    Full,
    /// `[start, end]` inclusive, 206.
    Partial { start: u64, end: u64 },
}

/// Interprets a `Range` header. Anything but one well-formed byte range is ignored (RFC 9110
/// allows serving the full representation); a range starting past the end is 416.
pub fn parse_range(headers: &HeaderMap, size: u64) -> CacheResult<Span> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(Span::Full);
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(Span::Full);
    };
    if spec.contains(',') {
        return Ok(Span::Full);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(Span::Full);
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    let span = match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) => match parse(last) {
            Some(0) | None => return Err(CacheError::RangeNotSatisfiable { size }),
            Some(n) => Span::Partial {
                start: size.saturating_sub(n),
                end: size.wrapping_sub(1),
            },
        },
        (false, _) => {
            let Some(start) = parse(first) else {
                return Ok(Span::Full);
            };
            let end = if last.is_empty() {
                size.wrapping_sub(1)
            } else {
                match parse(last) {
                    Some(e) if e >= start => e.min(size.wrapping_sub(1)),
                    _ => return Ok(Span::Full),
                }
            };
            Span::Partial { start, end }
        }
        (true, true) => return Ok(Span::Full),
    };
    match span {
        Span::Partial { start, .. } if start >= size => {
            Err(CacheError::RangeNotSatisfiable { size })
        }
        s => Ok(s),
    }
}

/// What [`respond`] needs to know about the resource.
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    pub size: u64,
    pub content_type: &'static str,
}

/// Opens its source on the first read, i.e. on a read thread rather than the request's
/// async task (opening a NAR stream stats files and may seek).
struct LazyReader<R, O> {
    open: Option<O>,
    inner: Option<R>,
}

impl<R, O> LazyReader<R, O> {
    fn new(open: O) -> Self {
        LazyReader {
            open: Some(open),
            inner: None,
        }
    }
}

impl<R: Read, O: FnOnce() -> std::io::Result<R>> Read for LazyReader<R, O> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(open) = self.open.take() {
            self.inner = Some(open()?);
        }
        match &mut self.inner {
            Some(r) => r.read(buf),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> CacheResult<Span> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        parse_range(&h, size)
    }

    #[test]
    fn ranges() {
        assert_eq!(
            range("bytes=0-9", 100).unwrap(),
            Span::Partial { start: 0, end: 9 }
        );
        assert_eq!(
            range("bytes=90-", 100).unwrap(),
            Span::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            range("bytes=90-1000", 100).unwrap(),
            Span::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            range("bytes=-10", 100).unwrap(),
            Span::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            range("bytes=-1000", 100).unwrap(),
            Span::Partial { start: 0, end: 99 }
        );
        assert_eq!(range("bytes=0-1,5-6", 100).unwrap(), Span::Full);
        assert_eq!(range("items=0-1", 100).unwrap(), Span::Full);
        assert_eq!(range("bytes=5-1", 100).unwrap(), Span::Full);
        assert!(matches!(
            range("bytes=100-", 100),
            Err(CacheError::RangeNotSatisfiable { .. })
        ));
        assert!(matches!(
            range("bytes=-0", 100),
            Err(CacheError::RangeNotSatisfiable { .. })
        ));
        assert!(matches!(
            range("bytes=0-", 0),
            Err(CacheError::RangeNotSatisfiable { .. })
        ));
        assert_eq!(parse_range(&HeaderMap::new(), 5).unwrap(), Span::Full);
    }

    #[tokio::test]
    async fn body_streams_everything_in_order() {
        use http_body_util::BodyExt as _;
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = counted.clone();
        let body = ReadPool::new(1).body(std::io::Cursor::new(data.clone()), move |n| {
            c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        });
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got.as_ref(), data.as_slice());
        assert_eq!(
            counted.load(std::sync::atomic::Ordering::Relaxed),
            data.len() as u64
        );
    }
}
