//! Bounded polling loops.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// Polls `f` every `poll` until it returns `Ok`, for at most `timeout`.
/// Panics with `what` and the last `Err` observed.
pub fn wait_until<T, E: Debug>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Result<T, E>,
) -> T {
    let start = Instant::now();
    let mut tries = 0u32;
    loop {
        tries += 1;
        match f() {
            Ok(v) => return v,
            Err(e) => {
                if start.elapsed() >= timeout {
                    panic!(
                        "timed out after {:.1?} ({tries} tries) waiting for: {what}\nlast observed: {e:#?}",
                        start.elapsed()
                    );
                }
            }
        }
        std::thread::sleep(poll);
    }
}

/// Asserts that `f` keeps returning `Ok` for the whole of `duration` (polled every `poll`).
/// Panics with `what` and the offending observation as soon as it returns `Err`.
pub fn assert_for<E: Debug>(
    what: &str,
    duration: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Result<(), E>,
) {
    let start = Instant::now();
    loop {
        if let Err(e) = f() {
            panic!(
                "violated after {:.1?} (should hold for {duration:?}): {what}\nobserved: {e:#?}",
                start.elapsed()
            );
        }
        if start.elapsed() >= duration {
            return;
        }
        std::thread::sleep(poll);
    }
}
