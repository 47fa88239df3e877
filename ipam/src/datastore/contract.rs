//! The contract every [`Datastore`] backend passes, written once and run against each
//! backend: a backend's test module implements [`Backend`] (a constructor of a fresh
//! store and of further handles on it) and invokes [`datastore_contract_tests!`].
//!
//! Compiled for tests and with the `contract` feature (for other crates' tests).

use super::{
    DatastoreError, DatastoreExt, Event, EventStream, Labels, Object, Reflector, Resource,
    Selector, SharedDatastore, Version,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// How long a test waits for an event it expects (generous: machines differ in speed).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A fresh, empty store under test.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A new handle on this store: another connection, as another process or another
    /// agent would open it.
    async fn handle(&self) -> SharedDatastore;

    /// A number of changes to one kind after which a watch from a version taken before
    /// them is certain to have expired (the backend keeps less history than that).
    fn history_bound(&self) -> usize;
}

/// Generates one `#[tokio::test]` per contract check. `$new` is an expression that
/// evaluates to a fresh [`Backend`] (called once per test).
#[macro_export]
macro_rules! datastore_contract_tests {
    ($new:expr) => {
        $crate::datastore_contract_tests!(@each $new;
            create_get_and_already_exists,
            compare_and_swap_conflicts,
            delete_with_expected_version,
            list_filters_by_selector,
            names_labels_and_kinds_are_validated,
            watch_from_a_version_sees_later_events_in_order,
            watch_resumes_after_a_gap,
            watch_applies_the_selector_to_label_changes,
            a_selector_watch_opened_late_judges_changes_from_its_start_version,
            too_old_a_version_expires,
            concurrent_writers_on_two_handles_lose_no_update,
            a_watch_sees_writes_of_another_handle,
            the_reflector_follows_and_relists_after_expiry,
        );
    };
    (@each $new:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = $new;
                $crate::datastore::contract::$name(&backend).await;
            }
        )*
    };
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn obj(name: &str, value: serde_json::Value) -> Object {
    Object::new(name, value)
}

/// The next event, within [`DEADLINE`].
pub async fn next_event(stream: &mut EventStream) -> Event {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {DEADLINE:?}"),
    }
}

fn summary(e: &Event) -> (&'static str, String, serde_json::Value) {
    let (op, i) = match e {
        Event::Added(i) => ("added", i),
        Event::Modified(i) => ("modified", i),
        Event::Deleted(i) => ("deleted", i),
    };
    (op, i.object.name.clone(), i.object.value.clone())
}

pub async fn create_get_and_already_exists<B: Backend>(b: &B) {
    let s = b.handle().await;
    assert_eq!(s.get("Thing", "a").await.expect("get"), None);
    let o = obj("a", json!({"x": 1})).with_labels(labels(&[("app", "one")]));
    let v = s.create("Thing", &o).await.expect("create");
    let got = s.get("Thing", "a").await.expect("get").expect("present");
    assert_eq!(got.object, o);
    assert_eq!(got.version, v);
    match s.create("Thing", &obj("a", json!({}))).await {
        Err(DatastoreError::AlreadyExists { kind, name }) => {
            assert_eq!((kind.as_str(), name.as_str()), ("Thing", "a"))
        }
        other => panic!("second create: {other:?}"),
    }
    // Kinds are separate name spaces.
    s.create("Other", &obj("a", json!({})))
        .await
        .expect("other kind");
    match s.update("Thing", &obj("missing", json!({})), &v).await {
        Err(DatastoreError::NotFound { name, .. }) => assert_eq!(name, "missing"),
        other => panic!("update of a missing object: {other:?}"),
    }
    assert!(!s.delete("Thing", "missing", None).await.expect("delete"));
    assert_eq!(
        s.get("Thing", "a")
            .await
            .expect("get")
            .map(|i| i.object.value),
        Some(json!({"x": 1})),
        "failed writes changed nothing"
    );
}

