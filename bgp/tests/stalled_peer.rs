//! Backpressure over real sockets (loopback, this process only): a peer that completes
//! OPEN and then stops reading while a million routes are exported to it must not grow the
//! speaker's memory, and a second peer that reads keeps its session, its KEEPALIVEs and
//! every route.
//!
//! One test in this file, so the process' VmRSS is the speaker's (plus the two small test
//! peers). Nothing here depends on speed: every wait is for observed state, bounded by a
//! generous deadline.

use ferrovia_bgp::driver::{self, DriverConfig, Handle, PeerSpec};
use ferrovia_bgp::fsm::State;
use ferrovia_bgp::message::*;
use ferrovia_bgp::speaker::{PeerConfig, PeerStatus, Speaker, SpeakerConfig, SEND_WINDOW};
use ferrovia_bgp::wire;
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ROUTES: u32 = 1_000_000;
/// Routes are 10.0.0.0/32 + i: only inside this process, never in a kernel.
const BASE: u32 = 0x0a00_0000;
const LOCAL_AS: u32 = 64512;
const READER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const STALLED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const CTX: SessionContext = SessionContext {
    four_octet_as: true,
};
const DEADLINE: Duration = Duration::from_secs(300);
/// Communities of the first load (one per four routes); the change sets `[1]` on every route.
const FIRST_COMMUNITY: u32 = 0x0001_0000;

fn prefix(i: u32) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(BASE + i), 32).expect("a /32"))
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Which routes a test peer holds, and with which community round.
struct Seen {
    bits: Mutex<Vec<u64>>,
    count: AtomicUsize,
}

