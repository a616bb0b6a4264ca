//! The data protocol `/tailcache/data/1`, carried over `libp2p-stream` (never over
//! request-response, whose message caps and 10 s timeout do not fit file data).
//!
//! One stream per range. The requester writes a framed [`DataRequest`] (file id, offset,
//! length); the server answers with a framed [`DataResponse`] — either `Ok { len }` followed by
//! exactly `len` raw bytes and the end of the stream, or a [`Refusal`]. Bytes are copied in
//! 64 KiB pieces from a [`PieceSource`] to the stream, so memory per upload is bounded
//! whatever the range. The server bounds concurrent uploads (slots) and their total rate (a
//! token bucket); a node in metered mode refuses every data request.
//!
//! The bytes are not trusted here: the receiver verifies them against the signed manifest
//! (see `verify`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::{Mutex, Semaphore, broadcast};
use tokio::time::{Instant, timeout};

use super::NodeEvent;
use super::codec::{read_frame, write_frame};
use crate::error::{Error, Result};
use crate::file::FileId;
use crate::tracker::PieceMap;

/// The data protocol's name.
pub const DATA_PROTOCOL: StreamProtocol = StreamProtocol::new("/tailcache/data/1");

/// Cap on a data request or response header (they are ~50 bytes).
const MAX_DATA_HEADER: usize = 256;
/// Piece copied from the source to the stream at a time.
const COPY_CHUNK: usize = 64 * 1024;
/// How long a peer may take to send its request header or to get our response header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may stall (a downloader that stops reading) before the upload is
/// abandoned and its slot freed.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`DataReader::finish`] waits for the end of a stream after its last byte.
const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

/// What a requester asks for: `len` bytes of `file` from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRequest {
    pub file: FileId,
    pub offset: u64,
    pub len: u64,
}

/// Why a peer did not serve a data request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The peer does not upload (metered mode, or reseeding disabled).
    NoUpload,
    /// Every upload slot is taken; ask someone else or later.
    Busy,
    /// The peer does not hold that range.
    NotFound,
}

/// The server's answer header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum DataResponse {
    Ok { len: u64 },
    Refused(Refusal),
}

/// The bytes of one range an upload sends: exactly the length asked for.
pub type RangeReader = Box<dyn AsyncRead + Send + Unpin>;

/// Where a node's uploads come from. `open` is called on the runtime for each accepted data
/// request, so it must not block for long (opening a file and seeking is fine). It returns a
/// reader of exactly `len` bytes from `offset`, or `None` if this node does not hold them
/// (a source holding part of a file must refuse any range not wholly verified).
pub trait PieceSource: Send + Sync + 'static {
    fn open(&self, file: &FileId, offset: u64, len: u64) -> Option<RangeReader>;

    /// Which pieces of `file` this node holds, for [`crate::tracker::ControlRequest::Pieces`]
    /// (called on the node's event loop: must be quick). `None`: none of it.
    fn pieces(&self, _file: &FileId) -> Option<PieceMap> {
        None
    }
}

/// `len` bytes of the file at `path` from `offset`, if the file is that long: what a
/// [`PieceSource`] backed by files on disk hands out. The file is opened now, so unlinking
/// it (an eviction) does not cut the upload short.
pub fn file_range(path: &std::path::Path, offset: u64, len: u64) -> Option<RangeReader> {
    use std::io::{Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    if offset.checked_add(len)? > size {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    Some(Box::new(tokio::fs::File::from_std(f).take(len)))
}

/// A source that holds nothing: every request is answered [`Refusal::NotFound`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPieces;

impl PieceSource for NoPieces {
    fn open(&self, _: &FileId, _: u64, _: u64) -> Option<RangeReader> {
        None
    }
}

/// An upload rate cap: `bytes_per_sec` sustained, `burst` bytes at once after idling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub bytes_per_sec: u64,
    pub burst: u64,
}

/// Whether and how much this node uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadPolicy {
    /// Metered mode: download from peers, never upload.
    Disabled,
    /// Serve at most `slots` ranges at once, all together at most `rate`.
    Enabled {
        slots: usize,
        rate: Option<RateLimit>,
    },
}

