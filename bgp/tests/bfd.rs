//! The BFD core (RFC 5880, single hop RFC 5881) driven without sockets or clocks: two
//! sessions wired back to back on a simulated clock, and single sessions fed hand-made
//! packets, one test per reception rule of §6.8.6.

use ferrovia_bgp::bfd::{
    jittered, BfdConfig, Change, ConfigError, ControlPacket, Diag, Discard, Output, Session, State,
    Timing, SLOW_TX,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

const A_DISCR: u32 = 0x0a0a_0001;
const B_DISCR: u32 = 0x0b0b_0002;
const MS300: Duration = Duration::from_millis(300);

fn timing(ms: u64, multiplier: u8) -> Timing {
    Timing {
        interval: Duration::from_millis(ms),
        multiplier,
    }
}

fn seeded(seed: u64) -> ferrovia_bgp::bfd::Jitter {
    let mut rng = StdRng::seed_from_u64(seed);
    Box::new(move || rng.gen())
}

fn session(now: Instant, discr: u32, t: Timing) -> Session {
    Session::new(
        now,
        t,
        NonZeroU32::new(discr).expect("non-zero"),
        seeded(discr.into()),
    )
}

fn drain(s: &mut Session) -> (Vec<ControlPacket>, Vec<Change>) {
    let (mut packets, mut changes) = (Vec::new(), Vec::new());
    while let Some(o) = s.poll_output() {
        match o {
            Output::Send(p) => packets.push(p),
            Output::StateChanged(c) => changes.push(c),
        }
    }
    (packets, changes)
}

/// A packet as a peer with discriminator `B_DISCR` would send it.
fn peer_packet(state: State, your: u32) -> ControlPacket {
    ControlPacket {
        diag: Diag::None,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        auth_present: false,
        demand: false,
        detect_mult: 3,
        my_discriminator: B_DISCR,
        your_discriminator: your,
        desired_min_tx: MS300,
        required_min_rx: MS300,
        required_min_echo_rx: Duration::ZERO,
    }
}

/// Two sessions joined by a lossless, instant link, on a simulated clock.
struct Pair {
    now: Instant,
    a: Session,
    b: Session,
    /// Packets from B never reach A (B went silent, or the link broke one way).
    b_silent: bool,
    /// Every packet sent, with its time and sender ('a' or 'b').
    sent: Vec<(Instant, char, ControlPacket)>,
    changes: Vec<(Instant, char, Change)>,
    /// When A last accepted a packet from B.
    a_last_rx: Option<Instant>,
}

impl Pair {
    fn new(ta: Timing, tb: Timing) -> Pair {
        let now = Instant::now();
        Pair {
            now,
            a: session(now, A_DISCR, ta),
            b: session(now, B_DISCR, tb),
            b_silent: false,
            sent: Vec::new(),
            changes: Vec::new(),
            a_last_rx: None,
        }
    }

    /// Deliver every queued output until both sessions are quiet.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(o) = self.a.poll_output() {
                moved = true;
                match o {
                    Output::Send(p) => {
                        self.sent.push((self.now, 'a', p));
                        self.b
                            .received(self.now, &p.encode())
                            .expect("B accepts A's packet");
                    }
                    Output::StateChanged(c) => self.changes.push((self.now, 'a', c)),
                }
            }
            while let Some(o) = self.b.poll_output() {
                moved = true;
                match o {
                    Output::Send(p) => {
                        self.sent.push((self.now, 'b', p));
                        if !self.b_silent {
                            self.a
                                .received(self.now, &p.encode())
                                .expect("A accepts B's packet");
                            self.a_last_rx = Some(self.now);
                        }
                    }
                    Output::StateChanged(c) => self.changes.push((self.now, 'b', c)),
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the sessions never went quiet: {:?} {:?}", self.a, self.b);
    }

    /// Advance the clock to the next deadline of either session and fire it.
    fn step(&mut self) {
        let next = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .expect("a session always has a deadline");
        assert!(next >= self.now, "a deadline in the past");
        self.now = next;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.pump();
    }

    /// Step until `done`, within `limit` of simulated time.
    fn run_until(&mut self, limit: Duration, what: &str, done: impl Fn(&Pair) -> bool) {
        let end = self.now + limit;
        self.pump();
        while !done(self) {
            assert!(
                self.now <= end,
                "{what}: not reached within {limit:?} of simulated time: {:?} {:?}",
                self.a,
                self.b
            );
            self.step();
        }
    }

    /// Run until both are Up, the Poll Sequences of going Up are over and the fast rate
    /// is in force.
    fn settle_up(&mut self) {
        self.run_until(Duration::from_secs(30), "both Up and settled", |p| {
            p.a.state() == State::Up && p.b.state() == State::Up && !p.a.polling() && !p.b.polling()
        });
    }

    fn changes_of(&self, who: char) -> Vec<(State, State, Diag)> {
        self.changes
            .iter()
            .filter(|(_, w, _)| *w == who)
            .map(|(_, _, c)| (c.from, c.to, c.diag))
            .collect()
    }
}

#[test]
fn three_way_handshake_step_by_step() {
    let now = Instant::now();
    let mut a = session(now, A_DISCR, timing(300, 3));
    let mut b = session(now, B_DISCR, timing(300, 3));
    // A's first packet: Down, Your Discriminator still 0, the slow 1 s rate advertised.
    a.handle_timeout(now);
    let (pa, ca) = drain(&mut a);
    assert!(ca.is_empty());
    assert_eq!(pa.len(), 1);
    assert_eq!(pa[0].state, State::Down);
    assert_eq!(pa[0].your_discriminator, 0);
    assert_eq!(pa[0].my_discriminator, A_DISCR);
    assert_eq!(pa[0].desired_min_tx, SLOW_TX);
    assert_eq!(pa[0].required_min_rx, MS300);

    // B hears Down in Down: Init, and tells A at once with A's discriminator.
    b.received(now, &pa[0].encode()).expect("accepted");
    let (pb, cb) = drain(&mut b);
    assert_eq!((cb[0].from, cb[0].to), (State::Down, State::Init));
    let init = pb.last().expect("B sends Init");
    assert_eq!(init.state, State::Init);
    assert_eq!(init.your_discriminator, A_DISCR);
    assert_eq!(b.remote_discriminator(), A_DISCR);

    // A hears Init in Down: Up, starting the Poll Sequence that lowers its TX interval.
    a.received(now, &init.encode()).expect("accepted");
    let (pa, ca) = drain(&mut a);
    assert_eq!((ca[0].from, ca[0].to), (State::Down, State::Up));
    assert!(ca[0].diag == Diag::None && !ca[0].is_failure());
    let up = pa.last().expect("A sends Up");
    assert_eq!(up.state, State::Up);
    assert!(up.poll && !up.final_);
    assert_eq!(up.desired_min_tx, MS300);

    // B hears Up in Init: Up; it answers A's Poll with a Final.
    b.received(now, &up.encode()).expect("accepted");
    let (pb, cb) = drain(&mut b);
    assert_eq!((cb[0].from, cb[0].to), (State::Init, State::Up));
    assert!(pb
        .iter()
        .any(|p| p.final_ && !p.poll && p.state == State::Up));
    assert!(pb.iter().any(|p| p.poll && !p.final_));
    for p in pb.iter().filter(|p| p.final_) {
        a.received(now, &p.encode()).expect("accepted");
    }
    assert!(!a.polling(), "A's Poll Sequence ends with B's Final");
    assert_eq!(a.tx_interval(), Some(MS300));
}

#[test]
fn two_sessions_reach_up_and_settle_at_the_configured_rate() {
    let mut pair = Pair::new(timing(300, 3), timing(300, 3));
    pair.settle_up();
    for who in ['a', 'b'] {
        let changes = pair.changes_of(who);
        let path: Vec<(State, State)> = changes.iter().map(|c| (c.0, c.1)).collect();
        assert!(
            path == [(State::Down, State::Init), (State::Init, State::Up)]
                || path == [(State::Down, State::Up)],
            "{who}: {changes:?}"
        );
    }
    assert_eq!(pair.a.remote_discriminator(), B_DISCR);
    assert_eq!(pair.b.remote_discriminator(), A_DISCR);
    for s in [&pair.a, &pair.b] {
        assert_eq!(s.tx_interval(), Some(MS300));
        assert_eq!(s.detection_time(), Some(MS300 * 3));
    }
    // Before Up nobody advertised less than the slow rate (§6.8.3).
    assert!(pair
        .sent
        .iter()
        .filter(|(_, _, p)| p.state != State::Up)
        .all(|(_, _, p)| p.desired_min_tx >= SLOW_TX));
    // Periodic packets keep the session Up for a long simulated time.
    let start = pair.now;
    pair.run_until(Duration::from_secs(120), "a minute Up", |p| {
        p.now >= start + Duration::from_secs(60)
    });
    assert_eq!(pair.changes.len(), 4, "{:?}", pair.changes);
}

#[test]
fn a_silent_peer_is_detected_after_exactly_detect_mult_times_interval() {
    let mut pair = Pair::new(timing(300, 3), timing(300, 3));
    pair.settle_up();
    let before = pair.changes.len();
    pair.b_silent = true;
    pair.run_until(Duration::from_secs(30), "A detects B", |p| {
        p.a.state() == State::Down
    });
    let last_rx = pair.a_last_rx.expect("A heard B once");
    let (at, _, change) = pair.changes[before];
    assert_eq!(change.from, State::Up);
    assert_eq!(change.to, State::Down);
    assert_eq!(change.diag, Diag::ControlDetectionTimeExpired);
    assert!(change.is_failure());
    assert_eq!(at - last_rx, MS300 * 3, "detection time = 3 × 300 ms");
    assert_eq!(
        pair.a.remote_discriminator(),
        0,
        "forgotten after detection"
    );
    // A tells B, which hears Down while Up: Down with diag 3, a failure as well.
    pair.run_until(Duration::from_secs(30), "B follows", |p| {
        p.b.state() != State::Up
    });
    let b_down = pair
        .changes
        .iter()
        .rev()
        .find(|(_, w, _)| *w == 'b')
        .map(|c| c.2)
        .expect("B changed");
    assert_eq!((b_down.from, b_down.to), (State::Up, State::Down));
    assert_eq!(b_down.diag, Diag::NeighborSignaledSessionDown);
    assert!(b_down.is_failure() && !b_down.remote_admin_down);
}

#[test]
fn detection_time_uses_the_peers_multiplier_and_the_slower_interval() {
    // A wants 100 ms × 5, B 250 ms × 2: A detects after 2 × max(100, 250) ms, B after
    // 5 × max(250, 100) ms.
    let mut pair = Pair::new(timing(100, 5), timing(250, 2));
    pair.settle_up();
    assert_eq!(pair.a.detection_time(), Some(Duration::from_millis(500)));
    assert_eq!(pair.b.detection_time(), Some(Duration::from_millis(1250)));
    assert_eq!(pair.a.tx_interval(), Some(Duration::from_millis(250)));
    assert_eq!(pair.b.tx_interval(), Some(Duration::from_millis(250)));
}

#[test]
fn an_interval_change_runs_a_poll_sequence() {
    let mut pair = Pair::new(timing(300, 3), timing(300, 3));
    pair.settle_up();
    let mark = pair.sent.len();
    let now = pair.now;
    pair.a.set_timing(now, timing(1000, 3));
    // An increase of TX waits for the Final (§6.8.3).
    assert!(pair.a.polling());
    assert_eq!(pair.a.tx_interval(), Some(MS300));
    pair.run_until(Duration::from_secs(30), "poll done", |p| !p.a.polling());
    let after = &pair.sent[mark..];
    let poll = after
        .iter()
        .find(|(_, w, p)| *w == 'a' && p.poll)
        .expect("A polled");
    assert_eq!(poll.2.desired_min_tx, Duration::from_secs(1));
    assert_eq!(poll.2.required_min_rx, Duration::from_secs(1));
    assert!(after.iter().any(|(_, w, p)| *w == 'b' && p.final_));
    assert!(pair.sent.iter().all(|(_, _, p)| !(p.poll && p.final_)));
    assert_eq!(pair.a.tx_interval(), Some(Duration::from_secs(1)));
    assert_eq!(pair.a.detection_time(), Some(Duration::from_secs(3)));
    assert_eq!(pair.b.detection_time(), Some(Duration::from_secs(3)));
    assert_eq!(pair.b.tx_interval(), Some(Duration::from_secs(1)));
    // And back down, on both sides.
    let now = pair.now;
    pair.a.set_timing(now, timing(50, 3));
    pair.b.set_timing(now, timing(50, 3));
    pair.run_until(Duration::from_secs(30), "second poll done", |p| {
        !p.a.polling() && !p.b.polling()
    });
    assert_eq!(pair.a.detection_time(), Some(Duration::from_millis(150)));
    assert_eq!(pair.b.tx_interval(), Some(Duration::from_millis(50)));
    assert!(pair
        .changes
        .iter()
        .all(|(_, _, c)| c.to != State::Down && c.to != State::AdminDown));
}

#[test]
fn a_change_during_a_poll_sequence_is_polled_again() {
    let mut pair = Pair::new(timing(300, 3), timing(300, 3));
    pair.settle_up();
    let now = pair.now;
    pair.a.set_timing(now, timing(1000, 3));
    // Before B's Final arrives, a second change: it waits for a second Poll Sequence.
    pair.a.set_timing(now, timing(600, 3));
    assert_eq!(
        pair.a.tx_interval(),
        Some(MS300),
        "no increase before a Final"
    );
    let mark = pair.sent.len();
    pair.run_until(Duration::from_secs(30), "both polls done", |p| {
        !p.a.polling()
    });
    let finals = pair.sent[mark..]
        .iter()
        .filter(|(_, w, p)| *w == 'b' && p.final_)
        .count();
    assert!(finals >= 2, "{finals} Finals from B");
    assert_eq!(pair.a.tx_interval(), Some(Duration::from_millis(600)));
    assert_eq!(pair.b.detection_time(), Some(Duration::from_millis(1800)));
    assert_eq!(pair.a.detection_time(), Some(Duration::from_millis(1800)));
    assert_eq!(pair.a.state(), State::Up);
}

#[test]
fn remote_admin_down_is_told_apart_from_a_failure() {
    let mut pair = Pair::new(timing(300, 3), timing(300, 3));
    pair.settle_up();
    let before = pair.changes.len();
    let now = pair.now;
    pair.a.admin_down(now);
    pair.pump();
    let new: Vec<_> = pair.changes[before..].to_vec();
    let a = new.iter().find(|c| c.1 == 'a').expect("A changed").2;
    assert_eq!((a.from, a.to), (State::Up, State::AdminDown));
    assert_eq!(a.diag, Diag::AdministrativelyDown);
    assert!(!a.is_failure());
    let b = new.iter().find(|c| c.1 == 'b').expect("B changed").2;
    assert_eq!((b.from, b.to), (State::Up, State::Down));
    assert_eq!(b.diag, Diag::NeighborSignaledSessionDown);
    assert!(
        b.remote_admin_down,
        "B knows the peer went AdminDown on purpose"
    );
    assert!(!b.is_failure(), "RFC 5882: not a reason to take BGP down");
    let admin = pair
        .sent
        .iter()
        .rev()
        .find(|(_, w, _)| *w == 'a')
        .expect("A sent")
        .2;
    assert_eq!(admin.state, State::AdminDown);
    assert_eq!(admin.diag, Diag::AdministrativelyDown);
    // A keeps sending AdminDown; neither side moves for a long while, and A runs no
    // detection even when B goes silent.
    pair.b_silent = true;
    let start = pair.now;
    pair.run_until(Duration::from_secs(60), "20 s in AdminDown", |p| {
        p.now >= start + Duration::from_secs(20)
    });
    assert_eq!(
        pair.changes.len(),
        before + 2,
        "{:?}",
        &pair.changes[before..]
    );
    assert_eq!(pair.a.state(), State::AdminDown);
    assert!(pair
        .sent
        .iter()
        .filter(|(t, w, _)| *w == 'a' && *t > start)
        .all(|(_, _, p)| p.state == State::AdminDown && p.diag == Diag::AdministrativelyDown));
    // Out of AdminDown, the handshake runs again.
    pair.b_silent = false;
    let now = pair.now;
    pair.a.admin_up(now);
    pair.settle_up();
}

#[test]
fn jitter_stays_within_rfc_bounds_over_many_draws() {
    let mut rng = StdRng::seed_from_u64(5880);
    for (mult, high) in [(3u8, 100u32), (1, 90)] {
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..100_000 {
            let d = jittered(MS300, mult, rng.gen());
            assert!(d >= MS300 * 75 / 100, "{d:?} below 75 %");
            assert!(
                d <= MS300 * high / 100,
                "{d:?} above {high} % (mult {mult})"
            );
            lo = lo.min(d);
            hi = hi.max(d);
        }
        // The draws cover the range, not one point of it.
        assert!(lo <= MS300 * 76 / 100, "mult {mult}: lowest {lo:?}");
        assert!(
            hi >= MS300 * (high - 1) / 100,
            "mult {mult}: highest {hi:?}"
        );
    }
    // Extremes of the random input.
    assert_eq!(jittered(MS300, 3, 0), MS300 * 75 / 100);
    assert!(jittered(MS300, 3, u32::MAX) <= MS300);
}

#[test]
fn periodic_packets_are_jittered_at_the_slow_rate_while_down() {
    for (mult, high) in [(3u8, 100u32), (1, 90)] {
        let mut now = Instant::now();
        let mut s = session(now, A_DISCR, timing(300, mult));
        let mut times = Vec::new();
        for _ in 0..500 {
            now = s.poll_timeout().expect("deadline");
            s.handle_timeout(now);
            let (packets, changes) = drain(&mut s);
            assert!(changes.is_empty());
            assert_eq!(packets.len(), 1);
            assert_eq!(packets[0].desired_min_tx, SLOW_TX);
            times.push(now);
        }
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= SLOW_TX * 75 / 100 && gap <= SLOW_TX * high / 100,
                "{gap:?}"
            );
        }
        assert_eq!(s.state(), State::Down);
    }
}

