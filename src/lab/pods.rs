//! Pods on lab nodes, made the way a container runtime makes them: a network namespace
//! under /run/netns, then the CNI plugin `ferrovia-cni` executed inside the node (its
//! network and mount namespaces, where the agent's socket is) with `CNI_*` in the
//! environment and the network configuration on stdin. DEL passes the ADD result back as
//! `prevResult`, as containerd and CRI-O do.

use super::state::{PodState, State};
use super::sys;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The network name in the plugin configuration.
pub const NETWORK: &str = "ferrovia";
pub const CNI_VERSION: &str = "1.0.0";
/// How long one plugin call may take (the kubelet allows two minutes).
const CNI_LIMIT: Duration = Duration::from_secs(60);

pub fn check_pod_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("pod name {name:?}: 1–40 lowercase letters, digits and '-'");
    }
    Ok(())
}

/// The network configuration the runtime hands the plugin.
pub fn net_conf(st: &State, node: &str) -> Result<Value> {
    let socket = st
        .node(node)?
        .socket
        .clone()
        .unwrap_or_else(|| crate::config::DEFAULT_SOCKET.into());
    Ok(json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK,
        "type": crate::cni::plugin::PLUGIN_NAME,
        "agentSocket": socket,
        "mtu": 1500,
    }))
}

/// Runs the plugin in the node. Returns (exit ok, stdout, stderr).
fn call(
    st: &State,
    p: &PodState,
    command: &str,
    conf: &Value,
    with_netns: bool,
) -> Result<(bool, String, String)> {
    let holder = st.holder(&p.node)?;
    let bin = st.bin_dir();
    let plugin = bin.join(crate::cni::plugin::PLUGIN_NAME);
    let mut c = Command::new("nsenter");
    c.arg("-t")
        .arg(holder.to_string())
        .args(["-m", "-n", "--"])
        .arg(&plugin)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &p.container_id)
        .env("CNI_IFNAME", &p.ifname)
        .env("CNI_PATH", &bin)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                p.name, p.container_id
            ),
        );
    if with_netns {
        c.env("CNI_NETNS", format!("/var/run/netns/{}", p.netns));
    }
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .with_context(|| format!("starting {}", plugin.display()))?;
    let input = serde_json::to_vec(conf)?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(&input)
            .context("writing the configuration to the plugin")?;
    }
    let mut so = child.stdout.take().context("stdout pipe")?;
    let mut se = child.stderr.take().context("stderr pipe")?;
    let t_out = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = so.read_to_string(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = se.read_to_string(&mut v);
        v
    });
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t.elapsed() > CNI_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command}: the plugin did not finish within {CNI_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok((
        status.success(),
        t_out.join().unwrap_or_default(),
        t_err.join().unwrap_or_default(),
    ))
}

/// The message of a CNI error result, or the raw output.
fn cni_error(stdout: &str, stderr: &str) -> String {
    match serde_json::from_str::<Value>(stdout) {
        Ok(v) if v.get("code").is_some() => format!(
            "CNI error {}: {}{}",
            v["code"],
            v["msg"].as_str().unwrap_or(""),
            v["details"]
                .as_str()
                .filter(|d| !d.is_empty())
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ),
        _ => format!("{}{}", stdout.trim(), stderr.trim()),
    }
}

/// `lab pod add`: namespace, CNI ADD, state. Returns the pod's addresses (CIDR).
pub fn add(st: &mut State, node: &str, name: &str) -> Result<Vec<String>> {
    check_pod_name(name)?;
    let n = st.node(node)?;
    if n.role != super::topology::Role::Ferrovia {
        bail!(
            "node {node} is a {} node; pods run on ferrovia nodes",
            n.role.name()
        );
    }
    if st.pods.iter().any(|p| p.node == node && p.name == name) {
        bail!("pod {name} already exists on {node}");
    }
    let netns = format!("{}-{node}-{name}", st.lab);
    let pod = PodState {
        node: node.to_string(),
        name: name.to_string(),
        netns: netns.clone(),
        container_id: format!("lab-{}-{node}-{name}", st.lab),
        ifname: "eth0".into(),
        result: None,
        addresses: Vec::new(),
    };
    st.pods.push(pod.clone());
    st.save()?;
    let r = (|| -> Result<Vec<String>> {
        sys::ip(&["netns", "add", &netns])?;
        sys::ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        let conf = net_conf(st, node)?;
        let (ok, out, err) = call(st, &pod, "ADD", &conf, true)?;
        if !ok {
            bail!("ferrovia-cni ADD failed: {}", cni_error(&out, &err));
        }
        let result: Value = serde_json::from_str(&out)
            .map_err(|e| anyhow::anyhow!("ferrovia-cni ADD printed no result JSON ({e}): {out}"))?;
        let addresses: Vec<String> = result["ips"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|ip| ip["address"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if addresses.is_empty() {
            bail!("ferrovia-cni ADD returned no addresses: {out}");
        }
        let p = st
            .pods
            .iter_mut()
            .find(|p| p.node == node && p.name == name)
            .context("pod state")?;
        p.result = Some(result);
        p.addresses = addresses.clone();
        st.save()?;
        Ok(addresses)
    })();
    if r.is_err() {
        // Undo like a runtime does after a failed ADD: DEL, then the namespace.
        let _ = cni_del(st, &pod);
        let _ = sys::ip(&["netns", "del", &netns]);
        st.pods.retain(|p| !(p.node == node && p.name == name));
        st.save()?;
    }
    r
}

/// CNI DEL for a pod (the namespace may already be gone).
pub fn cni_del(st: &State, p: &PodState) -> Result<()> {
    let mut conf = net_conf(st, &p.node)?;
    if let Some(r) = &p.result {
        conf["prevResult"] = r.clone();
    }
    let with_netns = sys::netns_exists(&p.netns);
    let (ok, out, err) = call(st, p, "DEL", &conf, with_netns)?;
    if !ok {
        bail!("ferrovia-cni DEL failed: {}", cni_error(&out, &err));
    }
    Ok(())
}

/// `lab pod del`.
pub fn del(st: &mut State, node: &str, name: &str) -> Result<()> {
    let Some(p) = st
        .pods
        .iter()
        .find(|p| p.node == node && p.name == name)
        .cloned()
    else {
        bail!("no pod {name} on {node} in lab {}", st.lab);
    };
    cni_del(st, &p)?;
    if sys::netns_exists(&p.netns) {
        for pid in sys::netns_pids(&p.netns) {
            if let Some(x) = sys::ProcId::of(pid) {
                x.kill();
            }
        }
        sys::ip(&["netns", "del", &p.netns])?;
    }
    st.pods.retain(|x| !(x.node == node && x.name == name));
    st.save()?;
    Ok(())
}

/// The namespace of a pod, for `pod exec`.
pub fn netns_of(st: &State, node: &str, name: &str) -> Result<String> {
    st.pods
        .iter()
        .find(|p| p.node == node && p.name == name)
        .map(|p| p.netns.clone())
        .ok_or_else(|| anyhow::anyhow!("no pod {name} on {node} in lab {}", st.lab))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names() {
        assert!(check_pod_name("web-1").is_ok());
        assert!(check_pod_name("").is_err());
        assert!(check_pod_name("-x").is_err());
        assert!(check_pod_name("Web").is_err());
        assert!(check_pod_name("a/b").is_err());
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            cni_error(
                r#"{"cniVersion":"1.0.0","code":11,"msg":"agent unreachable","details":"x"}"#,
                ""
            ),
            "CNI error 11: agent unreachable (x)"
        );
        assert_eq!(cni_error("", "boom\n"), "boom");
    }
}
