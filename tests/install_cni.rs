//! `ferrovia install-cni`, the chart's init container, run as a process on temporary
//! directories standing for the host's CNI directories.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

const FERROVIA: &str = env!("CARGO_BIN_EXE_ferrovia");

fn install(bin: &Path, conf: &Path, extra: &[&str]) -> Output {
    Command::new(FERROVIA)
        .arg("install-cni")
        .arg("--bin-dir")
        .arg(bin)
        .arg("--conf-dir")
        .arg(conf)
        .args(extra)
        .output()
        .expect("run ferrovia install-cni")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn installs_the_plugin_and_configuration_and_is_idempotent() {
    let bin = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let o = install(bin.path(), conf.path(), &["--mtu", "9000"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("ferrovia-cni: created"), "{}", text(&o));
    assert!(
        out.contains("10-ferrovia.conflist: created"),
        "{}",
        text(&o)
    );

    // The installed plugin is this binary, executable.
    let plugin = bin.path().join("ferrovia-cni");
    assert_eq!(fs::read(&plugin).unwrap(), fs::read(FERROVIA).unwrap());
    assert_eq!(
        fs::metadata(&plugin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // Run under its new name it is the CNI plugin: VERSION answers with the versions.
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(br#"{"cniVersion":"1.1.0"}"#).unwrap();
    }
    let v = child.wait_with_output().unwrap();
    let version: serde_json::Value = serde_json::from_slice(&v.stdout)
        .unwrap_or_else(|e| panic!("VERSION output is not JSON ({e}): {}", text(&v)));
    assert!(
        version["supportedVersions"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x == "1.1.0")),
        "{version}"
    );

    let conflist_path = conf.path().join("10-ferrovia.conflist");
    let conflist: serde_json::Value =
        serde_json::from_slice(&fs::read(&conflist_path).unwrap()).unwrap();
    assert_eq!(conflist["name"], "ferrovia");
    assert_eq!(conflist["cniVersion"], "1.1.0");
    assert_eq!(conflist["plugins"][0]["type"], "ferrovia-cni");
    assert_eq!(
        conflist["plugins"][0]["agentSocket"],
        "/run/ferrovia/ferrovia.sock"
    );
    assert_eq!(conflist["plugins"][0]["mtu"], 9000);

    // Run again with the same arguments: nothing is rewritten (same inodes: no rename).
    let inodes = |p: &Path| fs::metadata(p).unwrap().ino();
    let (ino_bin, ino_conf) = (inodes(&plugin), inodes(&conflist_path));
    let o = install(bin.path(), conf.path(), &["--mtu", "9000"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("ferrovia-cni: unchanged"), "{}", text(&o));
    assert!(
        out.contains("10-ferrovia.conflist: unchanged"),
        "{}",
        text(&o)
    );
    assert_eq!(inodes(&plugin), ino_bin);
    assert_eq!(inodes(&conflist_path), ino_conf);

    // Other arguments: the configuration is replaced (a new file renamed over it).
    let o = install(
        bin.path(),
        conf.path(),
        &["--agent-socket", "/var/run/ferrovia/agent.sock"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("10-ferrovia.conflist: updated"),
        "{}",
        text(&o)
    );
    assert_ne!(inodes(&conflist_path), ino_conf);
    let conflist: serde_json::Value =
        serde_json::from_slice(&fs::read(&conflist_path).unwrap()).unwrap();
    assert_eq!(
        conflist["plugins"][0]["agentSocket"],
        "/var/run/ferrovia/agent.sock"
    );
    assert_eq!(conflist["plugins"][0].get("mtu"), None);
    // No temporary files left in either directory.
    for d in [bin.path(), conf.path()] {
        for e in fs::read_dir(d).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.starts_with('.'), "left behind: {name}");
        }
    }
}

#[test]
fn a_half_written_old_plugin_is_replaced_whole() {
    let bin = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let plugin = bin.path().join("ferrovia-cni");
    fs::write(&plugin, b"\x7fELF truncated").unwrap();
    let o = install(bin.path(), conf.path(), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ferrovia-cni: updated"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read(&plugin).unwrap(), fs::read(FERROVIA).unwrap());
}

#[test]
fn other_plugins_configurations_are_left_alone_and_reported() {
    let bin = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let before =
        r#"{"cniVersion":"1.0.0","name":"kindnet","plugins":[{"type":"ptp"},{"type":"portmap"}]}"#;
    let after = r#"{"cniVersion":"0.3.1","name":"cbr0","type":"bridge"}"#;
    fs::write(conf.path().join("05-kindnet.conflist"), before).unwrap();
    fs::write(conf.path().join("99-loopback.conf"), after).unwrap();
    let o = install(bin.path(), conf.path(), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no line about {name}: {}", text(&o)))
            .to_string()
    };
    let l = line("05-kindnet.conflist");
    assert!(l.contains("left alone"), "{l}");
    assert!(l.contains("ptp, portmap"), "{l}");
    assert!(l.contains("WARNING"), "{l}");
    let l = line("99-loopback.conf");
    assert!(l.contains("left alone"), "{l}");
    assert!(l.contains("bridge"), "{l}");
    assert!(!l.contains("WARNING"), "{l}");
    // Untouched.
    assert_eq!(
        fs::read_to_string(conf.path().join("05-kindnet.conflist")).unwrap(),
        before
    );
    assert_eq!(
        fs::read_to_string(conf.path().join("99-loopback.conf")).unwrap(),
        after
    );
}

#[test]
fn another_plugins_file_under_our_name_is_refused_not_overwritten() {
    let bin = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let theirs = r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"calico"}]}"#;
    let path = conf.path().join("10-ferrovia.conflist");
    fs::write(&path, theirs).unwrap();
    let o = install(bin.path(), conf.path(), &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("another network plugin"), "{}", text(&o));
    assert!(err.contains("calico"), "{}", text(&o));
    assert!(err.contains("cni.conflistName"), "{}", text(&o));
    assert_eq!(fs::read_to_string(&path).unwrap(), theirs);
    // Nothing was installed either: the failure comes first.
    assert!(!bin.path().join("ferrovia-cni").exists());
}

#[test]
fn bad_arguments_are_refused_naming_the_flag() {
    let bin = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    for (extra, flag) in [
        (&["--mtu", "100"][..], "--mtu"),
        (&["--agent-socket", "run/x.sock"][..], "--agent-socket"),
        (&["--conflist-name", "ferrovia.json"][..], "--conflist-name"),
    ] {
        let o = install(bin.path(), conf.path(), extra);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(flag),
            "{}",
            text(&o)
        );
        assert_eq!(fs::read_dir(bin.path()).unwrap().count(), 0);
        assert_eq!(fs::read_dir(conf.path()).unwrap().count(), 0);
    }
    let missing = bin.path().join("missing");
    let o = install(&missing, conf.path(), &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--bin-dir"),
        "{}",
        text(&o)
    );
}
