//! The fake API server speaks enough of the Kubernetes REST protocol for the real `kube` client
//! (list, watch from a resourceVersion, bookmarks, conflicts, 404 for kinds not installed), and the
//! pieces built on it behave: reflectors, missing CRDs, leader election.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use sessile_kube::fake::FakeApi;
use sessile_kube::kinds;
use sessile_kube::{Cluster, LeaseOptions};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn service(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"ports": [{"port": 80}]}})
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.unwrap_or_else(|_| panic!("{what}: timed out"))
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_sends_bookmarks() {
    let fake = FakeApi::start().await.unwrap();
    fake.apply(service("one")).unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(fake.client("t").unwrap(), "default", &kinds::by_kind("Service").unwrap().api_resource());
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let rv = list.metadata.resource_version.clone().unwrap();

    // Changes after the list arrive on a watch from its resourceVersion; the listed object does not again.
    fake.apply(service("two")).unwrap();
    let stream = api.watch(&WatchParams::default().timeout(5), &rv).await.unwrap();
    let mut stream = std::pin::pin!(stream);
    // Bookmarks may come at any point; the changes come in order.
    let mut next_change = async || loop {
        match stream.try_next().await.unwrap() {
            Some(WatchEvent::Bookmark(_)) => continue,
            other => return other,
        }
    };
    match within("first event", next_change()).await {
        Some(WatchEvent::Added(o)) => assert_eq!(o.metadata.name.as_deref(), Some("two")),
        other => panic!("expected ADDED two, got {other:?}"),
    }
    fake.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "two", "namespace": "default"},
                      "spec": {"ports": [{"port": 81}]}}))
        .unwrap();
    match within("modified", next_change()).await {
        Some(WatchEvent::Modified(o)) => assert_eq!(o.data["spec"]["ports"][0]["port"], 81),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let current = fake.get("Service", "default", "two").unwrap()["metadata"]["resourceVersion"].clone();
    let bookmark = within("bookmark", async {
        loop {
            if let Some(WatchEvent::Bookmark(b)) = stream.try_next().await.unwrap() {
                return b;
            }
        }
    })
    .await;
    assert!(bookmark.metadata.resource_version.parse::<u64>().unwrap() >= current.as_str().unwrap().parse().unwrap());
}

#[tokio::test]
async fn writes_with_a_stale_resource_version_conflict_and_kinds_not_installed_are_404() {
    let fake = FakeApi::start_without(&["xbackendtrafficpolicies"]).await.unwrap();
    let client = fake.client("t").unwrap();
    let stored = fake.apply(service("svc")).unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &kinds::by_kind("Service").unwrap().api_resource());
    let stale = stored["metadata"]["resourceVersion"].clone();
    fake.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "default"},
                      "spec": {"ports": [{"port": 90}]}}))
        .unwrap();
    let patch = json!({"metadata": {"resourceVersion": stale}, "status": {"loadBalancer": {}}});
    match api.patch_status("svc", &PatchParams::default(), &Patch::Merge(&patch)).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let missing: Api<DynamicObject> =
        Api::all_with(client, &kinds::by_kind("XBackendTrafficPolicy").unwrap().api_resource());
    match missing.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test]
async fn reflectors_sync_without_missing_crds_and_follow_changes() {
    let fake = FakeApi::start_without(&["xbackendtrafficpolicies", "backendlbpolicies"]).await.unwrap();
    fake.apply(service("svc")).unwrap();
    let shutdown = CancellationToken::new();
    let (cluster, _tasks) = Cluster::start(fake.client("t").unwrap(), shutdown.clone());
    let mut changes = cluster.subscribe();
    within("first sync", changes.wait_for(|v| v.synced)).await.unwrap();
    let (res, errors) = cluster.resources(&mut sessile_config::Loader::new());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(res.services.len(), 1);

    // A spec change moves the config counter; a status-only change moves the status counter only.
    let before = cluster.versions();
    fake.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "default"},
                      "spec": {"ports": [{"port": 8080}]}}))
        .unwrap();
    within("config change", changes.wait_for(|v| v.config > before.config)).await.unwrap();
    let before = cluster.versions();
    fake.patch_status("Service", "default", "svc", json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}))
        .unwrap();
    within("status change", changes.wait_for(|v| v.status > before.status)).await.unwrap();
    assert_eq!(cluster.versions().config, before.config, "a status change is not a configuration change");

    // TLS Secrets only: an Opaque Secret is not read.
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "opaque", "namespace": "default"},
                      "type": "Opaque", "data": {}}))
        .unwrap();
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cert", "namespace": "default"},
                      "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}))
        .unwrap();
    within("tls secret", async {
        while cluster.object("Secret", "default", "cert").is_none() {
            changes.changed().await.unwrap();
        }
    })
    .await;
    assert!(cluster.object("Secret", "default", "opaque").is_none());
    assert!(fake.delete("Service", "default", "svc"));
    within("delete", async {
        while cluster.object("Service", "default", "svc").is_some() {
            changes.changed().await.unwrap();
        }
    })
    .await;
    shutdown.cancel();
}