pub async fn compare_and_swap_conflicts<B: Backend>(b: &B) {
    let s = b.handle().await;
    let v1 = s
        .create("Thing", &obj("a", json!(1)))
        .await
        .expect("create");
    let v2 = s
        .update("Thing", &obj("a", json!(2)), &v1)
        .await
        .expect("update with the current version");
    assert_ne!(v1, v2, "a write gives a new version");
    match s.update("Thing", &obj("a", json!(3)), &v1).await {
        Err(DatastoreError::Conflict { kind, name, .. }) => {
            assert_eq!((kind.as_str(), name.as_str()), ("Thing", "a"))
        }
        other => panic!("update with a stale version: {other:?}"),
    }
    let got = s.get("Thing", "a").await.expect("get").expect("present");
    assert_eq!((got.object.value, got.version), (json!(2), v2.clone()));
    // A deleted and re-created object never gets back a version it had.
    assert!(s.delete("Thing", "a", Some(&v2)).await.expect("delete"));
    let v3 = s
        .create("Thing", &obj("a", json!(4)))
        .await
        .expect("re-create");
    assert!(v3 != v1 && v3 != v2, "versions are not reused");
    match s.update("Thing", &obj("a", json!(5)), &v2).await {
        Err(DatastoreError::Conflict { .. }) => {}
        other => panic!("update with the deleted object's version: {other:?}"),
    }
}

pub async fn delete_with_expected_version<B: Backend>(b: &B) {
    let s = b.handle().await;
    let v1 = s
        .create("Thing", &obj("a", json!(1)))
        .await
        .expect("create");
    let v2 = s
        .update("Thing", &obj("a", json!(2)), &v1)
        .await
        .expect("update");
    match s.delete("Thing", "a", Some(&v1)).await {
        Err(DatastoreError::Conflict { .. }) => {}
        other => panic!("delete with a stale version: {other:?}"),
    }
    assert!(
        s.get("Thing", "a").await.expect("get").is_some(),
        "still there"
    );
    assert!(s.delete("Thing", "a", Some(&v2)).await.expect("delete"));
    assert!(s.get("Thing", "a").await.expect("get").is_none());
    s.create("Thing", &obj("b", json!(1)))
        .await
        .expect("create");
    assert!(s
        .delete("Thing", "b", None)
        .await
        .expect("unconditional delete"));
    assert!(!s.delete("Thing", "b", None).await.expect("again"));
}

