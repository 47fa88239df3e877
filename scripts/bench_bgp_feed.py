#!/usr/bin/env python3
"""Benchmark: N IPv4 /24s from one feeder peer into ferrovia and, in the same run, into BIRD.

The feeder is BIRD 2 with N generated static routes, in its own network namespace, eBGP
(AS 65000) to a receiver namespace (AS 64512). Receivers run one after the other on the
same feeder (so they do not compete for the 2 cores): ferrovia (release build), then BIRD
with no kernel export. For each: time from Established to the last prefix in the
receiver's RIB, and the receiver's peak RSS (VmHWM). Prints a Markdown table row per
receiver and a JSON summary. Everything lives in namespaces it creates and removes.

Usage: scripts/bench_bgp_feed.py [--prefixes 1000000] [--ferrovia target/release/ferrovia]
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ENV = {}
FEED_NS, RECV_NS = "fvb-feed", "fvb-recv"
FEED_IP, RECV_IP = "198.18.0.254", "198.18.0.1"


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def netns_up():
    netns_down()
    sh("ip", "netns", "add", FEED_NS)
    sh("ip", "netns", "add", RECV_NS)
    sh("ip", "link", "add", "fvb-f", "netns", FEED_NS, "type", "veth", "peer", "name", "fvb-r", "netns", RECV_NS)
    sh("ip", "-n", FEED_NS, "addr", "add", FEED_IP + "/24", "dev", "fvb-f")
    sh("ip", "-n", RECV_NS, "addr", "add", RECV_IP + "/24", "dev", "fvb-r")
    for ns, dev in ((FEED_NS, "fvb-f"), (RECV_NS, "fvb-r")):
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", dev, "up")


def netns_down():
    for ns in (FEED_NS, RECV_NS):
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", ns, check=False)


def prefixes(n):
    for i in range(n):
        yield f"{20 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24"


def feeder_conf(d, n):
    path = os.path.join(d, "feed.conf")
    with open(path, "w") as f:
        f.write(f"router id {FEED_IP};\nprotocol device {{}}\nprotocol static feed {{ ipv4;\n")
        for p in prefixes(n):
            f.write(f"  route {p} blackhole;\n")
        f.write("}\n")
        f.write(
            f"protocol bgp feeder {{ local {FEED_IP} as 65000; neighbor {RECV_IP} as 64512;\n"
            "  ipv4 { import none; export where source = RTS_STATIC; }; }\n"
        )
    return path


def receiver_bird_conf(d):
    path = os.path.join(d, "recv.conf")
    with open(path, "w") as f:
        f.write(
            f"router id {RECV_IP};\nprotocol device {{}}\n"
            f"protocol bgp feedin {{ local {RECV_IP} as 64512; neighbor {FEED_IP} as 65000;\n"
            "  ipv4 { import all; export none; }; }\n"
        )
    return path


def vmhwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def start_feeder(d, n):
    conf = feeder_conf(d, n)
    sock = os.path.join(d, "feed.ctl")
    subprocess.run(["ip", "netns", "exec", FEED_NS, "bird", "-c", conf, "-s", sock, "-P", os.path.join(d, "feed.pid")], check=True)
    return sock


def wait(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def run_ferrovia(binary, d, n):
    sock = os.path.join(d, "fv.sock")
    conf = os.path.join(d, "fv.yaml")
    with open(conf, "w") as f:
        f.write(
            f"node: {{ name: bench, asNumber: 64512, routerId: {RECV_IP} }}\n"
            f"bgp: {{ connectRetry: 1, peers: [ {{ address: {FEED_IP}, asNumber: 65000 }} ] }}\n"
            f"status: {{ socket: {sock} }}\n"
        )
    log = open(os.path.join(d, "fv.log"), "w")
    p = subprocess.Popen(["ip", "netns", "exec", RECV_NS, binary, "agent", "--config", conf], stderr=log, env=dict(os.environ, **ENV))

    def status():
        r = sh(binary, "status", "--socket", sock, "--json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    try:
        wait(lambda: (s := status()) and s["peers"][0]["state"] == "Established", 120, "ferrovia Established")
        t0 = time.monotonic()
        wait(lambda: (s := status()) and s["peers"][0]["prefixesReceived"] >= n, 600, "ferrovia to hold every prefix")
        elapsed = time.monotonic() - t0
        # `ip netns exec` execs the agent, so this pid is the agent's own.
        return elapsed, vmhwm_kib(p.pid), cpu_seconds(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()


def run_bird(d, n):
    conf = receiver_bird_conf(d)
    sock = os.path.join(d, "recv.ctl")
    pidf = os.path.join(d, "recv.pid")
    subprocess.run(["ip", "netns", "exec", RECV_NS, "bird", "-c", conf, "-s", sock, "-P", pidf], check=True)

    def proto():
        r = sh("birdc", "-s", sock, "show", "protocols", "all", "feedin", check=False)
        return r.stdout

    try:
        wait(lambda: "Established" in proto(), 120, "BIRD Established")
        t0 = time.monotonic()

        def imported():
            m = re.search(r"Routes:\s+(\d+) imported", proto())
            return m and int(m.group(1)) >= n

        wait(imported, 600, "BIRD to hold every prefix")
        elapsed = time.monotonic() - t0
        pid = int(open(pidf).read().strip())
        return elapsed, vmhwm_kib(pid), cpu_seconds(pid)
    finally:
        try:
            os.kill(int(open(pidf).read().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefixes", type=int, default=1_000_000)
    ap.add_argument("--ferrovia", default="target/release/ferrovia")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    d = tempfile.mkdtemp(prefix="fvb-")
    results = {}
    try:
        netns_up()
        start_feeder(d, a.prefixes)
        runs = {"ferrovia": [], "bird": []}
        for r in range(a.rounds):
            runs["ferrovia"].append(run_ferrovia(os.path.abspath(a.ferrovia), d, a.prefixes))
            runs["bird"].append(run_bird(d, a.prefixes))
            print(f"round {r + 1}: ferrovia {runs['ferrovia'][-1]}, bird {runs['bird'][-1]}", file=sys.stderr)
        for k, v in runs.items():
            results[k] = tuple(statistics.median(x[i] for x in v) for i in range(3))
    finally:
        netns_down()
        shutil.rmtree(d, ignore_errors=True)
    fv, bd = results["ferrovia"], results["bird"]
    print(f"{a.prefixes} IPv4 /24s, one BIRD feeder, medians of {a.rounds} alternating rounds")
    print(f"| receiver | Established → last prefix in RIB | peak RSS | receiver CPU time |")
    print(f"|---|---|---|---|")
    print(f"| ferrovia | {fv[0]:.2f} s ({fv[0] / bd[0]:.2f}× BIRD) | {fv[1] / 1024:.0f} MiB ({fv[1] / max(bd[1], 1):.2f}× BIRD) | {fv[2]:.2f} s |")
    print(f"| BIRD 2.0.12 (no kernel export) | {bd[0]:.2f} s | {bd[1] / 1024:.0f} MiB | {bd[2]:.2f} s |")
    print(json.dumps({"prefixes": a.prefixes, "rounds": a.rounds, "ferrovia": {"seconds": fv[0], "rss_kib": fv[1], "cpu_seconds": fv[2]}, "bird": {"seconds": bd[0], "rss_kib": bd[1], "cpu_seconds": bd[2]}}))


if __name__ == "__main__":
    main()
