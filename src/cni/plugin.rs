//! `ferrovia-cni`: the CNI plugin binary (the `ferrovia` binary run under that name).
//!
//! A thin client on the pod-start path: it reads `CNI_*` and the configuration, validates
//! them, forwards the command to the agent over its control socket (blocking, no async
//! runtime, no logging setup) and prints the result or error of the runtime's CNI version
//! on stdout. It keeps no state; the agent does the work.
//!
//! When the agent cannot be reached: ADD, DEL, CHECK and GC fail with 11 (try again later),
//! STATUS with 50. DEL fails too, rather than succeeding: the agent alone knows the pod's
//! addresses and host interface, so a DEL answered without it would leak both while the
//! runtime forgets the pod; with 11 the kubelet retries until the agent is back.

use super::protocol::{AgentReply, AgentRequest, Attach, AttachmentId, Check, Detach, Gc};
use super::spec::{self, code, CniError, Command, Env, NetConf};
use crate::control::Request;
use serde_json::Value;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// The name runtimes run the plugin under (the `type` in the network configuration).
pub const PLUGIN_NAME: &str = "ferrovia-cni";

/// Largest configuration read from stdin (a GC list of every attachment fits many times).
const MAX_STDIN: u64 = 8 << 20;

/// How long the agent may take for one command. The kubelet's own limit (the CRI runtime
/// request timeout) is 2 minutes; a timed-out ADD is followed by a DEL.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// STATUS is polled by the runtime: a slow agent is an unavailable one.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// True when the process was started as `ferrovia-cni` (argv[0]'s file name).
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .is_some_and(|n| n == PLUGIN_NAME)
}