pub async fn list_filters_by_selector<B: Backend>(b: &B) {
    let s = b.handle().await;
    for (name, l) in [
        ("c", labels(&[("node", "n1"), ("tier", "web")])),
        ("a", labels(&[("node", "n1")])),
        ("b", labels(&[("node", "n2"), ("tier", "db")])),
        ("d", labels(&[])),
    ] {
        s.create("Thing", &obj(name, json!(name)).with_labels(l))
            .await
            .expect("create");
    }
    s.create(
        "Other",
        &obj("z", json!(0)).with_labels(labels(&[("node", "n1")])),
    )
    .await
    .expect("create");
    let names = |sel: &str| {
        let s = s.clone();
        let sel = Selector::parse(sel).expect("selector");
        async move {
            s.list("Thing", &sel)
                .await
                .expect("list")
                .items
                .into_iter()
                .map(|i| i.object.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("").await, ["a", "b", "c", "d"], "sorted by name");
    assert_eq!(names("node=n1").await, ["a", "c"]);
    assert_eq!(names("node!=n1").await, ["b", "d"], "!= matches absent too");
    assert_eq!(names("tier").await, ["b", "c"]);
    assert_eq!(names("!tier").await, ["a", "d"]);
    assert_eq!(names("node=n1,tier").await, ["c"]);
    assert_eq!(names("node=n3").await, Vec::<String>::new());
}

pub async fn names_labels_and_kinds_are_validated<B: Backend>(b: &B) {
    let s = b.handle().await;
    for name in [
        "",
        "UPPER",
        "c1:eth0",
        "10.244.1.0/26",
        "-a",
        "a-",
        "a..b",
        &"a".repeat(254),
    ] {
        match s.create("Thing", &obj(name, json!(1))).await {
            Err(DatastoreError::Invalid { reason, .. }) => {
                assert!(reason.contains("name"), "{name:?}: {reason}")
            }
            other => panic!("create {name:?}: {other:?}"),
        }
    }
    let bad_label = obj("a", json!(1)).with_labels(labels(&[("bad key", "v")]));
    assert!(matches!(
        s.create("Thing", &bad_label).await,
        Err(DatastoreError::Invalid { .. })
    ));
    assert!(matches!(
        s.create("bad-kind", &obj("a", json!(1))).await,
        Err(DatastoreError::Invalid { .. })
    ));
    let ok = "a.b-c.".to_string() + &"x".repeat(247);
    s.create("Thing", &obj(&ok, json!(1)))
        .await
        .expect("a 253-character DNS-1123 name");
    let v = s
        .create("Thing", &obj("good", json!(1)))
        .await
        .expect("create");
    assert!(matches!(
        s.update("Thing", &bad_label.clone(), &v).await,
        Err(DatastoreError::Invalid { .. } | DatastoreError::NotFound { .. })
    ));
    let relabel = obj("good", json!(1)).with_labels(labels(&[("k", "bad value")]));
    assert!(matches!(
        s.update("Thing", &relabel, &v).await,
        Err(DatastoreError::Invalid { .. })
    ));
    assert_eq!(
        s.list("Thing", &Selector::everything())
            .await
            .expect("list")
            .items
            .len(),
        2,
        "nothing invalid was stored"
    );
}

pub async fn watch_from_a_version_sees_later_events_in_order<B: Backend>(b: &B) {
    let s = b.handle().await;
    s.create("Thing", &obj("before", json!(0)))
        .await
        .expect("create");
    let start = s
        .list("Thing", &Selector::everything())
        .await
        .expect("list")
        .version;
    let mut w = s
        .watch("Thing", &Selector::everything(), &start)
        .await
        .expect("watch");
    let v1 = s
        .create("Thing", &obj("a", json!(1)))
        .await
        .expect("create");
    s.create("Other", &obj("a", json!(9)))
        .await
        .expect("other kind");
    let v2 = s
        .update("Thing", &obj("a", json!(2)), &v1)
        .await
        .expect("update");
    let v3 = s
        .create("Thing", &obj("b", json!(3)))
        .await
        .expect("create");
    assert!(s.delete("Thing", "a", Some(&v2)).await.expect("delete"));
    let mut seen = Vec::new();
    let mut versions = Vec::new();
    for _ in 0..4 {
        let e = next_event(&mut w).await;
        versions.push(e.item().version.clone());
        seen.push(summary(&e));
    }
    assert_eq!(
        seen,
        [
            ("added", "a".to_string(), json!(1)),
            ("modified", "a".to_string(), json!(2)),
            ("added", "b".to_string(), json!(3)),
            ("deleted", "a".to_string(), json!(2)),
        ]
    );
    assert_eq!(
        versions[..3],
        [v1, v2, v3],
        "events carry the written versions"
    );
}

pub async fn watch_resumes_after_a_gap<B: Backend>(b: &B) {
    let s = b.handle().await;
    let start = s
        .list("Thing", &Selector::everything())
        .await
        .expect("list")
        .version;
    s.create("Thing", &obj("a", json!(1)))
        .await
        .expect("create");
    let first = {
        let mut w = s
            .watch("Thing", &Selector::everything(), &start)
            .await
            .expect("watch");
        next_event(&mut w).await
    }; // the watch is gone
    assert_eq!(summary(&first).1, "a");
    s.create("Thing", &obj("b", json!(2)))
        .await
        .expect("create");
    s.create("Thing", &obj("c", json!(3)))
        .await
        .expect("create");
    let mut w = s
        .watch("Thing", &Selector::everything(), &first.item().version)
        .await
        .expect("resume");
    let names = [
        summary(&next_event(&mut w).await).1,
        summary(&next_event(&mut w).await).1,
    ];
    assert_eq!(names, ["b", "c"], "exactly the changes after the version");
}

pub async fn watch_applies_the_selector_to_label_changes<B: Backend>(b: &B) {
    let s = b.handle().await;
    let start = s
        .list("Thing", &Selector::everything())
        .await
        .expect("list")
        .version;
    let sel = Selector::parse("node=n1").expect("selector");
    let mut w = s.watch("Thing", &sel, &start).await.expect("watch");
    let n1 = labels(&[("node", "n1")]);
    let n2 = labels(&[("node", "n2")]);
    let v = s
        .create("Thing", &obj("x", json!(0)).with_labels(n2.clone()))
        .await
        .expect("create");
    let v = s
        .update("Thing", &obj("x", json!(1)).with_labels(n1.clone()), &v)
        .await
        .expect("now matches");
    let v = s
        .update("Thing", &obj("x", json!(2)).with_labels(n1.clone()), &v)
        .await
        .expect("still matches");
    let v = s
        .update("Thing", &obj("x", json!(3)).with_labels(n2.clone()), &v)
        .await
        .expect("no longer matches");
    s.delete("Thing", "x", Some(&v)).await.expect("delete");
    s.create("Thing", &obj("y", json!(4)).with_labels(n1.clone()))
        .await
        .expect("create");
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(summary(&next_event(&mut w).await));
    }
    assert_eq!(
        seen,
        [
            ("added", "x".to_string(), json!(1)),
            ("modified", "x".to_string(), json!(2)),
            ("deleted", "x".to_string(), json!(3)),
            ("added", "y".to_string(), json!(4)),
        ],
        "label changes appear as added/deleted relative to the selector; the delete of a \
         non-matching object is not seen"
    );
}

/// A watcher lists, then opens its watch a little later: the changes in between are judged
/// against the objects as they were at the list's version, not as they are when the watch
/// opens. An object that stopped matching or was deleted in that window is reported gone;
/// one that started matching or was created is reported added.
pub async fn a_selector_watch_opened_late_judges_changes_from_its_start_version<B: Backend>(b: &B) {
    let s = b.handle().await;
    let n1 = labels(&[("node", "n1")]);
    let n2 = labels(&[("node", "n2")]);
    let va = s
        .create("Thing", &obj("a", json!(0)).with_labels(n1.clone()))
        .await
        .expect("create a");
    s.create("Thing", &obj("b", json!(0)).with_labels(n1.clone()))
        .await
        .expect("create b");
    let vc = s
        .create("Thing", &obj("c", json!(0)).with_labels(n2.clone()))
        .await
        .expect("create c");
    let sel = Selector::parse("node=n1").expect("selector");
    let listed = s.list("Thing", &sel).await.expect("list");
    let names: Vec<&str> = listed
        .items
        .iter()
        .map(|i| i.object.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    // Between the list and the watch.
    s.update("Thing", &obj("a", json!(1)).with_labels(n2.clone()), &va)
        .await
        .expect("a no longer matches");
    s.delete("Thing", "b", None).await.expect("delete b");
    s.update("Thing", &obj("c", json!(1)).with_labels(n1.clone()), &vc)
        .await
        .expect("c now matches");
    s.create("Thing", &obj("d", json!(1)).with_labels(n1.clone()))
        .await
        .expect("create d");
    s.create("Thing", &obj("e", json!(1)).with_labels(n2.clone()))
        .await
        .expect("create e");
    let mut w = s
        .watch("Thing", &sel, &listed.version)
        .await
        .expect("watch");
    // After the watch opened: a last event, so that nothing may hide behind the end.
    s.create("Thing", &obj("z", json!(2)).with_labels(n1.clone()))
        .await
        .expect("create z");
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (op, name, _) = summary(&next_event(&mut w).await);
        seen.push((op, name));
    }
    let want: Vec<(&str, String)> = [
        ("deleted", "a"),
        ("deleted", "b"),
        ("added", "c"),
        ("added", "d"),
        ("added", "z"),
    ]
    .into_iter()
    .map(|(op, n)| (op, n.to_string()))
    .collect();
    assert_eq!(
        seen, want,
        "changes made between the list and the watch are judged from the list's version"
    );
}

pub async fn too_old_a_version_expires<B: Backend>(b: &B) {
    let s = b.handle().await;
    let start = s
        .list("Thing", &Selector::everything())
        .await
        .expect("list")
        .version;
    let mut v = s
        .create("Thing", &obj("a", json!(0)))
        .await
        .expect("create");
    for i in 0..b.history_bound() {
        v = s
            .update("Thing", &obj("a", json!(i)), &v)
            .await
            .expect("update");
    }
    match s.watch("Thing", &Selector::everything(), &start).await {
        Err(DatastoreError::Expired { kind, .. }) => assert_eq!(kind, "Thing"),
        Ok(mut w) => match tokio::time::timeout(DEADLINE, w.next()).await {
            Ok(Some(Err(DatastoreError::Expired { .. }))) => {}
            other => panic!("watch from an expired version: {other:?}"),
        },
        Err(e) => panic!("watch from an expired version: {e}"),
    }
    // A current version still works.
    let now = s
        .list("Thing", &Selector::everything())
        .await
        .expect("list")
        .version;
    let mut w = s
        .watch("Thing", &Selector::everything(), &now)
        .await
        .expect("watch from now");
    s.update("Thing", &obj("a", json!("last")), &v)
        .await
        .expect("update");
    assert_eq!(summary(&next_event(&mut w).await).2, json!("last"));
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    name: String,
    n: u64,
}

impl Resource for Counter {
    const KIND: &'static str = "Counter";
    fn name(&self) -> String {
        self.name.clone()
    }
}

pub async fn concurrent_writers_on_two_handles_lose_no_update<B: Backend>(b: &B) {
    const PER_WRITER: u64 = 25;
    let handles = [b.handle().await, b.handle().await];
    let mut tasks = Vec::new();
    for (i, h) in handles.iter().enumerate() {
        for _ in 0..2 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..PER_WRITER {
                    h.modify::<Counter, _>("c", |cur| {
                        Ok(super::Change::Put(Counter {
                            name: "c".into(),
                            n: cur.map_or(0, |c| c.n) + 1,
                        }))
                    })
                    .await
                    .unwrap_or_else(|e| panic!("writer on handle {i}: {e}"));
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    for h in &handles {
        let c = h
            .get_object::<Counter>("c")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(c.value.n, 4 * PER_WRITER, "every increment counted");
    }
}

pub async fn a_watch_sees_writes_of_another_handle<B: Backend>(b: &B) {
    let reader = b.handle().await;
    let writer = b.handle().await;
    let start = reader
        .list("Thing", &Selector::everything())
        .await
        .expect("list")
        .version;
    let mut w = reader
        .watch("Thing", &Selector::everything(), &start)
        .await
        .expect("watch");
    writer
        .create("Thing", &obj("from-writer", json!(1)))
        .await
        .expect("create");
    assert_eq!(summary(&next_event(&mut w).await).1, "from-writer");
}

pub async fn the_reflector_follows_and_relists_after_expiry<B: Backend>(b: &B) {
    let s = b.handle().await;
    s.create(
        "Thing",
        &obj("a", json!(1)).with_labels(labels(&[("k", "v")])),
    )
    .await
    .expect("create");
    s.create("Thing", &obj("b", json!(2)))
        .await
        .expect("create");
    let mut r = Reflector::new(
        s.clone(),
        "Thing",
        Selector::parse("k=v").expect("selector"),
    );
    r.next().await.expect("list");
    let names = |r: &Reflector| r.items().map(|i| i.object.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&r), ["a"]);
    s.create(
        "Thing",
        &obj("c", json!(3)).with_labels(labels(&[("k", "v")])),
    )
    .await
    .expect("create");
    tokio::time::timeout(DEADLINE, r.next())
        .await
        .expect("in time")
        .expect("event");
    assert_eq!(names(&r), ["a", "c"]);
    // While nobody watches, more changes than the backend remembers.
    let a = s.get("Thing", "a").await.expect("get").expect("present");
    let mut v: Version = a.version;
    for i in 0..b.history_bound() {
        v = s
            .update(
                "Thing",
                &obj("a", json!(i)).with_labels(labels(&[("k", "v")])),
                &v,
            )
            .await
            .expect("update");
    }
    s.delete("Thing", "c", None).await.expect("delete");
    // The reflector's next watch is too old: it lists again and is current.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while names(&r) != ["a"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector caught up in time"
        );
        tokio::time::timeout(DEADLINE, r.next())
            .await
            .expect("in time")
            .expect("relist");
    }
    let a = r.items().next().expect("a").clone();
    assert_eq!(a.version, v, "the copy holds the latest version");
}

/// Checks used by the contract tests of [`super::MemStore`].
#[cfg(test)]
mod mem {
    use super::Backend;
    use crate::datastore::{MemStore, SharedDatastore};
    use std::sync::Arc;

    const HISTORY: usize = 16;

    struct Mem(MemStore);

    #[async_trait::async_trait]
    impl Backend for Mem {
        async fn handle(&self) -> SharedDatastore {
            Arc::new(self.0.clone())
        }
        fn history_bound(&self) -> usize {
            HISTORY + 1
        }
    }

    crate::datastore_contract_tests!(Mem(MemStore::with_history(HISTORY)));
}
