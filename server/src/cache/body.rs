//! Serving bytes from a blocking reader (a NAR being dumped, a compressed file, a build log)
//! as an HTTP body with memory and threads bounded by configuration, not by the number of
//! clients, and single-range `Range` requests (RFC 9110 §14).
//!
//! The body is pulled: one of [`ReadPool`]'s threads reads a chunk when the connection asks
//! for one and hands the reader back, so a download holds a thread only while a chunk is
//! read, and the reads of all downloads together run on the pool's fixed set of threads
//! (its own, not tokio's blocking pool, whose thread count drifts above any bound when
//! many short jobs follow each other).
//!
//! Chunks are [`BIG_CHUNK`] while a shared byte budget allows (a chunk returns its share
//! when the connection has sent it), and then the next one is read ahead while this one is
//! sent; beyond the budget they are [`SMALL_CHUNK`], read only when asked for. So a few
//! downloads go as fast as big pipelined reads allow, and however many clients stall
//! (the listener's send timeout drops them), all they hold together is the budget plus a
//! small chunk each.

use std::io::{Read, Seek as _, SeekFrom};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use tailcache_store::IoError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{CacheError, CacheResult};

/// Bytes per chunk while the budget allows: big reads and writes, few thread hops.
pub const BIG_CHUNK: usize = 256 * 1024;
/// Bytes per chunk beyond the budget: what each stalled download holds at most, so
/// hundreds of them stay within tens of MiB.
pub const SMALL_CHUNK: usize = 64 * 1024;

/// Runs the blocking reads of response bodies on `threads` threads of its own, and hands
/// out the byte budget for big chunks.
#[derive(Debug, Clone)]
pub struct ReadPool {
    /// One per thread: a read holds one from before it is queued until it has run, so the
    /// queue never holds more jobs than there are threads.
    slots: Arc<Semaphore>,
    jobs: Jobs,
    budget: Arc<Semaphore>,
}

/// A read to run, with the slot it holds.
type Job = Box<dyn FnOnce() + Send>;

/// The queue of the pool's threads; they end when the last handle is dropped.
#[derive(Clone)]
struct Jobs(std::sync::mpsc::SyncSender<Job>);

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jobs")
    }
}

impl Jobs {
    fn start(threads: usize) -> Jobs {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(threads);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tailcache-read-{i}"))
                .spawn(move || {
                    loop {
                        // One thread waits on the queue at a time; the others on the lock.
                        let job = match rx.lock() {
                            Ok(q) => q.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        let Ok(job) = job else { break };
                        // A panicking read ends its download (its result is never sent),
                        // not the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a read thread: {e}");
            }
        }
        Jobs(tx)
    }
}

/// A chunk's bytes and its share of the budget, returned when hyper drops the chunk.
struct Chunk {
    data: Vec<u8>,
    _share: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// [`BIG_CHUNK`] in budget permits.
const BIG_CHUNK_U32: u32 = BIG_CHUNK as u32;

/// A chunk being read on a read thread: the reader back, and the chunk with whether it
/// was a full big one (so the next may be read ahead).
type Reading<R> = tokio::sync::oneshot::Receiver<(R, std::io::Result<(Bytes, bool)>)>;

/// Where a body's reader is between chunks.
enum Next<R> {
    /// Waiting for the connection to ask for more.
    Idle(R),
    /// Reading ahead.
    Reading(Reading<R>),
    Done,
}

/// Reads one chunk on a read thread (holding `slot`); big if it has a budget `share`.
fn start_read<R: Read + Send + 'static>(
    jobs: &Jobs,
    mut reader: R,
    slot: OwnedSemaphorePermit,
    share: Option<OwnedSemaphorePermit>,
) -> Reading<R> {
    let (done, reading) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _slot = slot;
        let size = if share.is_some() {
            BIG_CHUNK
        } else {
            SMALL_CHUNK
        };
        let mut data = vec![0; size];
        let r = read_full(&mut reader, &mut data).map(|n| {
            data.truncate(n);
            let full_big = n == BIG_CHUNK;
            let chunk = Bytes::from_owner(Chunk {
                data,
                _share: share,
            });
            (chunk, full_big)
        });
        // The download may have gone meanwhile.
        let _ = done.send((reader, r));
    });
    // Never full (a slot per queued job, as many slots as room); if the threads are gone,
    // the dropped job drops `done` and the download ends with an error.
    let _ = jobs.0.try_send(job);
    reading
}

