//! The BFD session table (`bfd::peers`), sans-IO: two tables wired back to back on a simulated
//! clock. Single-hop TTL rule (RFC 5881 §5), demultiplexing by peer address, failure and
//! AdminDown reporting, and how long a leaving speaker keeps sending AdminDown.

use ferrovia_bgp::bfd::peers::{PeerOutput, Peers, Refused};
use ferrovia_bgp::bfd::{Diag, State, Timing};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

const A: &str = "198.18.0.1";
const B: &str = "198.18.0.254";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn timing() -> Timing {
    Timing {
        interval: Duration::from_millis(300),
        multiplier: 3,
    }
}

fn table(now: Instant, peer: &str, discr: u32) -> Peers {
    let mut p = Peers::new();
    let mut x = discr;
    p.add(
        now,
        ip(peer),
        timing(),
        NonZeroU32::new(discr).expect("non-zero"),
        Box::new(move || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            x
        }),
    );
    p
}

/// State changes: (from, to, is a failure).
type Changes = Vec<(State, State, bool)>;

/// Packets a table asked to send, and its state changes.
fn drain(p: &mut Peers) -> (Vec<Vec<u8>>, Changes) {
    let (mut sent, mut changes) = (Vec::new(), Vec::new());
    while let Some(o) = p.poll_output() {
        match o {
            PeerOutput::Send(_, b) => sent.push(b),
            PeerOutput::Changed { change, .. } => {
                changes.push((change.from, change.to, change.is_failure()))
            }
        }
    }
    (sent, changes)
}

/// Runs both tables for `span` of simulated time, delivering every packet with `ttl` (or
/// dropping B's packets to A when `cut`); returns A's and B's state changes.
fn run(
    now: &mut Instant,
    a: &mut Peers,
    b: &mut Peers,
    span: Duration,
    ttl: u8,
    cut: bool,
) -> (Changes, Changes) {
    let end = *now + span;
    let (mut ca, mut cb) = (Vec::new(), Vec::new());
    loop {
        let (sa, mut xa) = drain(a);
        let (sb, mut xb) = drain(b);
        ca.append(&mut xa);
        cb.append(&mut xb);
        for p in &sa {
            let _ = b.received(*now, ip(A), Some(ttl), p);
        }
        if !cut {
            for p in &sb {
                let _ = a.received(*now, ip(B), Some(ttl), p);
            }
        }
        if !sa.is_empty() || !sb.is_empty() {
            continue;
        }
        let next = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(t) if t <= end => {
                *now = t.max(*now);
                a.handle_timeout(*now);
                b.handle_timeout(*now);
            }
            _ => {
                *now = end;
                return (ca, cb);
            }
        }
    }
}

#[test]
fn comes_up_fails_on_silence_and_reports_a_failure() {
    let mut now = Instant::now();
    let mut a = table(now, B, 11);
    let mut b = table(now, A, 22);
    let (ca, cb) = run(&mut now, &mut a, &mut b, Duration::from_secs(5), 255, false);
    assert_eq!(a.status(&ip(B)).expect("status").state, State::Up, "{ca:?}");
    assert_eq!(b.status(&ip(A)).expect("status").state, State::Up, "{cb:?}");
    let st = a.status(&ip(B)).expect("status");
    assert_eq!(st.detection_time, Some(Duration::from_millis(900)));
    assert_eq!(st.ups, 1);
    // B's packets stop reaching A: A's detection time expires, reported as a failure.
    let (ca, _) = run(&mut now, &mut a, &mut b, Duration::from_secs(2), 255, true);
    assert!(ca.contains(&(State::Up, State::Down, true)), "{ca:?}");
    let st = a.status(&ip(B)).expect("status");
    assert_eq!(st.diag, Diag::ControlDetectionTimeExpired);
    assert_eq!(st.failures, 1);
}

#[test]
fn packets_below_ttl_255_are_refused_and_never_bring_a_session_up() {
    let mut now = Instant::now();
    let mut a = table(now, B, 11);
    let mut b = table(now, A, 22);
    let (ca, _) = run(&mut now, &mut a, &mut b, Duration::from_secs(5), 254, false);
    assert!(ca.is_empty(), "{ca:?}");
    assert_eq!(a.status(&ip(B)).expect("status").state, State::Down);
    let (sent, _) = drain(&mut b);
    let any = sent.first().cloned().unwrap_or_else(|| vec![0; 24]);
    assert_eq!(
        a.received(now, ip(B), Some(254), &any),
        Err(Refused::Ttl(254))
    );
    assert_eq!(a.received(now, ip(B), None, &any), Err(Refused::TtlUnknown));
    assert_eq!(
        a.received(now, ip("198.18.0.9"), Some(255), &any),
        Err(Refused::UnknownPeer(ip("198.18.0.9")))
    );
}

#[test]
fn admin_down_is_not_a_failure_and_lasts_one_detection_time() {
    let mut now = Instant::now();
    let mut a = table(now, B, 11);
    let mut b = table(now, A, 22);
    run(&mut now, &mut a, &mut b, Duration::from_secs(5), 255, false);
    let wait = a.admin_down_all(now);
    assert_eq!(wait, Duration::from_millis(900), "3 × 300 ms");
    let (ca, cb) = run(&mut now, &mut a, &mut b, wait, 255, false);
    assert!(ca.contains(&(State::Up, State::AdminDown, false)), "{ca:?}");
    assert!(
        cb.contains(&(State::Up, State::Down, false)),
        "the peer goes Down without a failure: {cb:?}"
    );
    assert_eq!(b.status(&ip(A)).expect("status").failures, 0);
    assert_eq!(
        b.status(&ip(A)).expect("status").remote_diag,
        Diag::AdministrativelyDown
    );
    // Removing a session drops what it had queued.
    a.admin_down_all(now);
    assert!(a.remove(ip(B)));
    assert!(a.poll_output().is_none());
    assert!(a.is_empty());
}
