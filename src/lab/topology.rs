//! containerlab topology files (`*.clab.yml`): the subset the lab runner uses, parsed with
//! serde and resolved the way containerlab resolves it (defaults < kinds < groups < node).
//!
//! What is used: `name`; `topology.defaults`, `.kinds`, `.groups` and `.nodes` with `kind`,
//! `group`, `image`, `binds`, `exec`, `env`, `cmd`, `labels`, `sysctls` (a node's own value
//! wins over its group's, its kind's, then the defaults'; maps and binds are merged, a later
//! level's bind replacing one with the same target); `topology.links` with
//! `endpoints` in the short form (`["n1:eth1", "sw:eth1"]`) or the extended veth form
//! (`{type: veth, endpoints: [{node, interface, ipv4, ipv6}], mtu}`). Fields that only mean
//! something to a container runtime (`mgmt-ipv4`, `ports`, `network-mode`, …) are accepted
//! and ignored; `lab up` lists the ignored ones it meets.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The label that overrides the role the runner derives from the image.
pub const ROLE_LABEL: &str = "ferrovia-lab-role";

/// Where a ferrovia node's agent configuration must be bound.
pub const AGENT_CONFIG: &str = "/etc/ferrovia/agent.yaml";
pub const FRR_CONFIG: &str = "/etc/frr/frr.conf";
pub const FRR_DAEMONS: &str = "/etc/frr/daemons";
pub const BIRD_CONFIG: &str = "/etc/bird/bird.conf";

/// The topology file as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawFile {
    name: String,
    topology: RawTopology,
    #[serde(flatten)]
    _other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawTopology {
    #[serde(default)]
    defaults: Option<RawNode>,
    #[serde(default)]
    kinds: BTreeMap<String, RawNode>,
    #[serde(default)]
    groups: BTreeMap<String, RawNode>,
    #[serde(default)]
    nodes: BTreeMap<String, Option<RawNode>>,
    #[serde(default)]
    links: Vec<RawLink>,
    #[serde(flatten)]
    _other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// A node's settings, at any level (defaults, kinds, groups, nodes).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawNode {
    kind: Option<String>,
    group: Option<String>,
    image: Option<String>,
    #[serde(default)]
    binds: Vec<String>,
    exec: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, Scalar>,
    cmd: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, Scalar>,
    #[serde(default)]
    sysctls: BTreeMap<String, Scalar>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// A YAML scalar as containerlab accepts it in env, labels and sysctls.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawLink {
    Short {
        endpoints: Vec<String>,
        #[serde(default)]
        mtu: Option<u32>,
    },
    Extended {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        endpoints: Vec<RawEndpoint>,
        #[serde(default)]
        mtu: Option<u32>,
    },
}

#[derive(Debug, Deserialize)]
struct RawEndpoint {
    node: String,
    interface: String,
    #[serde(default)]
    ipv4: Option<String>,
    #[serde(default)]
    ipv6: Option<String>,
}

/// What a node runs, derived from its image (or the [`ROLE_LABEL`] label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `ferrovia agent --config /etc/ferrovia/agent.yaml`.
    Ferrovia,
    /// FRR: zebra and the daemons of /etc/frr/daemons (bgpd and staticd by default).
    Frr,
    /// BIRD 2 with /etc/bird/bird.conf.
    Bird,
    /// Only its `exec` commands (and `cmd`, when given).
    Linux,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Ferrovia => "ferrovia",
            Role::Frr => "frr",
            Role::Bird => "bird",
            Role::Linux => "linux",
        }
    }

    /// The role of an image: its repository's last path component `ferrovia` → the agent;
    /// one containing `frr` → FRR; one containing `bird` → BIRD; anything else → linux.
    pub fn of_image(image: &str) -> Role {
        let no_digest = image.split('@').next().unwrap_or(image);
        // A tag is a ':' after the last '/' (a registry port comes before one).
        let repo = match no_digest.rfind(':') {
            Some(i) if i > no_digest.rfind('/').map_or(0, |s| s) => &no_digest[..i],
            _ => no_digest,
        };
        let last = repo.rsplit('/').next().unwrap_or(repo).to_ascii_lowercase();
        if last == "ferrovia" {
            Role::Ferrovia
        } else if last.contains("frr") {
            Role::Frr
        } else if last.contains("bird") {
            Role::Bird
        } else {
            Role::Linux
        }
    }

    fn from_label(v: &str) -> Option<Role> {
        Some(match v {
            "ferrovia" => Role::Ferrovia,
            "frr" => Role::Frr,
            "bird" => Role::Bird,
            "linux" => Role::Linux,
            _ => return None,
        })
    }
}

