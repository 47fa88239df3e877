//! Service addresses over BGP: which Service prefixes this node announces.
//!
//! The cluster's `BGPConfiguration` lists the Service ranges (`serviceClusterIPs`,
//! `serviceExternalIPs`, `serviceLoadBalancerIPs`). Every node announces each range, and the
//! /32 (/128) of each Service address inside one: from every node for the `Cluster` traffic
//! policy, and only from nodes with a ready local endpoint for `externalTrafficPolicy: Local`
//! (external and load balancer IPs) and `internalTrafficPolicy: Local` (cluster IPs). An
//! address outside every range is never announced (logged once). The agent only routes to
//! nodes: kube-proxy (or its replacement) balances the traffic that arrives, so no kernel route
//! for these addresses is installed.
//!
//! [`prefixes`] is the pure part; [`services_task`] watches Services and their endpoints
//! (EndpointSlices where the API server has `discovery.k8s.io/v1`, core Endpoints otherwise)
//! and hands the set to the announce task.

use crate::datastore::model::{ClusterBgp, ServiceCidrs, CLUSTER_BGP_NAME};
use crate::datastore::{decode, Reflector, Resource, Selector, SharedDatastore};
use futures::stream::BoxStream;
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// Pause after a failed read before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// The label of an EndpointSlice naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The addresses of one Service and its traffic policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAddrs {
    /// `namespace/name`.
    pub key: String,
    /// `spec.clusterIPs` (or `spec.clusterIP`), headless ones left out.
    pub cluster: Vec<IpAddr>,
    /// `spec.externalIPs`.
    pub external: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
}

/// A Service address left out because no configured range holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outside {
    pub service: String,
    pub address: IpAddr,
    /// The key of the ranges it was looked for in.
    pub key: &'static str,
}

/// The prefixes this node announces for Services: every configured range, and the host
/// prefix of each Service address inside a range of its kind — for a `Local` policy only when
/// `local` (the `namespace/name`s of Services with a ready endpoint on this node) holds the
/// Service. Also returns the addresses outside every range of their kind.
pub fn prefixes(
    cidrs: &ServiceCidrs,
    services: &[ServiceAddrs],
    local: &BTreeSet<String>,
) -> (BTreeSet<IpNet>, Vec<Outside>) {
    let mut out: BTreeSet<IpNet> = cidrs
        .lists()
        .into_iter()
        .flat_map(|(_, l)| l.iter().copied())
        .collect();
    let mut outside = Vec::new();
    for s in services {
        let has_local = local.contains(&s.key);
        let kinds: [(&Vec<IpAddr>, &Vec<IpNet>, &'static str, bool); 3] = [
            (
                &s.cluster,
                &cidrs.cluster_ips,
                "serviceClusterIPs",
                s.internal_local,
            ),
            (
                &s.external,
                &cidrs.external_ips,
                "serviceExternalIPs",
                s.external_local,
            ),
            (
                &s.load_balancer,
                &cidrs.load_balancer_ips,
                "serviceLoadBalancerIPs",
                s.external_local,
            ),
        ];
        for (addrs, ranges, key, is_local) in kinds {
            for a in addrs {
                if !ranges.iter().any(|r| r.contains(a)) {
                    // Nothing configured for this kind is not worth a log line.
                    if !ranges.is_empty() {
                        outside.push(Outside {
                            service: s.key.clone(),
                            address: *a,
                            key,
                        });
                    }
                    continue;
                }
                if is_local && !has_local {
                    continue;
                }
                out.insert(IpNet::from(*a));
            }
        }
    }
    (out, outside)
}

/// The addresses and policies of a Service (ExternalName Services have none).
pub fn service_addrs(s: &Service) -> ServiceAddrs {
    let key = format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or("default"),
        s.metadata.name.as_deref().unwrap_or("")
    );
    let parse = |v: &str| v.parse::<IpAddr>().ok();
    let mut out = ServiceAddrs {
        key,
        ..Default::default()
    };
    if let Some(spec) = &s.spec {
        if spec.type_.as_deref() == Some("ExternalName") {
            return out;
        }
        let mut cluster: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|v| parse(v))
            .collect();
        if cluster.is_empty() {
            // Before dual-stack (1.20's clusterIPs may be absent in older objects).
            cluster.extend(spec.cluster_ip.as_deref().and_then(parse));
        }
        out.cluster = cluster;
        out.external = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|v| parse(v))
            .collect();
        out.external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        out.internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    }
    if let Some(lb) = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()) {
        out.load_balancer = lb
            .ingress
            .iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref().and_then(parse))
            .collect();
    }
    out
}

