//! Serving one TCP listener with hyper: the accept loop with its connection limit, the
//! per-connection timeouts (idle, request head, stalled sends), running out of file
//! descriptors, graceful shutdown, and the `tailcache_http_*` metrics of all of it.
//!
//! Each connection is a task that knows whether a request is in flight (from the moment
//! hyper hands it over until its response body is dropped). With none in flight a
//! connection is *idle* until the first byte of its next request arrives, then *reading a
//! head*; either state has its own deadline. A response whose client stops taking bytes
//! fails its write after the send timeout, which drops the connection and whatever it was
//! streaming. At the connection limit a new connection makes room by closing the connection
//! idle the longest (what nginx does with keep-alive connections), so a flood of idle or
//! slowloris connections cannot lock out a real client; only when every connection is busy
//! does a new one wait. Descriptors running out (EMFILE on accept) are handled the same
//! way, with a growing pause instead of a busy loop. Both are logged once per episode.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tailcache_metrics::Prefixed;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower_service::Service as _;

use crate::ConnectionConfig;

/// Largest request head, and what hyper buffers of a response before it waits for the
/// socket: one body chunk. Small, so a stalled reader holds little memory.
const MAX_BUF: usize = 64 * 1024;
/// Unsent bytes a socket may hold before it stops taking writes (`TCP_NOTSENT_LOWAT`).
/// Without it the kernel wakes a writer only once half of a send buffer that may have
/// grown to megabytes is free, so a client reading slowly but steadily would look stalled
/// to the send timeout; with it, every bit of progress wakes the writer. It also bounds the
/// kernel memory a stalled reader's socket holds.
const NOTSENT_LOWAT: u32 = 128 * 1024;
/// Descriptors kept for everything but connections: a store database, log files, the
/// directories files are served from, a P2P node.
const RESERVED_FDS: u64 = 128;
/// A new episode of "limit reached" or "out of descriptors" (and its log line) starts
/// when the previous one has been quiet this long.
const EPISODE_QUIET: Duration = Duration::from_secs(10);
/// The pause after an accept failed for lack of descriptors grows up to this.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd's default soft limit is 1024
/// whatever the hard one) and returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("cannot raise the file descriptor limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!("cannot read the file descriptor limit: {e}");
            1024
        }
    }
}

/// The limits one listener enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
}

