#!/bin/sh
# Packets lost per rolling restart of the agent (tests/bench_rolling_restart.rs), in one run
# per benchmark, BFD off (the anchor: graceful restart alone) and on (300 ms × 3 with the
# peer settings of config/README.md), FRR 8.4 and BIRD 2.0.12 ToRs:
#   one-node    one node between two ToRs (topology TwoTors), SIGTERM + start N times in a row;
#   every-node  every node of a lab in turn (the leaf-spine lab with FRR ToRs, four nodes; the
#               BIRD lab, two nodes), each ready (/readyz) before the next, N rounds, pods on
#               every node pinging each other (every pair, both directions).
# Needs root, FRR 8.4, BIRD 2.0.12, curl and iproute2, like the integration tests. Prints one
# Markdown table per benchmark for docs/BENCHMARKS.md (add the machine and the date).
#
#   scripts/bench_rolling_restart.sh --quick              # both, 1 round each: about 4 minutes
#   scripts/bench_rolling_restart.sh --quick every-node   # only the every-node one, 1 round
#   scripts/bench_rolling_restart.sh                      # both, 3 rounds (N) each
#   FERROVIA_BENCH_ROUNDS=10 scripts/bench_rolling_restart.sh one-node
set -eu
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--quick" ]; then
    FERROVIA_BENCH_ROUNDS=1
    export FERROVIA_BENCH_ROUNDS
    shift
fi
case "${1:-}" in
    "") filter=bench_ ;;
    one-node) filter="bench_packets_lost_per_rolling_restart --exact" ;;
    every-node) filter=bench_packets_lost_per_rolling_restart_of_every_node ;;
    *) echo "usage: $0 [--quick] [one-node|every-node]" >&2; exit 2 ;;
esac
cargo build --release --bin ferrovia
exec cargo test --release --test bench_rolling_restart -- --ignored --nocapture --test-threads 1 $filter
