//! The Helm chart (charts/ferrovia) rendered offline, for tests/chart.rs and the chart's
//! checks on the real API server: Helm runs through helm-python-sdk (the Helm v4 library, no
//! cluster, no network) in the virtual environment scripts/test.sh creates at
//! /var/cache/ferrovia/chart-venv (FERROVIA_CHART_VENV overrides it);
//! scripts/chart_check.py is the bridge.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The value sets every offline check runs on: the defaults and charts/ferrovia/ci/*.
pub const VALUE_SETS: &[&str] = &[
    "-",
    "ci/dual-stack-tor-values.yaml",
    "ci/podcidr-values.yaml",
    "ci/reflectors-values.yaml",
];

/// The release name and namespace the chart is rendered with.
pub const RELEASE: &str = "ferrovia";
pub const RELEASE_NAMESPACE: &str = "kube-system";

pub fn chart_dir() -> PathBuf {
    super::repo_root().join("charts/ferrovia")
}

/// A tool of the chart-check virtual environment (`python`, `kubernetes-validate`).
pub fn venv_bin(tool: &str) -> PathBuf {
    let venv = std::env::var_os("FERROVIA_CHART_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ferrovia/chart-venv"));
    let bin = venv.join("bin").join(tool);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test.sh once (as root) to create the chart-check \
         environment (python3 -m venv with helm-python-sdk and kubernetes-validate), or set \
         FERROVIA_CHART_VENV",
        bin.display()
    );
    bin
}

/// Runs scripts/chart_check.py and parses its JSON answer.
pub fn chart_check(args: &[&str]) -> Value {
    let out = Command::new(venv_bin("python"))
        .arg(super::repo_root().join("scripts/chart_check.py"))
        .args(args)
        .output()
        .expect("run scripts/chart_check.py");
    assert!(
        out.status.success(),
        "chart_check.py {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "chart_check.py {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The chart's manifests for one set of values (like `helm template`), one file each.
pub struct Rendered {
    pub dir: tempfile::TempDir,
    pub files: Vec<PathBuf>,
    pub docs: Vec<Value>,
    pub notes: String,
}

impl Rendered {
    pub fn find(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    pub fn one(&self, kind: &str) -> &Value {
        let found = self.find(kind);
        assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
        found[0]
    }

    /// The agent configuration file the ConfigMap carries.
    pub fn agent_config(&self) -> String {
        self.one("ConfigMap")["data"]["agent.yaml"]
            .as_str()
            .expect("the ConfigMap has data.agent.yaml")
            .to_string()
    }

    pub fn daemonset(&self) -> &Value {
        self.one("DaemonSet")
    }
}

/// Renders the chart with a values file (relative to the chart, or absolute; "-": the
/// defaults). `Err` is the chart's refusal (schema or template failure).
pub fn render_set(values: &str) -> Result<Rendered, String> {
    let path = if values == "-" {
        "-".to_string()
    } else {
        chart_dir().join(values).display().to_string()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let out = chart_check(&[
        "render",
        &chart_dir().display().to_string(),
        &path,
        &dir.path().display().to_string(),
    ]);
    if let Some(e) = out.get("error") {
        return Err(e.as_str().unwrap_or_default().to_string());
    }
    let files = out["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(Value::as_str)
        .map(PathBuf::from)
        .collect();
    let docs = out["docs"].as_array().cloned().expect("docs");
    Ok(Rendered {
        dir,
        files,
        docs,
        notes: out["notes"].as_str().unwrap_or_default().to_string(),
    })
}

/// [`render_set`] that panics on a refusal.
pub fn render_ok(values: &str) -> Rendered {
    render_set(values).unwrap_or_else(|e| panic!("the chart refuses {values}: {e}"))
}

/// Renders with values given as YAML text.
pub fn render_values(yaml: &str) -> Result<Rendered, String> {
    let f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::fs::write(f.path(), yaml).expect("write values");
    render_set(&f.path().display().to_string())
}

/// The CRD files shipped in charts/ferrovia/crds/, sorted.
pub fn crd_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("crds"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Where a path inside the chart's directory is, for messages.
pub fn in_chart(p: &Path) -> String {
    p.strip_prefix(chart_dir())
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| p.display().to_string())
}
