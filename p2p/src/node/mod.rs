//! The libp2p node: transports (QUIC, with TCP + noise + yamux as fallback), behaviours
//! (connection limits, the control protocol over request-response, the data protocol over
//! libp2p-stream) and the typed handle over them. A [`Client`] sends a [`Command`] with a
//! oneshot reply over a bounded channel to an event loop that owns the swarm (the pattern of
//! rust-libp2p's file-sharing example); data streams bypass the loop, since
//! `libp2p_stream::Control` is a handle of its own.
//!
//! A node started with [`NodeConfig::tracker`] answers the tracker protocol (see
//! [`crate::tracker`]) and forgets a peer when its last connection closes.
//!
//! Throughput notes (and the libp2p pitfalls in ARCHITECTURE.md, "Protocols"): the swarm's
//! idle timeout is raised from 10 s; yamux here is yamux 0.14 (through libp2p-yamux 0.48), whose stream windows auto-tune
//! up to a 1 GiB per-connection budget, so the fixed 256 KiB window of old yamux versions no
//! longer caps a stream. libp2p-yamux 0.48 exposes no window setting, only the stream count.

mod codec;
mod data;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, connection_limits, noise, tcp, yamux};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

pub use codec::{CONTROL_PROTOCOL, FrameTooLarge, MAX_CONTROL_REQUEST, MAX_CONTROL_RESPONSE};
pub use data::{
    DATA_PROTOCOL, DataReader, DataRequest, NoPieces, PieceSource, RateLimit, Refusal, TokenBucket,
    UploadPolicy, read_data_request, write_data_accept,
};

use crate::error::{Error, Result};
use crate::tracker::{
    ControlRequest, ControlResponse, FileAnnouncement, FileId, PeerRecord, PieceMap, TrackerLimits,
    TrackerState,
};

/// How a node is set up. [`NodeConfig::new`] holds the defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's identity; its PeerId derives from it.
    pub keypair: Keypair,
    /// Run the tracker with these limits (the server does), or not (agents).
    pub tracker: Option<TrackerLimits>,
    /// Upload slots and rate cap, or metered mode.
    pub upload: UploadPolicy,
    /// Established connections in total.
    pub max_connections: u32,
    /// Established connections per peer (QUIC and TCP at once is two).
    pub max_connections_per_peer: u32,
    /// Connections being set up, inbound.
    pub max_pending_incoming: u32,
    /// How long a connection with no open stream stays up (libp2p's default is 10 s).
    pub idle_timeout: Duration,
    /// How long a control request may wait for its answer.
    pub request_timeout: Duration,
    /// Commands queued from clients to the event loop before `send` waits.
    pub command_buffer: usize,
    /// Events buffered per subscriber; a slower subscriber loses the oldest.
    pub event_buffer: usize,
    /// Serve inbound data requests from the node's [`PieceSource`]. Off, nobody accepts
    /// [`DATA_PROTOCOL`] streams until the caller does, through [`Client::stream_control`]
    /// (and answers them with [`read_data_request`] / [`write_data_accept`]).
    pub serve_data: bool,
}

impl NodeConfig {
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            tracker: None,
            upload: UploadPolicy::default(),
            max_connections: 256,
            max_connections_per_peer: 2,
            max_pending_incoming: 64,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            command_buffer: 64,
            event_buffer: 256,
            serve_data: true,
        }
    }
}

/// Things that happened on a node, for whoever subscribed ([`Client::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// The first connection to `peer` was established.
    PeerConnected { peer: PeerId },
    /// The last connection to `peer` closed.
    PeerDisconnected { peer: PeerId },
    /// An upload ended; `ok` is false when it was cut short.
    UploadFinished { peer: PeerId, bytes: u64, ok: bool },
    /// A data request was refused.
    UploadRefused { peer: PeerId, reason: Refusal },
    /// `peer` asked which pieces of `file` this node holds: it is fetching that file too
    /// (a downloader learns of peers that arrived after it without waiting for the tracker).
    PieceMapAsked { peer: PeerId, file: FileId },
}

