//! The lab topologies as files: each is a valid containerlab topology (checked against
//! containerlab's JSON schema, ../shared/clab.schema.json, with the `jsonschema` crate),
//! `ferrovia lab check` accepts it and the configurations it binds, and every address in
//! them is from the test address plan. No root, no namespaces.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ferrovia");
const REQUIRED: [&str; 4] = ["mesh", "leaf-spine", "reflector", "dual-stack"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/topologies")
}

fn topologies() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("tests/topologies")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".clab.yml"))
        .collect();
    v.sort();
    v
}

fn schema() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/clab.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (containerlab's schema is kept in shared/ beside the checkout)",
            path.display()
        )
    });
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("containerlab's schema compiles")
}

fn yaml_to_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read topology");
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    serde_json::to_value(v).expect("YAML as JSON")
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn the_four_topologies_exist() {
    let have: Vec<String> = topologies()
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".clab.yml")
                .to_string()
        })
        .collect();
    for r in REQUIRED {
        assert!(have.iter().any(|h| h == r), "no {r}.clab.yml in {have:?}");
    }
}

#[test]
fn every_topology_is_valid_against_containerlabs_schema() {
    let v = schema();
    for t in topologies() {
        let doc = yaml_to_json(&t);
        let errs = errors(&v, &doc);
        assert!(errs.is_empty(), "{}:\n{}", t.display(), errs.join("\n"));
    }
}

#[test]
fn the_schema_check_catches_mistakes() {
    // The validator really validates: a few wrong files are refused.
    let v = schema();
    let good = yaml_to_json(&dir().join("mesh.clab.yml"));
    let mut bad_kind = good.clone();
    bad_kind["topology"]["nodes"]["n1"]["kind"] = "not-a-kind".into();
    let mut bad_field = good.clone();
    bad_field["topology"]["nodes"]["n1"]["bindz"] = serde_json::json!(["a:b"]);
    let mut bad_name = good.clone();
    bad_name["name"] = "-bad name".into();
    for (what, doc) in [
        ("unknown kind", bad_kind),
        ("unknown node field", bad_field),
        ("bad lab name", bad_name),
    ] {
        assert!(!errors(&v, &doc).is_empty(), "{what} accepted");
    }
}

#[test]
fn ferrovia_lab_check_accepts_every_topology_and_its_configurations() {
    for t in topologies() {
        let out = Command::new(BIN)
            .args(["lab", "check"])
            .arg(&t)
            .output()
            .expect("ferrovia lab check");
        assert!(
            out.status.success(),
            "ferrovia lab check {}:\n{}{}",
            t.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn ferrovia_lab_check_refuses_what_it_cannot_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "name: x\ntopology:\n  nodes:\n    a: { kind: nokia_srlinux, image: srl }\n",
            "use kind: linux",
        ),
        (
            "name: x\ntopology:\n  nodes:\n    a: { kind: linux, image: ghcr.io/ferrovia/ferrovia:latest }\n",
            "/etc/ferrovia/agent.yaml",
        ),
        (
            "name: x\ntopology:\n  nodes:\n    a: { kind: linux, image: alpine, binds: [\"missing.conf:/etc/x\"] }\n",
            "does not exist",
        ),
        (
            "name: x\ntopology:\n  nodes:\n    a: { kind: linux, image: alpine }\n  links:\n    - endpoints: [\"a:eth1\", \"b:eth1\"]\n",
            "not in topology.nodes",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = tmp.path().join(format!("t{i}.clab.yml"));
        std::fs::write(&f, text).expect("write");
        let out = Command::new(BIN)
            .args(["lab", "check"])
            .arg(&f)
            .output()
            .expect("ferrovia lab check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} accepted");
        assert!(err.contains(want), "case {i}: {err:?} should say {want:?}");
    }
}

/// Every IP address written in the topologies and their configurations is from the test
/// plan (GUIDE §4): 198.18.0.0/15 for links, 10.244.0.0/16 and fd00::/8 for pods and IPv6
/// links, plus loopback.
#[test]
fn every_address_is_from_the_test_plan() {
    use std::net::IpAddr;
    let mut files = Vec::new();
    let mut stack = vec![dir()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    let ok = |a: IpAddr| match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || (o[0] == 10 && o[1] == 244)
                || o[0] == 127
                || v.is_unspecified()
        }
        IpAddr::V6(v) => v.segments()[0] & 0xff00 == 0xfd00 || v.is_loopback(),
    };
    let mut seen = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for word in text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':')) {
            let w = word.trim_matches(|c| c == ':' || c == '.');
            // An address, maybe with a port (127.0.0.1:9091) — not a time or a version.
            let cand = w
                .rsplit_once(':')
                .filter(|(h, p)| h.contains('.') && p.chars().all(|c| c.is_ascii_digit()))
                .map(|(h, _)| h)
                .unwrap_or(w);
            let Ok(a) = cand.parse::<IpAddr>() else {
                continue;
            };
            if let IpAddr::V6(v) = a {
                // "64512:100"-like words are not addresses.
                if !cand.contains("::") && v.segments().iter().filter(|s| **s != 0).count() < 3 {
                    continue;
                }
            }
            seen += 1;
            assert!(
                ok(a),
                "{}: {a} is not from the test address plan",
                f.display()
            );
        }
    }
    assert!(
        seen > 50,
        "found only {seen} addresses; is the scan working?"
    );
}