// ---- §6.8.6 reception rules: each discard leaves the session as it was ----

/// A session Up with the peer `B_DISCR`, its outputs drained.
fn up_session(now: Instant) -> Session {
    let mut s = session(now, A_DISCR, timing(300, 3));
    s.received(now, &peer_packet(State::Init, A_DISCR).encode())
        .expect("Init accepted");
    let mut fin = peer_packet(State::Up, A_DISCR);
    fin.final_ = true;
    s.received(now, &fin.encode()).expect("Final accepted");
    drain(&mut s);
    assert_eq!(s.state(), State::Up);
    assert!(!s.polling());
    s
}

fn init_session(now: Instant) -> Session {
    let mut s = session(now, A_DISCR, timing(300, 3));
    s.received(now, &peer_packet(State::Down, 0).encode())
        .expect("Down accepted");
    drain(&mut s);
    assert_eq!(s.state(), State::Init);
    s
}

/// Feed `bytes` 100 ms after setup; expect `want` and no change at all.
fn assert_discarded(mut s: Session, now: Instant, bytes: &[u8], want: Discard) {
    let state = s.state();
    let remote = s.remote_discriminator();
    let deadline = s.poll_timeout();
    let detection = s.detection_time();
    let got = s.received(now + Duration::from_millis(100), bytes);
    assert_eq!(got, Err(want));
    assert_eq!(s.state(), state);
    assert_eq!(s.remote_discriminator(), remote);
    assert_eq!(
        s.poll_timeout(),
        deadline,
        "the detection timer was not reset"
    );
    assert_eq!(s.detection_time(), detection);
    assert_eq!(s.poll_output(), None, "nothing sent, nothing reported");
}