/// The Service of an Endpoints object (`namespace/name`, same name) when it has a ready
/// address on `node`.
pub fn endpoints_local(e: &Endpoints, node: &str) -> Option<String> {
    let ready = e.subsets.iter().flatten().any(|s| {
        s.addresses
            .iter()
            .flatten()
            .any(|a| a.node_name.as_deref() == Some(node))
    });
    ready.then(|| {
        format!(
            "{}/{}",
            e.metadata.namespace.as_deref().unwrap_or("default"),
            e.metadata.name.as_deref().unwrap_or("")
        )
    })
}

/// The Service of an EndpointSlice (its `kubernetes.io/service-name` label) when it has an
/// endpoint on `node` that is ready (an absent `ready` condition counts as ready, as the API
/// says).
pub fn slice_local(s: &EndpointSlice, node: &str) -> Option<String> {
    let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let ready = s.endpoints.iter().any(|e| {
        e.node_name.as_deref() == Some(node)
            && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
    });
    ready.then(|| {
        format!(
            "{}/{service}",
            s.metadata.namespace.as_deref().unwrap_or("default")
        )
    })
}

/// Where the endpoints come from: chosen once, at start, by API discovery.
enum EndpointSource {
    Endpoints(Store<Endpoints>),
    Slices(Store<EndpointSlice>),
}

impl EndpointSource {
    fn local(&self, node: &str) -> BTreeSet<String> {
        match self {
            EndpointSource::Endpoints(s) => s
                .state()
                .iter()
                .filter_map(|e| endpoints_local(e, node))
                .collect(),
            EndpointSource::Slices(s) => s
                .state()
                .iter()
                .filter_map(|e| slice_local(e, node))
                .collect(),
        }
    }
}

