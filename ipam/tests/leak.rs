//! Leak collection's rules, with pods listed in memory (the Kubernetes directory reads core
//! v1 Pods; these tests are about when an address is released, not about the API): a pod
//! gone is released only after the grace period and a last look, a pod re-created under
//! the same name with another UID counts as gone, a pod that comes back keeps its address,
//! a directory that cannot answer releases nothing.

use ferrovia_ipam::datastore::{MemStore, SharedDatastore};
use ferrovia_ipam::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Default)]
struct Pods {
    uids: Mutex<HashMap<(String, String), String>>,
    down: Mutex<bool>,
    /// Answers given, to check the look just before release.
    asked: Mutex<u32>,
}

impl Pods {
    fn set(&self, ns: &str, name: &str, uid: Option<&str>) {
        let mut m = self.uids.lock().expect("lock");
        match uid {
            Some(u) => m.insert((ns.into(), name.into()), u.into()),
            None => m.remove(&(ns.to_string(), name.to_string())),
        };
    }
}

#[async_trait::async_trait]
impl PodDirectory for Pods {
    async fn pod_uid(&self, ns: &str, name: &str) -> Result<Option<String>, String> {
        *self.asked.lock().expect("lock") += 1;
        if *self.down.lock().expect("lock") {
            return Err("the API server does not answer".into());
        }
        Ok(self
            .uids
            .lock()
            .expect("lock")
            .get(&(ns.to_string(), name.to_string()))
            .cloned())
    }
}

async fn setup() -> Ipam {
    let shared: SharedDatastore = Arc::new(MemStore::new());
    let ipam = Ipam::new(shared, IpamConfig::default());
    ipam.ensure_pools(&[PoolSpec::new("10.244.0.0/16")])
        .await
        .expect("pools");
    ipam
}

fn h(n: &str) -> HandleId {
    HandleId::new(n, "eth0")
}

#[tokio::test]
async fn a_gone_pod_is_released_after_the_grace_period_and_not_before() {
    let ipam = setup().await;
    let pods = Pods::default();
    let grace = Duration::from_secs(60);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for (n, uid) in [("a", "u-a"), ("b", "u-b"), ("c", "u-c")] {
        pods.set("default", n, Some(uid));
        ipam.assign(
            "node1",
            &h(n),
            &Attributes::pod("default", n).with_uid(uid),
            Families::V4,
        )
        .await
        .expect("assign");
    }
    // Not a Kubernetes pod: never touched.
    ipam.assign("node1", &h("bare"), &Attributes::default(), Families::V4)
        .await
        .expect("assign");
    let mut lc = LeakCollector::new(grace);
    let s = lc.sweep(&ipam, "node1", &pods, t0).await.expect("sweep");
    assert_eq!(s, LeakSweep::default(), "every pod exists");

    // a deleted; b re-created with another UID (a StatefulSet pod); c stays.
    pods.set("default", "a", None);
    pods.set("default", "b", Some("u-b2"));
    let s = lc.sweep(&ipam, "node1", &pods, t0).await.expect("sweep");
    assert_eq!(s.suspected, vec![h("a"), h("b")]);
    assert!(s.released.is_empty());
    // Just before the grace period ends: still held.
    let s = lc
        .sweep(&ipam, "node1", &pods, t0 + grace - Duration::from_secs(1))
        .await
        .expect("sweep");
    assert!(s.released.is_empty() && s.suspected.is_empty(), "{s:?}");
    assert_eq!(ipam.addresses(&h("a")).await.expect("a").len(), 1);
    // The counters `ferrovia status` and the metrics show.
    let n = ipam.counters();
    assert_eq!(
        (n.leaks_found, n.leaks_released, n.leak_suspects),
        (2, 0, 2),
        "{n:?}"
    );
    // The grace period over: released, after one more look each.
    let asked = *pods.asked.lock().expect("lock");
    let s = lc
        .sweep(&ipam, "node1", &pods, t0 + grace)
        .await
        .expect("sweep");
    assert_eq!(
        s.released
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        vec![h("a"), h("b")]
    );
    assert_eq!(
        *pods.asked.lock().expect("lock") - asked,
        3 + 2,
        "one look per pod, one more per release"
    );
    assert!(ipam.addresses(&h("a")).await.expect("a").is_empty());
    assert!(ipam.addresses(&h("b")).await.expect("b").is_empty());
    assert_eq!(ipam.addresses(&h("c")).await.expect("c").len(), 1);
    assert_eq!(ipam.addresses(&h("bare")).await.expect("bare").len(), 1);
    assert!(lc.suspects().is_empty());
    let n = ipam.counters();
    assert_eq!(
        (n.leaks_found, n.leaks_released, n.leak_suspects),
        (2, 2, 0),
        "{n:?}"
    );
}

#[tokio::test]
async fn a_pod_that_comes_back_or_a_directory_that_cannot_answer_releases_nothing() {
    let ipam = setup().await;
    let pods = Pods::default();
    let grace = Duration::from_secs(60);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    ipam.assign(
        "node1",
        &h("a"),
        &Attributes::pod("default", "a"),
        Families::V4,
    )
    .await
    .expect("assign");
    let mut lc = LeakCollector::new(grace);
    let s = lc.sweep(&ipam, "node1", &pods, t0).await.expect("sweep");
    assert_eq!(s.suspected, vec![h("a")]);
    // The API server is down past the grace period: nothing released, suspicion kept.
    *pods.down.lock().expect("lock") = true;
    let s = lc
        .sweep(&ipam, "node1", &pods, t0 + 2 * grace)
        .await
        .expect("sweep");
    assert!(s.released.is_empty(), "{s:?}");
    assert_eq!(lc.suspects().len(), 1);
    // Back, and the pod exists again (no UID recorded: same name counts as the same pod).
    *pods.down.lock().expect("lock") = false;
    pods.set("default", "a", Some("u-new"));
    let s = lc
        .sweep(&ipam, "node1", &pods, t0 + 3 * grace)
        .await
        .expect("sweep");
    assert_eq!(s.cleared, vec![h("a")]);
    assert!(s.released.is_empty());
    assert_eq!(ipam.addresses(&h("a")).await.expect("a").len(), 1);
    // Gone again: the grace period starts over.
    pods.set("default", "a", None);
    let s = lc
        .sweep(&ipam, "node1", &pods, t0 + 4 * grace)
        .await
        .expect("sweep");
    assert_eq!(s.suspected, vec![h("a")]);
    assert!(s.released.is_empty());
}