#[test]
fn discard_version_other_than_1() {
    let now = Instant::now();
    for version in [0u8, 2, 7] {
        let mut b = peer_packet(State::Down, A_DISCR).encode();
        b[0] = (version << 5) | (b[0] & 0x1f);
        assert_discarded(up_session(now), now, &b, Discard::Version(version));
    }
}

#[test]
fn discard_length_below_minimum() {
    let now = Instant::now();
    let mut b = peer_packet(State::Down, A_DISCR).encode();
    b[3] = 23;
    assert_discarded(
        up_session(now),
        now,
        &b,
        Discard::LengthTooSmall {
            length: 23,
            min: 24,
        },
    );
    // With the A bit the minimum is 26.
    let mut b = peer_packet(State::Down, A_DISCR).encode().to_vec();
    b[1] |= 0b100;
    b.extend_from_slice(&[1, 2]);
    b[3] = 25;
    assert_discarded(
        up_session(now),
        now,
        &b,
        Discard::LengthTooSmall {
            length: 25,
            min: 26,
        },
    );
}

#[test]
fn discard_length_beyond_received_bytes() {
    let now = Instant::now();
    let b = peer_packet(State::Down, A_DISCR).encode();
    assert_discarded(
        up_session(now),
        now,
        &b[..23],
        Discard::LengthExceedsPayload {
            length: 24,
            received: 23,
        },
    );
    let mut long = b;
    long[3] = 48;
    assert_discarded(
        up_session(now),
        now,
        &long,
        Discard::LengthExceedsPayload {
            length: 48,
            received: 24,
        },
    );
    assert_discarded(up_session(now), now, &b[..3], Discard::TooShort(3));
    assert_discarded(up_session(now), now, &[], Discard::TooShort(0));
}

