#!/usr/bin/env python3
"""Benchmark: CNI ADD and DEL latency of ferrovia-cni against the reference ptp + host-local
plugins (Debian's containernetworking-plugins), measured the same way in the same run, and
the wall time of a burst of 100 ADDs on one node.

Both run on a "node" network namespace: the reference plugins are executed inside it (they
work in the namespace they run in); ferrovia-cni talks to a ferrovia agent running inside it
(the agent does the work). Each iteration creates a fresh pod namespace (not timed), then
times exactly one plugin process from exec to exit: ADD, then DEL. The two implementations
alternate per iteration. Prints a Markdown table and a JSON summary.

Usage: scripts/bench_cni.py [--iterations 100] [--ferrovia target/release/ferrovia]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

NODE = "fvc-node"
REF_DIR = "/usr/lib/cni"


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def cleanup():
    for ns in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        name = ns.split(" ")[0]
        if name.startswith("fvc-"):
            for p in sh("ip", "netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", name, check=False)


def node_up():
    sh("ip", "netns", "add", NODE)
    sh("ip", "-n", NODE, "link", "set", "lo", "up")
    sh("ip", "-n", NODE, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    sh("ip", "-n", NODE, "addr", "add", "198.18.0.1/24", "dev", "eth0")
    sh("ip", "-n", NODE, "link", "set", "eth0", "up")
    sh("ip", "-n", NODE, "link", "set", "eth0p", "up")
    sh("ip", "-n", NODE, "route", "add", "default", "via", "198.18.0.254", "dev", "eth0", "onlink")


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def run_plugin(argv, env, conf):
    t = time.perf_counter()
    r = subprocess.run(argv, input=conf, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{argv} {env.get('CNI_COMMAND')}: {r.stdout} {r.stderr}")
    return dt


def env_for(cmd, cid, pod, path):
    return {
        "CNI_COMMAND": cmd,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": f"/var/run/netns/{pod}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": path,
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--ferrovia", default="target/release/ferrovia")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    if not os.path.exists(f"{REF_DIR}/ptp"):
        sys.exit("install containernetworking-plugins (apt-get install containernetworking-plugins)")
    binary = os.path.abspath(a.ferrovia)
    d = tempfile.mkdtemp(prefix="fvc-")
    plugin = os.path.join(d, "ferrovia-cni")
    os.symlink(binary, plugin)
    sock = os.path.join(d, "agent.sock")
    ref_conf = json.dumps({
        "cniVersion": "1.0.0", "name": "ref", "type": "ptp", "mtu": 1500,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.0.0/16"}]],
                 "dataDir": os.path.join(d, "host-local")},
    })
    fv_conf = json.dumps({"cniVersion": "1.0.0", "name": "ferrovia", "type": "ferrovia-cni",
                          "agentSocket": sock, "mtu": 1500})
    cleanup()
    agent = None
    try:
        node_up()
        with open(os.path.join(d, "agent.yaml"), "w") as f:
            f.write(
                "node: { name: bench, asNumber: 64512, routerId: 198.18.0.1, addresses: [198.18.0.1] }\n"
                f"datastore: {{ sqlite: {{ path: {d}/fv.db }} }}\n"
                "ipam: { pools: [ { cidr: 10.244.0.0/16, blockSize: 26 } ] }\n"
                "bgp: { listen: { enabled: false } }\n"
                f"status: {{ socket: {sock} }}\n"
            )
        log = open(os.path.join(d, "agent.log"), "w")
        agent = subprocess.Popen(["ip", "netns", "exec", NODE, binary, "agent", "--config",
                                  os.path.join(d, "agent.yaml")], stderr=log)
        end = time.monotonic() + 20
        while not os.path.exists(sock):
            if time.monotonic() > end:
                raise RuntimeError("agent did not start")
            time.sleep(0.05)
        time.sleep(0.3)
        ref_argv = ["ip", "netns", "exec", NODE, f"{REF_DIR}/ptp"]
        lat = {"ref": {"ADD": [], "DEL": []}, "ferrovia": {"ADD": [], "DEL": []}}
        for i in range(a.iterations):
            order = [("ref", ref_argv, ref_conf, REF_DIR), ("ferrovia", [plugin], fv_conf, d)]
            if i % 2:
                order.reverse()
            for name, argv, conf, path in order:
                pod = f"fvc-p{i}-{name}"
                sh("ip", "netns", "add", pod)
                cid = f"{name}{i}"
                lat[name]["ADD"].append(run_plugin(argv, env_for("ADD", cid, pod, path), conf))
                lat[name]["DEL"].append(run_plugin(argv, env_for("DEL", cid, pod, path), conf))
                sh("ip", "netns", "del", pod)
        # Burst: 100 ADDs at once on the node, wall time until the last one returned.
        burst = {}
        for name, argv, conf, path in (("ref", ref_argv, ref_conf, REF_DIR), ("ferrovia", [plugin], fv_conf, d)):
            pods = [f"fvc-b{k}-{name}" for k in range(100)]
            for p in pods:
                sh("ip", "netns", "add", p)
            errors = []

            def add(k, p):
                try:
                    run_plugin(argv, env_for("ADD", f"b{name}{k}", p, path), conf)
                except RuntimeError as e:
                    errors.append(str(e))

            ts = [threading.Thread(target=add, args=(k, p)) for k, p in enumerate(pods)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            burst[name] = time.perf_counter() - t0
            if errors:
                raise RuntimeError(f"burst {name}: {errors[0]}")
            for k, p in enumerate(pods):
                run_plugin(argv, env_for("DEL", f"b{name}{k}", p, path), conf)
                sh("ip", "netns", "del", p)
    finally:
        if agent:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
        cleanup()
        shutil.rmtree(d, ignore_errors=True)

    def ms(x):
        return f"{x * 1000:.1f} ms"

    r, f = lat["ref"], lat["ferrovia"]
    print(f"{a.iterations} pods each, alternating; one process per command timed from exec to exit")
    print("| | ADD median | ADD p99 | DEL median | DEL p99 | 100 ADDs at once |")
    print("|---|---|---|---|---|---|")
    for name, l in (("ferrovia-cni (agent does the work)", f), ("reference ptp + host-local", r)):
        key = "ferrovia" if l is f else "ref"
        print(f"| {name} | {ms(statistics.median(l['ADD']))} | {ms(pct(l['ADD'], 99))} | "
              f"{ms(statistics.median(l['DEL']))} | {ms(pct(l['DEL'], 99))} | {burst[key]:.2f} s |")
    ra = statistics.median(f["ADD"]) / statistics.median(r["ADD"])
    rd = statistics.median(f["DEL"]) / statistics.median(r["DEL"])
    print(f"ratios: ADD {ra:.2f}x, DEL {rd:.2f}x the reference")
    print(json.dumps({k: {c: {"median": statistics.median(v[c]), "p99": pct(v[c], 99)} for c in v}
                      for k, v in lat.items()} | {"burst": burst}))


if __name__ == "__main__":
    main()
