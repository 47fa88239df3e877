#!/bin/sh
# Failover time to the second ToR after a link failure: ferrovia's BFD against FRR-to-FRR
# BFD in the same topology and the same run (tests/bench_bfd_failover.rs). Needs root, FRR
# 8.4 (zebra, bgpd, bfdd) and iproute2, like the integration tests. Results go to stdout;
# copy the medians into docs/BENCHMARKS.md with the machine and the date.
#
# Prints a Markdown table. About 2–4 minutes after the build (5 rounds).
#
#   scripts/bench_bfd_failover.sh            # 5 rounds
#   scripts/bench_bfd_failover.sh --quick    # 1 round
#   FERROVIA_BENCH_ROUNDS=11 scripts/bench_bfd_failover.sh
set -eu
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--quick" ]; then
    FERROVIA_BENCH_ROUNDS=1
    export FERROVIA_BENCH_ROUNDS
fi
cargo build --release --bin ferrovia
exec cargo test --release --test bench_bfd_failover -- --ignored --nocapture --test-threads 1