#[test]
fn discard_detect_mult_zero() {
    let now = Instant::now();
    let mut p = peer_packet(State::Down, A_DISCR);
    p.detect_mult = 0;
    assert_discarded(up_session(now), now, &p.encode(), Discard::DetectMultZero);
}

#[test]
fn discard_multipoint() {
    let now = Instant::now();
    let mut b = peer_packet(State::Down, A_DISCR).encode();
    b[1] |= 1;
    assert_discarded(up_session(now), now, &b, Discard::Multipoint);
}

#[test]
fn discard_my_discriminator_zero() {
    let now = Instant::now();
    let mut p = peer_packet(State::Down, A_DISCR);
    p.my_discriminator = 0;
    assert_discarded(
        up_session(now),
        now,
        &p.encode(),
        Discard::MyDiscriminatorZero,
    );
}

#[test]
fn discard_your_discriminator_zero_unless_down_or_admin_down() {
    let now = Instant::now();
    for state in [State::Init, State::Up] {
        assert_discarded(
            up_session(now),
            now,
            &peer_packet(state, 0).encode(),
            Discard::YourDiscriminatorZero(state),
        );
        assert_discarded(
            init_session(now),
            now,
            &peer_packet(state, 0).encode(),
            Discard::YourDiscriminatorZero(state),
        );
    }
    // Down and AdminDown with Your Discriminator 0 are accepted: the peer restarted or
    // lost us, and our session goes Down.
    for state in [State::Down, State::AdminDown] {
        let mut s = up_session(now);
        s.received(now, &peer_packet(state, 0).encode())
            .expect("accepted");
        assert_eq!(s.state(), State::Down);
        assert_eq!(s.diag(), Diag::NeighborSignaledSessionDown);
    }
}

