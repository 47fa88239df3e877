//! `ferrovia lab` itself: `up` twice is refused, a failed `up` cleans up after itself (or
//! leaves everything for `down` with --keep-on-failure), `down` removes what an interrupted
//! `up` made and is idempotent, bind mounts stay inside their node, and pods are refused
//! where they cannot be.

use ferrovia_testsupport::common;
use ferrovia_testsupport::lab_common;

use common::{net_lock, wait_until};
use lab_common::bounded;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferrovia");

const NAME: &str = "fvt-life";

/// A small topology in a temp dir: a ferrovia node (agent alone, no datastore) and a linux
/// node linked to it; `extra_exec` is appended to the linux node's exec.
fn write_topology(dir: &Path, extra_exec: &str) -> PathBuf {
    std::fs::write(
        dir.join("a.yaml"),
        "node: { name: a, asNumber: 64512, routerId: 198.18.0.1 }\nbgp: { holdTime: 9 }\n",
    )
    .expect("agent config");
    std::fs::write(dir.join("hello.txt"), "hello from the host\n").expect("bind source");
    let f = dir.join("life.clab.yml");
    std::fs::write(
        &f,
        format!(
            "name: life\n\
             topology:\n  nodes:\n\
             \x20   a:\n      kind: linux\n      image: ghcr.io/ferrovia/ferrovia:latest\n\
             \x20     binds: [\"a.yaml:/etc/ferrovia/agent.yaml:ro\"]\n\
             \x20     exec: [\"ip addr add 198.18.0.1/24 dev eth1\"]\n\
             \x20   b:\n      kind: linux\n      image: alpine:3\n\
             \x20     binds: [\"hello.txt:/etc/ferrovia-lab-test/hello.txt:ro\"]\n\
             \x20     exec: [\"ip addr add 198.18.0.2/24 dev eth1\"{extra_exec}]\n\
             \x20 links:\n    - endpoints: [\"a:eth1\", \"b:eth1\"]\n"
        ),
    )
    .expect("topology");
    f
}

