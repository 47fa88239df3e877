#!/usr/bin/env python3
"""Benchmark: N IPv4 /24s from one feeder peer into ferrovia and, in the same run, into BIRD
(and, with --mode kernel, FRR).

--mode rib (the BGP speaker issue): time until the last prefix is in the receiver's RIB;
ferrovia with kernel.enabled false, BIRD with no kernel protocol.
--mode kernel (the node agent issue): time until the last route is in the receiver's kernel
table (counted in /proc/net/fib_triestat); ferrovia with kernel routes on, BIRD with a kernel
protocol exporting all, FRR bgpd + zebra.

The feeder is BIRD 2 with N generated static routes, in its own network namespace, eBGP
(AS 65000) to a receiver namespace (AS 64512). Receivers run one after the other on the
same feeder (so they do not compete for the 2 cores): ferrovia (release build), then BIRD
with no kernel export. For each: time from Established to the last prefix in the
receiver's RIB, and the receiver's peak RSS (VmHWM). Prints a Markdown table row per
receiver and a JSON summary. Everything lives in namespaces it creates and removes.

--mode all (the default) runs both, plus the physical limit: the same N routes prepared in
advance and written by ferrovia's batched netlink writer alone (`ferrovia bench netlink`), so
the end-to-end kernel time is quoted as a multiple of it. --quick: 100,000 prefixes, 1 round.

Usage: scripts/bench_bgp_feed.py [--quick] [--mode all|rib|kernel] [--prefixes 1000000]
       [--rounds 3] [--frr] [--ferrovia target/release/ferrovia]
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


def receiver_bird_conf(d, kernel):
    path = os.path.join(d, "recv.conf")
    with open(path, "w") as f:
        if kernel:
            f.write("protocol kernel { ipv4 { export all; }; }\n")
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


def fib_prefixes():
    """Routes in the receiver namespace's FIB (cheap even at 1M, unlike `ip route`)."""
    r = sh("ip", "netns", "exec", RECV_NS, "cat", "/proc/net/fib_triestat", check=False)
    m = re.search(r"Prefixes:\s+(\d+)", r.stdout)
    return int(m.group(1)) if m else 0