/// A bind mount: a host path onto a path inside the node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bind {
    /// Resolved host path (absolute). Sources under the lab directory (`__clabDir__`) are
    /// created when missing.
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
    /// True when `source` lies in the lab directory (and may be created by the runner).
    pub in_lab_dir: bool,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub image: String,
    pub role: Role,
    pub binds: Vec<Bind>,
    /// Commands, each already split into words (no shell).
    pub exec: Vec<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub cmd: Option<Vec<String>>,
    pub sysctls: BTreeMap<String, String>,
    /// Settings present in the file that the runner does not use.
    pub ignored: BTreeSet<String>,
}

impl Node {
    pub fn bind_to(&self, target: &str) -> Option<&Bind> {
        self.binds.iter().find(|b| b.target == Path::new(target))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub node: String,
    pub iface: String,
    /// Addresses (CIDR) to put on the interface.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub a: Endpoint,
    pub b: Endpoint,
    pub mtu: Option<u32>,
}

/// A resolved topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub name: String,
    pub file: PathBuf,
    /// Nodes in the order they appear in the file.
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
}

impl Topology {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Longest interface name Linux accepts.
pub const IFNAMSIZ_MAX: usize = 15;

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Checks a lab name: containerlab's pattern, and short enough for the namespaces made
/// from it.
pub fn check_lab_name(name: &str) -> Result<()> {
    if !valid_name(name) || name.len() > 40 {
        bail!(
            "lab name {name:?} is not usable: 1–40 characters, letters, digits, '-', '.', '_', starting with a letter or digit"
        );
    }
    Ok(())
}

/// Reads and resolves a topology file. `lab_dir` is what `__clabDir__` stands for (the lab's
/// state directory); `name` overrides the file's `name`.
pub fn load(
    file: &Path,
    name: Option<&str>,
    lab_dir: impl Fn(&str) -> PathBuf,
) -> Result<Topology> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the topology file {}", file.display()))?;
    let file = std::fs::canonicalize(file)
        .with_context(|| format!("resolving the topology file {}", file.display()))?;
    parse(&text, &file, name, lab_dir)
}

