//! Checks shared by the tests of clusters on the Kubernetes datastore: pings between pods,
//! ferrovia's custom resources as kubectl lists them, and the API server's Nodes.

use super::cluster::{Cluster, Pod};
use serde_json::Value;

impl Pod {
    /// One ping from this pod to `to` (either family), answered within a second.
    pub fn ping(&self, to: &str) -> Result<(), String> {
        let fam = if to.contains(':') { "-6" } else { "-4" };
        let out = self.ns.exec(&["ping", fam, "-c", "1", "-W", "1", to]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} -> {to}: {}",
                self.id,
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }
}

impl Cluster {
    /// The items of a resource as `kubectl get RESOURCE -o json` lists them
    /// (e.g. `ipamblocks.ferrovia.io`).
    pub fn kube_items(&self, resource: &str) -> Vec<Value> {
        let text = self
            .control_plane()
            .kubectl(&["get", resource, "-o", "json"]);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kubectl get {resource} -o json: {e}: {text}"));
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// The CIDRs of the IPAM blocks whose affinity is `node`.
    pub fn kube_blocks_of(&self, node: &str) -> Vec<String> {
        self.kube_items("ipamblocks.ferrovia.io")
            .iter()
            .filter(|b| b["spec"]["affinity"] == node)
            .filter_map(|b| b["spec"]["cidr"].as_str().map(str::to_string))
            .collect()
    }

    /// Merge-patches the Node `name`'s spec (as the controller-manager would set its pod
    /// CIDRs).
    pub fn patch_node_spec(&self, name: &str, spec: Value) {
        self.control_plane()
            .call(
                "PATCH",
                &format!("/api/v1/nodes/{name}"),
                Some(&serde_json::json!({ "spec": spec })),
            )
            .expect_status(200, "patch the Node's spec");
    }

    /// The addresses of the peers node `i`'s agent has, whatever their state.
    pub fn peer_addresses(&self, i: u8) -> Result<Vec<String>, String> {
        let s = self.node(i).status()?;
        Ok(s["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["address"].as_str().map(str::to_string))
            .collect())
    }
}

/// The IPAM section of the Kubernetes cluster tests: one dual-stack pool pair, /26 and /122
/// blocks.
pub const KUBE_IPAM: &str = "ipam:\n  pools:\n    - { cidr: 10.244.0.0/16, blockSize: 26 }\n    - { cidr: \"fd00:10:244::/48\", blockSize: 122 }\n";

impl Cluster {
    /// ADD of a pod on node `i` through the CNI, asked again while the agent answers 11 (try
    /// again later), as a runtime does; any other error fails the test.
    pub fn add_pod_when_ready(&self, i: u8, name: &str) -> Pod {
        let ns = super::Netns::new(&self._lock, name);
        let result = super::wait_until(
            "the ADD is answered with a result",
            super::cluster::CONVERGE,
            super::cluster::POLL,
            || match self.cni(i, "ADD", name, Some(ns.name()), None) {
                (true, v) => Ok(v),
                (false, v) if v["code"] == 11 => Err(format!("code 11: {v}")),
                (false, v) => panic!("ADD of {name} on node{i} failed: {v}"),
            },
        );
        Pod {
            node: i,
            id: name.to_string(),
            ns,
            result,
        }
    }

    /// Stores `object` straight into etcd under the API server's key for it (`/registry/…`,
    /// JSON as the API server stores custom resources), e.g. while the API server is down.
    pub fn etcd_put(&self, key: &str, object: &Value) {
        let r = self
            .control_plane()
            .etcd()
            .call(
                "/v3/kv/put",
                &serde_json::json!({
                    "key": base64(key.as_bytes()),
                    "value": base64(object.to_string().as_bytes()),
                }),
            )
            .unwrap_or_else(|e| panic!("etcd put {key}: {e}"));
        assert!(
            r.get("error").is_none() && r.get("code").is_none(),
            "etcd put {key}: {r}"
        );
    }
}

/// Standard base64 with padding (what etcd's JSON gateway takes for keys and values).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * k)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A BIRD "ToR" on the cluster's segment (AS 65000) that accepts a session from any node
/// (AS 64512) and exports nothing: a peer for a `BGPPeer` object to point at.
pub struct Tor {
    // Drop order: BIRD, then its namespace.
    _bird: super::proc::Proc,
    pub ns: super::Netns,
}

impl Cluster {
    /// Starts a [`Tor`] at `addr` (in 198.18.0.0/24) in a namespace tagged `tag` (a few
    /// letters: it names the namespace, the bridge port and the files).
    pub fn bird_tor(&self, tag: &str, addr: &str) -> Tor {
        let ns = super::Netns::new(&self._lock, tag);
        let port = format!("p{tag}");
        super::Netns::veth(&ns, "eth0", &self.br, &port);
        self.br.ip(&["link", "set", &port, "master", "br0"]);
        ns.addr("eth0", &format!("{addr}/24"));
        let conf = self.dir.path().join(format!("{tag}.conf"));
        std::fs::write(
            &conf,
            format!(
                "router id {addr};\nprotocol device {{}}\nprotocol direct {{ ipv4; }}\n\
                 protocol bgp nodes {{\n  local {addr} as 65000;\n  neighbor range 198.18.0.0/24 as 64512;\n  \
                 dynamic name \"node\";\n  ipv4 {{ import all; export none; }};\n}}\n"
            ),
        )
        .expect("write the ToR's BIRD config");
        let bird = super::proc::Proc::spawn(
            ns.name(),
            &[
                "bird",
                "-f",
                "-c",
                &conf.display().to_string(),
                "-s",
                &self
                    .dir
                    .path()
                    .join(format!("{tag}.ctl"))
                    .display()
                    .to_string(),
            ],
            &self.dir.path().join(format!("{tag}.log")),
            &[],
        );
        Tor { _bird: bird, ns }
    }

    /// Node `i`'s sessions that are Established, by peer address.
    pub fn established_peers(&self, i: u8) -> Result<Vec<String>, String> {
        let s = self.node(i).status()?;
        let mut up: Vec<String> = s["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["state"] == "Established")
            .filter_map(|p| p["address"].as_str().map(str::to_string))
            .collect();
        up.sort();
        Ok(up)
    }
}