def run_ferrovia(binary, d, n, kernel):
    sock = os.path.join(d, "fv.sock")
    conf = os.path.join(d, "fv.yaml")
    with open(conf, "w") as f:
        f.write(
            f"node: {{ name: bench, asNumber: 64512, routerId: {RECV_IP} }}\n"
            f"bgp: {{ connectRetry: 1, peers: [ {{ address: {FEED_IP}, asNumber: 65000 }} ] }}\n"
            f"status: {{ socket: {sock} }}\n"
            f"kernel: {{ enabled: {'true' if kernel else 'false'} }}\n"
        )
    base = fib_prefixes()
    log = open(os.path.join(d, "fv.log"), "w")
    p = subprocess.Popen(["ip", "netns", "exec", RECV_NS, binary, "agent", "--config", conf], stderr=log, env=dict(os.environ, **ENV))

    def status():
        r = sh(binary, "status", "--socket", sock, "--json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    try:
        wait(lambda: (s := status()) and s["peers"][0]["state"] == "Established", 120, "ferrovia Established")
        t0 = time.monotonic()
        if kernel:
            wait(lambda: fib_prefixes() >= base + n, 600, "every route in the kernel")
        else:
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


def run_bird(d, n, kernel):
    base = fib_prefixes()
    conf = receiver_bird_conf(d, kernel)
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

        if kernel:
            wait(lambda: fib_prefixes() >= base + n, 600, "every route in the kernel")
        else:
            wait(imported, 600, "BIRD to hold every prefix")
        elapsed = time.monotonic() - t0
        pid = int(open(pidf).read().strip())
        return elapsed, vmhwm_kib(pid), cpu_seconds(pid)
    finally:
        pid = None
        try:
            pid = int(open(pidf).read().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass
        # The next BIRD receiver uses the same control socket: it refuses to start ("I
        # found another BIRD running") while this one is still shutting down.
        if pid is not None:
            wait(lambda: not os.path.exists(f"/proc/{pid}"), 120, "the BIRD receiver to exit")
        # BIRD removes its kernel routes on exit; wait until they are gone.
        wait(lambda: fib_prefixes() <= base, 120, "BIRD's routes to leave the kernel")


def run_frr(d, n):
    """FRR 8.4 bgpd + zebra in their own pathspace, installing into the kernel."""
    base = fib_prefixes()
    name = "fvb-frr"
    run_dir, etc_dir = f"/var/run/frr/{name}", f"/etc/frr/{name}"
    for x in (run_dir, etc_dir):
        os.makedirs(x, exist_ok=True)
        shutil.chown(x, "frr", "frr")
    open(os.path.join(etc_dir, "vtysh.conf"), "w").close()
    os.chmod(d, 0o755)
    conf = os.path.join(d, "frr.conf")
    with open(conf, "w") as f:
        f.write(
            f"frr defaults traditional\nhostname {name}\n"
            "route-map DENY deny 10\n"
            f"router bgp 64512\n bgp router-id {RECV_IP}\n no bgp ebgp-requires-policy\n"
            f" neighbor {FEED_IP} remote-as 65000\n address-family ipv4 unicast\n"
            f"  neighbor {FEED_IP} route-map DENY out\n exit-address-family\n"
        )
    os.chmod(conf, 0o644)
    procs = []
    for daemon in ("zebra", "bgpd"):
        if daemon == "bgpd":
            wait(lambda: os.path.exists(f"{run_dir}/zserv.api"), 30, "zebra up")
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", RECV_NS, f"/usr/lib/frr/{daemon}", "-N", name, "-f", conf,
             "-i", f"{run_dir}/{daemon}.pid", "-P", "0"] + (["-s", "90000000"] if daemon == "zebra" else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def established():
        r = sh("vtysh", "-N", name, "-c", "show bgp summary json", check=False)
        return '"state":"Established"' in r.stdout.replace(" ", "")

    try:
        wait(established, 120, "FRR Established")
        t0 = time.monotonic()
        wait(lambda: fib_prefixes() >= base + n, 600, "every route in the kernel")
        elapsed = time.monotonic() - t0
        rss = sum(vmhwm_kib(p.pid) for p in procs)
        cpu = sum(cpu_seconds(p.pid) for p in procs)
        return elapsed, rss, cpu
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        # zebra removes its routes on exit (or leaves them; flush what is left of BGP's).
        sh("ip", "-n", RECV_NS, "route", "flush", "proto", "bgp", check=False)
        wait(lambda: fib_prefixes() <= base, 120, "FRR's routes to leave the kernel")
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(etc_dir, ignore_errors=True)


def run_limit(binary, n):
    """The physical limit: ferrovia's batched netlink writer alone, the same N routes
    prepared in advance, into the receiver namespace's main table (`ferrovia bench netlink`)."""
    base = fib_prefixes()
    r = sh("ip", "netns", "exec", RECV_NS, binary, "bench", "netlink", "--routes", str(n), "--gateway", FEED_IP, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"ferrovia bench netlink failed: {r.stderr.strip()}")
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    sh("ip", "-n", RECV_NS, "route", "flush", "proto", "241", check=False)
    wait(lambda: fib_prefixes() <= base, 120, "the limit run's routes to leave the kernel")
    return rep["installSeconds"], 0, rep["installCpuSeconds"]


def median3(v):
    return tuple(statistics.median(x[i] for x in v) for i in range(3))


def table(mode, results, n, rounds):
    bd = results["bird"]
    where = "kernel table" if mode == "kernel" else "RIB"
    names = {
        "ferrovia": "ferrovia",
        "bird": "BIRD 2.0.12" + (" (kernel export all)" if mode == "kernel" else " (no kernel export)"),
        "frr": "FRR 8.4 (bgpd + zebra)",
    }
    out = [f"{n} IPv4 /24s into the {where}, one BIRD feeder, medians of {rounds} alternating rounds",
           f"| receiver | Established → last prefix in {where} | peak RSS | receiver CPU time |",
           "|---|---|---|---|"]
    for k in ("ferrovia", "bird", "frr"):
        if k not in results:
            continue
        t, rss, cpu = results[k]
        rel = "" if k == "bird" else f" ({t / bd[0]:.2f}× BIRD)"
        relm = "" if k == "bird" else f" ({rss / max(bd[1], 1):.2f}× BIRD)"
        relc = "" if k == "bird" else f" ({cpu / max(bd[2], 1e-9):.2f}× BIRD)"
        out.append(f"| {names[k]} | {t:.2f} s{rel} | {rss / 1024:.0f} MiB{relm} | {cpu:.2f} s{relc} |")
    if "limit" in results:
        t, _, cpu = results["limit"]
        fv = results["ferrovia"][0]
        out.append(f"| physical limit: `ferrovia bench netlink` (the same routes prepared in advance, "
                   f"batched netlink writer alone) | {t:.2f} s (ferrovia end to end = {fv / t:.2f}× this) "
                   f"| – | {cpu:.2f} s |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefixes", type=int, default=None, help="default 1,000,000 (100,000 with --quick)")
    ap.add_argument("--ferrovia", default="target/release/ferrovia")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds; medians are reported (default 3, 1 with --quick)")
    ap.add_argument("--mode", choices=["rib", "kernel", "all"], default="all",
                    help="all (default): RIB-only and kernel receivers plus the physical limit, one run")
    ap.add_argument("--frr", action=argparse.BooleanOptionalAction, default=None,
                    help="FRR as a third kernel receiver (default: on with --mode kernel, off with --mode all)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100,000 prefixes, 1 round")
    a = ap.parse_args()
    n = a.prefixes if a.prefixes is not None else (100_000 if a.quick else 1_000_000)
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 3)
    frr = a.frr if a.frr is not None else a.mode == "kernel"
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    binary = os.path.abspath(a.ferrovia)
    if not os.access(binary, os.X_OK):
        sys.exit(f"no ferrovia binary at {binary}: build it (cargo build --release) or pass --ferrovia")
    modes = ["rib", "kernel"] if a.mode == "all" else [a.mode]
    started = time.monotonic()
    d = tempfile.mkdtemp(prefix="fvb-")
    runs = {m: {"ferrovia": [], "bird": []} for m in modes}
    if "kernel" in runs:
        if frr:
            runs["kernel"]["frr"] = []
        runs["kernel"]["limit"] = []
    try:
        netns_up()
        start_feeder(d, n)
        for r in range(rounds):
            for m in modes:
                kernel = m == "kernel"
                # Alternate who goes first, so neither always meets a freshly warmed feeder.
                order = ["ferrovia", "bird"] if r % 2 == 0 else ["bird", "ferrovia"]
                for who in order:
                    if who == "ferrovia":
                        runs[m]["ferrovia"].append(run_ferrovia(binary, d, n, kernel))
                        # ferrovia leaves its routes in the kernel on exit (they keep traffic
                        # flowing across a restart); clear them so the next receiver starts
                        # from the same table.
                        sh("ip", "-n", RECV_NS, "route", "flush", "proto", "241", check=False)
                        wait(lambda: fib_prefixes() < n, 120, "ferrovia's routes to leave the kernel")
                    else:
                        runs[m]["bird"].append(run_bird(d, n, kernel))
                if kernel and frr:
                    runs[m]["frr"].append(run_frr(d, n))
                if kernel:
                    runs[m]["limit"].append(run_limit(binary, n))
                print(f"round {r + 1} {m}: " + ", ".join(f"{k} {v[-1]}" for k, v in runs[m].items()), file=sys.stderr)
    finally:
        netns_down()
        shutil.rmtree(d, ignore_errors=True)
    results = {m: {k: median3(v) for k, v in rv.items()} for m, rv in runs.items()}
    for m in modes:
        print(table(m, results[m], n, rounds))
        print()
    print(f"(whole run {time.monotonic() - started:.0f} s)")
    print(json.dumps({"prefixes": n, "rounds": rounds, "mode": a.mode}
                     | {m: {k: {"seconds": v[0], "rss_kib": v[1], "cpu_seconds": v[2]} for k, v in rv.items()}
                        for m, rv in results.items()}))


if __name__ == "__main__":
    main()