/// [`load`] on text already read; `file` is the file's absolute path (relative bind
/// sources resolve against its directory).
pub fn parse(
    text: &str,
    file: &Path,
    name: Option<&str>,
    lab_dir: impl Fn(&str) -> PathBuf,
) -> Result<Topology> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: RawFile = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", file.display(), e.path(), e.inner()))?;
    let lab = name.unwrap_or(&raw.name).to_string();
    check_lab_name(&lab).with_context(|| format!("{}", file.display()))?;
    let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let lab_dir = lab_dir(&lab);
    let topo = raw.topology;
    if topo.nodes.is_empty() {
        bail!("{}: topology.nodes is empty", file.display());
    }
    let defaults = topo.defaults.clone().unwrap_or_default();

    // Node order: as in the file. serde_yaml_ng maps keep no order in a BTreeMap, so read
    // the keys again in document order.
    let order = node_order(text).unwrap_or_else(|| topo.nodes.keys().cloned().collect());
    let mut nodes = Vec::new();
    for name in order {
        let Some(own) = topo.nodes.get(&name) else {
            continue;
        };
        let own = own.clone().unwrap_or_default();
        let node = resolve_node(&name, &defaults, &topo, &own, &dir, &lab_dir)
            .with_context(|| format!("{}: node {name}", file.display()))?;
        nodes.push(node);
    }

    let mut links = Vec::new();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for (i, l) in topo.links.iter().enumerate() {
        let ctx = || format!("{}: topology.links[{i}]", file.display());
        let (eps, mtu) = match l {
            RawLink::Short { endpoints, mtu } => {
                let mut eps = Vec::new();
                for e in endpoints {
                    let (n, ifc) = e.split_once(':').ok_or_else(|| {
                        anyhow::anyhow!("{}: endpoint {e:?} is not NODE:INTERFACE", ctx())
                    })?;
                    eps.push(Endpoint {
                        node: n.to_string(),
                        iface: ifc.to_string(),
                        addresses: Vec::new(),
                    });
                }
                (eps, *mtu)
            }
            RawLink::Extended {
                kind,
                endpoints,
                mtu,
            } => {
                if kind != "veth" {
                    bail!(
                        "{}: link type {kind:?} is not supported by the lab runner (only veth)",
                        ctx()
                    );
                }
                let eps = endpoints
                    .iter()
                    .map(|e| Endpoint {
                        node: e.node.clone(),
                        iface: e.interface.clone(),
                        addresses: e.ipv4.iter().chain(e.ipv6.iter()).cloned().collect(),
                    })
                    .collect();
                (eps, *mtu)
            }
        };
        if eps.len() != 2 {
            bail!("{}: a veth link has exactly two endpoints", ctx());
        }
        for e in &eps {
            if !nodes.iter().any(|n| n.name == e.node) {
                bail!(
                    "{}: endpoint node {:?} is not in topology.nodes",
                    ctx(),
                    e.node
                );
            }
            if e.iface.is_empty()
                || e.iface.len() > IFNAMSIZ_MAX
                || e.iface.contains(['/', ' ', ':'])
            {
                bail!(
                    "{}: interface name {:?} is not usable (1–{IFNAMSIZ_MAX} characters, no '/', ':' or spaces)",
                    ctx(),
                    e.iface
                );
            }
            if e.iface == "lo" {
                bail!("{}: interface name \"lo\" is taken", ctx());
            }
            if !used.insert((e.node.clone(), e.iface.clone())) {
                bail!(
                    "{}: interface {}:{} is used by two links",
                    ctx(),
                    e.node,
                    e.iface
                );
            }
            for a in &e.addresses {
                a.parse::<ipnet::IpNet>()
                    .map_err(|err| anyhow::anyhow!("{}: address {a:?}: {err}", ctx()))?;
            }
        }
        let mut it = eps.into_iter();
        let (a, b) = (it.next().expect("two"), it.next().expect("two"));
        links.push(Link { a, b, mtu });
    }
    Ok(Topology {
        name: lab,
        file: file.to_path_buf(),
        nodes,
        links,
    })
}

/// The keys of `topology.nodes` in document order.
fn node_order(text: &str) -> Option<Vec<String>> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    let nodes = v.get("topology")?.get("nodes")?.as_mapping()?;
    Some(
        nodes
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
    )
}

/// Fields accepted and ignored without a note: they only matter to a container runtime or
/// to containerlab's own management network.
const SILENTLY_IGNORED: &[&str] = &[
    "mgmt-ipv4",
    "mgmt-ipv6",
    "network-mode",
    "image-pull-policy",
    "restart-policy",
    "auto-remove",
    "startup-delay",
    "cap-add",
    "privileged",
    "hostname",
];