/// Runs one CNI command and exits: 0 with the result (or nothing) on stdout, 1 with the
/// error JSON on stdout.
pub fn main() -> ExitCode {
    let get = |k: &str| std::env::var_os(k);
    let stdin = std::io::stdin();
    // A person at a terminal gets an answer at once instead of a wait for input.
    let outcome = if std::io::IsTerminal::is_terminal(&stdin) {
        run(&get, &mut std::io::empty(), &Agent)
    } else {
        run(&get, &mut stdin.lock(), &Agent)
    };
    let mut out = std::io::stdout().lock();
    let (text, ok) = match &outcome {
        Outcome::Print(v) => (Some(v.to_string()), true),
        Outcome::Nothing => (None, true),
        Outcome::Fail { error, version } => {
            // Logs go to stderr; the runtime shows them next to the error.
            eprintln!("{PLUGIN_NAME}: {error}");
            (Some(error.to_json(version).to_string()), false)
        }
    };
    if let Some(t) = text {
        if writeln!(out, "{t}").and_then(|_| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What one run prints.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success with a result (ADD, VERSION).
    Print(Value),
    /// Success, nothing to print (DEL, CHECK, GC, STATUS).
    Nothing,
    /// An error, printed with `cniVersion` = `version`.
    Fail { error: CniError, version: String },
}

/// Talks to the agent. A trait so that the CNI logic is testable without a socket.
pub trait AgentClient {
    fn call(
        &self,
        socket: &Path,
        req: AgentRequest,
        timeout: Duration,
    ) -> Result<AgentReply, CallError>;
}

/// Why the agent did not answer.
#[derive(Debug)]
pub enum CallError {
    /// Nothing listens on the socket: the agent is not running.
    Unreachable(std::io::Error),
    /// It broke off or took too long.
    Io(std::io::Error),
    /// It answered something this plugin does not understand.
    Protocol(String),
}

/// The real agent, over its unix socket.
pub struct Agent;

impl AgentClient for Agent {
    fn call(
        &self,
        socket: &Path,
        req: AgentRequest,
        timeout: Duration,
    ) -> Result<AgentReply, CallError> {
        let mut s = UnixStream::connect(socket).map_err(CallError::Unreachable)?;
        s.set_read_timeout(Some(timeout)).map_err(CallError::Io)?;
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(CallError::Io)?;
        let mut line = serde_json::to_vec(&Request::Cni(req))
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        line.push(b'\n');
        s.write_all(&line).map_err(CallError::Io)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(CallError::Io)?;
        decode_reply(&buf)
    }
}

/// Decodes the agent's answer. An agent that predates CNI answers
/// `{"error": "bad request: …"}` (a string), which is a version mismatch.
pub fn decode_reply(buf: &[u8]) -> Result<AgentReply, CallError> {
    let v: Value = serde_json::from_slice(buf).map_err(|e| {
        CallError::Protocol(format!(
            "undecodable answer ({e}): {}",
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        ))
    })?;
    if let Some(Value::String(e)) = v.get("error") {
        return Err(CallError::Protocol(e.clone()));
    }
    serde_json::from_value(v).map_err(|e| CallError::Protocol(format!("unexpected answer: {e}")))
}

/// The version string an error carries: the configuration's when it looks like one, else
/// our newest.
fn error_version(raw: Option<&str>) -> String {
    match raw {
        Some(v) if spec::looks_like_version(v) => v.to_string(),
        _ => spec::LATEST.as_str().to_string(),
    }
}

/// One CNI invocation: `get` reads the environment, `stdin` the configuration.
pub fn run(
    get: &dyn Fn(&str) -> Option<OsString>,
    stdin: &mut dyn Read,
    agent: &dyn AgentClient,
) -> Outcome {
    let fail = |error: CniError, raw: Option<&str>| Outcome::Fail {
        error,
        version: error_version(raw),
    };
    // Read first, so that every error can carry the configuration's version.
    let mut bytes = Vec::new();
    let read = stdin.take(MAX_STDIN).read_to_end(&mut bytes);
    let decoded = spec::decode_stdin(&bytes);
    let raw = decoded.as_ref().ok().and_then(|s| s.raw_version.clone());
    let raw = raw.as_deref();
    let command = match spec::command_from(get) {
        Ok(c) => c,
        Err(e) => return fail(e, raw),
    };
    if command == Command::Version {
        return Outcome::Print(spec::version_reply(raw));
    }
    let env = match spec::env_from(command, get) {
        Ok(e) => e,
        Err(e) => return fail(e, raw),
    };
    if let Err(e) = read {
        return fail(
            CniError::new(
                code::IO,
                "cannot read the network configuration from stdin",
                e.to_string(),
            ),
            raw,
        );
    }
    let stdin = match decoded {
        Ok(s) => s,
        Err(e) => return fail(e, raw),
    };
    let version = match spec::negotiate(&stdin, command) {
        Ok(v) => v,
        Err(e) => return fail(e, raw),
    };
    let conf = match spec::parse_netconf(&stdin, command, version) {
        Ok(c) => c,
        Err(e) => return fail(e, raw),
    };
    match execute(&env, &conf, agent) {
        Ok(o) => o,
        Err(e) => fail(e, Some(version.as_str())),
    }
}

/// Checks that `path` is a network namespace other than the caller's own: 3 when it does
/// not exist (the container is gone), 4 when it is something else.
pub fn check_netns(path: &Path) -> Result<(), CniError> {
    let meta =
        match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("the network namespace {} does not exist", path.display()),
                "CNI_NETNS must name the container's network namespace (e.g. /var/run/netns/ID \
                 or /proc/PID/ns/net); the container may have gone already",
            )),
            Err(e) => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("cannot look at CNI_NETNS {}", path.display()),
                    e.to_string(),
                ))
            }
        };
    // Every namespace file lives on the nsfs pseudo file system: the same device as our
    // own namespace's file.
    if let Ok(own) = std::fs::metadata("/proc/self/ns/net") {
        if meta.dev() != own.dev() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS {} is not a network namespace", path.display()),
                "CNI_NETNS must name the container's network namespace (e.g. /var/run/netns/ID \
                 or /proc/PID/ns/net)",
            ));
        }
        if meta.ino() == own.ino() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_NETNS {} is the node's own network namespace",
                    path.display()
                ),
                "a pod needs a network namespace of its own; ferrovia never moves interfaces \
                 of the node",
            ));
        }
    }
    Ok(())
}

