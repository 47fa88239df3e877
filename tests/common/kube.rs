//! A real Kubernetes control plane for tests (GUIDE §6): etcd and kube-apiserver 1.20.2 in a network
//! namespace of their own, plugged into a test segment at [`CONTROL_PLANE_V4`] like a control-plane
//! node of a real cluster, so agents in node namespaces reach it over the segment.
//!
//! One control plane per test, not per test binary: every topology test holds the machine-wide
//! [`NetLock`] and `net_lock()` removes every `fvt-*` namespace it finds, so a control plane shared
//! by a whole binary would be torn down under it by the next test of another binary; a Rust
//! `static` is also never dropped, so a shared one could not be stopped when a test fails. Starting
//! one costs a few seconds. [`ControlPlane`] stops both processes, removes its namespace and its
//! files on drop, also when the test panics.
//!
//! The API server binary comes from `scripts/kube-apiserver.sh` (built from Debian's source and
//! cached); `FERROVIA_KUBE_APISERVER` overrides its path. Nothing here skips: a missing binary or
//! etcd fails the test with what to run.
//!
//! HTTP goes through `curl` run inside a namespace on the segment (the root namespace cannot reach
//! the segment): [`ControlPlane::request`] from the control-plane namespace itself,
//! [`ControlPlane::request_from`] from any other (e.g. a node).

use super::proc::Proc;
use super::{output_bounded, NetLock, Netns};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The cache `scripts/kube-apiserver.sh` fills.
pub const DEFAULT_APISERVER: &str = "/var/cache/ferrovia/kube-apiserver-1.20.2/kube-apiserver";
/// Environment variable naming the kube-apiserver binary (`scripts/test.sh` exports it).
pub const APISERVER_ENV: &str = "FERROVIA_KUBE_APISERVER";
/// The control plane's address on the segment (198.18.0.0/24, GUIDE §4).
pub const CONTROL_PLANE_V4: &str = "198.18.0.250";
pub const SECURE_PORT: u16 = 6443;
/// etcd listens on the control-plane namespace's loopback only; the namespace is fresh, so fixed
/// ports are free.
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
/// The audience of service-account tokens (what a DaemonSet pod's projected token carries).
pub const SA_AUDIENCE: &str = "https://kubernetes.default.svc";
/// Time allowed for the API server to answer /readyz 200 (about 3 s on our machines).
pub const READY: Duration = Duration::from_secs(60);
/// Time allowed for the API server to act on a write (CRD established, RBAC grant seen, watch event).
pub const SETTLE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
/// Time limit of one curl call (and of the process running it).
const CURL_MAX: Duration = Duration::from_secs(20);

/// The path of the kube-apiserver binary, or a panic telling the operator how to get it.
pub fn apiserver_binary() -> PathBuf {
    let p = std::env::var_os(APISERVER_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_APISERVER));
    assert!(
        p.is_file(),
        "kube-apiserver not found at {}: run `sudo scripts/kube-apiserver.sh` (builds it from Debian's \
         source, a few minutes, cached) or set {APISERVER_ENV} to its path",
        p.display()
    );
    p
}

fn etcd_binary() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcd");
    assert!(
        p.is_file(),
        "etcd not found at {}: run `sudo scripts/kube-apiserver.sh` (installs etcd-server)",
        p.display()
    );
    p
}

/// A namespace holding a bridge `br0`: an L2 segment nodes and the control plane join.
pub fn segment(lock: &NetLock, tag: &str) -> Netns {
    let br = Netns::new(lock, &format!("{tag}-br"));
    br.ip(&["link", "add", "br0", "type", "bridge"]);
    br.link_up("br0");
    br
}

/// A namespace plugged into `segment`'s `br0` through a veth (`eth0` inside, `port` on the
/// bridge), with `addr` (CIDR) on `eth0`.
pub fn join_segment(lock: &NetLock, segment: &Netns, tag: &str, port: &str, addr: &str) -> Netns {
    let ns = Netns::new(lock, tag);
    Netns::veth(&ns, "eth0", segment, port);
    segment.ip(&["link", "set", port, "master", "br0"]);
    ns.addr("eth0", addr);
    ns
}

