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

use super::protocol::{AgentReply, AgentRequest};
use super::spec::{self, code, Call, CniError, Command, Invocation};
use crate::control::Request;
use serde_json::Value;
use std::ffi::OsString;
use std::io::{Read, Write};
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

/// One CNI invocation: `get` reads the environment, `stdin` the configuration. Validated
/// in one place ([`spec::parse_invocation`]); what passes is sent to the agent.
pub fn run(
    get: &dyn Fn(&str) -> Option<OsString>,
    stdin: &mut dyn Read,
    agent: &dyn AgentClient,
) -> Outcome {
    let mut bytes = Vec::new();
    let read = stdin.take(MAX_STDIN).read_to_end(&mut bytes);
    match spec::parse_invocation(get, &bytes, read.as_ref().err()) {
        Err(r) => Outcome::Fail {
            error: r.error,
            version: r.version,
        },
        Ok(Invocation::Version(v)) => Outcome::Print(v),
        Ok(Invocation::Call(call)) => {
            let version = call.conf.version;
            match execute(*call, agent) {
                Ok(o) => o,
                Err(error) => Outcome::Fail {
                    error,
                    version: version.as_str().to_string(),
                },
            }
        }
    }
}

/// Sends a validated call to the agent and formats its answer.
fn execute(call: Call, agent: &dyn AgentClient) -> Result<Outcome, CniError> {
    let command = call.command();
    let conf = call.conf;
    let timeout = if command == Command::Status {
        STATUS_TIMEOUT
    } else {
        AGENT_TIMEOUT
    };
    let reply = agent
        .call(&conf.agent_socket, call.request, timeout)
        .map_err(|e| call_error(e, command, &conf.agent_socket))?;
    match (command, reply) {
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
    use crate::cni::protocol::Detach;
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
        let e = spec::check_netns(Path::new("/nonexistent/netns")).unwrap_err();
        assert_eq!(e.code, code::UNKNOWN_CONTAINER);
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = spec::check_netns(f.path()).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("not a network namespace"), "{e:?}");
        let e = spec::check_netns(Path::new("/proc/self/ns/net")).unwrap_err();
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
            panic!("added() answers Added")
        };
        let r = spec::add_result(&x, None).to_json(spec::Version::V0_3_1);
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["interfaces"][1]["sandbox"], "/proc/self/ns/net");
    }
}