fn resolve_node(
    name: &str,
    defaults: &RawNode,
    topo: &RawTopology,
    own: &RawNode,
    dir: &Path,
    lab_dir: &Path,
) -> Result<Node> {
    if !valid_name(name) || name.len() > 30 {
        bail!("the node name is not usable: 1–30 letters, digits, '-', '.', '_'");
    }
    let empty = RawNode::default();
    let group = match &own.group {
        Some(g) => topo
            .groups
            .get(g)
            .ok_or_else(|| anyhow::anyhow!("group {g:?} is not in topology.groups"))?,
        None => &empty,
    };
    let kind = own
        .kind
        .clone()
        .or_else(|| group.kind.clone())
        .or_else(|| defaults.kind.clone())
        .ok_or_else(|| anyhow::anyhow!("no kind (set kind on the node or in topology.defaults)"))?;
    if kind != "linux" {
        bail!("kind {kind:?} is not supported by the lab runner; use kind: linux (FRR, BIRD and ferrovia all run as linux nodes)");
    }
    let k = topo.kinds.get(&kind).unwrap_or(&empty);
    // node > group > kind > defaults, as containerlab resolves them
    let levels = [own, group, k, defaults];
    let first = |f: &dyn Fn(&RawNode) -> Option<String>| levels.iter().find_map(|l| f(l));
    let image = first(&|l| l.image.clone())
        .ok_or_else(|| anyhow::anyhow!("no image (the runner picks what to run by image)"))?;
    let mut env = BTreeMap::new();
    let mut labels = BTreeMap::new();
    let mut sysctls = BTreeMap::new();
    let mut binds: Vec<Bind> = Vec::new();
    let mut ignored = BTreeSet::new();
    for l in levels.iter().rev() {
        env.extend(l.env.iter().map(|(k, v)| (k.clone(), v.text())));
        labels.extend(l.labels.iter().map(|(k, v)| (k.clone(), v.text())));
        sysctls.extend(l.sysctls.iter().map(|(k, v)| (k.clone(), v.text())));
        for b in &l.binds {
            let b = parse_bind(b, dir, lab_dir, name)?;
            binds.retain(|x| x.target != b.target);
            binds.push(b);
        }
        for k in l.other.keys() {
            if !SILENTLY_IGNORED.contains(&k.as_str()) {
                ignored.insert(k.clone());
            }
        }
    }
    let exec = levels
        .iter()
        .find_map(|l| l.exec.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| split_words(c).with_context(|| format!("exec {c:?}")))
        .collect::<Result<Vec<_>>>()?;
    if exec.iter().any(Vec::is_empty) {
        bail!("an exec command is empty");
    }
    let cmd = match first(&|l| l.cmd.clone()) {
        Some(c) => {
            let w = split_words(&c).with_context(|| format!("cmd {c:?}"))?;
            (!w.is_empty()).then_some(w)
        }
        None => None,
    };
    let role = match labels.get(ROLE_LABEL) {
        Some(v) => Role::from_label(v).ok_or_else(|| {
            anyhow::anyhow!("label {ROLE_LABEL}: {v:?} is not one of ferrovia, frr, bird, linux")
        })?,
        None => Role::of_image(&image),
    };
    for k in sysctls.keys() {
        if !k.starts_with("net.") || k.contains('/') || k.contains("..") {
            bail!("sysctl {k:?}: only net.* settings are per node");
        }
    }
    let node = Node {
        name: name.to_string(),
        image,
        role,
        binds,
        exec,
        env,
        cmd,
        sysctls,
        ignored,
    };
    let need = |target: &str, what: &str| -> Result<()> {
        if node.bind_to(target).is_none() {
            bail!(
                "a {} node needs its {what} bound at {target} (binds: [\"FILE:{target}\"])",
                role.name()
            );
        }
        Ok(())
    };
    match role {
        Role::Ferrovia => need(AGENT_CONFIG, "agent configuration")?,
        Role::Frr => need(FRR_CONFIG, "FRR configuration")?,
        Role::Bird => need(BIRD_CONFIG, "BIRD configuration")?,
        Role::Linux => {}
    }
    Ok(node)
}

