#!/usr/bin/env python3
"""Benchmark: outgoing NAT.

1. TCP throughput pod -> outside (masqueraded by the node's `inet ferrovia` table) against
   pod -> pod on another node (not translated), in the same run, alternating rounds. Both
   paths cross two routers: pod A's node and the ToR to the outside; pod A's node and pod
   B's node to pod B. iperf3 (Debian's `iperf3`) runs in the outside namespace and in pod B.
2. The time to apply a pool change to the ruleset: from the start of
   `ferrovia ipam pool set CIDR --nat-outgoing true|false` to `nft list set inet ferrovia
   nat4` on node 1 showing the change (polled every 5 ms), both ways, N rounds. The agent's
   own log line (`took_ms`, the nft run alone) is reported too.

Topology (namespaces fvn-*): node1, node2 on a bridge (fvn-br) with the ToR (198.18.0.254),
the outside (198.19.255.1) behind the ToR with no route to the pools. Two agents share one
SQLite datastore; pools 10.244.0.0/16 (natOutgoing) and 10.245.0.0/16 (natOutgoing off,
the one toggled). Pods are wired through ferrovia-cni.

Usage (root, a release build is what to quote):
  cargo build --release && sudo scripts/bench_nat.py --ferrovia target/release/ferrovia \
      [--rounds 5] [--seconds 10] [--changes 20]
Prints a Markdown table and a JSON summary.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = "fvn-"


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def ns_sh(ns, *args, check=True, **kw):
    return sh("ip", "netns", "exec", ns, *args, check=check, **kw)


def cleanup():
    for line in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        name = line.split(" ")[0]
        if name.startswith(PREFIX):
            for p in sh("ip", "netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", name, check=False)


def veth(a, a_if, b, b_if):
    sh("ip", "link", "add", f"{PREFIX}tmp0", "type", "veth", "peer", "name", f"{PREFIX}tmp1")
    sh("ip", "link", "set", f"{PREFIX}tmp0", "netns", a, "name", a_if)
    sh("ip", "link", "set", f"{PREFIX}tmp1", "netns", b, "name", b_if)
    sh("ip", "-n", a, "link", "set", a_if, "up")
    sh("ip", "-n", b, "link", "set", b_if, "up")


def topology():
    for n in ["br", "n1", "n2", "tor", "out"]:
        sh("ip", "netns", "add", PREFIX + n)
        sh("ip", "-n", PREFIX + n, "link", "set", "lo", "up")
    br = PREFIX + "br"
    sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", br, "link", "set", "br0", "up")
    for i in (1, 2):
        n = f"{PREFIX}n{i}"
        veth(n, "eth0", br, f"p{i}")
        sh("ip", "-n", br, "link", "set", f"p{i}", "master", "br0")
        sh("ip", "-n", n, "addr", "add", f"198.18.0.{i}/24", "dev", "eth0")
        ns_sh(n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", n, "route", "add", "default", "via", "198.18.0.254", "dev", "eth0", "onlink")
    tor, out = PREFIX + "tor", PREFIX + "out"
    veth(tor, "eth0", br, "ptor")
    sh("ip", "-n", br, "link", "set", "ptor", "master", "br0")
    sh("ip", "-n", tor, "addr", "add", "198.18.0.254/24", "dev", "eth0")
    ns_sh(tor, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    veth(tor, "out0", out, "eth0")
    sh("ip", "-n", tor, "addr", "add", "198.19.255.254/24", "dev", "out0")
    sh("ip", "-n", out, "addr", "add", "198.19.255.1/24", "dev", "eth0")
    sh("ip", "-n", out, "route", "add", "198.18.0.0/24", "via", "198.19.255.254")


def start_agents(ferrovia, d):
    procs = []
    for i in (1, 2):
        conf = os.path.join(d, f"n{i}.yaml")
        with open(conf, "w") as f:
            f.write(
                f"node: {{ name: node{i}, asNumber: 64512, routerId: 198.18.0.{i}, addresses: [198.18.0.{i}] }}\n"
                f"datastore: {{ sqlite: {{ path: {d}/ferrovia.db }} }}\n"
                f"bgp: {{ holdTime: 9, connectRetry: 1 }}\n"
                f"status: {{ socket: {d}/n{i}.sock }}\n"
                "ipam:\n  pools:\n"
                "    - { cidr: 10.244.0.0/16 }\n"
                "    - { cidr: 10.245.0.0/16, natOutgoing: false }\n"
            )
        log = open(os.path.join(d, f"n{i}.log"), "w")
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", f"{PREFIX}n{i}", ferrovia, "agent", "--config", conf],
                stdout=log,
                stderr=log,
            )
        )
    deadline = time.time() + 60
    while time.time() < deadline:
        ok = 0
        for i in (1, 2):
            r = sh(ferrovia, "status", "--json", "--socket", f"{d}/n{i}.sock", check=False)
            if r.returncode == 0 and any(
                p["state"] == "Established" for p in json.loads(r.stdout)["peers"]
            ):
                ok += 1
        if ok == 2:
            return procs
        time.sleep(0.2)
    sys.exit("the agents did not establish their mesh within 60 s; see " + d)


def add_pod(ferrovia, d, node, name):
    ns = PREFIX + name
    sh("ip", "netns", "add", ns)
    plugin = os.path.join(d, "ferrovia-cni")
    if not os.path.exists(plugin):
        os.symlink(os.path.abspath(ferrovia), plugin)
    conf = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "ferrovia",
            "type": "ferrovia-cni",
            "agentSocket": f"{d}/n{node}.sock",
        }
    )
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": name,
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": f"/var/run/netns/{ns}",
        "CNI_PATH": "/opt/cni/bin",
    }
    r = subprocess.run([plugin], input=conf, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"CNI ADD {name}: {r.stdout} {r.stderr}")
    ip = json.loads(r.stdout)["ips"][0]["address"].split("/")[0]
    return ns, ip


def iperf(client_ns, server_ip, seconds):
    r = ns_sh(client_ns, "iperf3", "-c", server_ip, "-t", str(seconds), "-J", check=False)
    if r.returncode != 0:
        sys.exit(f"iperf3 to {server_ip}: {r.stdout[-400:]} {r.stderr}")
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def nat4(node_ns):
    r = ns_sh(node_ns, "nft", "-j", "list", "set", "inet", "ferrovia", "nat4", check=False)
    return r.stdout if r.returncode == 0 else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ferrovia", default="target/release/ferrovia")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--changes", type=int, default=20)
    a = ap.parse_args()
    for tool in ("iperf3", "nft"):
        if sh("which", tool, check=False).returncode != 0:
            sys.exit(f"{tool} is missing: apt-get install {'iperf3' if tool == 'iperf3' else 'nftables'}")
    cleanup()
    d = tempfile.mkdtemp(prefix="fvn-")
    procs = []
    servers = []
    try:
        topology()
        procs = start_agents(a.ferrovia, d)
        pod_a, ip_a = add_pod(a.ferrovia, d, 1, "pa")
        pod_b, ip_b = add_pod(a.ferrovia, d, 2, "pb")
        for ns in (PREFIX + "out", pod_b):
            servers.append(subprocess.Popen(["ip", "netns", "exec", ns, "iperf3", "-s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 30
        while time.time() < deadline and (
            ns_sh(pod_a, "ping", "-c", "1", "-W", "1", "198.19.255.1", check=False).returncode
            or ns_sh(pod_a, "ping", "-c", "1", "-W", "1", ip_b, check=False).returncode
        ):
            time.sleep(0.2)
        seen = {"outside": [], "pod": []}
        for r in range(a.rounds):
            order = [("outside", "198.19.255.1"), ("pod", ip_b)]
            if r % 2:
                order.reverse()
            for k, ip in order:
                seen[k].append(iperf(pod_a, ip, a.seconds))
        # Pool change -> ruleset.
        n1 = PREFIX + "n1"
        on_times, off_times = [], []
        for _ in range(a.changes):
            for on, out in ((True, on_times), (False, off_times)):
                t0 = time.monotonic()
                sh(a.ferrovia, "ipam", "pool", "set", "10.245.0.0/16", "--nat-outgoing", str(on).lower(), "--datastore", f"{d}/ferrovia.db")
                deadline = t0 + 30
                while time.monotonic() < deadline:
                    if ("10.245.0.0" in nat4(n1)) == on:
                        break
                    time.sleep(0.005)
                else:
                    sys.exit("the pool change did not reach the ruleset within 30 s")
                out.append(time.monotonic() - t0)
        took = [float(x) for x in re.findall(r"took_ms=([0-9.]+)", open(os.path.join(d, "n1.log")).read())]
        med = {k: statistics.median(v) for k, v in seen.items()}
        summary = {
            "pod_to_outside_gbps_median": med["outside"],
            "pod_to_pod_gbps_median": med["pod"],
            "ratio": med["outside"] / med["pod"],
            "rounds": a.rounds,
            "seconds": a.seconds,
            "pool_change_on_ms_median": statistics.median(on_times) * 1000,
            "pool_change_off_ms_median": statistics.median(off_times) * 1000,
            "pool_change_ms_max": max(on_times + off_times) * 1000,
            "nft_apply_ms_median": statistics.median(took) if took else None,
            "samples": seen,
        }
        print("| path | median Gbit/s |\n|---|---|")
        print(f"| pod -> outside (masquerade) | {med['outside']:.2f} |")
        print(f"| pod -> pod, other node | {med['pod']:.2f} |")
        print(f"ratio {summary['ratio']:.3f}; pool change to ruleset: on {summary['pool_change_on_ms_median']:.1f} ms, off {summary['pool_change_off_ms_median']:.1f} ms (median of {a.changes}), nft run alone {summary['nft_apply_ms_median']} ms")
        print(json.dumps(summary))
    finally:
        for p in servers + procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        cleanup()


if __name__ == "__main__":
    main()
