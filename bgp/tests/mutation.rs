//! Bounded, deterministic mutation run over the wire decoder: mutated OPENs and UPDATEs
//! go through `frame_len` and `decode` with both AS widths; nothing may panic.

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use ferrovia_bgp::message::{Message, Notification};
use ferrovia_bgp::wire::{self, Decoded};
use support::{check_reencode, seed_opens, seed_updates, Mutator, CONTEXTS};

const PER_KIND: usize = 60_000;

#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    err: usize,
    treat_as_withdraw: usize,
    frame_incomplete: usize,
    panics: usize,
    /// decoded messages whose re-encoding does not decode to the same message
    unstable: usize,
    first_unstable: Option<String>,
    /// NOTIFICATION (code, subcode) -> count
    errors: std::collections::BTreeMap<(u8, u8), usize>,
    first_panic: Option<Vec<u8>>,
}

/// Feeds one buffer through framing and decoding; returns whether anything panicked.
fn exercise(buf: &[u8], tally: &mut Tally) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut outcomes = Vec::new();
        match wire::frame_len(buf) {
            Ok(Some(len)) => {
                for ctx in &CONTEXTS {
                    let decoded = wire::decode_message(&buf[..len], ctx).map(|d| match d {
                        Decoded::Message(m) => {
                            let stable = check_reencode(&m, ctx);
                            (m, stable)
                        }
                        Decoded::Ignored(_) => (Message::Keepalive, Ok(())),
                    });
                    outcomes.push(decoded);
                }
            }
            Ok(None) => outcomes.push(Err(Notification::new(0, 0))),
            Err(n) => outcomes.push(Err(n)),
        }
        // decode also copes with a buffer that is not exactly one message.
        for ctx in &CONTEXTS {
            let _ = wire::decode(buf, ctx);
            let _ = wire::decode_message(buf, ctx);
        }
        outcomes
    }));
    match result {
        Ok(outcomes) => {
            for o in outcomes {
                if let Ok((_, Err(e))) = &o {
                    tally.unstable += 1;
                    tally.first_unstable.get_or_insert_with(|| e.clone());
                }
                match o {
                    Ok((Message::Update(u), _)) if u.treat_as_withdraw => {
                        tally.ok += 1;
                        tally.treat_as_withdraw += 1;
                    }
                    Ok(_) => tally.ok += 1,
                    Err(n) if n.code == 0 => tally.frame_incomplete += 1,
                    Err(n) => {
                        tally.err += 1;
                        *tally.errors.entry((n.code, n.subcode)).or_default() += 1;
                    }
                }
            }
        }
        Err(_) => {
            tally.panics += 1;
            tally.first_panic.get_or_insert_with(|| buf.to_vec());
        }
    }
}

fn run(name: &str, seeds: &[Vec<u8>], seed: u64) -> Tally {
    let mut m = Mutator::new(seed);
    let mut tally = Tally::default();
    // The seeds themselves decode.
    for s in seeds {
        for ctx in &CONTEXTS {
            assert!(
                wire::decode(s, ctx).is_ok(),
                "{name} seed does not decode: {s:02x?}"
            );
        }
    }
    for i in 0..PER_KIND {
        let mutated = m.mutate(&seeds[i % seeds.len()]);
        exercise(&mutated, &mut tally);
    }
    tally
}

#[test]
fn mutated_opens_and_updates_never_panic() {
    let start = Instant::now();
    let opens = run("OPEN", &seed_opens(), 0x0b6b_0001);
    let updates = run("UPDATE", &seed_updates(), 0x0b6b_0002);
    eprintln!("OPEN:   {opens:?}");
    eprintln!("UPDATE: {updates:?}");
    eprintln!("elapsed: {:?}", start.elapsed());
    for (name, t) in [("OPEN", &opens), ("UPDATE", &updates)] {
        assert_eq!(
            t.panics, 0,
            "{name}: {} panics, first input: {:02x?}",
            t.panics, t.first_panic
        );
        assert!(
            t.ok > 0 && t.err > 0,
            "{name}: the run must see both outcomes: {t:?}"
        );
        assert_eq!(t.unstable, 0, "{name}: {:?}", t.first_unstable);
    }
    assert!(
        updates.treat_as_withdraw > 0,
        "no UPDATE reached treat-as-withdraw"
    );
}
