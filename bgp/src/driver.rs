//! The tokio driver: owns the listening socket, the TCP connections and the clock, and
//! feeds a [`Speaker`] with what happens. Everything BGP is decided inside the speaker.
//!
//! One task runs the speaker. Each connection has a reader task (bytes → speaker) and a
//! writer task (speaker → bytes). The writer reports what it wrote, so the speaker keeps
//! at most its send window ([`crate::speaker::send_window`]) of UPDATEs (plus one export step) waiting
//! per peer: a peer that stops reading stalls only its own writer and its own
//! Adj-RIB-Out. Commands from the agent (add or remove a peer,
//! originate, query, shut down) arrive on a channel; route and peer events leave on
//! another.

use crate::bfd::peers::{PeerOutput, Peers as BfdPeers};
use crate::bfd::Timing as BfdTiming;
use crate::bfd_socket;
use crate::fsm::{ConnId, Direction};
use crate::gtsm;
use crate::md5;
use crate::speaker::{Action, Event, PeerConfig, Speaker, SpeakerError};
use bytes::{Buf, Bytes};
use ipnet::IpNet;
use std::collections::HashMap;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// A peer as the driver needs it: the speaker's settings plus transport details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub config: PeerConfig,
    /// TCP port to connect to.
    pub port: u16,
    /// TCP MD5 key (RFC 2385).
    pub password: Option<String>,
    /// GTSM (RFC 5082): how many hops away the peer may be (1–254); None: off.
    pub ttl_security: Option<u8>,
    /// BFD (RFC 5880/5881, single hop) with this timing; None: off.
    pub bfd: Option<BfdTiming>,
}

/// Transport settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Where to listen for peers' connections; None: never listen.
    pub listen: Option<SocketAddr>,
    /// How long one outgoing connection attempt may take.
    pub connect_timeout: Duration,
    /// Ranges whose every address may open a session (BIRD's `neighbor range`, FRR's
    /// `bgp listen range`). A configured peer's address is never taken as a range peer.
    pub peer_ranges: Vec<PeerRange>,
}

/// Peers by address range: a connection from any address in `cidr` that is not a
/// configured peer becomes a passive peer of its own, made from `template` with the
/// connecting address, and is forgotten when its last connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRange {
    pub cidr: IpNet,
    /// Everything but the address; the password is the range's MD5 key.
    pub template: PeerSpec,
}

impl PeerRange {
    /// The peer for a connection from `address`.
    fn peer(&self, address: IpAddr) -> PeerSpec {
        let mut spec = self.template.clone();
        spec.config.address = address;
        spec.config.passive = true;
        spec
    }
}

/// Errors of driver start-up and commands.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot listen on {addr}: {source} (is another BGP daemon bound to the port, or is the address not configured here?)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set the TCP MD5 password for peer {peer}: {source}")]
    Md5 {
        peer: IpAddr,
        source: std::io::Error,
    },
    #[error("cannot set the TCP MD5 password of peer range {range}: {source} (does this kernel support TCP_MD5SIG_EXT, Linux 4.13 or later?)")]
    Md5Range {
        range: IpNet,
        source: std::io::Error,
    },
    #[error("cannot set up GTSM (ttlSecurity, RFC 5082) for peer {peer}: {source} (does this kernel support IP_MINTTL / IPV6_MINHOPCOUNT? remove ttlSecurity from the peer to run without it)")]
    Gtsm {
        peer: IpAddr,
        source: std::io::Error,
    },
    #[error("cannot start BFD for peer {peer}: {source} (is another BFD daemon such as bfdd bound to UDP port 3784 in this network namespace? stop it, or remove bfd from the peer)")]
    Bfd {
        peer: IpAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    #[error("the BGP speaker has stopped")]
    Stopped,
}

/// Most BGP bytes handled between two flushes (a flush packs and sends UPDATEs).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// A connection's writer joins queued messages into one write of up to this many bytes ...
const WRITE_CHUNK: usize = 64 * 1024;
/// ... and this many messages.
const WRITE_MESSAGES: usize = 512;

/// A connection's read buffer starts this small ...
const READ_BUFFER_MIN: usize = 4096;
/// ... and grows up to this while the reads fill it.
const READ_BUFFER_MAX: usize = 65536;

type Query = Box<dyn FnOnce(&mut Speaker) + Send>;

