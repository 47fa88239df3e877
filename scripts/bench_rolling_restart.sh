#!/bin/sh
# Packets lost per rolling restart of the agent (SIGTERM + start, in a row), FRR and BIRD
# ToRs, BFD off (the anchor) and on, in one run (tests/bench_rolling_restart.rs). Needs root,
# FRR 8.4, BIRD 2.0.12 and iproute2, like the integration tests. Prints a Markdown table for
# docs/BENCHMARKS.md (add the machine and the date). About 2–4 minutes after the build.
#
#   scripts/bench_rolling_restart.sh            # 3 restarts per configuration
#   scripts/bench_rolling_restart.sh --quick    # 1 restart per configuration
#   FERROVIA_BENCH_ROUNDS=10 scripts/bench_rolling_restart.sh
set -eu
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--quick" ]; then
    FERROVIA_BENCH_ROUNDS=1
    export FERROVIA_BENCH_ROUNDS
fi
cargo build --release --bin ferrovia
exec cargo test --release --test bench_rolling_restart -- --ignored --nocapture --test-threads 1