#[test]
fn discard_unknown_your_discriminator() {
    let now = Instant::now();
    assert_discarded(
        up_session(now),
        now,
        &peer_packet(State::Down, 0xdead_beef).encode(),
        Discard::UnknownYourDiscriminator(0xdead_beef),
    );
    let fresh = session(now, A_DISCR, timing(300, 3));
    assert_discarded(
        fresh,
        now,
        &peer_packet(State::Init, A_DISCR + 1).encode(),
        Discard::UnknownYourDiscriminator(A_DISCR + 1),
    );
}

#[test]
fn discard_the_a_bit_without_authentication() {
    let now = Instant::now();
    // Simple Password authentication (type 1, length 4, key id 1, one byte "x").
    let mut b = peer_packet(State::Down, A_DISCR).encode().to_vec();
    b[1] |= 0b100;
    b.extend_from_slice(&[1, 4, 1, b'x']);
    b[3] = 28;
    assert_discarded(
        up_session(now),
        now,
        &b,
        Discard::AuthenticationNotConfigured,
    );
}

#[test]
fn packets_in_admin_down_change_nothing() {
    let now = Instant::now();
    let mut s = up_session(now);
    s.admin_down(now);
    drain(&mut s);
    for state in [State::Down, State::Init, State::Up, State::AdminDown] {
        s.received(now, &peer_packet(state, A_DISCR).encode())
            .expect("valid");
        assert_eq!(s.state(), State::AdminDown);
        let (_, changes) = drain(&mut s);
        assert!(changes.is_empty());
    }
    // No detection timer in AdminDown: only transmissions are due.
    let later = now + Duration::from_secs(3600);
    s.handle_timeout(later);
    assert_eq!(s.state(), State::AdminDown);
}

