//! Smoke test of the 1M-route receive benchmark (scripts/bench_bgp_feed.py, docs/BENCHMARKS.md)
//! so it never rots: a few thousand prefixes, one round, every part of the one command —
//! ferrovia and BIRD into the RIB, ferrovia and BIRD into the kernel, and the physical limit
//! (`ferrovia bench netlink`). Not a measurement: the debug build and a loaded machine.

use ferrovia_testsupport::common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn bench_bgp_feed_quick_runs_every_part() {
    let _lock = net_lock();
    let script = repo_root().join("scripts/bench_bgp_feed.py");
    let out = output_bounded(
        Command::new("python3").args([
            script.to_str().expect("UTF-8 path"),
            "--quick",
            "--prefixes",
            "3000",
            "--ferrovia",
            bin(),
        ]),
        Duration::from_secs(600),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the benchmark failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for row in [
        "| ferrovia | ",
        "| BIRD 2.0.12 (no kernel export) | ",
        "| BIRD 2.0.12 (kernel export all) | ",
        "| physical limit: `ferrovia bench netlink`",
    ] {
        assert!(
            stdout.contains(row),
            "no row {row:?} in the output:\n{stdout}"
        );
    }
    let json: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary in the output:\n{stdout}"));
    assert_eq!(json["prefixes"], 3000, "{json}");
    for (mode, who) in [
        ("rib", "ferrovia"),
        ("rib", "bird"),
        ("kernel", "ferrovia"),
        ("kernel", "bird"),
        ("kernel", "limit"),
    ] {
        let s = json[mode][who]["seconds"].as_f64().unwrap_or(-1.0);
        assert!(s > 0.0, "{mode}/{who}: no time measured: {json}");
    }
    let left: Vec<String> = common::netns::list_netns()
        .into_iter()
        .filter(|n| n.starts_with("fvb-"))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