/// One HTTP answer of the API server.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}):\n{}",
                self.status, self.body
            )
        })
    }

    /// `Ok(self)` when the status is `want`, else an `Err` describing what came back (for
    /// `wait_until` and `expect_status`).
    pub fn status_is(self, want: u16) -> Result<Response, String> {
        if self.status == want {
            Ok(self)
        } else {
            Err(format!(
                "HTTP {} (wanted {want}): {}",
                self.status, self.body
            ))
        }
    }

    /// Panics with the whole answer unless the status is `want`.
    pub fn expect_status(self, want: u16, what: &str) -> Response {
        self.status_is(want)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// etcd + kube-apiserver in their own namespace on a segment. Dropping it stops both and removes
/// the namespace and the temp directory (certificates, tokens, etcd data, logs).
pub struct ControlPlane {
    // Field order is drop order: processes first, then the namespace, then the files.
    apiserver: Proc,
    etcd: Proc,
    pub ns: Netns,
    dir: tempfile::TempDir,
    admin_token: String,
    calls: std::sync::atomic::AtomicU32,
    /// The API server's command line, for [`ControlPlane::start_apiserver`].
    apiserver_argv: Vec<String>,
}

impl ControlPlane {
    /// Starts etcd and the API server in a new namespace joined to `segment` (made by
    /// [`segment`], or a `Cluster`'s `br`) at [`CONTROL_PLANE_V4`]/24, and waits up to [`READY`]
    /// for `GET /readyz` = 200 with the admin token.
    pub fn start(lock: &NetLock, segment: &Netns) -> ControlPlane {
        Self::start_with(lock, segment, &[])
    }

    /// [`ControlPlane::start`] with more kube-apiserver flags (e.g. `--watch-cache=false`, so
    /// that watches are served by etcd and expire when etcd is compacted).
    pub fn start_with(lock: &NetLock, segment: &Netns, extra_args: &[&str]) -> ControlPlane {
        let apiserver_bin = apiserver_binary();
        let etcd_bin = etcd_binary();
        let dir = tempfile::Builder::new()
            .prefix("fvt-kube")
            .tempdir()
            .expect("create a temp directory for the control plane");
        let ns = join_segment(
            lock,
            segment,
            "cp",
            "cp0",
            &format!("{CONTROL_PLANE_V4}/24"),
        );
        let admin_token = random_hex(16);
        make_pki(dir.path());
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{admin_token},admin,admin,\"system:masters\"\n"),
        )
        .expect("write the token file");

        let d = |f: &str| dir.path().join(f).display().to_string();
        let etcd_client = format!("http://127.0.0.1:{ETCD_CLIENT_PORT}");
        let etcd_peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        let etcd = Proc::spawn(
            ns.name(),
            &[
                &etcd_bin.display().to_string(),
                "--name=cp",
                &format!("--data-dir={}", d("etcd")),
                &format!("--listen-client-urls={etcd_client}"),
                &format!("--advertise-client-urls={etcd_client}"),
                &format!("--listen-peer-urls={etcd_peer}"),
                &format!("--initial-advertise-peer-urls={etcd_peer}"),
                &format!("--initial-cluster=cp={etcd_peer}"),
                "--initial-cluster-state=new",
                // Test data: losing it on a power cut does not matter, slow fsyncs on a busy
                // shared disk would.
                "--unsafe-no-fsync",
            ],
            &dir.path().join("etcd.log"),
            &[],
        );
        let apiserver_flags: &[&str] = &[
            &apiserver_bin.display().to_string(),
            &format!("--etcd-servers={etcd_client}"),
            &format!("--bind-address={CONTROL_PLANE_V4}"),
            &format!("--advertise-address={CONTROL_PLANE_V4}"),
            &format!("--secure-port={SECURE_PORT}"),
            "--insecure-port=0",
            &format!("--tls-cert-file={}", d("apiserver.crt")),
            &format!("--tls-private-key-file={}", d("apiserver.key")),
            &format!("--client-ca-file={}", d("ca.crt")),
            &format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC",
            &format!("--service-account-issuer={SA_AUDIENCE}"),
            &format!("--service-account-key-file={}", d("sa.pub")),
            &format!("--service-account-signing-key-file={}", d("sa.key")),
            &format!("--api-audiences={SA_AUDIENCE}"),
            "--service-cluster-ip-range=10.96.0.0/12",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            &format!("--requestheader-client-ca-file={}", d("front-proxy-ca.crt")),
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            &format!("--proxy-client-cert-file={}", d("front-proxy-client.crt")),
            &format!("--proxy-client-key-file={}", d("front-proxy-client.key")),
        ];
        let mut apiserver_argv: Vec<&str> = apiserver_flags.to_vec();
        apiserver_argv.extend_from_slice(extra_args);
        let saved_argv: Vec<String> = apiserver_argv.iter().map(|a| a.to_string()).collect();
        let apiserver = Proc::spawn(
            ns.name(),
            &apiserver_argv,
            &dir.path().join("kube-apiserver.log"),
            &[],
        );
        let mut cp = ControlPlane {
            apiserver,
            etcd,
            ns,
            dir,
            admin_token,
            calls: std::sync::atomic::AtomicU32::new(0),
            apiserver_argv: saved_argv,
        };
        cp.wait_ready();
        cp
    }

    /// Stops the API server (SIGTERM, then SIGKILL); etcd keeps the state.
    pub fn stop_apiserver(&mut self) {
        let _ = self.apiserver.terminate(Duration::from_secs(20));
    }

    /// Freezes the API server (SIGSTOP): it neither answers nor refuses, so connections hang,
    /// as with an overloaded or partitioned control plane. It runs again (SIGCONT) when the
    /// returned guard is resumed or dropped, also when the test panics.
    pub fn pause_apiserver(&self) -> Paused {
        Paused::stop("kube-apiserver", self.apiserver.pid())
    }

    /// Freezes etcd (SIGSTOP) until the returned guard is resumed or dropped.
    pub fn pause_etcd(&self) -> Paused {
        Paused::stop("etcd", self.etcd.pid())
    }

    /// Starts the API server again with the same flags and waits until it is ready.
    pub fn start_apiserver(&mut self) {
        let argv: Vec<&str> = self.apiserver_argv.iter().map(|a| a.as_str()).collect();
        self.apiserver = Proc::spawn(
            self.ns.name(),
            &argv,
            &self.dir.path().join("kube-apiserver.log"),
            &[],
        );
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            for (name, running) in [
                ("etcd", self.etcd.is_running()),
                ("kube-apiserver", self.apiserver.is_running()),
            ] {
                if !running {
                    panic!(
                        "{name} exited before the API server was ready\n{}",
                        self.logs()
                    );
                }
            }
            let last = match self.request("GET", "/readyz", None) {
                Ok(r) if r.status == 200 => return,
                Ok(r) => format!("HTTP {}: {}", r.status, r.body),
                Err(e) => e,
            };
            if start.elapsed() > READY {
                panic!(
                    "kube-apiserver not ready (GET /readyz) within {READY:?}; last answer: {last}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The last lines of the etcd and API server logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- etcd log ---\n{}--- kube-apiserver log ---\n{}",
            super::tail_file(&self.dir.path().join("etcd.log"), 30),
            super::tail_file(&self.dir.path().join("kube-apiserver.log"), 60)
        )
    }

    /// `https://198.18.0.250:6443`.
    pub fn base_url(&self) -> String {
        format!("https://{CONTROL_PLANE_V4}:{SECURE_PORT}")
    }

    /// The CA that signed the serving certificate (and would sign client certificates).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A bearer token of user `admin` in group `system:masters`.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The directory holding the control plane's files; tests may put theirs here too.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig for `token` (server, CA file, bearer token) to `path`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) {
        let cfg = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: ferrovia-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n\
             - name: ferrovia-test\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: ferrovia-test\n  context:\n    cluster: ferrovia-test\n    user: ferrovia-test\n\
             current-context: ferrovia-test\n",
            server = self.base_url(),
            ca = self.ca_path().display(),
        );
        std::fs::write(path, cfg)
            .unwrap_or_else(|e| panic!("write kubeconfig {}: {e}", path.display()));
    }

    /// A request as admin from the control-plane namespace. `body` is sent as JSON
    /// (`application/merge-patch+json` for PATCH). `Err` when curl got no HTTP answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, String> {
        self.request_from(&self.ns, &self.admin_token, method, path, body)
    }

    /// Like [`ControlPlane::request`] with another bearer token.
    pub fn request_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, String> {
        self.request_from(&self.ns, token, method, path, body)
    }

    /// A request from namespace `from` (which must be on the segment) with bearer `token`.
    pub fn request_from(
        &self,
        from: &Netns,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, String> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let out_file = self.dir.path().join(format!("curl-{n}.out"));
        let url = format!("{}{path}", self.base_url());
        let auth = format!("Authorization: Bearer {token}");
        let out_arg = out_file.display().to_string();
        let ca = self.ca_path().display().to_string();
        let max = CURL_MAX.as_secs().to_string();
        let mut argv: Vec<String> = [
            "ip",
            "netns",
            "exec",
            from.name(),
            "curl",
            "-sS",
            "--max-time",
            &max,
            "--cacert",
            &ca,
            "-H",
            &auth,
            "-X",
            method,
            "-o",
            &out_arg,
            "-w",
            "%{http_code}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(b) = body {
            let ct = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            argv.extend([
                "-H".into(),
                format!("Content-Type: {ct}"),
                "--data-raw".into(),
                b.to_string(),
            ]);
        }
        argv.push(url.clone());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let out = output_bounded(&mut cmd, CURL_MAX + Duration::from_secs(10))?;
        let body = std::fs::read_to_string(&out_file).unwrap_or_default();
        let _ = std::fs::remove_file(&out_file);
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match code.parse::<u16>() {
            Ok(status) if status != 0 => Ok(Response { status, body }),
            _ => Err(format!(
                "{method} {url} from {}: no HTTP answer (curl {}): {}",
                from.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// [`ControlPlane::request`], panicking with the curl error when there is no HTTP answer.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        self.request(method, path, body)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// POSTs `body` to `path` unless the object exists already (409 is fine).
    pub fn ensure(&self, path: &str, body: &Value) {
        let r = self.call("POST", path, Some(body));
        assert!(
            r.status == 201 || r.status == 200 || r.status == 409,
            "POST {path}: HTTP {}: {}",
            r.status,
            r.body
        );
    }

    /// Creates every CRD in `crds` (JSON objects of kind CustomResourceDefinition) and waits
    /// until each is Established and its resource is served.
    pub fn install_crds(&self, crds: &[Value]) {
        let base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        for crd in crds {
            let name = crd["metadata"]["name"].as_str().unwrap_or("?");
            self.call("POST", base, Some(crd))
                .expect_status(201, &format!("create CRD {name}"));
        }
        for crd in crds {
            let name = crd["metadata"]["name"].as_str().unwrap_or("?").to_string();
            super::wait_until(&format!("CRD {name} Established"), SETTLE, POLL, || {
                let got = self
                    .call("GET", &format!("{base}/{name}"), None)
                    .status_is(200)?
                    .json();
                let established = got["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Established" && c["status"] == "True");
                if established {
                    Ok(())
                } else {
                    Err(format!("conditions: {}", got["status"]["conditions"]))
                }
            });
            let group = crd["spec"]["group"].as_str().unwrap_or("?");
            let version = crd["spec"]["versions"][0]["name"].as_str().unwrap_or("?");
            let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or("?");
            super::wait_until(&format!("{plural}.{group} served"), SETTLE, POLL, || {
                self.call("GET", &format!("/apis/{group}/{version}/{plural}"), None)
                    .status_is(200)
            });
        }
    }

    /// A token of ServiceAccount `ns`/`sa` from the TokenRequest API (what a DaemonSet pod gets),
    /// creating the namespace and the ServiceAccount when missing.
    pub fn service_account_token(&self, ns: &str, sa: &str) -> String {
        self.ensure(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
        self.ensure(
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
        );
        let r = self
            .call(
                "POST",
                &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
                Some(&json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"audiences": [SA_AUDIENCE]}
                })),
            )
            .expect_status(201, &format!("TokenRequest for {ns}/{sa}"));
        match r.json()["status"]["token"].as_str() {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => panic!("TokenRequest for {ns}/{sa} returned no token: {}", r.body),
        }
    }

    /// Starts `GET path` with `?watch=1` semantics (the caller puts `watch=1`, `resourceVersion`
    /// and a `timeoutSeconds` in `path`) from the control-plane namespace as admin; events are
    /// read with [`Watch::events`]. The curl is killed when the `Watch` is dropped.
    pub fn watch(&self, path: &str) -> Watch {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = self.dir.path().join(format!("watch-{n}.jsonl"));
        let url = format!("{}{path}", self.base_url());
        let auth = format!("Authorization: Bearer {}", self.admin_token);
        let ca = self.ca_path().display().to_string();
        let proc = Proc::spawn(
            self.ns.name(),
            &["curl", "-sSN", "--cacert", &ca, "-H", &auth, &url],
            &log,
            &[],
        );
        Watch { proc, log }
    }
}

/// A TCP forwarder from the root namespace's loopback to the API server on the segment, for
/// clients that run inside the test process (the datastore contract tests): the root
/// namespace cannot reach the segment, so each accepted connection is served by a thread that
/// enters the control-plane namespace (`setns`, which moves only that thread) and connects
/// there. The serving certificate names 127.0.0.1, so TLS checks pass unchanged. Listening
/// stops when it is dropped.
pub struct LocalProxy {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl LocalProxy {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LocalProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A control-plane process frozen with SIGSTOP; SIGCONT when resumed or dropped.
#[must_use = "the process runs again when this guard is dropped"]
pub struct Paused {
    what: &'static str,
    pid: Option<i32>,
}

impl Paused {
    fn stop(what: &'static str, pid: Option<i32>) -> Paused {
        let pid = pid.unwrap_or_else(|| panic!("{what} is not running: nothing to pause"));
        // SAFETY: a signal to our own child, which has not been reaped (the Proc holds it).
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            panic!(
                "SIGSTOP {what} (pid {pid}): {}",
                std::io::Error::last_os_error()
            );
        }
        Paused {
            what,
            pid: Some(pid),
        }
    }

    /// Lets the process run again.
    pub fn resume(mut self) {
        self.cont();
    }

    fn cont(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: as in `stop`; the Proc that owns the child outlives this guard.
            if unsafe { libc::kill(pid, libc::SIGCONT) } != 0 {
                eprintln!(
                    "SIGCONT {} (pid {pid}): {}",
                    self.what,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.cont();
    }
}

/// Moves the calling thread into network namespace `ns`.
fn enter_netns(ns: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl ControlPlane {
    /// A [`LocalProxy`] to this API server.
    pub fn local_proxy(&self) -> LocalProxy {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ns = self.ns.name().to_string();
        let stop2 = stop.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let ns = ns.clone();
                std::thread::spawn(move || {
                    if enter_netns(&ns).is_err() {
                        return;
                    }
                    let Ok(server) = std::net::TcpStream::connect_timeout(
                        &format!("{CONTROL_PLANE_V4}:{SECURE_PORT}")
                            .parse()
                            .expect("address"),
                        Duration::from_secs(10),
                    ) else {
                        return;
                    };
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                        return;
                    };
                    let up = std::thread::spawn(move || pipe(client, server));
                    pipe(s2, c2);
                    let _ = up.join();
                });
            }
        });
        LocalProxy {
            port,
            stop,
            accept: Some(accept),
        }
    }

    /// Writes a kubeconfig for `token` that reaches the API server through `proxy`.
    pub fn write_local_kubeconfig(&self, path: &Path, token: &str, proxy: &LocalProxy) {
        let cfg = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: ferrovia-test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\n\
             users:\n\
             - name: ferrovia-test\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: ferrovia-test\n  context:\n    cluster: ferrovia-test\n    user: ferrovia-test\n\
             current-context: ferrovia-test\n",
            port = proxy.port(),
            ca = self.ca_path().display(),
        );
        std::fs::write(path, cfg)
            .unwrap_or_else(|e| panic!("write kubeconfig {}: {e}", path.display()));
    }

    /// etcd of this control plane.
    pub fn etcd(&self) -> Etcd {
        Etcd {
            ns: self.ns.name().to_string(),
        }
    }
}