#[test]
fn detection_expiry_in_init_goes_down_and_in_down_only_forgets_the_peer() {
    let now = Instant::now();
    let mut s = init_session(now);
    assert_eq!(s.remote_discriminator(), B_DISCR);
    // Its packet offered 300 ms × 3 and we require 300 ms: detection after 900 ms.
    let detect = now + MS300 * 3;
    let mut t = now;
    while s.state() == State::Init {
        t = s.poll_timeout().expect("deadline");
        assert!(t <= detect, "detection never fired");
        s.handle_timeout(t);
    }
    assert_eq!(t, detect);
    let (_, changes) = drain(&mut s);
    assert_eq!((changes[0].from, changes[0].to), (State::Init, State::Down));
    assert_eq!(changes[0].diag, Diag::ControlDetectionTimeExpired);
    assert!(!changes[0].is_failure(), "never Up, nothing to fail");
    assert_eq!(s.remote_discriminator(), 0);
    // In Down, an expiry changes no state.
    s.received(t, &peer_packet(State::Up, A_DISCR).encode())
        .expect("accepted");
    assert_eq!(s.state(), State::Down);
    s.handle_timeout(t + Duration::from_secs(10));
    assert_eq!(s.state(), State::Down);
    assert_eq!(s.remote_discriminator(), 0);
    let (_, changes) = drain(&mut s);
    assert!(changes.is_empty());
}

