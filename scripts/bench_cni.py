#!/usr/bin/env python3
"""Benchmark: CNI ADD and DEL latency of ferrovia-cni against the reference ptp + host-local
plugins (Debian's containernetworking-plugins), measured the same way in the same run, and
the wall time of a burst of 100 ADDs on one node.

Both run on a "node" network namespace: the reference plugins are executed inside it (they
work in the namespace they run in); ferrovia-cni talks to a ferrovia agent running inside it
(the agent does the work). Each iteration creates a fresh pod namespace (not timed), then
times exactly one plugin process from exec to exit: ADD, then DEL. The two implementations
alternate per iteration. Prints a Markdown table and a JSON summary.

With `--datastore kubernetes` the agent keeps its state on a real API server instead of
SQLite: etcd and kube-apiserver 1.20.2 (the binary scripts/kube-apiserver.sh caches) run in a
"control-plane" namespace linked to the node namespace, with ferrovia's CRDs and a Node object
for the agent. The run then also reports the API requests per ADD and per DEL (from the API
server's /metrics `apiserver_request_total`, ferrovia's resources, watches excluded), and the
agent's RSS with 1,000 Node objects and 10,000 IPAMHandles in the cluster.

Usage: sudo scripts/bench_cni.py [--iterations 60] [--burst 100] [--ferrovia target/release/ferrovia]
       sudo scripts/bench_cni.py --datastore kubernetes  (burst 110; about 2-3 min in release)
       --quick: a few pods, a small burst and a small cluster (the smoke test runs this)
       --json FILE: also write the JSON summary there (it is always the last line printed)
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

NODE = "fvc-node"
CP = "fvc-cp"
CP_ADDR = "198.18.1.250"
NODE_CP_ADDR = "198.18.1.1"
REF_DIR = "/usr/lib/cni"
APISERVER = os.environ.get("FERROVIA_KUBE_APISERVER",
                           "/var/cache/ferrovia/kube-apiserver-1.20.2/kube-apiserver")
# ferrovia's own resources in apiserver_request_total (Nodes and Leases are the agent's too,
# but a CNI ADD should not touch them).
FERROVIA_RESOURCES = ("ippools", "ipamblocks", "ipamhandles", "blockaffinities", "nodes", "leases")


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def ensure_packages(pkgs):
    """Installs missing Debian packages (like scripts/test.sh does)."""
    missing = [p for p in pkgs
               if "install ok installed" not in sh("dpkg-query", "-W", "-f=${Status}", p, check=False).stdout]
    if missing:
        print(f"installing {' '.join(missing)}", file=sys.stderr)
        sh("apt-get", "update", "-qq", check=False)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                           env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"apt-get install {' '.join(missing)} failed: {r.stderr.strip()}")


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


def namespaces_alive():
    """Network namespaces the kernel still holds (the net_namespace slab's active objects),
    deleted ones included until the kernel has cleaned them up; None when unknown."""
    try:
        with open("/proc/slabinfo") as fh:
            for line in fh:
                if line.startswith("net_namespace "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def settle_namespaces(limit=20.0):
    """Waits (at most `limit` seconds) until the kernel has finished cleaning up deleted
    network namespaces: it does that in the background, and the work (and the rtnl lock it
    takes) would otherwise land on whatever is measured next."""
    end = time.monotonic() + limit
    last = namespaces_alive()
    steady = 0
    while last is not None and time.monotonic() < end and steady < 3:
        time.sleep(0.2)
        now = namespaces_alive()
        steady = steady + 1 if now is not None and now >= last else 0
        last = now


def env_for(cmd, cid, pod, path):
    return {
        "CNI_COMMAND": cmd,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": f"/var/run/netns/{pod}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": path,
        # What the kubelet passes; the reference plugins need IgnoreUnknown for the rest.
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={cid}",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }


# ---------------------------------------------------------------------------------------
# A Kubernetes control plane (GUIDE §6) for --datastore kubernetes.

def api_worker(base, token, ca):
    """Runs inside the control-plane namespace: reads requests (JSON lines: method, path,
    body or a list of bodies for a bulk POST) on stdin, answers with JSON lines."""
    host, port = base.split("//")[1].split(":")
    ctx = ssl.create_default_context(cafile=ca)

    def conn():
        return http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)

    def call(c, method, path, body):
        hdr = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        c.request(method, path, body=None if body is None else json.dumps(body), headers=hdr)
        r = c.getresponse()
        return r.status, r.read().decode()

    main_conn = conn()
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("bulk"):
            bodies, errors, lock = req["bulk"], [], threading.Lock()

            def post(chunk):
                c = conn()
                for b in chunk:
                    st, text = call(c, "POST", req["path"], b)
                    if st not in (200, 201, 409):
                        with lock:
                            errors.append(f"HTTP {st}: {text[:300]}")
                c.close()

            ts = [threading.Thread(target=post, args=(bodies[k::8],)) for k in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            out = {"status": 500 if errors else 201, "body": errors[0] if errors else ""}
        else:
            try:
                st, text = call(main_conn, req["method"], req["path"], req.get("body"))
            except (http.client.HTTPException, OSError):
                main_conn = conn()
                try:
                    st, text = call(main_conn, req["method"], req["path"], req.get("body"))
                except (http.client.HTTPException, OSError) as e:
                    st, text = 0, str(e)
            out = {"status": st, "body": text}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class ControlPlane:
    def __init__(self, d, fsync):
        self.d = d
        self.token = os.urandom(16).hex()
        self.procs = []
        self.worker = None
        base = f"https://{CP_ADDR}:6443"
        self.base = base
        sh("ip", "netns", "add", CP)
        sh("ip", "-n", CP, "link", "set", "lo", "up")
        sh("ip", "-n", NODE, "link", "add", "cp0", "type", "veth", "peer", "name", "eth0", "netns", CP)
        sh("ip", "-n", NODE, "addr", "add", f"{NODE_CP_ADDR}/24", "dev", "cp0")
        sh("ip", "-n", NODE, "link", "set", "cp0", "up")
        sh("ip", "-n", CP, "addr", "add", f"{CP_ADDR}/24", "dev", "eth0")
        sh("ip", "-n", CP, "link", "set", "eth0", "up")
        self.pki()
        with open(os.path.join(d, "tokens.csv"), "w") as f:
            f.write(f'{self.token},admin,admin,"system:masters"\n')
        etcd = ["/usr/bin/etcd", "--name=cp", f"--data-dir={d}/etcd",
                "--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=cp=http://127.0.0.1:2380", "--initial-cluster-state=new"]
        if not fsync:
            etcd.append("--unsafe-no-fsync")
        self.spawn(etcd, "etcd.log")
        self.spawn([APISERVER, "--etcd-servers=http://127.0.0.1:2379", f"--bind-address={CP_ADDR}",
                    f"--advertise-address={CP_ADDR}", "--secure-port=6443", "--insecure-port=0",
                    f"--tls-cert-file={d}/apiserver.crt", f"--tls-private-key-file={d}/apiserver.key",
                    f"--client-ca-file={d}/ca.crt", f"--token-auth-file={d}/tokens.csv",
                    "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-account-key-file={d}/sa.pub", f"--service-account-signing-key-file={d}/sa.key",
                    "--api-audiences=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/12",
                    "--endpoint-reconciler-type=none", "--allow-privileged=true"], "kube-apiserver.log")
        self.worker = subprocess.Popen(
            ["ip", "netns", "exec", CP, sys.executable, os.path.abspath(__file__), "--api-worker",
             base, self.token, f"{d}/ca.crt"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        end = time.monotonic() + 90
        while True:
            if self.call("GET", "/readyz")["status"] == 200:
                break
            if time.monotonic() > end:
                raise RuntimeError("kube-apiserver not ready in 90 s:\n" + self.log_tail())
            time.sleep(0.3)
        with open(os.path.join(d, "kubeconfig"), "w") as f:
            f.write(f"apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n    server: {base}\n"
                    f"    certificate-authority: {d}/ca.crt\nusers:\n- name: b\n  user:\n    token: {self.token}\n"
                    "contexts:\n- name: b\n  context:\n    cluster: b\n    user: b\ncurrent-context: b\n")

    def log_tail(self):
        out = ""
        for f in ("etcd.log", "kube-apiserver.log"):
            try:
                with open(os.path.join(self.d, f)) as fh:
                    out += f"--- {f}\n" + "".join(fh.readlines()[-15:])
            except OSError:
                pass
        return out

    def openssl(self, *args):
        sh("openssl", *args, cwd=self.d)

    def pki(self):
        self.openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench-ca",
                     "-keyout", "ca.key", "-out", "ca.crt", "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        with open(os.path.join(self.d, "apiserver.ext"), "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:{CP_ADDR},IP:127.0.0.1,IP:10.96.0.1,"
                    "DNS:kubernetes,DNS:kubernetes.default.svc\n")
        self.openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
                     "-keyout", "apiserver.key", "-out", "apiserver.csr")
        self.openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                     "-CAcreateserial", "-days", "2", "-extfile", "apiserver.ext", "-out", "apiserver.crt")
        self.openssl("genrsa", "-out", "sa.key", "2048")
        self.openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def spawn(self, argv, log):
        f = open(os.path.join(self.d, log), "w")
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", CP, *argv], stdout=f, stderr=f))

    def call(self, method, path, body=None):
        self.worker.stdin.write(json.dumps({"method": method, "path": path, "body": body}) + "\n")
        self.worker.stdin.flush()
        line = self.worker.stdout.readline()
        if not line:
            raise RuntimeError("the API client in the control-plane namespace died")
        return json.loads(line)

    def must(self, method, path, body=None, ok=(200, 201)):
        r = self.call(method, path, body)
        if r["status"] not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {r['status']}: {r['body'][:500]}")
        return json.loads(r["body"]) if r["body"].startswith("{") else r["body"]

    def bulk_post(self, path, bodies):
        self.worker.stdin.write(json.dumps({"path": path, "bulk": bodies}) + "\n")
        self.worker.stdin.flush()
        r = json.loads(self.worker.stdout.readline())
        if r["status"] != 201:
            raise RuntimeError(f"bulk POST {path}: {r['body']}")

    def install_crds(self, binary):
        crds = load_yaml_documents(sh(binary, "crds").stdout)
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for crd in crds:
            self.must("POST", base, crd, ok=(201, 409))
        for crd in crds:
            name = crd["metadata"]["name"]
            g, v = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
            plural = crd["spec"]["names"]["plural"]
            end = time.monotonic() + 60
            while self.call("GET", f"/apis/{g}/{v}/{plural}")["status"] != 200:
                if time.monotonic() > end:
                    raise RuntimeError(f"CRD {name} not served within 60 s")
                time.sleep(0.2)

    def request_counts(self):
        """ferrovia's resources' non-watch requests so far, by (verb, resource)."""
        text = self.must("GET", "/metrics")
        counts = {}
        pat = re.compile(r'^apiserver_request_total\{(.*)\} ([0-9.e+]+)$')
        for line in text.split("\n"):
            m = pat.match(line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if labels.get("resource") not in FERROVIA_RESOURCES or labels.get("verb") == "WATCH":
                continue
            k = (labels.get("verb"), labels.get("resource"))
            counts[k] = counts.get(k, 0) + float(m.group(2))
        return counts

    def stop(self):
        if self.worker:
            try:
                self.worker.stdin.close()
            except OSError:
                pass
            self.worker.kill()
            self.worker.wait()
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def load_yaml_documents(text):
    """The CRDs `ferrovia crds` prints (YAML documents)."""
    try:
        import yaml  # PyYAML (Debian python3-yaml)
        return [d for d in yaml.safe_load_all(text) if d]
    except ImportError:
        sys.exit("install python3-yaml (the CRDs come from `ferrovia crds` as YAML)")


def delta(after, before):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0) > 0}


def rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def settle_rss(pid, limit=60):
    """The agent's RSS once it stopped growing for 3 s (bounded)."""
    end = time.monotonic() + limit
    last, stable = None, 0
    while time.monotonic() < end:
        r = rss_kib(pid)["VmRSS"]
        stable = stable + 1 if last is not None and abs(r - last) < 256 else 0
        if stable >= 6:
            break
        last = r
        time.sleep(0.5)
    return rss_kib(pid)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--api-worker":
        api_worker(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=None, help="ADD+DEL pairs per implementation (60)")
    ap.add_argument("--burst", type=int, default=None, help="ADDs at once (100; 110 on kubernetes)")
    ap.add_argument("--ferrovia", default="target/release/ferrovia")
    ap.add_argument("--datastore", choices=("sqlite", "kubernetes"), default="sqlite")
    ap.add_argument("--nodes", type=int, default=None, help="Node objects for the RSS figure (1000)")
    ap.add_argument("--handles", type=int, default=None, help="IPAMHandles for the RSS figure (10000)")
    ap.add_argument("--etcd-fsync", action="store_true",
                    help="let etcd fsync (default off, as in the tests: the shared disk's fsyncs are noise)")
    ap.add_argument("--quick", action="store_true", help="tiny counts (smoke test)")
    ap.add_argument("--json", help="also write the JSON summary to this file")
    a = ap.parse_args()
    kube = a.datastore == "kubernetes"
    iterations = a.iterations or (4 if a.quick else 60)
    burst_n = a.burst or (8 if a.quick else (110 if kube else 100))
    n_nodes = a.nodes if a.nodes is not None else (20 if a.quick else 1000)
    n_handles = a.handles if a.handles is not None else (100 if a.quick else 10000)
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    ensure_packages(["containernetworking-plugins"] + (["etcd-server", "openssl", "python3-yaml"] if kube else []))
    if kube and not os.path.exists(APISERVER):
        sys.exit(f"no kube-apiserver at {APISERVER}: run `sudo scripts/kube-apiserver.sh` "
                 "(builds it from Debian's source, cached) or set FERROVIA_KUBE_APISERVER")
    binary = os.path.abspath(a.ferrovia)
    if not os.path.exists(binary):
        sys.exit(f"no ferrovia binary at {binary}: cargo build --release --bin ferrovia")
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
    cp = None
    requests = {}
    rss = {}
    t_start = time.monotonic()
    try:
        node_up()
        if kube:
            cp = ControlPlane(d, a.etcd_fsync)
            cp.install_crds(binary)
            cp.must("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                              "metadata": {"name": "bench", "labels": {"kubernetes.io/hostname": "bench"}}})
            datastore = f"{{ kubernetes: {{ kubeconfig: {d}/kubeconfig }} }}"
        else:
            datastore = f"{{ sqlite: {{ path: {d}/fv.db }} }}"
        with open(os.path.join(d, "agent.yaml"), "w") as f:
            f.write(
                "node: { name: bench, asNumber: 64512, routerId: 198.18.0.1, addresses: [198.18.0.1] }\n"
                f"datastore: {datastore}\n"
                "ipam: { pools: [ { cidr: 10.244.0.0/16, blockSize: 26 } ] }\n"
                "bgp: { listen: { enabled: false } }\n"
                f"status: {{ socket: {sock} }}\n"
            )
        log = open(os.path.join(d, "agent.log"), "w")
        agent = subprocess.Popen(["ip", "netns", "exec", NODE, binary, "agent", "--config",
                                  os.path.join(d, "agent.yaml")], stderr=log)
        end = time.monotonic() + 30
        while not os.path.exists(sock):
            if time.monotonic() > end or agent.poll() is not None:
                with open(os.path.join(d, "agent.log")) as fh:
                    raise RuntimeError("agent did not start:\n" + "".join(fh.readlines()[-20:]))
            time.sleep(0.05)
        time.sleep(0.3)
        ref_argv = ["ip", "netns", "exec", NODE, f"{REF_DIR}/ptp"]
        fv = ("ferrovia", [plugin], fv_conf, d)
        ref = ("ref", ref_argv, ref_conf, REF_DIR)
        # Warm-up (not timed): the first ADD claims a block, the first exec loads the binary.
        for name, argv, conf, path in (ref, fv):
            sh("ip", "netns", "add", f"fvc-w-{name}")
            run_plugin(argv, env_for("ADD", f"w{name}", f"fvc-w-{name}", path), conf)
            run_plugin(argv, env_for("DEL", f"w{name}", f"fvc-w-{name}", path), conf)
            sh("ip", "netns", "del", f"fvc-w-{name}")
        lat = {"ref": {"ADD": [], "DEL": []}, "ferrovia": {"ADD": [], "DEL": []}}
        for i in range(iterations):
            order = [ref, fv]
            if i % 2:
                order.reverse()
            for name, argv, conf, path in order:
                pod = f"fvc-p{i}-{name}"
                sh("ip", "netns", "add", pod)
                cid = f"{name}{i}"
                lat[name]["ADD"].append(run_plugin(argv, env_for("ADD", cid, pod, path), conf))
                lat[name]["DEL"].append(run_plugin(argv, env_for("DEL", cid, pod, path), conf))
                sh("ip", "netns", "del", pod)
        if kube:
            # API requests per ADD and per DEL: ADDs one after the other, then their DELs.
            n = 10 if not a.quick else 3
            pods = [f"fvc-r{k}" for k in range(n)]
            for p in pods:
                sh("ip", "netns", "add", p)
            c0 = cp.request_counts()
            for k, p in enumerate(pods):
                run_plugin(fv[1], env_for("ADD", f"r{k}", p, d), fv_conf)
            c1 = cp.request_counts()
            for k, p in enumerate(pods):
                run_plugin(fv[1], env_for("DEL", f"r{k}", p, d), fv_conf)
                sh("ip", "netns", "del", p)
            c2 = cp.request_counts()
            requests = {"pods": n,
                        "add": {f"{v} {r}": c / n for (v, r), c in sorted(delta(c1, c0).items())},
                        "del": {f"{v} {r}": c / n for (v, r), c in sorted(delta(c2, c1).items())}}
            requests["perAdd"] = sum(requests["add"].values())
            requests["perDel"] = sum(requests["del"].values())
        # Burst: N ADDs at once on the node, wall time until the last one returned.
        burst = {}
        for name, argv, conf, path in (ref, fv):
            pods = [f"fvc-b{k}-{name}" for k in range(burst_n)]
            for p in pods:
                sh("ip", "netns", "add", p)
            errors = []

            def add(k, p):
                try:
                    run_plugin(argv, env_for("ADD", f"b{name}{k}", p, path), conf)
                except RuntimeError as e:
                    errors.append(str(e))

            ts = [threading.Thread(target=add, args=(k, p)) for k, p in enumerate(pods)]
            # Each burst starts with the namespaces deleted before it (the other one's pods)
            # cleaned up, so neither pays for the other.
            settle_namespaces()
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
        if kube:
            # The agent's memory with a big cluster around it.
            rss["before"] = settle_rss(agent.pid, 10)
            cp.bulk_post("/api/v1/nodes", [
                {"apiVersion": "v1", "kind": "Node",
                 "metadata": {"name": f"node-{k}", "labels": {"kubernetes.io/hostname": f"node-{k}"}}}
                for k in range(n_nodes)])
            cp.bulk_post("/apis/ferrovia.io/v1alpha1/ipamhandles", [
                {"apiVersion": "ferrovia.io/v1alpha1", "kind": "IPAMHandle",
                 "metadata": {"name": f"bench-{k}.eth0"},
                 "spec": {"containerId": f"bench-{k}", "interface": "eth0", "node": f"node-{k % max(n_nodes, 1)}",
                          "attributes": {"namespace": "default", "pod": f"p{k}"}, "addresses": []}}
                for k in range(n_handles)])
            rss["after"] = settle_rss(agent.pid, 60)
            rss["nodes"], rss["handles"] = n_nodes, n_handles
            if agent.poll() is not None:
                raise RuntimeError("the agent exited with the big cluster")
    finally:
        if agent:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        if cp:
            cp.stop()
        cleanup()
        shutil.rmtree(d, ignore_errors=True)

    def ms(x):
        return f"{x * 1000:.1f} ms"

    r, f = lat["ref"], lat["ferrovia"]
    store = "Kubernetes API server (kube-apiserver 1.20.2, etcd" + (")" if a.etcd_fsync else " --unsafe-no-fsync)") \
        if kube else "SQLite"
    print(f"{iterations} pods each, alternating; one process per command timed from exec to exit; "
          f"ferrovia's datastore: {store}")
    print(f"| | ADD median | ADD p99 | DEL median | DEL p99 | {burst_n} ADDs at once |")
    print("|---|---|---|---|---|---|")
    for name, l in (("ferrovia-cni (agent does the work)", f), ("reference ptp + host-local", r)):
        key = "ferrovia" if l is f else "ref"
        print(f"| {name} | {ms(statistics.median(l['ADD']))} | {ms(pct(l['ADD'], 99))} | "
              f"{ms(statistics.median(l['DEL']))} | {ms(pct(l['DEL'], 99))} | {burst[key]:.2f} s |")
    ra = statistics.median(f["ADD"]) / statistics.median(r["ADD"])
    rd = statistics.median(f["DEL"]) / statistics.median(r["DEL"])
    print(f"ratios: ADD {ra:.2f}x, DEL {rd:.2f}x the reference; burst {burst['ferrovia'] / burst['ref']:.2f}x")
    if kube:
        print()
        print("API requests (apiserver_request_total, ferrovia's resources, Nodes and Leases; watches excluded), "
              f"mean of {requests['pods']} ADDs then their DELs, one at a time:")
        print("| | requests | by verb and resource |")
        print("|---|---|---|")
        for k in ("add", "del"):
            parts = ", ".join(f"{vr} {c:.1f}" for vr, c in requests[k].items())
            print(f"| per {k.upper()} | {requests['per' + k.capitalize()]:.1f} | {parts} |")
        print()
        print(f"| agent RSS | idle after the run | with {n_nodes} Nodes and {n_handles} IPAMHandles | peak (VmHWM) |")
        print("|---|---|---|---|")
        print(f"| ferrovia agent | {rss['before']['VmRSS'] / 1024:.1f} MiB | {rss['after']['VmRSS'] / 1024:.1f} MiB "
              f"| {rss['after']['VmHWM'] / 1024:.1f} MiB |")
    print(f"(whole run {time.monotonic() - t_start:.0f} s)")
    summary = {k: {c: {"median": statistics.median(v[c]), "p99": pct(v[c], 99)} for c in v}
               for k, v in lat.items()}
    summary |= {"burst": burst, "burstPods": burst_n, "iterations": iterations, "datastore": a.datastore,
                "ratios": {"add": ra, "del": rd}}
    if kube:
        summary |= {"apiRequests": requests, "rssKiB": rss}
    text = json.dumps(summary)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