impl Default for UploadPolicy {
    fn default() -> Self {
        Self::Enabled {
            slots: 8,
            rate: None,
        }
    }
}

/// A token bucket over bytes, in the "reserve, then wait" style: a reservation always
/// succeeds and says how long to wait before sending, so concurrent uploads queue fairly
/// and the long-run rate never exceeds the cap. Pure: time is an argument.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// May go negative: reservations not yet covered by refill.
    tokens: f64,
    last: Instant,
    granted: u64,
    throttled: Duration,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        // A zero rate would make every wait infinite; one byte per second is the floor.
        let rate = limit.bytes_per_sec.max(1) as f64;
        let burst = limit.burst as f64;
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
            granted: 0,
            throttled: Duration::ZERO,
        }
    }

    /// Reserves `n` bytes at `now`; returns how long to wait before sending them.
    pub fn reserve(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        self.granted += n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            let wait = Duration::from_secs_f64(-self.tokens / self.rate);
            self.throttled += wait;
            wait
        }
    }

    /// Bytes reserved so far.
    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// Sum of the waits handed out so far.
    pub fn throttled(&self) -> Duration {
        self.throttled
    }
}

/// Counters of the data protocol, shared by the serving tasks.
#[derive(Debug, Default)]
pub(crate) struct DataCounters {
    pub uploaded_bytes: AtomicU64,
    pub uploads_done: AtomicU64,
    pub refused_busy: AtomicU64,
    pub refused_no_upload: AtomicU64,
    pub refused_not_found: AtomicU64,
    pub downloaded_bytes: AtomicU64,
}

/// What the serving side of the data protocol needs.
pub(crate) struct Server {
    pub policy: UploadPolicy,
    pub slots: Arc<Semaphore>,
    pub bucket: Option<Mutex<TokenBucket>>,
    pub source: Arc<dyn PieceSource>,
    pub counters: Arc<DataCounters>,
    pub events: broadcast::Sender<NodeEvent>,
}

impl Server {
    pub fn new(
        policy: UploadPolicy,
        source: Arc<dyn PieceSource>,
        counters: Arc<DataCounters>,
        events: broadcast::Sender<NodeEvent>,
    ) -> Self {
        let (slots, bucket) = match policy {
            UploadPolicy::Disabled => (0, None),
            UploadPolicy::Enabled { slots, rate } => (
                slots,
                rate.map(|r| Mutex::new(TokenBucket::new(r, Instant::now()))),
            ),
        };
        Self {
            policy,
            slots: Arc::new(Semaphore::new(slots)),
            bucket,
            source,
            counters,
            events,
        }
    }

    /// Bytes the rate cap has let through and the total wait it imposed.
    pub async fn bucket_accounting(&self) -> Option<(u64, Duration)> {
        match &self.bucket {
            Some(b) => {
                let b = b.lock().await;
                Some((b.granted(), b.throttled()))
            }
            None => None,
        }
    }
}

/// Accepts inbound data streams for as long as the node runs. libp2p-stream drops inbound
/// streams nobody polls, so this loop only hands each stream to its own task.
pub(crate) async fn accept_loop(mut incoming: libp2p_stream::IncomingStreams, server: Arc<Server>) {
    while let Some((peer, stream)) = incoming.next().await {
        tokio::spawn(serve_one(peer, stream, server.clone()));
    }
}