#[test]
fn a_poll_is_answered_with_a_final_at_once() {
    let now = Instant::now();
    let mut s = up_session(now);
    let mut p = peer_packet(State::Up, A_DISCR);
    p.poll = true;
    s.received(now, &p.encode()).expect("accepted");
    let (packets, _) = drain(&mut s);
    assert_eq!(packets.len(), 1);
    assert!(packets[0].final_ && !packets[0].poll);
    assert_eq!(packets[0].your_discriminator, B_DISCR);
}

#[test]
fn a_peer_asking_for_no_packets_gets_none() {
    // Required Min RX 0: the peer wants no periodic packets (§6.8.3).
    let now = Instant::now();
    let mut s = up_session(now);
    let mut p = peer_packet(State::Up, A_DISCR);
    p.required_min_rx = Duration::ZERO;
    s.received(now, &p.encode()).expect("accepted");
    assert_eq!(s.tx_interval(), None);
    drain(&mut s);
    // Only the detection deadline remains; when it passes, the session goes Down, says so
    // once, and forgets the peer's wish: periodic packets resume at the slow rate.
    let deadline = s.poll_timeout().expect("detection");
    assert_eq!(deadline, now + MS300 * 3);
    s.handle_timeout(deadline);
    let (packets, changes) = drain(&mut s);
    assert_eq!(packets.len(), 1, "{packets:?}");
    assert_eq!(packets[0].state, State::Down);
    assert_eq!(changes[0].diag, Diag::ControlDetectionTimeExpired);
    assert_eq!(s.tx_interval(), Some(SLOW_TX));
    assert!(s.poll_timeout().is_some_and(|t| t > deadline));
}