/// Does the API server serve `discovery.k8s.io/v1` EndpointSlices? Retried until it answers
/// (a 404 is an answer: no).
async fn has_endpoint_slices(client: &Client) -> bool {
    loop {
        match client.list_api_group_resources("discovery.k8s.io/v1").await {
            Ok(list) => return list.resources.iter().any(|r| r.name == "endpointslices"),
            Err(kube::Error::Api(e)) if e.code == 404 => return false,
            Err(e) => {
                warn!(error = %e, "API discovery (discovery.k8s.io/v1) failed; trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Keeps `tx` holding the Service prefixes this node announces (see the module doc). With no
/// Kubernetes client (the SQLite datastore) there are no Services: configured ranges are
/// logged once as unused and nothing is announced. Never ends on its own.
pub async fn services_task(
    store: SharedDatastore,
    client: Option<Client>,
    node: String,
    tx: watch::Sender<BTreeSet<IpNet>>,
) -> anyhow::Result<()> {
    let mut cluster = Reflector::of::<ClusterBgp>(store, Selector::everything());
    let Some(client) = client else {
        let mut said = false;
        loop {
            if let Err(e) = cluster.next().await {
                warn!(error = %e, "watching the cluster BGP settings failed; trying again");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            let set = current(&cluster).is_some_and(|c| !c.is_empty());
            if set && !said {
                warn!("serviceClusterIPs/serviceExternalIPs/serviceLoadBalancerIPs are set, but the SQLite datastore has no Services: nothing is announced for them (use the Kubernetes datastore)");
            }
            said = set;
        }
    };

    let slices = has_endpoint_slices(&client).await;
    info!(
        source = if slices {
            "discovery.k8s.io/v1 EndpointSlices"
        } else {
            "core/v1 Endpoints"
        },
        "watching Services and their endpoints for Service addresses over BGP"
    );
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let svc_stream = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(svc_writer)
    .map(|r| r.map(|_| ()))
    .boxed();
    let (source, ep_stream): (
        EndpointSource,
        BoxStream<'static, Result<(), watcher::Error>>,
    ) = if slices {
        let (s, w) = reflector::store::<EndpointSlice>();
        let st = watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(w)
        .map(|r| r.map(|_| ()))
        .boxed();
        (EndpointSource::Slices(s), st)
    } else {
        let (s, w) = reflector::store::<Endpoints>();
        let st = watcher(
            Api::<Endpoints>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(w)
        .map(|r| r.map(|_| ()))
        .boxed();
        (EndpointSource::Endpoints(s), st)
    };
    let mut events = futures::stream::select(svc_stream, ep_stream);
    let mut logged: HashSet<Outside> = HashSet::new();
    let mut cidrs = ServiceCidrs::default();
    let mut refused: Option<String> = None;
    loop {
        if !cluster.is_synced() {
            if let Err(e) = cluster.next().await {
                warn!(error = %e, "reading the cluster BGP settings failed; Service announcements unchanged");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        } else {
            tokio::select! {
                r = cluster.next() => if let Err(e) = r {
                    warn!(error = %e, "watching the cluster BGP settings failed; listing again");
                    tokio::time::sleep(RETRY).await;
                },
                ev = events.next() => match ev {
                    Some(Ok(())) => {}
                    Some(Err(e)) => warn!(error = %e, "watching Services or endpoints failed; retrying (announcements unchanged until then)"),
                    None => anyhow::bail!("the Service watch ended"),
                },
            }
        }
        if let Some(c) = current(&cluster) {
            match c.check() {
                Ok(()) => {
                    cidrs = c;
                    refused = None;
                }
                Err(e) => {
                    if refused.as_ref() != Some(&e) {
                        warn!(error = %e, "the cluster BGP settings' Service ranges are not valid; keeping the previous ones (fix them with ferrovia cluster set)");
                    }
                    refused = Some(e);
                }
            }
        } else {
            cidrs = ServiceCidrs::default();
        }
        let services: Vec<ServiceAddrs> =
            svc_store.state().iter().map(|s| service_addrs(s)).collect();
        let local = source.local(&node);
        let (wanted, outside) = prefixes(&cidrs, &services, &local);
        for o in outside {
            if logged.insert(o.clone()) {
                warn!(service = %o.service, address = %o.address, ranges = o.key, "a Service address outside the configured ranges is not announced; add its range to the BGPConfiguration to announce it");
            }
        }
        tx.send_if_modified(|cur| {
            if *cur == wanted {
                false
            } else {
                *cur = wanted;
                true
            }
        });
    }
}

/// The Service ranges of the stored cluster settings (`None` when absent or unreadable).
fn current(cluster: &Reflector) -> Option<ServiceCidrs> {
    let item = cluster
        .items()
        .find(|i| i.object.name == CLUSTER_BGP_NAME)?;
    match decode::<ClusterBgp>(item.clone()) {
        Ok(c) => Some(c.value.services),
        Err(e) => {
            warn!(error = %e, kind = ClusterBgp::KIND, "the cluster BGP settings are not valid");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cidrs() -> ServiceCidrs {
        ServiceCidrs {
            cluster_ips: vec!["10.96.0.0/12".parse().unwrap()],
            external_ips: vec!["198.51.100.0/24".parse().unwrap()],
            load_balancer_ips: vec![
                "203.0.113.0/24".parse().unwrap(),
                "fd00:203::/64".parse().unwrap(),
            ],
        }
    }

    fn svc(v: serde_json::Value) -> ServiceAddrs {
        service_addrs(&serde_json::from_value(v).unwrap())
    }

    fn set(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn ranges_always_and_cluster_policy_addresses_everywhere() {
        let s = svc(json!({"metadata": {"name": "web", "namespace": "a"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "externalIPs": ["198.51.100.7"], "type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}, {"ip": "fd00:203::5"}, {"hostname": "x"}]}}}));
        let (p, outside) = prefixes(&cidrs(), &[s], &BTreeSet::new());
        assert_eq!(
            p,
            set(&[
                "10.96.0.0/12",
                "198.51.100.0/24",
                "203.0.113.0/24",
                "fd00:203::/64",
                "10.96.0.10/32",
                "198.51.100.7/32",
                "203.0.113.5/32",
                "fd00:203::5/128"
            ])
        );
        assert!(outside.is_empty());
        // Nothing configured: nothing announced.
        let (p, _) = prefixes(&ServiceCidrs::default(), &[], &BTreeSet::new());
        assert!(p.is_empty());
    }

    #[test]
    fn local_policies_need_a_local_ready_endpoint() {
        let ext = svc(json!({"metadata": {"name": "web", "namespace": "a"},
            "spec": {"clusterIP": "10.96.0.10", "externalIPs": ["198.51.100.7"],
                     "externalTrafficPolicy": "Local"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}}));
        let int = svc(json!({"metadata": {"name": "db", "namespace": "a"},
            "spec": {"clusterIP": "10.96.0.11", "internalTrafficPolicy": "Local"}}));
        let ranges = set(&[
            "10.96.0.0/12",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "fd00:203::/64",
        ]);
        let (p, _) = prefixes(&cidrs(), &[ext.clone(), int.clone()], &BTreeSet::new());
        // externalTrafficPolicy does not restrict the cluster IP, nor the reverse.
        let mut want = ranges.clone();
        want.extend(set(&["10.96.0.10/32"]));
        assert_eq!(p, want);
        let local: BTreeSet<String> = ["a/web".to_string(), "a/db".to_string()].into();
        let (p, _) = prefixes(&cidrs(), &[ext, int], &local);
        let mut want = ranges;
        want.extend(set(&[
            "10.96.0.10/32",
            "10.96.0.11/32",
            "198.51.100.7/32",
            "203.0.113.5/32",
        ]));
        assert_eq!(p, want);
    }

    #[test]
    fn addresses_outside_the_ranges_are_never_announced() {
        let s = svc(json!({"metadata": {"name": "lb", "namespace": "a"},
            "spec": {"clusterIP": "10.0.0.1", "externalIPs": ["192.0.2.1"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}}));
        let (p, outside) = prefixes(&cidrs(), std::slice::from_ref(&s), &BTreeSet::new());
        assert_eq!(
            p,
            cidrs()
                .lists()
                .into_iter()
                .flat_map(|(_, l)| l.clone())
                .collect()
        );
        let keys: Vec<&str> = outside.iter().map(|o| o.key).collect();
        // 198.51.100.9 is in the external range, not a load balancer one: still outside.
        assert_eq!(
            keys,
            [
                "serviceClusterIPs",
                "serviceExternalIPs",
                "serviceLoadBalancerIPs"
            ]
        );
        // A kind with no ranges configured: left out without a log line.
        let only = ServiceCidrs {
            cluster_ips: vec!["10.96.0.0/12".parse().unwrap()],
            ..Default::default()
        };
        let (p, outside) = prefixes(&only, &[s], &BTreeSet::new());
        assert_eq!(p, set(&["10.96.0.0/12"]));
        assert_eq!(outside.len(), 1);
    }

    #[test]
    fn headless_and_external_name_services_have_no_addresses() {
        let h = svc(json!({"metadata": {"name": "h", "namespace": "a"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]}}));
        assert!(h.cluster.is_empty());
        let e = svc(json!({"metadata": {"name": "e", "namespace": "a"},
            "spec": {"type": "ExternalName", "externalName": "example.org", "externalIPs": ["198.51.100.1"]}}));
        assert!(e.external.is_empty() && e.cluster.is_empty());
    }

    #[test]
    fn local_endpoints_from_endpoints_and_slices() {
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "a"},
            "subsets": [{"addresses": [{"ip": "10.244.1.5", "nodeName": "node1"}],
                         "notReadyAddresses": [{"ip": "10.244.2.5", "nodeName": "node2"}]}]}))
        .unwrap();
        assert_eq!(endpoints_local(&ep, "node1").as_deref(), Some("a/web"));
        assert_eq!(endpoints_local(&ep, "node2"), None, "not ready");
        let sl: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "a",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "node1"},
                {"addresses": ["10.244.2.5"], "nodeName": "node2", "conditions": {"ready": false}},
                {"addresses": ["10.244.3.5"], "nodeName": "node3", "conditions": {"ready": true}}]}))
        .unwrap();
        assert_eq!(slice_local(&sl, "node1").as_deref(), Some("a/web"));
        assert_eq!(slice_local(&sl, "node2"), None, "not ready");
        assert_eq!(slice_local(&sl, "node3").as_deref(), Some("a/web"));
        assert_eq!(slice_local(&sl, "node4"), None);
    }
}