/// etcd of a [`ControlPlane`], through its JSON gateway from the control-plane namespace.
#[derive(Debug, Clone)]
pub struct Etcd {
    ns: String,
}

impl Etcd {
    /// A call to etcd's JSON gateway (`/v3/...`).
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, String> {
        let out = output_bounded(
            Command::new("ip").args([
                "netns",
                "exec",
                &self.ns,
                "curl",
                "-sS",
                "--max-time",
                "20",
                "-X",
                "POST",
                "--data-raw",
                &body.to_string(),
                &format!("http://127.0.0.1:{ETCD_CLIENT_PORT}{path}"),
            ]),
            CURL_MAX + Duration::from_secs(10),
        )?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        serde_json::from_str(&text).map_err(|e| format!("etcd {path}: {e}: {text}"))
    }

    /// etcd's current revision.
    pub fn revision(&self) -> Result<u64, String> {
        let r = self.call("/v3/kv/range", &json!({"key": "AA=="}))?;
        r["header"]["revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no header.revision in {r}"))
    }

    /// Compacts etcd's history up to `revision`: watches from before it get 410 Gone (with
    /// `--watch-cache=false`; the watch cache would still serve them).
    pub fn compact(&self, revision: u64) -> Result<(), String> {
        let r = self.call(
            "/v3/kv/compaction",
            &json!({"revision": revision.to_string(), "physical": true}),
        )?;
        if r.get("error").is_some() || r.get("code").is_some() {
            return Err(format!("etcd compaction to {revision}: {r}"));
        }
        Ok(())
    }
}