impl Limits {
    /// `config`'s limits; an unset `max_connections` is `share` of the descriptors left
    /// once `RESERVED_FDS` are set aside, divided by `fds_per_connection` (a NAR download
    /// holds a socket and a file), at most [`ConnectionConfig::DEFAULT_MAX`].
    pub fn new(
        name: &str,
        config: &ConnectionConfig,
        nofile: u64,
        share: f64,
        fds_per_connection: u64,
    ) -> Limits {
        let budget = nofile.saturating_sub(RESERVED_FDS) as f64 * share;
        let derived = usize::try_from((budget / fds_per_connection as f64) as u64)
            .unwrap_or(usize::MAX)
            .max(1);
        let max_connections = match config.max_connections {
            Some(n) => {
                if n > derived {
                    tracing::warn!(
                        "{name}.connections.max_connections = {n} is more than the file \
                         descriptor limit ({nofile}) leaves room for ({derived}); descriptors \
                         may run out before connections do"
                    );
                }
                n
            }
            None => derived.min(ConnectionConfig::DEFAULT_MAX),
        };
        Limits {
            max_connections,
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            send_timeout: Duration::from_secs(config.send_timeout_secs),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcceptErrorLabels {
    listener: &'static str,
    error: &'static str,
}

/// The listeners' metrics (`tailcache_http_*`), one set shared by a program's listeners
/// (told apart by the `listener` label).
#[derive(Debug, Clone)]
pub struct HttpStats {
    open: Family<ListenerLabels, Gauge>,
    closed: Family<CloseLabels, Counter>,
    over_limit: Family<ListenerLabels, Counter>,
    accept_errors: Family<AcceptErrorLabels, Counter>,
}

impl HttpStats {
    /// Creates the metrics and registers them under `tailcache_http_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = Prefixed::new(registry, "tailcache_http");
        HttpStats {
            open: r.add(
                "connections",
                "connections open, by listener",
                Family::default(),
            ),
            closed: r.add(
                "connections_closed",
                "connections the server closed, by listener and reason (idle_timeout, \
                 header_timeout, send_timeout, evicted: closed while idle to make room at the \
                 connection limit)",
                Family::default(),
            ),
            over_limit: r.add(
                "connections_over_limit",
                "connections that arrived while the listener was at its connection limit",
                Family::default(),
            ),
            accept_errors: r.add(
                "accept_errors",
                "failed accepts, by listener and error (fd_exhausted: EMFILE/ENFILE)",
                Family::default(),
            ),
        }
    }

    fn closed(&self, listener: &'static str, reason: Close) {
        let reason = match reason {
            Close::Idle => "idle_timeout",
            Close::Header => "header_timeout",
            Close::Send => "send_timeout",
            Close::Evicted => "evicted",
        };
        self.closed
            .get_or_create(&CloseLabels { listener, reason })
            .inc();
    }
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Idle,
    Header,
    Send,
    Evicted,
}

/// No timestamp (the `head_since` of a connection with no request head begun).
const NONE: u64 = u64::MAX;

/// What the accept loop and a connection's task know about one connection. Times are
/// milliseconds since the listener's epoch.
#[derive(Debug)]
struct ConnState {
    epoch: Instant,
    /// Requests handed to the router whose response body has not been dropped yet.
    in_flight: AtomicU32,
    /// When the connection last became idle (accepted, or a response ended).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived, while idle.
    head_since: AtomicU64,
    /// The accept loop wants this idle connection closed to make room.
    evict: AtomicBool,
    /// A write stalled past the send timeout (set by [`Watched`]).
    send_timed_out: AtomicU8,
    /// Wakes the connection's task to recompute its deadline or to close.
    wake: Notify,
}

impl ConnState {
    fn new(epoch: Instant) -> Self {
        let s = ConnState {
            epoch,
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            evict: AtomicBool::new(false),
            send_timed_out: AtomicU8::new(0),
            wake: Notify::new(),
        };
        s.idle_since.store(s.now(), Ordering::SeqCst);
        s
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Bytes came in: while idle, the first of them starts a request head.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0
            && self
                .head_since
                .compare_exchange(NONE, self.now(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(NONE, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection is due to be closed, and why; `None` while a request is in
    /// flight (its sends have their own timeout).
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Close)> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::SeqCst);
        if head != NONE {
            return Some((self.at(head) + limits.header_read_timeout, Close::Header));
        }
        let idle = self.idle_since.load(Ordering::SeqCst);
        Some((self.at(idle) + limits.idle_timeout, Close::Idle))
    }

    /// For eviction: when an idle connection last showed life (`None` if busy).
    fn idle_mark(&self) -> Option<u64> {
        if self.in_flight.load(Ordering::SeqCst) > 0 || self.evict.load(Ordering::SeqCst) {
            return None;
        }
        let head = self.head_since.load(Ordering::SeqCst);
        let idle = self.idle_since.load(Ordering::SeqCst);
        Some(if head == NONE { idle } else { head })
    }
}

/// Held while a request is in flight: from the router's call until the response body is
/// dropped (sent, or the connection died).
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // Idle time is stamped before the count drops, so no one sees an idle connection
        // with a stale stamp.
        self.0.idle_since.store(self.0.now(), Ordering::SeqCst);
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.wake.notify_one();
        }
    }
}

/// A response body that holds the request's [`InFlight`] until hyper drops it.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket as hyper sees it: reads mark the start of a request head, and a write that
/// cannot make progress for the send timeout fails with `TimedOut`.
///
/// A write hands the kernel at most [`MAX_BUF`] bytes, whatever the size of the body chunk,
/// so the socket of a stalled reader holds at most that beyond [`NOTSENT_LOWAT`].
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
    send_timeout: Duration,
    /// Armed while writes wait: the timer, and the bytes the kernel still held for the
    /// client when it was armed.
    stalled: Option<(Pin<Box<Sleep>>, Option<usize>)>,
}

/// Bytes the kernel holds for the peer, sent but not acknowledged or not yet sent
/// (`SIOCOUTQ`); `None` where it cannot be asked.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn unsent_bytes(stream: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd as _;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one c_int through the pointer,
    // which points to a live c_int; the descriptor is the stream's own, open while
    // `stream` is borrowed.
    let r = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (r == 0).then(|| usize::try_from(n).ok()).flatten()
}

#[cfg(not(target_os = "linux"))]
fn unsent_bytes(_: &TcpStream) -> Option<usize> {
    None
}

impl Watched {
    /// Maps a write's poll result: progress disarms the stall timer, `Pending` arms it.
    /// When it fires, the client is dropped only if the kernel holds as many bytes for it as
    /// when it was armed: a client that takes bytes slowly (too slowly to make the socket
    /// writable again within the timeout) is still taking them, and the timer starts over.
    fn check_stall<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.send_timeout;
        loop {
            let (sleep, queued) = self.stalled.get_or_insert_with(|| {
                let queued = unsent_bytes(&self.inner);
                (Box::pin(tokio::time::sleep(timeout)), queued)
            });
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = unsent_bytes(&self.inner);
            match (*queued, now) {
                (Some(before), Some(now)) if now < before => self.stalled = None,
                _ => break,
            }
        }
        self.state.send_timed_out.store(1, Ordering::SeqCst);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took no bytes for the send timeout",
        )))
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let buf = &buf[..buf.len().min(MAX_BUF)];
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check_stall(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // The slices that fit in MAX_BUF, and the part of the next one that does.
        let mut room = MAX_BUF;
        let mut capped = Vec::with_capacity(bufs.len());
        for b in bufs {
            if room == 0 {
                break;
            }
            let take = b.len().min(room);
            capped.push(io::IoSlice::new(&b[..take]));
            room -= take;
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, &capped);
        self.check_stall(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check_stall(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check_stall(cx, r)
    }
}

/// The open connections of one listener, for choosing whom to evict.
#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    conns: std::collections::HashMap<u64, Arc<ConnState>>,
}