/// `SRC:DST[:ro|rw|…]` with containerlab's path rules: `~` is the home directory, relative
/// sources are relative to the topology file, `__clabDir__` is the lab directory and
/// `__clabNodeDir__` the node's directory in it.
fn parse_bind(spec: &str, dir: &Path, lab_dir: &Path, node: &str) -> Result<Bind> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => bail!(
            "bind {spec:?} is not SOURCE:TARGET[:OPTIONS] (anonymous volumes are not supported)"
        ),
    };
    if !dst.starts_with('/') || dst.split('/').any(|c| c == "..") {
        bail!("bind {spec:?}: the target must be an absolute path without '..'");
    }
    let node_dir = lab_dir.join("nodes").join(node);
    let replaced = src
        .replace("__clabNodeDir__", &node_dir.to_string_lossy())
        .replace("__clabDir__", &lab_dir.to_string_lossy());
    let source = if let Some(rest) = replaced.strip_prefix("~/") {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(rest)
    } else if replaced.starts_with('/') {
        PathBuf::from(&replaced)
    } else {
        dir.join(&replaced)
    };
    let source = normalize(&source);
    let in_lab_dir = source.starts_with(lab_dir);
    if in_lab_dir && source.components().any(|c| c.as_os_str() == "..") {
        bail!("bind {spec:?}: '..' is not allowed in lab directory paths");
    }
    let read_only = opts.split(',').any(|o| o == "ro");
    Ok(Bind {
        source,
        target: PathBuf::from(dst),
        read_only,
        in_lab_dir,
    })
}