fn lease(identity: &str) -> LeaseOptions {
    LeaseOptions {
        namespace: "default".into(),
        name: "leader".into(),
        identity: identity.into(),
        duration: Duration::from_millis(1500),
        renew: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn one_leader_and_takeover_when_it_stops_renewing() {
    let fake = FakeApi::start().await.unwrap();
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let (mut a, task_a) = sessile_kube::leader::spawn(fake.client("a").unwrap(), lease("a"), stop_a.clone());
    within("a leads", a.wait_for(|l| *l)).await.unwrap();
    let (mut b, task_b) = sessile_kube::leader::spawn(fake.client("b").unwrap(), lease("b"), stop_b.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(*a.borrow() && !*b.borrow(), "only the holder leads while it renews");
    let lease_obj = fake.get("Lease", "default", "leader").unwrap();
    assert_eq!(lease_obj["spec"]["holderIdentity"], "a");

    // a vanishes without releasing (its task is aborted): b takes over once the lease expires.
    task_a.abort();
    within("b takes over", b.wait_for(|l| *l)).await.unwrap();
    let lease_obj = fake.get("Lease", "default", "leader").unwrap();
    assert_eq!(lease_obj["spec"]["holderIdentity"], "b");
    assert_eq!(lease_obj["spec"]["leaseTransitions"], 1);
    // Creating the Lease again is refused: it exists.
    let api: Api<DynamicObject> =
        Api::namespaced_with(fake.client("t").unwrap(), "default", &kinds::LEASE.api_resource());
    let dup: DynamicObject = serde_json::from_value(lease_obj).unwrap();
    assert!(api.create(&PostParams::default(), &dup).await.is_err());
    // Stopping the leader releases the Lease so that another replica need not wait for it to expire.
    stop_b.cancel();
    within("b stops", task_b).await.unwrap();
    assert!(!*b.borrow());
    let released = fake.get("Lease", "default", "leader").unwrap();
    assert!(released["spec"]["holderIdentity"].is_null(), "{released:#}");
    // A watch from resourceVersion 0 starts with the current objects.
    let mut watch = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    assert!(matches!(within("lease listed", watch.next()).await, Some(Ok(WatchEvent::Added(_)))));
}

#[tokio::test]
async fn a_relist_after_410_gone_drops_objects_deleted_while_away() {
    let fake = FakeApi::start().await.unwrap();
    fake.apply(service("stays")).unwrap();
    fake.apply(service("goes")).unwrap();
    let shutdown = CancellationToken::new();
    let (cluster, _tasks) = Cluster::start(fake.client("t").unwrap(), shutdown.clone());
    let mut changes = cluster.subscribe();
    within("first sync", changes.wait_for(|v| v.synced)).await.unwrap();
    assert!(cluster.object("Service", "default", "goes").is_some());

    // The delete is never sent to the watch; the history is compacted and the watch dropped: the
    // reflector resumes from its resourceVersion, gets 410 Gone, lists again, and the object is gone.
    assert!(fake.delete_unseen("Service", "default", "goes"));
    fake.compact_and_drop_watches();
    within("relist", async {
        while cluster.object("Service", "default", "goes").is_some() {
            changes.changed().await.unwrap();
        }
    })
    .await;
    assert!(cluster.object("Service", "default", "stays").is_some());
    // And it watches again: a new object arrives.
    fake.apply(service("new")).unwrap();
    within("watching again", async {
        while cluster.object("Service", "default", "new").is_none() {
            changes.changed().await.unwrap();
        }
    })
    .await;
    shutdown.cancel();
}
