//! Smoke test of the CNI benchmark (scripts/bench_cni.py, docs/BENCHMARKS.md) so that it never
//! rots: the script runs with `--quick` (a few pods, a small burst, a small cluster) on both
//! datastores with this build's binary, and its JSON summary must carry every figure the
//! benchmark table is made of. No speed is asserted: the numbers are the benchmark's business.

use ferrovia_testsupport::common;

use common::{bin, net_lock, output_bounded};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Generous bound for a `--quick` run (an API server start, a few dozen plugin runs).
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn run_quick(datastore: &str) -> Value {
    let _lock = net_lock();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_cni.py");
    let out = output_bounded(
        Command::new("python3").arg(&script).args([
            "--quick",
            "--datastore",
            datastore,
            "--ferrovia",
            bin(),
        ]),
        RUN_LIMIT,
    )
    .unwrap_or_else(|e| panic!("bench_cni.py --quick --datastore {datastore}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench_cni.py --quick --datastore {datastore} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| reference ptp + host-local |"),
        "the Markdown table has the reference row:\n{stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line is the JSON summary ({e}):\n{stdout}"))
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is a number: {v}"));
    assert!(x > 0.0, "{what} > 0: {x}");
    x
}

fn check_latencies(s: &Value) {
    for who in ["ferrovia", "ref"] {
        for cmd in ["ADD", "DEL"] {
            for stat in ["median", "p99"] {
                positive(&s[who][cmd][stat], &format!("{who}.{cmd}.{stat}"));
            }
        }
        positive(&s["burst"][who], &format!("burst.{who}"));
    }
    positive(&s["ratios"]["add"], "ratios.add");
    assert!(s["burstPods"].as_u64().is_some_and(|n| n > 0), "{s}");
}

#[test]
fn the_cni_benchmark_runs_quick_on_sqlite() {
    let s = run_quick("sqlite");
    check_latencies(&s);
    assert_eq!(s["datastore"], "sqlite");
}

#[test]
fn the_cni_benchmark_runs_quick_on_kubernetes_and_counts_api_requests_and_rss() {
    common::kube::apiserver_binary();
    let s = run_quick("kubernetes");
    check_latencies(&s);
    assert_eq!(s["datastore"], "kubernetes");
    // An ADD writes at least its handle and its block; a DEL at least frees the block entry.
    let per_add = positive(&s["apiRequests"]["perAdd"], "apiRequests.perAdd");
    assert!(per_add >= 2.0, "an ADD writes a handle and a block: {s}");
    positive(&s["apiRequests"]["perDel"], "apiRequests.perDel");
    for when in ["before", "after"] {
        positive(&s["rssKiB"][when]["VmRSS"], &format!("rssKiB.{when}.VmRSS"));
    }
    positive(&s["rssKiB"]["nodes"], "rssKiB.nodes");
    positive(&s["rssKiB"]["handles"], "rssKiB.handles");
}