enum Command {
    AddPeer(PeerSpec, oneshot::Sender<Result<(), DriverError>>),
    RemovePeer(IpAddr, oneshot::Sender<Result<(), DriverError>>),
    Originate(IpNet, Vec<u32>),
    Withdraw(IpNet),
    Query(Query),
    Shutdown(oneshot::Sender<()>),
    Abandon(oneshot::Sender<()>),
    BfdAdminDown(oneshot::Sender<Duration>),
    StopConnecting(oneshot::Sender<()>),
}

enum Io {
    Accepted(TcpStream, SocketAddr),
    Connected(IpAddr, TcpStream),
    ConnectFailed(IpAddr, String),
    Data(IpAddr, ConnId, Vec<u8>),
    /// The writer of a connection put this many bytes on the socket.
    Written(IpAddr, ConnId, usize),
    Closed(IpAddr, ConnId),
    /// A datagram on a BFD listener: sender, TTL / hop limit, payload.
    Bfd(SocketAddr, Option<u8>, Vec<u8>),
}

/// The agent's handle on the running speaker.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    /// Adds and starts a peer.
    pub async fn add_peer(&self, spec: PeerSpec) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::AddPeer(spec, tx)).await?;
        rx.await.map_err(|_| DriverError::Stopped)?
    }
    /// Stops and removes a peer (CEASE / Peer De-configured); its routes are withdrawn.
    pub async fn remove_peer(&self, address: IpAddr) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::RemovePeer(address, tx)).await?;
        rx.await.map_err(|_| DriverError::Stopped)?
    }
    /// Originates a prefix with communities.
    pub async fn originate(&self, prefix: IpNet, communities: Vec<u32>) -> Result<(), DriverError> {
        self.send(Command::Originate(prefix, communities)).await
    }
    /// Withdraws a local prefix.
    pub async fn withdraw(&self, prefix: IpNet) -> Result<(), DriverError> {
        self.send(Command::Withdraw(prefix)).await
    }
    /// Runs `f` on the speaker inside its task and returns the result.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Speaker) -> T + Send + 'static,
    ) -> Result<T, DriverError> {
        let (tx, rx) = oneshot::channel();
        let q: Query = Box::new(move |s: &mut Speaker| {
            let _ = tx.send(f(s));
        });
        self.send(Command::Query(q)).await?;
        rx.await.map_err(|_| DriverError::Stopped)
    }
    /// Sends CEASE to every peer, waits (bounded) for the NOTIFICATIONs to leave, stops.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
    /// Stops without a NOTIFICATION: every connection is closed at the TCP level, as if
    /// the process had died. Peers that help graceful restart (RFC 4724) keep our routes
    /// as stale until we are back, so forwarding goes on while the agent restarts.
    pub async fn abandon(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Abandon(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
    /// Moves every BFD session to AdminDown (RFC 5880 §6.8.16) and returns once the peers
    /// have had one detection time to hear it (the packets keep going out meanwhile); BGP
    /// is untouched. Returns how long it waited. Peers that follow RFC 5882 §3.2 keep the
    /// BGP session up on a remote AdminDown, so what follows (a restart, a CEASE) decides.
    pub async fn bfd_admin_down(&self) -> Result<Duration, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::BfdAdminDown(tx)).await?;
        rx.await.map_err(|_| DriverError::Stopped)
    }
    /// The first step of a restart: no BGP connection is opened or accepted from now on;
    /// the sessions up stay up. A peer that closes its session when our BFD goes AdminDown
    /// (BIRD's `bfd graceful`) must not get a new one from us for the moments before we
    /// go: it would see that one drop too, in the middle of its graceful restart, and flush
    /// our routes.
    pub async fn stop_connecting(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::StopConnecting(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
    async fn send(&self, c: Command) -> Result<(), DriverError> {
        self.tx.send(c).await.map_err(|_| DriverError::Stopped)
    }
}

struct ConnTask {
    peer: IpAddr,
    writer: mpsc::UnboundedSender<Vec<Bytes>>,
    writer_task: JoinHandle<()>,
    reader_task: JoinHandle<()>,
}

struct Driver {
    speaker: Speaker,
    config: DriverConfig,
    peers: HashMap<IpAddr, PeerSpec>,
    conns: HashMap<ConnId, ConnTask>,
    /// Writers of closed connections still flushing (a NOTIFICATION, typically); awaited
    /// at shutdown so a CEASE is on the wire before the process exits. Without it a peer
    /// that helps graceful restart sees a bare close and keeps our routes as stale.
    closing: Vec<JoinHandle<()>>,
    next_conn: ConnId,
    io_tx: mpsc::Sender<Io>,
    listener_fd: Option<(std::os::fd::RawFd, bool)>,
    events: Option<mpsc::UnboundedSender<Event>>,
    /// Peers added for a connection from a peer range; removed with their last connection.
    from_range: std::collections::HashSet<IpAddr>,
    /// Range peers that lost a connection: removed at the end of the step if it was their
    /// last one.
    range_closed: Vec<IpAddr>,
    /// Set by [`Handle::stop_connecting`] (a restart is under way): no BGP connection is
    /// opened or accepted any more.
    no_new_connections: bool,
    bfd: Bfd,
}

/// BFD's part of the driver: the sans-IO sessions and their sockets.
#[derive(Default)]
struct Bfd {
    sessions: BfdPeers,
    senders: HashMap<IpAddr, UdpSocket>,
    /// Listener tasks on port 3784, IPv4 and IPv6, once a peer of that family needs one.
    listeners: [Option<JoinHandle<()>>; 2],
    /// A [`Handle::bfd_admin_down`] waits until then.
    leaving: Option<(Instant, Duration, oneshot::Sender<Duration>)>,
}

impl Drop for Bfd {
    fn drop(&mut self) {
        for l in self.listeners.iter_mut().filter_map(Option::take) {
            l.abort();
        }
    }
}

/// A random 32-bit value from the standard library's per-process random hash keys (BFD
/// discriminators and jitter need unpredictable, not cryptographic, values).
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Starts the speaker task. `events`, when given, receives [`Event::RoutesChanged`] (pull
/// the changes with `handle.query(|s| s.take_changes(n))`) and [`Event::PeerState`] /
/// [`Event::PeerError`].
pub async fn spawn(
    speaker: Speaker,
    config: DriverConfig,
    peers: Vec<PeerSpec>,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<(Handle, JoinHandle<()>), DriverError> {
    // Small on purpose: when the speaker falls behind, unread data waits in the kernel's
    // socket buffers (TCP flow control) rather than in our heap.
    let (io_tx, io_rx) = mpsc::channel::<Io>(16);
    let listener = match config.listen {
        Some(addr) => Some(bind(addr)?),
        None => None,
    };
    let listener_fd = listener.as_ref().map(|l| {
        (
            l.as_raw_fd(),
            matches!(config.listen, Some(SocketAddr::V6(_))),
        )
    });
    let mut speaker = speaker;
    speaker.track_changes(events.is_some());
    let mut driver = Driver {
        speaker,
        config,
        peers: HashMap::new(),
        conns: HashMap::new(),
        closing: Vec::new(),
        next_conn: 1,
        io_tx: io_tx.clone(),
        listener_fd,
        events,
        from_range: std::collections::HashSet::new(),
        range_closed: Vec::new(),
        no_new_connections: false,
        bfd: Bfd::default(),
    };
    if let Some((fd, v6)) = listener_fd {
        for r in &driver.config.peer_ranges {
            if let Some(pw) = &r.template.password {
                md5::set_range_key(fd, v6, r.cidr, Some(pw.as_bytes())).map_err(|source| {
                    DriverError::Md5Range {
                        range: r.cidr,
                        source,
                    }
                })?;
            }
        }
    }
    if let Some(l) = listener {
        let tx = io_tx.clone();
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, a)) => {
                        if tx.send(Io::Accepted(s, a)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting a BGP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    for p in peers {
        driver.add_peer(p)?;
    }
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(driver.run(rx, io_rx));
    Ok((Handle { tx }, task))
}

fn bind(addr: SocketAddr) -> Result<TcpListener, DriverError> {
    let err = |source| DriverError::Listen { addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(err)?;
    if addr.is_ipv6() {
        // Accept IPv4 peers on "::" too.
        let s = socket2::SockRef::from(&socket);
        s.set_only_v6(false).map_err(err)?;
    }
    socket.set_reuseaddr(true).map_err(err)?;
    // Keep each SYN's headers, so that a GTSM peer's SYN can be checked after accept.
    gtsm::save_syns(socket.as_raw_fd()).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    // Room for many peers connecting at once (a reflector's clients after a restart).
    socket.listen(1024).map_err(err)
}

impl Driver {
    fn add_peer(&mut self, spec: PeerSpec) -> Result<(), DriverError> {
        let addr = spec.config.address;
        if self.peers.contains_key(&addr) {
            return Err(SpeakerError::DuplicatePeer(addr).into());
        }
        if let (Some(pw), Some((fd, v6))) = (&spec.password, self.listener_fd) {
            md5::set_key(fd, v6, addr, Some(pw.as_bytes()))
                .map_err(|source| DriverError::Md5 { peer: addr, source })?;
        }
        if let Some(hops) = spec.ttl_security {
            gtsm::min_ttl(hops).map_err(|source| DriverError::Gtsm { peer: addr, source })?;
            // The kernel answers a peer's SYN with the listener's TTL before we accept: a
            // GTSM peer that connects to us drops a SYN-ACK that arrives below 255. Sending
            // 255 is harmless for every other peer, so it stays when this one is removed.
            if let Some((fd, v6)) = self.listener_fd {
                gtsm::send_255(fd, v6, addr)
                    .map_err(|source| DriverError::Gtsm { peer: addr, source })?;
            }
        }
        if let Some(timing) = spec.bfd {
            self.bfd_start(addr, timing)
                .map_err(|source| DriverError::Bfd { peer: addr, source })?;
        }
        if let Err(e) = self.speaker.add_peer(Instant::now(), spec.config.clone()) {
            self.bfd_stop(addr);
            return Err(e.into());
        }
        info!(peer = %addr, asn = spec.config.remote_as, kind = %spec.config.kind, bfd = spec.bfd.is_some(), "peer added");
        self.peers.insert(addr, spec);
        Ok(())
    }

    fn remove_peer(&mut self, addr: IpAddr) -> Result<(), DriverError> {
        self.speaker.remove_peer(addr)?;
        self.bfd_stop(addr);
        if let Some(spec) = self.peers.remove(&addr) {
            if let (Some(_), Some((fd, v6))) = (&spec.password, self.listener_fd) {
                let _ = md5::set_key(fd, v6, addr, None);
            }
        }
        info!(peer = %addr, "peer removed");
        Ok(())
    }

    /// Starts a BFD session with `peer`: the family's listener if it is the first, a
    /// sending socket, a session with a fresh discriminator.
    fn bfd_start(&mut self, peer: IpAddr, timing: BfdTiming) -> std::io::Result<()> {
        let family = usize::from(peer.is_ipv6());
        if self.bfd.listeners[family].is_none() {
            let sock = bfd_socket::listen(peer.is_ipv6())?;
            let tx = self.io_tx.clone();
            self.bfd.listeners[family] = Some(tokio::spawn(async move {
                let mut buf = vec![0u8; 512];
                loop {
                    match bfd_socket::recv(&sock, &mut buf).await {
                        Ok((n, from, ttl)) => {
                            if tx
                                .send(Io::Bfd(from, ttl, buf[..n].to_vec()))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "receiving a BFD packet failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        let sender = bfd_socket::sender(peer, random_u32())?;
        let discriminator = loop {
            if let Some(d) = std::num::NonZeroU32::new(random_u32()) {
                if !self.bfd.sessions.discriminator_in_use(d.get()) {
                    break d;
                }
            }
        };
        self.bfd.senders.insert(peer, sender);
        self.bfd.sessions.add(
            Instant::now(),
            peer,
            timing,
            discriminator,
            Box::new(random_u32),
        );
        info!(%peer, interval = ?timing.interval, multiplier = timing.multiplier, discriminator, "BFD session started");
        Ok(())
    }

    fn bfd_stop(&mut self, peer: IpAddr) {
        if self.bfd.sessions.remove(peer) {
            self.bfd.senders.remove(&peer);
            self.speaker.bfd_removed(Instant::now(), peer);
            info!(%peer, "BFD session stopped");
        }
    }

    /// Sends what the BFD sessions asked for and hands their state changes to the speaker.
    fn pump_bfd(&mut self) {
        let now = Instant::now();
        while let Some(out) = self.bfd.sessions.poll_output() {
            match out {
                PeerOutput::Send(peer, bytes) => {
                    if let Some(s) = self.bfd.senders.get(&peer) {
                        if let Err(e) = bfd_socket::send(s, peer, &bytes) {
                            debug!(%peer, error = %e, "sending a BFD packet failed");
                        }
                    }
                }
                PeerOutput::Changed {
                    peer,
                    change,
                    status,
                } => {
                    if change.is_failure() {
                        warn!(%peer, from = %change.from, to = %change.to, diag = change.diag.name(), remote_diag = status.remote_diag.name(), "BFD session down: the path to the peer failed; taking the BGP session down");
                    } else {
                        info!(%peer, from = %change.from, to = %change.to, diag = change.diag.name(), remote_admin_down = change.remote_admin_down, "BFD session state changed");
                    }
                    self.speaker
                        .bfd_changed(now, peer, status, change.is_failure());
                }
            }
        }
        if let Some((until, _, _)) = &self.bfd.leaving {
            if *until <= now {
                if let Some((_, waited, tx)) = self.bfd.leaving.take() {
                    let _ = tx.send(waited);
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.speaker.poll_timeout(),
            self.bfd.sessions.poll_timeout(),
            self.bfd.leaving.as_ref().map(|l| l.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Command>, mut io: mpsc::Receiver<Io>) {
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        loop {
            let deadline = self.poll_timeout();
            tokio::select! {
                biased;
                c = cmds.recv() => match c {
                    Some(Command::Shutdown(tx)) => { shutdown = Some(tx); }
                    Some(Command::Abandon(tx)) => { self.abandon(); let _ = tx.send(()); return; }
                    Some(c) => self.command(c),
                    None => { shutdown = None; self.speaker.shutdown(); self.pump(); break; }
                },
                Some(ev) = io.recv() => {
                    // Take whatever else is already waiting, so one flush covers a batch;
                    // bounded so that a full-table burst is flushed in pieces.
                    let mut bytes = self.io(ev);
                    while bytes < MAX_BATCH_BYTES {
                        match io.try_recv() {
                            Ok(ev) => bytes += self.io(ev),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    self.bfd.sessions.handle_timeout(now);
                    self.speaker.handle_timeout(now);
                }
            }
            self.pump_bfd();
            self.speaker.flush();
            self.pump();
            if shutdown.is_some() {
                self.speaker.shutdown();
                self.pump();
                break;
            }
        }
        // No more I/O events are read: writers that report what they wrote stop waiting.
        drop(io);
        // Let the writers deliver the CEASE NOTIFICATIONs, bounded.
        let mut writers: Vec<JoinHandle<()>> = self
            .conns
            .drain()
            .map(|(_, c)| {
                c.reader_task.abort();
                drop(c.writer);
                c.writer_task
            })
            .collect();
        writers.append(&mut self.closing);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            for w in writers {
                let _ = w.await;
            }
        })
        .await;
        if let Some(tx) = shutdown {
            let _ = tx.send(());
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::AddPeer(spec, tx) => {
                // A configured peer takes over an address that came in through a range.
                let addr = spec.config.address;
                if self.from_range.remove(&addr) {
                    let _ = self.remove_peer(addr);
                }
                let _ = tx.send(self.add_peer(spec));
            }
            Command::RemovePeer(a, tx) => {
                let _ = tx.send(self.remove_peer(a));
            }
            Command::Originate(p, c) => self.speaker.originate(p, c),
            Command::Withdraw(p) => {
                self.speaker.withdraw(p);
            }
            Command::Query(q) => q(&mut self.speaker),
            Command::BfdAdminDown(tx) => {
                let now = Instant::now();
                let wait = self.bfd.sessions.admin_down_all(now);
                info!(
                    ?wait,
                    "BFD sessions set to AdminDown; sending it for one detection time"
                );
                self.bfd.leaving = Some((now + wait, wait, tx));
            }
            Command::StopConnecting(tx) => {
                self.no_new_connections = true;
                let _ = tx.send(());
            }
            Command::Shutdown(_) | Command::Abandon(_) => {}
        }
    }

    /// Drops every connection without a word to the peers (see [`Handle::abandon`]).
    fn abandon(&mut self) {
        for (_, c) in self.conns.drain() {
            c.reader_task.abort();
            c.writer_task.abort();
        }
        for w in self.closing.drain(..) {
            w.abort();
        }
    }

    /// Handles one I/O event; returns how many bytes of BGP data it carried.
    fn io(&mut self, ev: Io) -> usize {
        let now = Instant::now();
        let mut size = 0;
        match ev {
            Io::Accepted(stream, from) => {
                let peer = from.ip().to_canonical();
                if !self.speaker.is_peer(&peer) {
                    let range = self
                        .config
                        .peer_ranges
                        .iter()
                        .find(|r| r.cidr.contains(&peer))
                        .map(|r| (r.cidr, r.peer(peer)));
                    let Some((cidr, spec)) = range else {
                        warn!(%from, "refused a BGP connection: {peer} is not a configured peer and in no peer range");
                        drop(stream);
                        return 0;
                    };
                    if let Err(e) = self.add_peer(spec) {
                        warn!(%from, %cidr, error = %e, "refused a BGP connection from a peer range");
                        return 0;
                    }
                    self.from_range.insert(peer);
                }
                // GTSM (RFC 5082): the listener is shared by every peer, so it cannot carry a
                // per-peer minimum TTL; the accepted socket gets it here, before the reader
                // task exists. What the kernel did before that is not covered by RFC 5082 §3's
                // check on every packet: the handshake (SYN, SYN-ACK, the final ACK) went
                // through the listener unchecked, so a distant sender can still complete
                // handshakes and take accept slots, and segments that arrived before this
                // point (typically the peer's OPEN) sit unchecked in the receive buffer. The
                // SYN's own TTL, kept by the listener (TCP_SAVE_SYN), is checked below: a
                // connection whose SYN came from too far is closed before a byte is read.
                if let Some(hops) = self.peers.get(&peer).and_then(|s| s.ttl_security) {
                    let fd = stream.as_raw_fd();
                    if let Err(source) = gtsm::protect(fd, from.is_ipv6(), peer, hops) {
                        let e = DriverError::Gtsm { peer, source };
                        warn!(%from, "refused a BGP connection: {e}");
                        return 0;
                    }
                    match (gtsm::syn_ttl(fd), gtsm::min_ttl(hops)) {
                        (Ok(Some(ttl)), Ok(min)) if ttl < min => {
                            warn!(%from, ttl, min, hops, "refused a BGP connection: its SYN arrived with TTL {ttl}, below {min} (ttlSecurity {hops}): the peer is further away than configured, or the packet was spoofed");
                            return 0;
                        }
                        (Ok(_), Ok(_)) => {}
                        (Err(e), _) => {
                            debug!(%peer, error = %e, "the SYN's TTL is unknown; relying on the minimum TTL from now on")
                        }
                        (_, Err(e)) => {
                            warn!(%from, "refused a BGP connection: {}", DriverError::Gtsm { peer, source: e });
                            return 0;
                        }
                    }
                }
                if self.no_new_connections {
                    debug!(%peer, "refused a connection: leaving");
                    return 0;
                }
                debug!(%peer, "accepted a connection");
                self.start_conn(peer, stream, Direction::Incoming, now);
            }
            Io::Connected(peer, stream) => {
                if !self.speaker.is_peer(&peer) || self.no_new_connections {
                    return 0;
                }
                debug!(%peer, "connected");
                self.start_conn(peer, stream, Direction::Outgoing, now);
            }
            Io::ConnectFailed(peer, why) => {
                debug!(%peer, error = %why, "connection attempt failed");
                self.speaker.connect_failed(now, peer);
            }
            Io::Data(peer, conn, bytes) => {
                if self.conns.contains_key(&conn) {
                    size = bytes.len();
                    self.speaker
                        .received(now, SystemTime::now(), peer, conn, &bytes);
                }
            }
            Io::Written(peer, conn, n) => {
                if self.conns.contains_key(&conn) {
                    self.speaker.written(peer, conn, n);
                }
            }
            Io::Closed(peer, conn) => {
                if let Some(c) = self.conns.remove(&conn) {
                    c.writer_task.abort();
                    self.speaker.closed(now, peer, conn);
                    if self.from_range.contains(&peer) {
                        self.range_closed.push(peer);
                    }
                }
            }
            Io::Bfd(from, ttl, bytes) => {
                let peer = from.ip().to_canonical();
                match self.bfd.sessions.received(now, peer, ttl, &bytes) {
                    Ok(()) => {
                        // State changes reach the speaker in pump_bfd; this keeps the
                        // timers and the peer's state in status current.
                        if let Some(st) = self.bfd.sessions.status(&peer) {
                            self.speaker.bfd_refresh(peer, st);
                        }
                    }
                    Err(e) => debug!(%from, "BFD packet discarded: {e}"),
                }
            }
        }
        size
    }

    fn start_conn(&mut self, peer: IpAddr, stream: TcpStream, dir: Direction, now: Instant) {
        let _ = stream.set_nodelay(true);
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        let id = self.next_conn;
        self.next_conn += 1;
        let (rd, mut wr) = stream.into_split();
        // Unbounded as a channel, bounded by the speaker: it stops generating UPDATEs for
        // a peer whose written-but-unreported bytes reach its send window.
        let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<Bytes>>();
        let written_tx = self.io_tx.clone();
        let writer_task = tokio::spawn(async move {
            while let Some(mut burst) = wrx.recv().await {
                // Whatever else is queued goes out in the same write (a reflector sends each
                // client thousands of small UPDATEs, one system call each before), and one
                // report covers the burst. The write is vectored: the messages are shared
                // (one encoding for every peer of an export class), and a copy joined per
                // connection would be a send window of memory per stalled peer.
                let mut n: usize = burst.iter().map(Bytes::len).sum();
                while n < WRITE_CHUNK && burst.len() < WRITE_MESSAGES {
                    match wrx.try_recv() {
                        Ok(more) => {
                            n += more.iter().map(Bytes::len).sum::<usize>();
                            burst.extend(more);
                        }
                        Err(_) => break,
                    }
                }
                if write_all_vectored(&mut wr, &mut burst).await.is_err() {
                    break;
                }
                if written_tx.send(Io::Written(peer, id, n)).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let io_tx = self.io_tx.clone();
        let reader_task = tokio::spawn(async move {
            // No buffer while the peer is quiet (a reflector holds a thousand idle
            // sessions: a buffer each, even of 4 KiB, was megabytes): one is taken when the
            // socket is readable and handed over with the data. Its size starts small and
            // doubles up to READ_BUFFER_MAX while reads fill it (a full table arriving).
            let mut size = READ_BUFFER_MIN;
            loop {
                if rd.readable().await.is_err() {
                    break;
                }
                // Uninitialised room: a read of a few hundred bytes does not first clear
                // 64 KiB.
                let mut buf = Vec::with_capacity(size);
                match rd.try_read_buf(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if n == size && size < READ_BUFFER_MAX {
                            size *= 2;
                        }
                        if io_tx.send(Io::Data(peer, id, buf)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            let _ = io_tx.send(Io::Closed(peer, id)).await;
        });
        self.conns.insert(
            id,
            ConnTask {
                peer,
                writer: wtx,
                writer_task,
                reader_task,
            },
        );
        self.speaker.connected(now, peer, id, dir, local);
    }

    fn connect(&self, peer: IpAddr) {
        if self.no_new_connections {
            return;
        }
        let Some(spec) = self.peers.get(&peer) else {
            return;
        };
        let addr = SocketAddr::new(peer, spec.port);
        let password = spec.password.clone();
        let ttl_security = spec.ttl_security;
        let timeout = self.config.connect_timeout;
        let tx = self.io_tx.clone();
        tokio::spawn(async move {
            let res = async {
                let socket = match addr {
                    SocketAddr::V4(_) => TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => TcpSocket::new_v6()?,
                };
                if let Some(pw) = &password {
                    md5::set_key(
                        socket.as_raw_fd(),
                        addr.is_ipv6(),
                        peer,
                        Some(pw.as_bytes()),
                    )?;
                }
                // GTSM before connect, so that the SYN leaves with TTL 255 and the SYN-ACK is
                // checked already.
                if let Some(hops) = ttl_security {
                    gtsm::protect(socket.as_raw_fd(), addr.is_ipv6(), peer, hops).map_err(
                        |source| {
                            let e = DriverError::Gtsm { peer, source };
                            warn!("{e}");
                            std::io::Error::other(e.to_string())
                        },
                    )?;
                }
                tokio::time::timeout(timeout, socket.connect(addr))
                    .await
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
            }
            .await;
            let _ = match res {
                Ok(s) => tx.send(Io::Connected(peer, s)).await,
                Err(e) => tx.send(Io::ConnectFailed(peer, e.to_string())).await,
            };
        });
    }

    /// Carries out what the speaker asked for and passes its news on.
    fn pump(&mut self) {
        self.run_actions();
        self.pump_events();
    }

    /// Carries out what the speaker asked for.
    fn run_actions(&mut self) {
        // A connection's messages of one flush go to its writer as one batch: a channel
        // entry per message kept a reflector's thousand writer channels at several blocks
        // each (about 4 KB a connection, held after the flood).
        let mut batches: Vec<(ConnId, Vec<Bytes>)> = Vec::new();
        while let Some(action) = self.speaker.poll_action() {
            self.act(action, &mut batches);
        }
        self.send_batches(&mut batches);
    }

    /// Hands each connection its messages, in order.
    fn send_batches(&mut self, batches: &mut Vec<(ConnId, Vec<Bytes>)>) {
        for (conn, batch) in batches.drain(..) {
            if let Some(c) = self.conns.get(&conn) {
                let _ = c.writer.send(batch);
            }
        }
    }

    /// Carries out one action; messages wait in `batches` (consecutive ones for the same
    /// connection joined) until [`Driver::send_batches`].
    fn act(&mut self, action: Action, batches: &mut Vec<(ConnId, Vec<Bytes>)>) {
        match action {
            Action::Connect(peer) => self.connect(peer),
            Action::Send(_, conn, bytes) => match batches.last_mut() {
                Some((c, batch)) if *c == conn => batch.push(bytes),
                _ => batches.push((conn, vec![bytes])),
            },
            Action::Close(_, conn) => {
                // What was queued before the close goes out first.
                self.send_batches(batches);
                if let Some(c) = self.conns.remove(&conn) {
                    // Dropping the sender lets the writer flush what is queued and
                    // shut the socket down; the reader stops now.
                    c.reader_task.abort();
                    drop(c.writer);
                    self.closing.retain(|w| !w.is_finished());
                    self.closing.push(c.writer_task);
                    debug!(peer = %c.peer, conn, "connection closed");
                    if self.from_range.contains(&c.peer) {
                        self.range_closed.push(c.peer);
                    }
                }
            }
        }
    }

    fn pump_events(&mut self) {
        while let Some(ev) = self.speaker.poll_event() {
            match ev {
                Event::PeerState { peer, from, to } => {
                    info!(%peer, %from, %to, "BGP session state changed");
                    self.emit(Event::PeerState { peer, from, to });
                }
                Event::PeerError { peer, reason } => {
                    warn!(%peer, %reason, "BGP session error");
                    self.emit(Event::PeerError { peer, reason });
                }
                Event::MaxPrefixes {
                    peer,
                    limit,
                    received,
                    restart_after,
                } => {
                    match restart_after {
                        Some(after) => {
                            warn!(%peer, limit, received, "the peer sent more prefixes than its maxPrefixes limit: session closed with CEASE / Maximum Number of Prefixes Reached (6/1); connecting again in {} s. Raise maxPrefixes.limit if the peer is right to send that many", after.as_secs())
                        }
                        None => {
                            warn!(%peer, limit, received, "the peer sent more prefixes than its maxPrefixes limit; keeping the session and its routes (action warn). Raise maxPrefixes.limit if the peer is right to send that many")
                        }
                    }
                    self.emit(Event::MaxPrefixes {
                        peer,
                        limit,
                        received,
                        restart_after,
                    });
                }
                Event::RoutesChanged => self.emit(Event::RoutesChanged),
            }
        }
        self.forget_range_peers();
    }

    /// Removes the range peers whose last connection closed (their routes go with them).
    fn forget_range_peers(&mut self) {
        if self.range_closed.is_empty() {
            return;
        }
        let mut closed = std::mem::take(&mut self.range_closed);
        closed.sort_unstable();
        closed.dedup();
        closed.retain(|p| !self.conns.values().any(|c| c.peer == *p));
        for peer in closed {
            self.from_range.remove(&peer);
            if let Err(e) = self.remove_peer(peer) {
                debug!(%peer, error = %e, "forgetting a peer-range peer");
            }
        }
        // Removing a peer can queue more work (withdrawals towards the others).
        self.speaker.flush();
        self.run_actions();
    }

    fn emit(&mut self, ev: Event) {
        if let Some(tx) = &self.events {
            if tx.send(ev).is_err() {
                self.events = None;
            }
        }
    }
}

/// Writes every buffer, in order, with vectored writes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bufs: &mut [Bytes],
) -> std::io::Result<()> {
    let mut at = 0;
    loop {
        while bufs.get(at).is_some_and(Bytes::is_empty) {
            at += 1;
        }
        let Some(rest) = bufs.get(at..).filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let slices: Vec<IoSlice<'_>> = rest.iter().map(|b| IoSlice::new(b)).collect();
        let mut n = wr.write_vectored(&slices).await?;
        drop(slices);
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(b) = bufs.get_mut(at) else {
                break;
            };
            if n >= b.len() {
                n -= b.len();
                at += 1;
            } else {
                b.advance(n);
                n = 0;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