async fn refuse(peer: PeerId, mut stream: Stream, why: Refusal, server: &Server) {
    let counter = match why {
        Refusal::Busy => &server.counters.refused_busy,
        Refusal::NoUpload => &server.counters.refused_no_upload,
        Refusal::NotFound => &server.counters.refused_not_found,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let _ = timeout(HEADER_TIMEOUT, async {
        // Take the request off the stream first: a QUIC stream dropped with unread data
        // tells the sender to stop, and the requester would see that instead of the
        // refusal. (NotFound arrives here with the header already read.)
        if why != Refusal::NotFound {
            read_frame::<_, DataRequest>(&mut stream, MAX_DATA_HEADER).await?;
        }
        write_frame(&mut stream, &DataResponse::Refused(why), MAX_DATA_HEADER).await?;
        stream.close().await
    })
    .await;
    // No subscriber is fine: events are informational.
    let _ = server
        .events
        .send(NodeEvent::UploadRefused { peer, reason: why });
}

async fn serve_one(peer: PeerId, mut stream: Stream, server: Arc<Server>) {
    let permit = match server.policy {
        UploadPolicy::Disabled => return refuse(peer, stream, Refusal::NoUpload, &server).await,
        UploadPolicy::Enabled { .. } => match server.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => return refuse(peer, stream, Refusal::Busy, &server).await,
        },
    };
    let req: DataRequest =
        match timeout(HEADER_TIMEOUT, read_frame(&mut stream, MAX_DATA_HEADER)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "bad data request header: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "data request header timed out");
                return;
            }
        };
    let Some(reader) = server.source.open(&req.file, req.offset, req.len) else {
        drop(permit);
        return refuse(peer, stream, Refusal::NotFound, &server).await;
    };
    let result = send_range(&mut stream, reader, req.len, &server).await;
    drop(permit);
    let (ok, bytes) = match result {
        Ok(n) => (true, n),
        Err((n, e)) => {
            tracing::debug!(%peer, "upload aborted after {n} bytes: {e}");
            (false, n)
        }
    };
    server.counters.uploads_done.fetch_add(1, Ordering::Relaxed);
    let _ = server
        .events
        .send(NodeEvent::UploadFinished { peer, bytes, ok });
}

/// Reads a requester's [`DataRequest`] from an inbound data stream: for a node that serves
/// [`DATA_PROTOCOL`] itself (`NodeConfig::serve_data` off).
pub async fn read_data_request(stream: &mut Stream) -> io::Result<DataRequest> {
    timeout(HEADER_TIMEOUT, read_frame(stream, MAX_DATA_HEADER))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no data request in time"))?
}

/// Accepts a data request: the `Ok { len }` header, after which exactly `len` raw bytes are
/// due.
pub async fn write_data_accept(stream: &mut Stream, len: u64) -> io::Result<()> {
    write_frame(stream, &DataResponse::Ok { len }, MAX_DATA_HEADER).await
}