/// `ferrovia lab --name NAME SUB… FILE ARGS…` (`sub` is one word, or two for `pod …`).
fn lab(file: &Path, args: &[&str]) -> Output {
    let n = if args.first() == Some(&"pod") { 2 } else { 1 };
    bounded(
        Command::new(BIN)
            .args(["lab", "--name", NAME])
            .args(&args[..n])
            .arg(file)
            .args(&args[n..]),
        Duration::from_secs(90),
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ours() -> Vec<String> {
    common::netns::list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{NAME}-")))
        .collect()
}

fn state_dir() -> PathBuf {
    Path::new("/run/ferrovia-lab").join(NAME)
}

/// Nothing of the lab is left: namespaces, state, processes running its binary.
fn assert_gone() {
    assert_eq!(ours(), Vec::<String>::new(), "namespaces left");
    assert!(!state_dir().exists(), "{} left", state_dir().display());
    // Mount points made on the host go with the last lab (another may use them).
    let other_labs = std::fs::read_dir("/run/ferrovia-lab")
        .map(|rd| rd.flatten().any(|e| e.path().is_dir()))
        .unwrap_or(false);
    if !other_labs {
        assert!(
            !Path::new("/etc/ferrovia-lab-test").exists(),
            "a mount point the lab created on the host was left"
        );
        assert!(
            !Path::new("/run/ferrovia-lab").exists(),
            "/run/ferrovia-lab left"
        );
    }
}

#[test]
fn up_twice_is_refused_and_down_is_idempotent() {
    let _lock = net_lock();
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = write_topology(tmp.path(), "");
    let _ = lab(&f, &["down"]);

    let up = lab(&f, &["up", "--wait", "0"]);
    assert!(up.status.success(), "up: {}", text(&up));
    let mut expect = vec![format!("{NAME}-a"), format!("{NAME}-b")];
    expect.sort();
    let mut have = ours();
    have.sort();
    assert_eq!(have, expect);

    let again = lab(&f, &["up"]);
    assert!(!again.status.success(), "a second up succeeded");
    assert!(
        text(&again).contains("already up") && text(&again).contains("lab down"),
        "{}",
        text(&again)
    );

    // The bind is inside node b only; the host has no such file.
    let cat = lab(
        &f,
        &["exec", "b", "--", "cat", "/etc/ferrovia-lab-test/hello.txt"],
    );
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "hello from the host\n"
    );
    let ro = lab(
        &f,
        &[
            "exec",
            "b",
            "--",
            "touch",
            "/etc/ferrovia-lab-test/hello.txt",
        ],
    );
    assert!(!ro.status.success(), "a :ro bind is writable");
    // Each ferrovia node has its own control socket.
    let st = lab(&f, &["exec", "a", "--", "ferrovia", "status"]);
    assert!(st.status.success(), "{}", text(&st));
    assert!(text(&st).contains("node a"), "{}", text(&st));
    // `exec` is not a shell and passes the exit code on.
    let code = lab(&f, &["exec", "b", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code.status.code(), Some(7));

    // Pods only on ferrovia nodes.
    let p = lab(&f, &["pod", "add", "b", "x"]);
    assert!(
        !p.status.success() && text(&p).contains("ferrovia nodes"),
        "{}",
        text(&p)
    );

    let down = lab(&f, &["down"]);
    assert!(down.status.success(), "down: {}", text(&down));
    assert_gone();
    let down = lab(&f, &["down"]);
    assert!(down.status.success(), "second down: {}", text(&down));
    assert!(text(&down).contains("not up"), "{}", text(&down));
    let st = lab(&f, &["status"]);
    assert!(
        !st.status.success() && text(&st).contains("not up"),
        "{}",
        text(&st)
    );
}

#[test]
fn a_failed_up_removes_what_it_made_or_leaves_it_for_down() {
    let _lock = net_lock();
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = write_topology(tmp.path(), ", \"ip link set nosuchdev up\"");
    let _ = lab(&f, &["down"]);

    let up = lab(&f, &["up"]);
    assert!(!up.status.success(), "up with a failing exec succeeded");
    assert!(
        text(&up).contains("nosuchdev") && text(&up).contains("removing what was made"),
        "{}",
        text(&up)
    );
    assert_gone();

    let up = lab(&f, &["up", "--keep-on-failure"]);
    assert!(!up.status.success());
    assert!(text(&up).contains("left in place"), "{}", text(&up));
    assert_eq!(ours().len(), 2, "--keep-on-failure keeps the namespaces");
    let down = lab(&f, &["down"]);
    assert!(down.status.success(), "down: {}", text(&down));
    assert_gone();
}

#[test]
fn down_removes_what_an_interrupted_up_made() {
    let _lock = net_lock();
    let tmp = tempfile::tempdir().expect("tempdir");
    // b's exec hangs: `up` is killed while it waits, after a's agent is running.
    let f = write_topology(tmp.path(), ", \"sleep 300\"");
    let _ = lab(&f, &["down"]);
    let mut up = Command::new(BIN)
        .args(["lab", "--name", NAME, "up"])
        .arg(&f)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("lab up");
    wait_until(
        "up reached b's exec",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let ns = format!("{NAME}-b");
            let out = Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .map_err(|e| e.to_string())?;
            let pids = String::from_utf8_lossy(&out.stdout).into_owned();
            let sleeping = pids.split_whitespace().any(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .map(|c| c.starts_with("sleep\u{0}300"))
                    .unwrap_or(false)
            });
            if sleeping {
                Ok(())
            } else {
                Err(pids)
            }
        },
    );
    up.kill().expect("kill up");
    up.wait().expect("reap up");
    assert_eq!(ours().len(), 2, "the interrupted up left its namespaces");

    let st = lab(&f, &["status"]);
    assert!(text(&st).contains("INCOMPLETE"), "{}", text(&st));
    let down = lab(&f, &["down"]);
    assert!(down.status.success(), "down: {}", text(&down));
    assert_gone();
}