impl ReadPool {
    /// `threads` blocking reads at once; `budget` bytes of big chunks at once.
    pub fn new(threads: usize, budget: usize) -> Self {
        ReadPool {
            slots: Arc::new(Semaphore::new(threads.max(1))),
            jobs: Jobs::start(threads.max(1)),
            budget: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// A body fed by `reader`, one chunk per request of the connection. `on_bytes` is
    /// called with each chunk's size as it is handed to the connection (for counters).
    pub fn body<R, F>(&self, reader: R, on_bytes: F) -> Body
    where
        R: Read + Send + 'static,
        F: Fn(u64) + Send + 'static,
    {
        let (slots, jobs, budget) = (self.slots.clone(), self.jobs.clone(), self.budget.clone());
        let chunks = futures::stream::unfold(Next::Idle(reader), move |next| {
            let (slots, jobs, budget) = (slots.clone(), jobs.clone(), budget.clone());
            async move {
                let read = match next {
                    Next::Idle(reader) => {
                        let slot = slots.clone().acquire_owned().await.ok()?;
                        let share = budget.clone().try_acquire_many_owned(BIG_CHUNK_U32).ok();
                        start_read(&jobs, reader, slot, share)
                    }
                    Next::Reading(read) => read,
                    Next::Done => return None,
                };
                match read.await {
                    Ok((_, Ok((chunk, _)))) if chunk.is_empty() => None,
                    Ok((reader, Ok((chunk, full_big)))) => {
                        // Within the budget, read the next chunk while this one is sent.
                        let ahead = full_big
                            .then(|| {
                                let slot = slots.try_acquire_owned().ok()?;
                                let share = budget.try_acquire_many_owned(BIG_CHUNK_U32).ok()?;
                                Some((slot, share))
                            })
                            .flatten();
                        let next = match ahead {
                            Some((slot, share)) => {
                                Next::Reading(start_read(&jobs, reader, slot, Some(share)))
                            }
                            None => Next::Idle(reader),
                        };
                        Some((Ok(chunk), next))
                    }
                    // The client sees a truncated body (its length no longer matches), which
                    // Nix reports as a failed download rather than accepting corrupt data.
                    Ok((_, Err(e))) => {
                        tracing::warn!("stream aborted: {e}");
                        Some((Err(e), Next::Done))
                    }
                    Err(e) => Some((Err(std::io::Error::other(e)), Next::Done)),
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

    /// [`respond`](Self::respond) with the bytes of `file`, which the caller opened: once
    /// open, a file unlinked meanwhile (an evicted NAR) is still served whole. `what` names
    /// it in the error if it cannot be stat'ed.
    pub fn respond_file<F>(
        &self,
        headers: &HeaderMap,
        head: bool,
        file: std::fs::File,
        content_type: &'static str,
        what: &str,
        on_bytes: F,
    ) -> CacheResult<Response>
    where
        F: Fn(u64) + Send + 'static,
    {
        let size = file
            .metadata()
            .map_err(|e| IoError::new(format!("stat {what}"), e))?
            .len();
        let resource = Resource { size, content_type };
        let open = move |offset| {
            let mut file = file;
            file.seek(SeekFrom::Start(offset))?;
            Ok(file)
        };
        self.respond(headers, head, resource, open, on_bytes)
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
        let partial = |start, end| Span::Partial { start, end };
        for (header, want) in [
            ("bytes=0-9", partial(0, 9)),
            ("bytes=90-", partial(90, 99)),
            ("bytes=90-1000", partial(90, 99)),
            ("bytes=-10", partial(90, 99)),
            ("bytes=-1000", partial(0, 99)),
        ] {
            assert_eq!(range(header, 100).unwrap(), want, "{header}");
        }
        assert_eq!(range("bytes=0-1,5-6", 100).unwrap(), Span::Full);
        assert_eq!(range("items=0-1", 100).unwrap(), Span::Full);
        assert_eq!(range("bytes=5-1", 100).unwrap(), Span::Full);
        for (header, size) in [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)] {
            assert!(
                matches!(
                    range(header, size),
                    Err(CacheError::RangeNotSatisfiable { .. })
                ),
                "{header} of {size} bytes"
            );
        }
        assert_eq!(parse_range(&HeaderMap::new(), 5).unwrap(), Span::Full);
    }

    #[tokio::test]
    async fn body_streams_everything_in_order() {
        use http_body_util::BodyExt as _;
        let data: Vec<u8> = (0..(3 * BIG_CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = counted.clone();
        // Budget for one big chunk: the others are small.
        let body = ReadPool::new(1, BIG_CHUNK).body(std::io::Cursor::new(data.clone()), move |n| {
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