/// CNI_NETNS absent where the command needs it (env_from refuses that already; kept as an
/// error, not a panic, so the runtime always gets error JSON).
fn missing_netns() -> CniError {
    CniError::new(
        code::INVALID_ENV,
        "CNI_NETNS is not set",
        "ADD and CHECK need CNI_NETNS",
    )
}

fn execute(env: &Env, conf: &NetConf, agent: &dyn AgentClient) -> Result<Outcome, CniError> {
    let req = match env.command {
        Command::Version => unreachable!("handled before"),
        Command::Add => {
            let netns = env.netns.clone().ok_or_else(missing_netns)?;
            check_netns(&netns)?;
            AgentRequest::Add(Attach {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
                netns,
                mtu: conf.mtu,
                namespace: env.pod_namespace().map(str::to_string),
                pod: env.pod_name().map(str::to_string),
            })
        }
        Command::Del => AgentRequest::Del(Detach {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: env.netns.clone(),
        }),
        Command::Check => {
            let netns = env.netns.clone().ok_or_else(missing_netns)?;
            check_netns(&netns)?;
            let prev = conf.prev_result.as_ref().ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "CHECK needs prevResult in the network configuration",
                    "the runtime passes the result of the ADD as prevResult",
                )
            })?;
            let expected = spec::expected_from(prev, &env.ifname, &netns.to_string_lossy())?;
            AgentRequest::Check(Check {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
                netns,
                mtu: conf.mtu,
                expected_ips: expected.ips,
                host_interfaces: expected.host_interfaces,
            })
        }
        Command::Gc => AgentRequest::Gc(Gc {
            valid: conf
                .valid_attachments
                .iter()
                .map(|a| AttachmentId {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                })
                .collect(),
        }),
        Command::Status => AgentRequest::Status,
    };
    let timeout = if env.command == Command::Status {
        STATUS_TIMEOUT
    } else {
        AGENT_TIMEOUT
    };
    let reply = agent
        .call(&conf.agent_socket, req, timeout)
        .map_err(|e| call_error(e, env.command, &conf.agent_socket))?;
    match (env.command, reply) {
        (_, AgentReply::Error(e)) => Err(e),
        (Command::Add, AgentReply::Added(a)) => {
            let own = spec::add_result(&a, conf.dns.as_ref());
            let result = match &conf.prev_result {
                Some(prev) => prev.clone().chain(own),
                None => own,
            };
            Ok(Outcome::Print(result.to_json(conf.version)))
        }
        (Command::Add, other) => Err(CniError::new(
            code::PROTOCOL,
            "the agent answered ADD without a result",
            format!("{other:?}; the plugin and the agent must be the same ferrovia version"),
        )),
        (_, _) => Ok(Outcome::Nothing),
    }
}

