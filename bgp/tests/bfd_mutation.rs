//! A bounded, seeded mutation run through the BFD core: 200,000 random and mutated Control
//! packets go through `ControlPacket::decode` and into sessions in every state, with the
//! clock moving and timers firing in between. Zero panics allowed; the counts show that
//! both the accepting and the discarding paths ran and that the sessions moved.

use ferrovia_bgp::bfd::{ControlPacket, Diag, Output, Session, State, Timing};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

const LOCAL: u32 = 7;
const PEER: u32 = 9;
const RUNS: usize = 200_000;

fn valid(state: State, rng: &mut StdRng) -> ControlPacket {
    ControlPacket {
        diag: Diag::from_code(rng.gen_range(0..10)),
        state,
        poll: rng.gen_bool(0.2),
        final_: rng.gen_bool(0.2),
        control_plane_independent: false,
        auth_present: false,
        demand: rng.gen_bool(0.05),
        detect_mult: rng.gen_range(1..=5),
        my_discriminator: PEER,
        your_discriminator: if rng.gen_bool(0.3) { 0 } else { LOCAL },
        desired_min_tx: Duration::from_millis(rng.gen_range(0..2000)),
        required_min_rx: Duration::from_millis(rng.gen_range(0..2000)),
        required_min_echo_rx: Duration::ZERO,
    }
}

fn mutate(mut bytes: Vec<u8>, rng: &mut StdRng) -> Vec<u8> {
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..6) {
            0 if !bytes.is_empty() => {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !bytes.is_empty() => {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] = rng.gen();
            }
            2 => bytes.truncate(rng.gen_range(0..=bytes.len())),
            3 => bytes.extend((0..rng.gen_range(1..40)).map(|_| rng.gen::<u8>())),
            4 if bytes.len() > 3 => bytes[3] = rng.gen(),
            _ if bytes.len() > 1 => bytes[1] = rng.gen(),
            _ => {}
        }
    }
    bytes
}

#[test]
fn random_and_mutated_packets_never_panic() {
    let mut rng = StdRng::seed_from_u64(0xbfd);
    let start = Instant::now();
    let mut now = start;
    let mut jitter_rng = StdRng::seed_from_u64(1);
    let mut s = Session::new(
        now,
        Timing {
            interval: Duration::from_millis(300),
            multiplier: 3,
        },
        NonZeroU32::new(LOCAL).expect("non-zero"),
        Box::new(move || jitter_rng.gen()),
    );
    let (mut accepted, mut discarded, mut panics) = (0usize, 0usize, 0usize);
    let mut states = BTreeSet::new();
    let mut changes = 0usize;
    for i in 0..RUNS {
        let bytes = match rng.gen_range(0..10) {
            0 => (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect(),
            1..=3 => {
                let state =
                    [State::AdminDown, State::Down, State::Init, State::Up][rng.gen_range(0..4)];
                valid(state, &mut rng).encode().to_vec()
            }
            _ => {
                let state =
                    [State::AdminDown, State::Down, State::Init, State::Up][rng.gen_range(0..4)];
                mutate(valid(state, &mut rng).encode().to_vec(), &mut rng)
            }
        };
        now += Duration::from_millis(rng.gen_range(0..400));
        let result = catch_unwind(AssertUnwindSafe(|| {
            let decoded = ControlPacket::decode(&bytes);
            if let Ok(p) = decoded {
                // What decodes without the A bit encodes back to the same packet.
                if !p.auth_present {
                    assert_eq!(ControlPacket::decode(&p.encode()), Ok(p));
                }
            }
            let r = s.received(now, &bytes);
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            match i % 5000 {
                1000 => s.admin_down(now),
                1500 => s.admin_up(now),
                2500 => s.set_timing(
                    now,
                    Timing {
                        interval: Duration::from_millis(rng.gen_range(10..2000)),
                        multiplier: rng.gen_range(1..=255),
                    },
                ),
                _ => {}
            }
            let mut n = 0;
            while let Some(o) = s.poll_output() {
                if let Output::StateChanged(_) = o {
                    n += 1;
                }
            }
            (r.is_ok(), n)
        }));
        match result {
            Ok((ok, n)) => {
                if ok {
                    accepted += 1;
                } else {
                    discarded += 1;
                }
                changes += n;
            }
            Err(_) => panics += 1,
        }
        states.insert(s.state());
    }
    assert_eq!(panics, 0, "{panics} inputs panicked");
    assert!(accepted > RUNS / 10, "accepted {accepted}");
    assert!(discarded > RUNS / 10, "discarded {discarded}");
    assert_eq!(states.len(), 4, "every state visited: {states:?}");
    assert!(changes > 1000, "{changes} state changes");
    assert!(now > start);
}