/// Sends the `Ok` header and exactly `len` bytes from `reader`; on failure returns how many
/// bytes went out.
async fn send_range(
    stream: &mut Stream,
    mut reader: RangeReader,
    len: u64,
    server: &Server,
) -> std::result::Result<u64, (u64, io::Error)> {
    let stalled = || io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading");
    match timeout(
        WRITE_STALL_TIMEOUT,
        write_frame(stream, &DataResponse::Ok { len }, MAX_DATA_HEADER),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err((0, e)),
        Err(_) => return Err((0, stalled())),
    }
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut sent = 0u64;
    while sent < len {
        let want = usize::try_from(len - sent)
            .unwrap_or(usize::MAX)
            .min(COPY_CHUNK);
        let n = match reader.read(&mut buf[..want]).await {
            Ok(0) => {
                return Err((
                    sent,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "piece source ended early"),
                ));
            }
            Ok(n) => n,
            Err(e) => return Err((sent, e)),
        };
        if let Some(bucket) = &server.bucket {
            let wait = bucket.lock().await.reserve(n as u64, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        match timeout(WRITE_STALL_TIMEOUT, stream.write_all(&buf[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err((sent, e)),
            Err(_) => return Err((sent, stalled())),
        }
        sent += n as u64;
        server
            .counters
            .uploaded_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    match timeout(WRITE_STALL_TIMEOUT, stream.close()).await {
        Ok(Ok(())) => Ok(sent),
        Ok(Err(e)) => Err((sent, e)),
        Err(_) => Err((sent, stalled())),
    }
}

/// How many streams one range request may open when the peer drops them unread.
const MAX_STREAM_ATTEMPTS: u32 = 8;
/// The wait before opening the second stream; it doubles with each further attempt.
const FIRST_RETRY: Duration = Duration::from_millis(10);
/// The longest wait between two attempts.
const MAX_RETRY: Duration = Duration::from_millis(1000);

/// How the header exchange of one stream ended, when it did not end in an answer.
enum HeaderFailure {
    /// The stream could not be opened at all.
    Open(String),
    /// The peer's node dropped or reset the stream before answering: it may never have
    /// seen the request (libp2p-stream drops an inbound stream when the previous one has
    /// not been taken yet), so asking again on a new stream is safe.
    Dropped(io::Error),
    /// The connection is gone, or the exchange stalled.
    Transport(io::Error),
    /// The answer was not a header: no honest node sends that.
    Malformed(io::Error),
}

impl HeaderFailure {
    fn of(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::InvalidData => HeaderFailure::Malformed(e),
            io::ErrorKind::NotConnected | io::ErrorKind::TimedOut => HeaderFailure::Transport(e),
            _ => HeaderFailure::Dropped(e),
        }
    }
}

/// Opens one stream, sends the request and reads the answer header.
async fn exchange_header(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    req: &DataRequest,
) -> std::result::Result<(Stream, DataResponse), HeaderFailure> {
    let mut stream = control
        .open_stream(peer, DATA_PROTOCOL)
        .await
        .map_err(|e| HeaderFailure::Open(e.to_string()))?;
    let sent = write_frame(&mut stream, req, MAX_DATA_HEADER).await;
    // A refusal may already be waiting even if the peer stopped reading our request.
    match read_frame::<_, DataResponse>(&mut stream, MAX_DATA_HEADER).await {
        Ok(r) => Ok((stream, r)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(HeaderFailure::of(e)),
        Err(e) => Err(HeaderFailure::of(sent.err().unwrap_or(e))),
    }
}

/// The wait before attempt `attempt + 1`: doubling from [`FIRST_RETRY`], at most
/// [`MAX_RETRY`], scaled by a random factor in [0.5, 1.5) so that requests dropped together
/// do not collide again.
fn retry_wait(attempt: u32) -> Duration {
    use std::hash::BuildHasher as _;
    let base = FIRST_RETRY
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_RETRY);
    // RandomState is seeded afresh per instance: a cheap source of jitter.
    let r = std::collections::hash_map::RandomState::new().hash_one(attempt);
    base.mul_f64(0.5 + (r % 1024) as f64 / 1024.0)
}

/// Asks `peer` for a range over a new data stream. Returns once the peer has accepted (the
/// bytes then arrive through the [`DataReader`]) or refused. A stream the peer drops before
/// answering is opened again (at most [`MAX_STREAM_ATTEMPTS`] times, within
/// [`HEADER_TIMEOUT`]); failing that, the error is [`Error::StreamFailed`] — a transport
/// failure — and only a malformed or mismatched answer is [`Error::Protocol`].
pub(crate) async fn request_range(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    req: DataRequest,
    counters: Arc<DataCounters>,
) -> Result<DataReader> {
    let failed = |reason: String| Error::StreamFailed { peer, reason };
    let attempts = async {
        let mut attempt = 1;
        loop {
            match exchange_header(&mut control, peer, &req).await {
                Err(HeaderFailure::Dropped(e)) if attempt < MAX_STREAM_ATTEMPTS => {
                    tracing::debug!(%peer, attempt, "data stream dropped before an answer: {e}");
                    tokio::time::sleep(retry_wait(attempt)).await;
                    attempt += 1;
                }
                Err(HeaderFailure::Dropped(e)) => {
                    return Err(failed(format!(
                        "dropped before an answer {attempt} times, last: {e}"
                    )));
                }
                Err(HeaderFailure::Transport(e)) => return Err(failed(e.to_string())),
                Err(HeaderFailure::Open(reason)) => return Err(Error::OpenStream { peer, reason }),
                Err(HeaderFailure::Malformed(e)) => {
                    return Err(Error::Protocol {
                        peer,
                        reason: format!("data response header: {e}"),
                    });
                }
                Ok(answer) => return Ok(answer),
            }
        }
    };
    let (stream, resp) = timeout(HEADER_TIMEOUT, attempts)
        .await
        .map_err(|_| failed("no data response header in time".into()))??;
    match resp {
        DataResponse::Ok { len } if len == req.len => Ok(DataReader {
            stream,
            remaining: len,
            counters,
        }),
        DataResponse::Ok { len } => Err(Error::Protocol {
            peer,
            reason: format!("asked for {} bytes, peer offers {len}", req.len),
        }),
        DataResponse::Refused(reason) => Err(Error::Refused { peer, reason }),
    }
}

/// The bytes of an accepted range: ends after exactly the requested length; a stream that
/// ends earlier is an [`io::ErrorKind::UnexpectedEof`] error. The bytes are unverified.
pub struct DataReader {
    stream: Stream,
    remaining: u64,
    counters: Arc<DataCounters>,
}

impl std::fmt::Debug for DataReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataReader")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl DataReader {
    /// Bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// After the last byte: checks that the peer ended the stream there. A peer that keeps
    /// sending past the length it accepted broke the protocol (an
    /// [`io::ErrorKind::InvalidData`] error); nothing past the length is ever read. A peer
    /// that neither ends the stream nor sends more within [`FINISH_TIMEOUT`] is let go.
    pub async fn finish(mut self) -> io::Result<()> {
        if self.remaining != 0 {
            return Err(io::Error::other(format!(
                "finish with {} bytes still due",
                self.remaining
            )));
        }
        let mut probe = [0u8; 1];
        match timeout(FINISH_TIMEOUT, self.stream.read(&mut probe)).await {
            Ok(Ok(0)) | Err(_) => Ok(()),
            Ok(Ok(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer sent more bytes than it accepted to send",
            )),
            // The stream may be reset right after the last byte; the bytes were complete.
            Ok(Err(_)) => Ok(()),
        }
    }
}

impl AsyncRead for DataReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.remaining == 0 || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.remaining());
        let this = &mut *self;
        let dst = &mut buf.initialize_unfilled()[..want];
        match futures::AsyncRead::poll_read(Pin::new(&mut this.stream), cx, dst) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("data stream ended {} bytes early", this.remaining),
            ))),
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                this.remaining -= n as u64;
                this.counters
                    .downloaded_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rate: u64, burst: u64, t0: Instant) -> TokenBucket {
        TokenBucket::new(
            RateLimit {
                bytes_per_sec: rate,
                burst,
            },
            t0,
        )
    }

    #[test]
    fn a_full_bucket_lets_the_burst_through_at_once() {
        let t0 = Instant::now();
        let mut b = bucket(1000, 500, t0);
        assert_eq!(b.reserve(300, t0), Duration::ZERO);
        assert_eq!(b.reserve(200, t0), Duration::ZERO);
        // The bucket is empty now: 100 bytes cost 0.1 s at 1000 B/s.
        let w = b.reserve(100, t0);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn bytes_released_never_exceed_burst_plus_rate_times_time() {
        // Senders that reserve and then wait, as `send_range` does, with chunks of
        // varying size; check the cap at every release time.
        let t0 = Instant::now();
        let (rate, burst) = (1_000_000u64, 64 * 1024u64);
        let mut b = bucket(rate, burst, t0);
        let mut now = t0;
        let mut released = 0u64;
        for i in 0..2000u64 {
            let n = 1 + (i * 7919) % (COPY_CHUNK as u64);
            let wait = b.reserve(n, now);
            now += wait;
            released += n;
            let allowed = burst as f64 + rate as f64 * (now - t0).as_secs_f64();
            assert!(
                released as f64 <= allowed + 1.0,
                "released {released} > allowed {allowed} at step {i}"
            );
        }
        assert_eq!(b.granted(), released);
        // And it is a cap, not a brake: the long-run rate is close to it.
        let achieved = released as f64 / (now - t0).as_secs_f64();
        assert!(achieved > 0.95 * rate as f64, "achieved {achieved} B/s");
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = bucket(1000, 500, t0);
        assert_eq!(b.reserve(500, t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.reserve(500, later), Duration::ZERO);
        let w = b.reserve(1000, later);
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-9, "{w:?}");
        assert!((b.throttled().as_secs_f64() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn concurrent_reservations_queue_behind_each_other() {
        let t0 = Instant::now();
        let mut b = bucket(1000, 0, t0);
        let w1 = b.reserve(1000, t0);
        let w2 = b.reserve(1000, t0);
        assert!((w1.as_secs_f64() - 1.0).abs() < 1e-9);
        assert!((w2.as_secs_f64() - 2.0).abs() < 1e-9);
    }
}