impl Seen {
    fn new() -> Self {
        Seen {
            bits: Mutex::new(vec![0; (ROUTES as usize).div_ceil(64)]),
            count: AtomicUsize::new(0),
        }
    }
    fn add(&self, i: u32) {
        let mut bits = self.bits.lock().expect("lock");
        let (w, b) = ((i / 64) as usize, i % 64);
        if bits[w] & (1 << b) == 0 {
            bits[w] |= 1 << b;
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// What the reading peer observed.
struct Observed {
    /// Routes announced by the first load, and with community 1 (the change).
    first: Seen,
    changed: Seen,
    keepalives: AtomicU64,
    end_of_rib: AtomicBool,
}

fn open(asn: u32, id: Ipv4Addr, hold: u16) -> Vec<u8> {
    let o = Open {
        version: 4,
        my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
        hold_time: hold,
        bgp_id: id,
        capabilities: Capabilities {
            multiprotocol: vec![Family::Ipv4Unicast],
            four_octet_as: Some(asn),
            ..Default::default()
        },
    };
    wire::encode(&Message::Open(o), &CTX).expect("encode OPEN")
}

fn keepalive() -> Vec<u8> {
    wire::encode(&Message::Keepalive, &CTX).expect("encode KEEPALIVE")
}

/// A listener on a loopback address with a small receive buffer (so the peer that stops
/// reading fills its socket quickly).
fn listen(ip: Ipv4Addr) -> (tokio::net::TcpListener, u16) {
    let s = TcpSocket::new_v4().expect("socket");
    s.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    s.bind(SocketAddr::new(IpAddr::V4(ip), 0))
        .expect("bind a loopback address");
    let l = s.listen(4).expect("listen");
    let port = l.local_addr().expect("local address").port();
    (l, port)
}

/// Sends a KEEPALIVE every second on its own half of the connection.
fn keepalives(mut wr: tokio::net::tcp::OwnedWriteHalf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if wr.write_all(&keepalive()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Reads messages until the connection closes, handing each to `on`.
async fn read_messages(mut rd: tokio::net::tcp::OwnedReadHalf, mut on: impl FnMut(Message)) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        loop {
            match wire::frame_len(&buf) {
                Ok(Some(len)) => {
                    let msg = wire::decode(&buf[..len], &CTX).expect("the speaker sends valid BGP");
                    buf.drain(..len);
                    on(msg);
                }
                Ok(None) => break,
                Err(n) => panic!("bad framing from the speaker: {n}"),
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn reading_peer(l: tokio::net::TcpListener, seen: Arc<Observed>) {
    let (stream, _) = l.accept().await.expect("accept the speaker");
    let (rd, mut wr) = stream.into_split();
    wr.write_all(&open(65010, READER, 9))
        .await
        .expect("send OPEN");
    wr.write_all(&keepalive()).await.expect("send KEEPALIVE");
    let _ka = keepalives(wr);
    read_messages(rd, |m| match m {
        Message::Keepalive => {
            seen.keepalives.fetch_add(1, Ordering::Relaxed);
        }
        Message::Update(u) if u.end_of_rib.is_some() => {
            seen.end_of_rib.store(true, Ordering::Relaxed);
        }
        Message::Update(u) => {
            let changed = u
                .attributes
                .as_ref()
                .is_some_and(|a| a.communities == vec![1]);
            for p in u.announced() {
                if let IpNet::V4(v) = p {
                    let i = u32::from(v.addr()) - BASE;
                    if changed {
                        seen.changed.add(i);
                    } else {
                        seen.first.add(i);
                    }
                }
            }
        }
        _ => {}
    })
    .await;
}

/// Completes OPEN (reads the speaker's OPEN and KEEPALIVE), then never reads again while
/// keeping its own KEEPALIVEs coming. Holds the connection until the test ends.
async fn stalled_peer(l: tokio::net::TcpListener, established: Arc<AtomicBool>) {
    let (stream, _): (TcpStream, _) = l.accept().await.expect("accept the speaker");
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&open(65020, STALLED, 90))
        .await
        .expect("send OPEN");
    wr.write_all(&keepalive()).await.expect("send KEEPALIVE");
    let _ka = keepalives(wr);
    // Read exactly the speaker's OPEN and first KEEPALIVE, nothing more.
    let mut got = 0;
    while got < 2 {
        let mut head = [0u8; 19];
        rd.read_exact(&mut head).await.expect("read a header");
        let len = usize::from(u16::from_be_bytes([head[16], head[17]]));
        let mut body = vec![0u8; len - 19];
        rd.read_exact(&mut body).await.expect("read a body");
        got += 1;
    }
    established.store(true, Ordering::Relaxed);
    std::future::pending::<()>().await;
}

fn spec(addr: Ipv4Addr, asn: u32, port: u16, hold: u16) -> PeerSpec {
    PeerSpec {
        config: PeerConfig {
            address: IpAddr::V4(addr),
            remote_as: asn,
            hold_time: hold,
            connect_retry: Duration::from_secs(1),
            passive: false,
            kind: "global".into(),
            route_reflector_client: false,
            policy: Default::default(),
        },
        port,
        password: None,
        ttl_security: None,
        bfd: None,
    }
}

async fn status(h: &Handle, peer: Ipv4Addr) -> PeerStatus {
    h.query(move |s: &mut Speaker| {
        s.peer_status()
            .into_iter()
            .find(|p| p.config.address == IpAddr::V4(peer))
    })
    .await
    .expect("speaker running")
    .expect("peer configured")
}

/// Polls `cond` until it holds; panics with `what` past the deadline.
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_does_not_grow_the_speaker_or_stall_others() {
    let (reader_l, reader_port) = listen(READER);
    let (stalled_l, stalled_port) = listen(STALLED);
    let seen = Arc::new(Observed {
        first: Seen::new(),
        changed: Seen::new(),
        keepalives: AtomicU64::new(0),
        end_of_rib: AtomicBool::new(false),
    });
    let reader = tokio::spawn(reading_peer(reader_l, seen.clone()));

    let speaker = Speaker::new(SpeakerConfig {
        local_as: LOCAL_AS,
        router_id: Ipv4Addr::new(127, 0, 0, 1),
        families: vec![Family::Ipv4Unicast],
        graceful_restart: None,
        next_hop_v4: None,
        next_hop_v6: None,
        cluster_id: None,
    });
    let (h, task) = driver::spawn(
        speaker,
        DriverConfig {
            listen: None,
            connect_timeout: Duration::from_secs(10),
            peer_ranges: Vec::new(),
        },
        vec![spec(READER, 65010, reader_port, 9)],
        None,
    )
    .await
    .expect("speaker starts");

    // A million routes, loaded and sent to the reading peer: the baseline. A community per
    // four routes makes about 17 bytes of UPDATE per route, ~17 MB in all: far more than
    // the socket buffers can hide from the speaker when a peer stops reading.
    h.query(|s: &mut Speaker| {
        for i in 0..ROUTES {
            s.originate(prefix(i), vec![FIRST_COMMUNITY + i / 4]);
        }
    })
    .await
    .expect("originate");
    wait_for("the reading peer has every route and End-of-RIB", || {
        let seen = seen.clone();
        async move { seen.first.count() == ROUTES as usize && seen.end_of_rib.load(Ordering::Relaxed) }
    })
    .await;
    let baseline = vm_rss_kib();

    // The peer that stops reading comes up and is exported the million routes.
    let established = Arc::new(AtomicBool::new(false));
    let stalled = tokio::spawn(stalled_peer(stalled_l, established.clone()));
    h.add_peer(spec(STALLED, 65020, stalled_port, 90))
        .await
        .expect("add the stalled peer");
    wait_for("the stalled peer completed OPEN", || {
        let e = established.clone();
        async move { e.load(Ordering::Relaxed) }
    })
    .await;
    wait_for("the stalled peer's send queue is full", || {
        let h = h.clone();
        async move {
            let st = status(&h, STALLED).await;
            st.state == State::Established
                && st.stats.export_waiting
                && st.stats.send_queue >= SEND_WINDOW
        }
    })
    .await;
    let mut peak = vm_rss_kib();

    // Every route changes while the peer still does not read: the reading peer gets all
    // of them again, and keeps getting KEEPALIVEs.
    let keepalives_before = seen.keepalives.load(Ordering::Relaxed);
    h.query(|s: &mut Speaker| {
        for i in 0..ROUTES {
            s.originate(prefix(i), vec![1]);
        }
    })
    .await
    .expect("change every route");
    wait_for("the reading peer has every changed route", || {
        let seen = seen.clone();
        async move { seen.changed.count() == ROUTES as usize }
    })
    .await;
    wait_for("three more KEEPALIVEs reached the reading peer", || {
        let seen = seen.clone();
        async move { seen.keepalives.load(Ordering::Relaxed) >= keepalives_before + 3 }
    })
    .await;
    peak = peak.max(vm_rss_kib());

    let r = status(&h, READER).await;
    assert_eq!(r.state, State::Established, "the reading peer stayed up");
    assert_eq!(r.stats.prefixes_sent, ROUTES as usize);
    let s = status(&h, STALLED).await;
    assert_eq!(s.state, State::Established, "the stalled peer is still up");
    assert!(s.stats.export_waiting, "its routes wait as RIB state");
    assert!(
        s.stats.prefixes_sent < ROUTES as usize,
        "the stalled peer cannot have been sent everything: {}",
        s.stats.prefixes_sent
    );
    assert!(
        s.stats.send_queue < 2 * SEND_WINDOW,
        "send queue bounded by the window plus one export step: {} bytes",
        s.stats.send_queue
    );
    assert!(
        peak < 2 * baseline,
        "VmRSS {peak} KiB with the stalled peer, {baseline} KiB with the routes loaded and no \
         stalled peer"
    );
    eprintln!("VmRSS: baseline {baseline} KiB, with the stalled peer {peak} KiB");

    h.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    reader.abort();
    stalled.abort();
}