fn call_error(e: CallError, command: Command, socket: &Path) -> CniError {
    let (code, what) = match (&e, command) {
        (CallError::Protocol(_), _) => (code::PROTOCOL, "the agent did not understand the request"),
        (CallError::Unreachable(_), Command::Status) => {
            (code::UNAVAILABLE, "the ferrovia agent is not running")
        }
        (CallError::Io(_), Command::Status) => {
            (code::UNAVAILABLE, "the ferrovia agent does not answer")
        }
        (CallError::Unreachable(_), _) => (code::TRY_AGAIN, "the ferrovia agent is not running"),
        (CallError::Io(_), _) => (code::TRY_AGAIN, "the ferrovia agent does not answer"),
    };
    let details = match e {
        CallError::Unreachable(e) => format!(
            "cannot connect to {}: {e}; start the agent (ferrovia agent) or point agentSocket \
             in the network configuration at its status.socket",
            socket.display()
        ),
        CallError::Io(e) => format!("talking to the agent at {} failed: {e}", socket.display()),
        CallError::Protocol(m) => format!(
            "{m}; the plugin (ferrovia-cni) and the agent at {} must be the same ferrovia \
             version",
            socket.display()
        ),
    };
    CniError::new(code, what, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::spec::Added;
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Answers every call with `reply`; records what it was asked.
    struct Fake {
        reply: fn() -> Result<AgentReply, CallError>,
        asked: RefCell<Vec<(std::path::PathBuf, AgentRequest)>>,
    }

    impl AgentClient for Fake {
        fn call(
            &self,
            socket: &Path,
            req: AgentRequest,
            _: Duration,
        ) -> Result<AgentReply, CallError> {
            self.asked.borrow_mut().push((socket.to_path_buf(), req));
            (self.reply)()
        }
    }

    fn fake(reply: fn() -> Result<AgentReply, CallError>) -> Fake {
        Fake {
            reply,
            asked: RefCell::new(Vec::new()),
        }
    }

    fn added() -> Result<AgentReply, CallError> {
        Ok(AgentReply::Added(Added {
            host_ifname: "fvabc".into(),
            host_mac: "ee:ee:ee:ee:ee:ee".into(),
            pod_ifname: "eth0".into(),
            pod_mac: "02:00:00:00:00:01".into(),
            sandbox: "/proc/self/ns/net".into(),
            mtu: 1400,
            ipv4: Some("10.244.0.1".parse().unwrap()),
            ipv6: None,
        }))
    }

    fn down() -> Result<AgentReply, CallError> {
        Err(CallError::Unreachable(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    }

    fn run_with(env: &[(&str, &str)], stdin: &str, agent: &Fake) -> Outcome {
        let m: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = move |k: &str| m.get(k).map(OsString::from);
        run(&get, &mut stdin.as_bytes(), agent)
    }

    fn fail_of(o: Outcome) -> (u32, String, CniError) {
        match o {
            Outcome::Fail { error, version } => (error.code, version, error),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    // A tmp file is not a namespace; the test process's own namespace is refused as the
    // node's. A namespace the plugin accepts needs root and a real netns: see
    // tests/cni_plugin.rs.
    #[test]
    fn netns_checks() {
        let e = check_netns(Path::new("/nonexistent/netns")).unwrap_err();
        assert_eq!(e.code, code::UNKNOWN_CONTAINER);
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = check_netns(f.path()).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("not a network namespace"), "{e:?}");
        let e = check_netns(Path::new("/proc/self/ns/net")).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("node's own"), "{e:?}");
    }

    #[test]
    fn version_needs_only_the_command_and_echoes_the_version() {
        let a = fake(down);
        let o = run_with(
            &[("CNI_COMMAND", "VERSION")],
            r#"{"cniVersion":"0.4.0"}"#,
            &a,
        );
        assert_eq!(
            o,
            Outcome::Print(
                json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
            )
        );
        let o = run_with(&[("CNI_COMMAND", "VERSION")], "", &a);
        assert!(matches!(o, Outcome::Print(v) if v["cniVersion"] == "1.1.0"));
        assert!(a.asked.borrow().is_empty(), "VERSION never asks the agent");
    }

    #[test]
    fn errors_carry_the_configuration_version() {
        let a = fake(down);
        let (c, v, e) = fail_of(run_with(
            &[("CNI_COMMAND", "ADD")],
            r#"{"cniVersion":"0.3.1","name":"n","type":"ferrovia-cni"}"#,
            &a,
        ));
        assert_eq!((c, v.as_str()), (4, "0.3.1"));
        assert!(e.msg.contains("CNI_NETNS"));
        // An unsupported but well-formed version is echoed; garbage is not.
        let (c, v, _) = fail_of(run_with(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
            ],
            r#"{"cniVersion":"0.2.0","name":"n","type":"ferrovia-cni"}"#,
            &a,
        ));
        assert_eq!((c, v.as_str()), (1, "0.2.0"));
        let (c, v, _) = fail_of(run_with(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
            ],
            r#"{"cniVersion":"x","name":"n","type":"ferrovia-cni"}"#,
            &a,
        ));
        assert_eq!((c, v.as_str()), (1, "1.1.0"));
        let (c, v, _) = fail_of(run_with(&[("CNI_COMMAND", "STATUS")], "{nope", &a));
        assert_eq!((c, v.as_str()), (6, "1.1.0"));
        assert!(
            a.asked.borrow().is_empty(),
            "bad input never reaches the agent"
        );
    }

    #[test]
    fn agent_down_is_11_for_commands_and_50_for_status() {
        let a = fake(down);
        let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"ferrovia-cni","agentSocket":"/x/y.sock","cni.dev/valid-attachments":[]}"#;
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ];
        let (c, v, e) = fail_of(run_with(&del, conf, &a));
        assert_eq!((c, v.as_str()), (11, "1.1.0"));
        assert!(e.details.contains("/x/y.sock"), "{e:?}");
        let (c, _, _) = fail_of(run_with(&[("CNI_COMMAND", "GC")], conf, &a));
        assert_eq!(c, 11);
        let (c, _, _) = fail_of(run_with(&[("CNI_COMMAND", "STATUS")], conf, &a));
        assert_eq!(c, 50);
        let asked = a.asked.borrow();
        assert_eq!(asked.len(), 3);
        assert!(asked.iter().all(|(s, _)| s == Path::new("/x/y.sock")));
        assert_eq!(
            asked[0].1,
            AgentRequest::Del(Detach {
                container_id: "c".into(),
                ifname: "eth0".into(),
                netns: None
            })
        );
    }

    #[test]
    fn an_agent_speaking_another_protocol_is_106() {
        let a = fake(|| decode_reply(br#"{"error":"bad request: unknown variant `cni`"}"#));
        let (c, _, e) = fail_of(run_with(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#,
            &a,
        ));
        assert_eq!(c, code::PROTOCOL);
        assert!(e.details.contains("unknown variant"), "{e:?}");
        assert!(matches!(
            decode_reply(b"garbage"),
            Err(CallError::Protocol(_))
        ));
        assert!(matches!(decode_reply(b"\"done\""), Ok(AgentReply::Done)));
    }

    #[test]
    fn agent_errors_pass_through_with_their_code() {
        let a = fake(|| {
            Ok(AgentReply::Error(CniError::new(
                103,
                "no address",
                "pools full",
            )))
        });
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ];
        let (c, v, e) = fail_of(run_with(
            &del,
            r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#,
            &a,
        ));
        assert_eq!(
            (c, v.as_str(), e.msg.as_str()),
            (103, "0.4.0", "no address")
        );
        let ok = fake(|| Ok(AgentReply::Done));
        assert_eq!(
            run_with(&del, r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#, &ok),
            Outcome::Nothing
        );
    }

    #[test]
    fn add_formats_the_agent_result_in_the_requested_version() {
        // The plugin checks the namespace itself; /proc/self/ns/net is refused as our
        // own, so use the namespace of pid 1's parent view only when it differs: skip
        // the namespace check by asking for an existing non-netns path and expecting 4.
        let a = fake(added);
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/proc/self/ns/net"),
        ];
        let (c, _, _) = fail_of(run_with(
            &env,
            r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#,
            &a,
        ));
        assert_eq!(c, code::INVALID_ENV, "the node's own namespace is refused");
        assert!(a.asked.borrow().is_empty());
        // The formatting itself, through execute() with a namespace check that passes, is
        // covered by tests/cni_plugin.rs; here the agent's answer is formatted directly.
        let Ok(AgentReply::Added(x)) = added() else {
            unreachable!()
        };
        let r = spec::add_result(&x, None).to_json(spec::Version::V0_3_1);
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["interfaces"][1]["sandbox"], "/proc/self/ns/net");
    }
}