impl Open {
    fn insert(&mut self, c: Arc<ConnState>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(id, c);
        id
    }

    /// Asks the connection idle the longest to close; false when every one is busy.
    fn evict_one(&self) -> bool {
        let victim = self
            .conns
            .values()
            .filter_map(|c| c.idle_mark().map(|t| (t, c)))
            .min_by_key(|(t, _)| *t);
        match victim {
            Some((_, c)) => {
                c.evict.store(true, Ordering::SeqCst);
                c.wake.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A run of limit hits (or accept failures) with gaps shorter than [`EPISODE_QUIET`].
#[derive(Debug, Default)]
struct Episode {
    last: Option<Instant>,
    hits: u64,
}

impl Episode {
    /// Records a hit; true when it starts a new episode (time to log).
    fn hit(&mut self) -> bool {
        let now = Instant::now();
        let new = self.last.is_none_or(|t| now - t >= EPISODE_QUIET);
        if new {
            self.hits = 0;
        }
        self.hits += 1;
        self.last = Some(now);
        new
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, closes
/// idle connections, lets requests in flight finish, and returns once every connection
/// has ended. `name` labels the metrics and log lines (`cache`, `api`, `agent`).
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: HttpStats,
    shutdown: impl Future<Output = ()>,
) {
    let epoch = Instant::now();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(Mutex::new(Open::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut full = Episode::default();
    let mut starved = Episode::default();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_fd_exhaustion(&e) => {
                note_fd_exhaustion(name, &stats, &open, &mut starved, &e);
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => continue,
                    () = &mut shutdown => break,
                }
            }
            Err(e) => {
                // Errors of one connection (ECONNABORTED, …): the next accept is fine.
                count_accept_error(name, &stats, "other");
                tracing::debug!("{name} listener: accept: {e}");
                continue;
            }
        };
        backoff = Duration::ZERO;
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                note_over_limit(name, &stats, &open, &mut full, limits.max_connections);
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        tune_socket(name, &stream);
        let state = Arc::new(ConnState::new(epoch));
        let id = match open.lock() {
            Ok(mut o) => o.insert(state.clone()),
            Err(_) => continue,
        };
        stats
            .open
            .get_or_create(&ListenerLabels { listener: name })
            .inc();
        let task = Connection {
            name,
            state,
            limits,
            stats: stats.clone(),
            stop: stop_rx.clone(),
        };
        tokio::spawn(task.run_and_leave(stream, peer, app.clone(), (open.clone(), id), permit));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection task returns its slot when it ends.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

fn count_accept_error(name: &'static str, stats: &HttpStats, error: &'static str) {
    stats
        .accept_errors
        .get_or_create(&AcceptErrorLabels {
            listener: name,
            error,
        })
        .inc();
}

/// Out of descriptors: counted, said once per episode, and an idle connection closed so
/// that the next accept can succeed.
fn note_fd_exhaustion(
    name: &'static str,
    stats: &HttpStats,
    open: &Mutex<Open>,
    starved: &mut Episode,
    e: &std::io::Error,
) {
    count_accept_error(name, stats, "fd_exhausted");
    let n = open.lock().map(|o| o.conns.len()).unwrap_or(0);
    if starved.hit() {
        tracing::warn!(
            "{name} listener: cannot accept connections: {e} ({n} connections open here, file \
             descriptor limit {}); closing idle connections and retrying",
            current_nofile()
        );
    }
    if let Ok(o) = open.lock() {
        o.evict_one();
    }
}

/// At the connection limit: counted, said once per episode, and the longest idle
/// connection closed to make room (if there is one).
fn note_over_limit(
    name: &'static str,
    stats: &HttpStats,
    open: &Mutex<Open>,
    full: &mut Episode,
    max_connections: usize,
) {
    stats
        .over_limit
        .get_or_create(&ListenerLabels { listener: name })
        .inc();
    let evicted = open.lock().map(|o| o.evict_one()).unwrap_or(false);
    if full.hit() {
        tracing::warn!(
            "{name} listener: {max_connections} connections open, its limit; {}",
            if evicted {
                "closing the longest idle ones to make room"
            } else {
                "all busy, new connections wait"
            }
        );
    }
}

fn tune_socket(name: &'static str, stream: &TcpStream) {
    // Small responses (narinfos, API answers) must not wait for Nagle's algorithm.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("{name} listener: TCP_NODELAY: {e}");
    }
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!("{name} listener: TCP_NOTSENT_LOWAT: {e}");
    }
}

/// The current soft descriptor limit, for log lines.
fn current_nofile() -> String {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or_else(|_| "unknown".to_owned(), |(soft, _)| soft.to_string())
}

/// One connection's task.
struct Connection {
    name: &'static str,
    state: Arc<ConnState>,
    limits: Limits,
    stats: HttpStats,
    stop: watch::Receiver<bool>,
}

impl Connection {
    /// Serves the connection, then takes it off the open list and returns its slot.
    async fn run_and_leave(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        app: Router,
        (open, id): (Arc<Mutex<Open>>, u64),
        permit: OwnedSemaphorePermit,
    ) {
        let (name, stats) = (self.name, self.stats.clone());
        self.run(stream, peer, app).await;
        if let Ok(mut o) = open.lock() {
            o.conns.remove(&id);
        }
        stats
            .open
            .get_or_create(&ListenerLabels { listener: name })
            .dec();
        drop(permit);
    }

    async fn run(mut self, stream: TcpStream, peer: SocketAddr, app: Router) {
        let io = TokioIo::new(Watched {
            inner: stream,
            state: self.state.clone(),
            send_timeout: self.limits.send_timeout,
            stalled: None,
        });
        let state = self.state.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let in_flight = state.begin_request();
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                let response = app.clone().call(req);
                async move {
                    let response = match response.await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    };
                    Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                        inner,
                        _in_flight: in_flight,
                    }))
                }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(MAX_BUF)
            // Head and idle deadlines are this task's (hyper's one timer covers both).
            .header_read_timeout(None)
            .serve_connection(io, service);
        tokio::pin!(conn);
        let mut draining = false;
        let closed = loop {
            let deadline = self.state.deadline(&self.limits);
            let expiry = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("{} connection from {peer}: {e}", self.name);
                    }
                    break (self.state.send_timed_out.load(Ordering::SeqCst) == 1)
                        .then_some(Close::Send);
                }
                () = expiry => {
                    // Recomputed: a request may have begun since the deadline was taken.
                    if let Some((at, why)) = self.state.deadline(&self.limits)
                        && at <= Instant::now()
                    {
                        break Some(why);
                    }
                }
                () = self.state.wake.notified() => {
                    if self.state.evict.load(Ordering::SeqCst)
                        && self.state.in_flight.load(Ordering::SeqCst) == 0
                    {
                        break Some(Close::Evicted);
                    }
                }
                r = self.stop.changed(), if !draining => {
                    draining = true;
                    if r.is_err() || self.state.in_flight.load(Ordering::SeqCst) == 0 {
                        break None;
                    }
                    // Let the request in flight finish; hyper closes after it.
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Some(why) = closed {
            self.stats.closed(self.name, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_limits_leave_descriptors_free() {
        let c = ConnectionConfig::default();
        let cache = Limits::new("cache", &c, 1024, 2.0 / 3.0, 2);
        let api = Limits::new("api", &c, 1024, 1.0 / 3.0, 1);
        // Two descriptors per cache connection, one per API connection, RESERVED_FDS kept.
        assert!(cache.max_connections * 2 + api.max_connections + 128 <= 1024);
        assert!(cache.max_connections >= 256 && api.max_connections >= 256);
        let big = Limits::new("cache", &c, 1 << 20, 2.0 / 3.0, 2);
        assert_eq!(big.max_connections, ConnectionConfig::DEFAULT_MAX);
        let explicit = ConnectionConfig {
            max_connections: Some(7),
            ..ConnectionConfig::default()
        };
        assert_eq!(
            Limits::new("api", &explicit, 1024, 0.5, 1).max_connections,
            7
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_state() {
        let limits = Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
        };
        let s = Arc::new(ConnState::new(Instant::now()));
        let start = Instant::now();
        assert_eq!(
            s.deadline(&limits),
            Some((start + limits.idle_timeout, Close::Idle))
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        s.on_read();
        assert_eq!(
            s.deadline(&limits),
            Some((start + Duration::from_secs(7), Close::Header))
        );
        let req = s.begin_request();
        assert_eq!(s.deadline(&limits), None);
        assert_eq!(s.idle_mark(), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(req);
        let now = Instant::now();
        assert_eq!(
            s.deadline(&limits),
            Some((now + limits.idle_timeout, Close::Idle))
        );
        assert!(s.idle_mark().is_some());
    }
}