// ---- the wire format, byte by byte ----

/// Up, diag 3, Poll, Detect Mult 3, discriminators 0x11223344 / 0x55667788, 300 ms both
/// ways (300000 µs = 0x000493e0), no echo.
const HAND_MADE: [u8; 24] = [
    0x23, 0xe0, 0x03, 0x18, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x00, 0x04, 0x93, 0xe0,
    0x00, 0x04, 0x93, 0xe0, 0x00, 0x00, 0x00, 0x00,
];

#[test]
fn decode_and_encode_a_hand_made_packet() {
    let p = ControlPacket::decode(&HAND_MADE).expect("valid");
    assert_eq!(
        p,
        ControlPacket {
            diag: Diag::NeighborSignaledSessionDown,
            state: State::Up,
            poll: true,
            final_: false,
            control_plane_independent: false,
            auth_present: false,
            demand: false,
            detect_mult: 3,
            my_discriminator: 0x1122_3344,
            your_discriminator: 0x5566_7788,
            desired_min_tx: MS300,
            required_min_rx: MS300,
            required_min_echo_rx: Duration::ZERO,
        }
    );
    assert_eq!(p.encode(), HAND_MADE);
    // Every flag and state at its bit position.
    let flags = ControlPacket {
        diag: Diag::AdministrativelyDown,
        state: State::AdminDown,
        poll: false,
        final_: true,
        control_plane_independent: true,
        demand: true,
        ..p
    };
    let b = flags.encode();
    assert_eq!(b[0], 0x27);
    assert_eq!(b[1], 0b0001_1010);
    assert_eq!(ControlPacket::decode(&b), Ok(flags));
    for (state, bits) in [
        (State::AdminDown, 0u8),
        (State::Down, 1),
        (State::Init, 2),
        (State::Up, 3),
    ] {
        let b = ControlPacket { state, ..p }.encode();
        assert_eq!(b[1] >> 6, bits);
    }
    // Trailing bytes after Length are ignored; a reserved diagnostic still decodes.
    let mut longer = HAND_MADE.to_vec();
    longer.extend_from_slice(&[0xff; 8]);
    longer[0] = 0x20 | 31;
    let q = ControlPacket::decode(&longer).expect("valid");
    assert_eq!(q.diag, Diag::Reserved(31));
    assert_eq!(q.diag.code(), 31);
}

// ---- configuration ----

fn from_map<V>(pairs: Vec<(&'static str, V)>) -> Result<BfdConfig, serde::de::value::Error>
where
    V: serde::de::IntoDeserializer<'static, serde::de::value::Error>,
{
    BfdConfig::deserialize(serde::de::value::MapDeserializer::new(pairs.into_iter()))
}

#[test]
fn configuration_names_defaults_and_errors() {
    let enabled = from_map(vec![("enabled", true)]).expect("valid");
    assert_eq!(
        enabled,
        BfdConfig {
            enabled: true,
            interval_ms: 300,
            multiplier: 3
        }
    );
    assert_eq!(enabled.timing(), Ok(timing(300, 3)));
    let tuned = from_map(vec![("intervalMs", 100u32), ("multiplier", 5)]).expect("valid");
    assert_eq!(tuned.timing(), Ok(timing(100, 5)));
    assert!(!tuned.enabled);
    let unknown = from_map(vec![("interval", 100u32)]).expect_err("unknown key");
    assert!(unknown.to_string().contains("interval"), "{unknown}");

    for ms in [0u32, 9, 60_001] {
        let err = BfdConfig {
            interval_ms: ms,
            ..enabled
        }
        .timing()
        .expect_err("out of range");
        assert_eq!(err, ConfigError::IntervalMs(ms));
        assert!(err.to_string().contains("bfd.intervalMs"), "{err}");
    }
    for m in [0u32, 256] {
        let err = BfdConfig {
            multiplier: m,
            ..enabled
        }
        .timing()
        .expect_err("out of range");
        assert!(err.to_string().contains("bfd.multiplier"), "{err}");
    }
}