/// The CRDs `ferrovia crds` prints, one JSON value each.
pub fn ferrovia_crds() -> Vec<Value> {
    use serde::Deserialize;
    let out = output_bounded(Command::new(super::bin()).arg("crds"), super::CLI_LIMIT)
        .unwrap_or_else(|e| panic!("ferrovia crds: {e}"));
    assert!(
        out.status.success(),
        "ferrovia crds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("ferrovia crds YAML: {e}")))
        .collect()
}

impl ControlPlane {
    /// `kubectl ARGS` as admin, run from the control-plane namespace; stdout, or a panic with
    /// stderr.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let kc = self.dir().join("admin.kubeconfig");
        if !kc.exists() {
            self.write_kubeconfig(&kc, self.admin_token());
        }
        let out = output_bounded(
            Command::new("ip")
                .args(["netns", "exec", self.ns.name(), "kubectl", "--kubeconfig"])
                .arg(&kc)
                .args(args),
            super::CLI_LIMIT,
        )
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"));
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A running watch (a curl streaming the API server's events into a file).
pub struct Watch {
    proc: Proc,
    log: PathBuf,
}

impl Watch {
    /// The complete events received so far (one JSON object per line).
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Whether the curl is still streaming.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}

/// `n` random bytes, hex-encoded (tokens).
fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `name`.crt/.key.
fn make_ca(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf `name`.crt/.key signed by CA `ca`, with the extensions in `ext` (openssl config lines).
fn make_leaf(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extension file");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// The cluster CA, the API server's serving certificate, the service-account key pair and the
/// front-proxy CA and client certificate.
fn make_pki(dir: &Path) {
    make_ca(dir, "ca", "ferrovia-test-ca");
    make_leaf(
        dir,
        "ca",
        "apiserver",
        "kube-apiserver",
        &format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:{CONTROL_PLANE_V4},IP:127.0.0.1,\
             IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
             DNS:kubernetes.default.svc.cluster.local\n"
        ),
    );
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"]);
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    make_ca(dir, "front-proxy-ca", "ferrovia-test-front-proxy-ca");
    make_leaf(
        dir,
        "front-proxy-ca",
        "front-proxy-client",
        "front-proxy-client",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    );
}