/// Removes `.` and resolves `..` lexically.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Splits a command line into words like a POSIX shell does for quoting (single quotes,
/// double quotes with `\` escapes, backslash outside quotes) — and nothing else: no
/// variables, globs, pipes or redirections, as containerlab's `exec` runs without a shell.
pub fn split_words(s: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => bail!("unterminated single quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x);
                            }
                            None => bail!("unterminated double quote"),
                        },
                        Some(x) => cur.push(x),
                        None => bail!("unterminated double quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(x) => cur.push(x),
                    None => bail!("a trailing backslash"),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_dir(name: &str) -> PathBuf {
        PathBuf::from("/run/ferrovia-lab").join(name)
    }

    #[test]
    fn words() {
        assert_eq!(
            split_words("ip addr add 198.18.0.1/24 dev eth1").unwrap(),
            ["ip", "addr", "add", "198.18.0.1/24", "dev", "eth1"]
        );
        assert_eq!(
            split_words(r#"vtysh -c 'show bgp summary' -c "a \"b\" c" x\ y ''"#).unwrap(),
            [
                "vtysh",
                "-c",
                "show bgp summary",
                "-c",
                "a \"b\" c",
                "x y",
                ""
            ]
        );
        assert!(split_words("echo 'x").is_err());
        assert!(split_words("  ").unwrap().is_empty());
    }

    #[test]
    fn roles_from_images() {
        assert_eq!(
            Role::of_image("ghcr.io/ferrovia/ferrovia:latest"),
            Role::Ferrovia
        );
        assert_eq!(Role::of_image("ferrovia"), Role::Ferrovia);
        assert_eq!(Role::of_image("quay.io/frrouting/frr:8.4.4"), Role::Frr);
        assert_eq!(Role::of_image("ghcr.io/ferrovia/bird:2.0.12"), Role::Bird);
        assert_eq!(Role::of_image("localhost:5000/ferrovia"), Role::Ferrovia);
        assert_eq!(Role::of_image("nicolaka/netshoot:v0.13"), Role::Linux);
    }

    const TOPO: &str = r#"
name: t1
topology:
  defaults:
    kind: linux
    env: { A: "1" }
  kinds:
    linux:
      image: ghcr.io/ferrovia/ferrovia:latest
      binds: [ "__clabDir__/datastore:/var/lib/ferrovia" ]
  groups:
    routers:
      sysctls: { net.ipv4.ip_forward: 1 }
      env: { A: "2" }
  nodes:
    zeta:
      binds: [ "zeta.yaml:/etc/ferrovia/agent.yaml:ro" ]
      exec: [ "ip addr add 198.18.0.1/24 dev eth1" ]
      sysctls: { net.ipv4.ip_forward: 1 }
      mgmt-ipv4: 172.20.20.2
      ports: [ "80:80" ]
    tor:
      group: routers
      image: quay.io/frrouting/frr:8.4.4
      binds: [ "tor/frr.conf:/etc/frr/frr.conf" ]
  links:
    - endpoints: ["zeta:eth1", "tor:eth1"]
    - type: veth
      mtu: 9000
      endpoints:
        - { node: zeta, interface: eth2, ipv4: 198.18.1.1/24 }
        - { node: tor, interface: eth2 }
"#;

    #[test]
    fn resolves_levels_binds_and_links() {
        let t = parse(TOPO, Path::new("/x/topo/t.clab.yml"), None, lab_dir).unwrap();
        assert_eq!(t.name, "t1");
        let names: Vec<&str> = t.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["zeta", "tor"], "document order");
        let z = t.node("zeta").unwrap();
        assert_eq!(z.role, Role::Ferrovia);
        assert_eq!(z.env["A"], "1");
        assert_eq!(z.sysctls["net.ipv4.ip_forward"], "1");
        assert_eq!(z.ignored.iter().collect::<Vec<_>>(), ["ports"]);
        let b = z.bind_to(AGENT_CONFIG).unwrap();
        assert_eq!(b.source, Path::new("/x/topo/zeta.yaml"));
        assert!(b.read_only);
        let d = z.bind_to("/var/lib/ferrovia").unwrap();
        assert_eq!(d.source, Path::new("/run/ferrovia-lab/t1/datastore"));
        assert!(d.in_lab_dir);
        let tor = t.node("tor").unwrap();
        assert_eq!(tor.role, Role::Frr);
        assert_eq!(tor.env["A"], "2", "the group wins over the defaults");
        assert_eq!(tor.sysctls["net.ipv4.ip_forward"], "1");
        assert!(tor.ignored.is_empty());
        assert_eq!(t.links.len(), 2);
        assert_eq!(t.links[1].mtu, Some(9000));
        assert_eq!(t.links[1].a.addresses, ["198.18.1.1/24"]);
        let t2 = parse(
            TOPO,
            Path::new("/x/topo/t.clab.yml"),
            Some("fvt-x"),
            lab_dir,
        )
        .unwrap();
        assert_eq!(t2.name, "fvt-x");
        assert_eq!(
            t2.node("zeta")
                .unwrap()
                .bind_to("/var/lib/ferrovia")
                .unwrap()
                .source,
            Path::new("/run/ferrovia-lab/fvt-x/datastore")
        );
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let p = Path::new("/x/t.clab.yml");
        let err = |s: &str| format!("{:#}", parse(s, p, None, lab_dir).unwrap_err());
        let base = "name: t\ntopology:\n  nodes:\n";
        assert!(err(&format!(
            "{base}    a: {{ kind: nokia_srlinux, image: x }}\n"
        ))
        .contains("not supported"));
        assert!(err(&format!(
            "{base}    a: {{ kind: linux, image: ghcr.io/ferrovia/ferrovia }}\n"
        ))
        .contains("/etc/ferrovia/agent.yaml"));
        let two = format!(
            "{base}    a: {{ kind: linux, image: alpine }}\n    b: {{ kind: linux, image: alpine }}\n  links:\n"
        );
        assert!(err(&format!(
            "{two}    - endpoints: [\"a:averyveryverylongname\", \"b:eth1\"]\n"
        ))
        .contains("not usable"));
        assert!(
            err(&format!("{two}    - endpoints: [\"a:eth1\", \"c:eth1\"]\n"))
                .contains("not in topology.nodes")
        );
        assert!(err(&format!(
            "{two}    - endpoints: [\"a:eth1\", \"b:eth1\"]\n    - endpoints: [\"a:eth1\", \"b:eth2\"]\n"
        ))
        .contains("used by two links"));
        assert!(
            err("name: 'bad name'\ntopology:\n  nodes:\n    a: { kind: linux, image: x }\n")
                .contains("lab name")
        );
        assert!(err(&format!(
            "{base}    a: {{ kind: linux, image: x, sysctls: {{ kernel.panic: 1 }} }}\n"
        ))
        .contains("net.*"));
    }
}