/// Counters of the data protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub uploaded_bytes: u64,
    pub uploads_done: u64,
    pub refused_busy: u64,
    pub refused_no_upload: u64,
    pub refused_not_found: u64,
    pub downloaded_bytes: u64,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    control: request_response::Behaviour<codec::ControlCodec>,
    data: libp2p_stream::Behaviour,
}

/// A request to the event loop; each carries the channel its answer goes back on.
#[derive(Debug)]
enum Command {
    Listen {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<Multiaddr>>,
    },
    Dial {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<()>>,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Request {
        peer: PeerId,
        request: ControlRequest,
        reply: oneshot::Sender<Result<ControlResponse>>,
    },
    TrackerCounts {
        reply: oneshot::Sender<Option<(usize, usize)>>,
    },
    KeepConnected {
        peer: PeerId,
        keep: bool,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Starts a node on the current tokio runtime. Inbound data requests are served from
/// `source` (pass [`NoPieces`] for a node that holds nothing).
pub fn spawn(config: NodeConfig, source: Arc<dyn PieceSource>) -> Result<Client> {
    let transport_err = |context: &str, e: &dyn std::fmt::Display| Error::Transport {
        context: context.to_owned(),
        reason: e.to_string(),
    };
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_pending_incoming));
    let request_timeout = config.request_timeout;
    let idle_timeout = config.idle_timeout;
    let swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport_err("tcp", &e))?
        .with_quic()
        .with_behaviour(|_| Behaviour {
            limits: connection_limits::Behaviour::new(limits),
            control: request_response::Behaviour::with_codec(
                codec::ControlCodec,
                [(CONTROL_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(request_timeout),
            ),
            data: libp2p_stream::Behaviour::new(),
        })
        .map_err(|e| transport_err("behaviour", &e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
        .build();

    let (events, _) = broadcast::channel(config.event_buffer.max(1));
    let counters = Arc::new(data::DataCounters::default());
    // A node that never uploads tells nobody what it holds.
    let piece_maps = matches!(config.upload, UploadPolicy::Enabled { .. }).then(|| source.clone());
    let server = Arc::new(data::Server::new(
        config.upload,
        source,
        counters.clone(),
        events.clone(),
    ));
    let mut stream_control = swarm.behaviour().data.new_control();
    if config.serve_data {
        let incoming = stream_control
            .accept(DATA_PROTOCOL)
            .map_err(|e| transport_err("data protocol", &e))?;
        tokio::spawn(data::accept_loop(incoming, server.clone()));
    }

    let (commands_tx, commands_rx) = mpsc::channel(config.command_buffer.max(1));
    let peer_id = *swarm.local_peer_id();
    let event_loop = EventLoop {
        swarm,
        commands: commands_rx,
        tracker: config.tracker.map(TrackerState::new),
        piece_maps,
        events: events.clone(),
        pending_listen: HashMap::new(),
        pending_dial: HashMap::new(),
        pending_request: HashMap::new(),
        addresses: HashMap::new(),
        keep_connected: HashSet::new(),
        keepalive_every: (idle_timeout / 3).max(Duration::from_millis(100)),
    };
    tokio::spawn(event_loop.run());
    Ok(Client {
        peer_id,
        commands: commands_tx,
        stream_control,
        events,
        server,
        counters,
    })
}

/// The typed handle to a running node. Cheap to clone; the node stops on
/// [`Client::shutdown`] or when every clone is dropped.
#[derive(Clone)]
pub struct Client {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    stream_control: libp2p_stream::Control,
    events: broadcast::Sender<NodeEvent>,
    server: Arc<data::Server>,
    counters: Arc<data::DataCounters>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| Error::NodeStopped)?;
        rx.await.map_err(|_| Error::NodeStopped)
    }

    /// Listens on `addr` (e.g. `/ip4/127.0.0.1/udp/0/quic-v1`); returns the address bound.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr> {
        self.call(|reply| Command::Listen { addr, reply }).await?
    }

    /// The addresses the node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// Connects to `peer` at one of `addrs` (remembered for later requests); returns when
    /// connected. Already connected is success.
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<()> {
        self.call(|reply| Command::Dial { peer, addrs, reply })
            .await?
    }

    /// Closes every connection to `peer`; false if there was none.
    pub async fn disconnect(&self, peer: PeerId) -> Result<bool> {
        self.call(|reply| Command::Disconnect { peer, reply }).await
    }

    pub async fn connected_peers(&self) -> Result<Vec<PeerId>> {
        self.call(|reply| Command::ConnectedPeers { reply }).await
    }

    /// Sends a control request and waits for its answer. A request over
    /// [`MAX_CONTROL_REQUEST`] is refused here, before it is sent.
    pub async fn request(&self, peer: PeerId, request: ControlRequest) -> Result<ControlResponse> {
        let size = postcard::to_stdvec(&request)
            .map_err(|e| Error::Request {
                peer,
                reason: e.to_string(),
            })?
            .len();
        if size > MAX_CONTROL_REQUEST {
            return Err(Error::MessageTooLarge {
                size: size as u64,
                max: MAX_CONTROL_REQUEST as u64,
            });
        }
        self.call(|reply| Command::Request {
            peer,
            request,
            reply,
        })
        .await?
    }

    /// Tells `tracker` this node holds `files`, reachable at `listen_addrs`; returns how
    /// many the tracker recorded.
    pub async fn announce(
        &self,
        tracker: PeerId,
        files: Vec<FileAnnouncement>,
        listen_addrs: Vec<Multiaddr>,
    ) -> Result<u32> {
        match self
            .request(
                tracker,
                ControlRequest::Announce {
                    files,
                    listen_addrs,
                },
            )
            .await?
        {
            ControlResponse::Announced { accepted } => Ok(accepted),
            other => Err(unexpected(tracker, &other)),
        }
    }

    /// Asks `tracker` who holds `file`: finished seeders first, a bounded list.
    pub async fn who_has(&self, tracker: PeerId, file: FileId) -> Result<Vec<PeerRecord>> {
        match self
            .request(tracker, ControlRequest::WhoHas { file })
            .await?
        {
            ControlResponse::Peers { peers } => Ok(peers),
            other => Err(unexpected(tracker, &other)),
        }
    }

    /// Asks `peer` which pieces of `file` it holds; `None` when it holds none or does not
    /// upload. The answer is the peer's claim, not a proof: pieces are verified on arrival.
    pub async fn pieces(&self, peer: PeerId, file: FileId) -> Result<Option<PieceMap>> {
        match self.request(peer, ControlRequest::Pieces { file }).await? {
            ControlResponse::Pieces { map } => Ok(map),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// Tells `tracker` this node no longer holds `files`.
    pub async fn withdraw(&self, tracker: PeerId, files: Vec<FileId>) -> Result<()> {
        match self
            .request(tracker, ControlRequest::Withdraw { files })
            .await?
        {
            ControlResponse::Withdrawn => Ok(()),
            other => Err(unexpected(tracker, &other)),
        }
    }

    /// Keeps a connection to `peer` (the tracker) up, or stops doing so: a small control
    /// request every third of the idle timeout, which also redials a lost connection and,
    /// at a tracker, refreshes this node's expiry clock. A tracker forgets a peer whose last
    /// connection closed, so an agent that wants to stay listed keeps its tracker connected.
    pub async fn keep_connected(&self, peer: PeerId, keep: bool) -> Result<()> {
        self.call(|reply| Command::KeepConnected { peer, keep, reply })
            .await
    }

    /// How many peers and files this node's tracker knows; `None` if it runs no tracker.
    pub async fn tracker_counts(&self) -> Result<Option<(usize, usize)>> {
        self.call(|reply| Command::TrackerCounts { reply }).await
    }

    /// Asks `peer` for `len` bytes of `file` from `offset` over a new data stream. Connect
    /// first ([`Client::dial`]). Returns once the peer accepted; the bytes (unverified)
    /// come through the reader, which ends after exactly `len` bytes.
    pub async fn fetch_range(
        &self,
        peer: PeerId,
        file: FileId,
        offset: u64,
        len: u64,
    ) -> Result<DataReader> {
        data::request_range(
            self.stream_control.clone(),
            peer,
            DataRequest { file, offset, len },
            self.counters.clone(),
        )
        .await
    }

    /// The raw stream handle, to open streams of other protocols.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.stream_control.clone()
    }

    /// Events from now on. A subscriber that falls behind by more than
    /// [`NodeConfig::event_buffer`] loses the oldest ones (and is told so).
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    pub fn stats(&self) -> NodeStats {
        let c = &self.counters;
        NodeStats {
            uploaded_bytes: c.uploaded_bytes.load(Ordering::Relaxed),
            uploads_done: c.uploads_done.load(Ordering::Relaxed),
            refused_busy: c.refused_busy.load(Ordering::Relaxed),
            refused_no_upload: c.refused_no_upload.load(Ordering::Relaxed),
            refused_not_found: c.refused_not_found.load(Ordering::Relaxed),
            downloaded_bytes: c.downloaded_bytes.load(Ordering::Relaxed),
        }
    }

    /// The upload rate cap's own accounting: bytes it let through and the total wait it
    /// imposed. `None` without a cap.
    pub async fn upload_accounting(&self) -> Option<(u64, Duration)> {
        self.server.bucket_accounting().await
    }

    /// Closes every connection (peers see them close, not time out) and stops the node.
    pub async fn shutdown(&self) -> Result<()> {
        self.call(|reply| Command::Shutdown { reply }).await
    }
}

fn unexpected(peer: PeerId, response: &ControlResponse) -> Error {
    Error::UnexpectedResponse {
        peer,
        response: format!("{response:?}"),
    }
}

/// Owns the swarm; everything that touches it happens here.
struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    tracker: Option<TrackerState>,
    /// Answers [`ControlRequest::Pieces`]; `None` when the node does not upload.
    piece_maps: Option<Arc<dyn PieceSource>>,
    events: broadcast::Sender<NodeEvent>,
    pending_listen: HashMap<ListenerId, oneshot::Sender<Result<Multiaddr>>>,
    pending_dial: HashMap<PeerId, Vec<oneshot::Sender<Result<()>>>>,
    pending_request: HashMap<OutboundRequestId, (PeerId, oneshot::Sender<Result<ControlResponse>>)>,
    /// Addresses given to `dial`, used again for requests to a peer we lost.
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    /// Peers pinged so their connection never goes idle (see `Client::keep_connected`).
    keep_connected: HashSet<PeerId>,
    keepalive_every: Duration,
}

/// Most addresses remembered per peer.
const MAX_ADDRS_PER_PEER: usize = 8;
/// How long a shutdown waits for connections to close cleanly.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl EventLoop {
    async fn run(mut self) {
        let expiry_every = self
            .tracker
            .as_ref()
            .map(|t| (t.limits().expiry / 4).max(Duration::from_secs(1)))
            .unwrap_or(Duration::from_secs(3600));
        let mut expiry = tokio::time::interval(expiry_every);
        let mut keepalive = tokio::time::interval(self.keepalive_every);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        self.close_all().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    // Every client is gone: nobody can use the node any more.
                    None => {
                        self.close_all().await;
                        return;
                    }
                },
                _ = keepalive.tick() => self.keepalive(),
                _ = expiry.tick() => {
                    if let Some(t) = &mut self.tracker {
                        t.expire(Instant::now());
                    }
                }
            }
        }
    }

    async fn close_all(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(deadline);
        while self.swarm.connected_peers().next().is_some() {
            tokio::select! {
                _ = &mut deadline => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
    }

    fn keepalive(&mut self) {
        for peer in &self.keep_connected {
            let addrs = self.addresses.get(peer).cloned().unwrap_or_default();
            // An empty announce: harmless anywhere, a refresh at a tracker. Its answer (or
            // failure) has no pending entry and is dropped.
            self.swarm
                .behaviour_mut()
                .control
                .send_request_with_addresses(
                    peer,
                    ControlRequest::Announce {
                        files: Vec::new(),
                        listen_addrs: Vec::new(),
                    },
                    addrs,
                );
        }
    }

    fn emit(&self, event: NodeEvent) {
        // No subscriber is fine: events are informational.
        let _ = self.events.send(event);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Listen { addr, reply } => match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    self.pending_listen.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(Error::Transport {
                        context: format!("listen on {addr}"),
                        reason: e.to_string(),
                    }));
                }
            },
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { peer, addrs, reply } => self.dial(peer, addrs, reply),
            Command::Disconnect { peer, reply } => {
                let _ = reply.send(self.swarm.disconnect_peer_id(peer).is_ok());
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let addrs = self.addresses.get(&peer).cloned().unwrap_or_default();
                let id = self
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_request_with_addresses(&peer, request, addrs);
                self.pending_request.insert(id, (peer, reply));
            }
            Command::TrackerCounts { reply } => {
                let _ = reply.send(
                    self.tracker
                        .as_ref()
                        .map(|t| (t.peer_count(), t.file_count())),
                );
            }
            Command::KeepConnected { peer, keep, reply } => {
                if keep {
                    self.keep_connected.insert(peer);
                } else {
                    self.keep_connected.remove(&peer);
                }
                let _ = reply.send(());
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, reply: oneshot::Sender<Result<()>>) {
        let known = self.addresses.entry(peer).or_default();
        for a in &addrs {
            if !known.contains(a) && known.len() < MAX_ADDRS_PER_PEER {
                known.push(a.clone());
            }
        }
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            // Already dialing: this caller waits for the dial under way.
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {
                self.pending_dial.entry(peer).or_default().push(reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Dial {
                    peer,
                    reason: e.to_string(),
                }));
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Control(event)) => self.on_control(event),
            SwarmEvent::Behaviour(BehaviourEvent::Limits(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Data(())) => {}
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if let Some(reply) = self.pending_listen.remove(&listener_id) {
                    let _ = reply.send(Ok(address));
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(reply) = self.pending_listen.remove(&listener_id) {
                    let _ = reply.send(Err(Error::Transport {
                        context: "listener closed".into(),
                        reason: format!("{reason:?}"),
                    }));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(reply) = self.pending_listen.remove(&listener_id) {
                    let _ = reply.send(Err(Error::Transport {
                        context: "listener".into(),
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                for reply in self.pending_dial.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
                if num_established == NonZeroU32::MIN {
                    self.emit(NodeEvent::PeerConnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if !self.swarm.is_connected(&peer) => {
                // (A failed attempt while another connection is up is not a failed dial.)
                for reply in self.pending_dial.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(Error::Dial {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if let Some(t) = &mut self.tracker {
                    t.remove_peer(&peer_id);
                }
                self.emit(NodeEvent::PeerDisconnected { peer: peer_id });
            }
            _ => {}
        }
    }

    fn on_control(&mut self, event: request_response::Event<ControlRequest, ControlResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let response = if let ControlRequest::Pieces { file } = &request {
                    if let Some(t) = &mut self.tracker {
                        t.touch(&peer, Instant::now());
                    }
                    self.emit(NodeEvent::PieceMapAsked { peer, file: *file });
                    ControlResponse::Pieces {
                        map: self.piece_maps.as_ref().and_then(|s| s.pieces(file)),
                    }
                } else {
                    match &mut self.tracker {
                        Some(t) => {
                            let now = Instant::now();
                            t.touch(&peer, now);
                            t.handle(peer, request, now)
                        }
                        None => ControlResponse::NotATracker,
                    }
                };
                // Fails only if the connection is gone; the asker sees that itself.
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_response(channel, response);
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((_, reply)) = self.pending_request.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((peer, reply)) = self.pending_request.remove(&request_id) {
                    let err = match &error {
                        OutboundFailure::Io(e) if FrameTooLarge::find(e).is_some() => {
                            let tl = FrameTooLarge::find(e);
                            Error::MessageTooLarge {
                                size: tl.map_or(0, |t| t.size),
                                max: tl.map_or(0, |t| t.max),
                            }
                        }
                        _ => Error::Request {
                            peer,
                            reason: error.to_string(),
                        },
                    };
                    let _ = reply.send(Err(err));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "inbound control request failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}
