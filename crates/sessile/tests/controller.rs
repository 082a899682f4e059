//! Controller mode end to end: the real `kube` client against the in-process fake API server
//! (`sessile_kube::fake`), real listeners on 127.0.0.x and in-process echo backends.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sessile::controller::{Controller, ControllerOptions};
use sessile_kube::fake::FakeApi;
use sessile_proxy::access_log::AccessLog;
use sessile_session::KeyRing;
use sessile_testkit::{CookieJar, TestBackend, TestClient, TestRequest, eventually};

const WAIT: Duration = Duration::from_secs(10);
const SVC: &str = "[{name: svc, port: 80}]";
const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sessile}\nspec: {controllerName: sessile.dev/gateway-controller}\n";

fn options(bind: [u8; 4]) -> ControllerOptions {
    let mut opts = ControllerOptions {
        bind_address: IpAddr::V4(Ipv4Addr::from(bind)),
        debounce: Duration::from_millis(50),
        lease_duration: Duration::from_secs(2),
        lease_renew: Duration::from_millis(200),
        ..ControllerOptions::default()
    };
    opts.serve.admin = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.serve.access_log = AccessLog::Off;
    opts
}

async fn start(fake: &FakeApi, tag: &str, opts: &ControllerOptions) -> Controller {
    let client = fake.client(tag).expect("client");
    sessile::controller::start(client, opts).await.expect("controller starts")
}

async fn wait_ready(c: &Controller) {
    eventually(WAIT, || async {
        let resp = TestClient::http1().send(TestRequest::get(format!("http://{}/readyz", c.admin_addr))).await?;
        anyhow::ensure!(resp.status == 200, "readyz {}", resp.status);
        Ok(())
    })
    .await
    .expect("controller becomes ready");
}

/// GET `url` until it is served by `backend`.
async fn wait_backend(url: &str, backend: &str) {
    eventually(WAIT, || async {
        let resp = TestClient::http1().send(TestRequest::get(url)).await?;
        anyhow::ensure!(resp.status == 200, "status {}: {}", resp.status, resp.text());
        anyhow::ensure!(resp.backend().as_deref() == Some(backend), "served by {:?}", resp.backend());
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{url} served by {backend}: {e:#}"));
}

/// The condition `kind` of a status entry (route parent, gateway, listener).
fn condition<'a>(entry: &'a Value, kind: &str) -> &'a Value {
    entry["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == kind)).unwrap_or(&Value::Null)
}

/// Our parent entry of route `name`, once written.
fn our_parent(fake: &FakeApi, name: &str) -> Option<Value> {
    let route = fake.get("HTTPRoute", "default", name)?;
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == sessile_config::CONTROLLER_NAME)
        .cloned()
}

/// Waits until status writes stop, then returns their count (bounded).
async fn settled_status_writes(fake: &FakeApi) -> usize {
    let mut last = fake.status_writes().len();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = fake.status_writes().len();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("status writes never settled: {last} so far");
}

fn service_with_backends(name: &str, backends: &[&TestBackend]) -> String {
    service_yaml("default", name, backends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_cluster_resources_and_writes_status() {
    // XBackendTrafficPolicy's CRD is "not installed": logged once and skipped, not fatal.
    let fake = FakeApi::start_without(&["xbackendtrafficpolicies"]).await.unwrap();
    let a = sessile_testkit::start_backend("a").await.unwrap();
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let port = free_port();
    fake.apply_yaml(CLASS).unwrap();
    // The published Service: its load balancer address goes to the Gateway's status.addresses.
    fake.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "sessile", "namespace": "sessile-system"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}))
        .unwrap();

    // Start on a cluster with no Gateway: ready (nothing to bind), then the objects arrive.
    let mut opts = options([127, 0, 0, 1]);
    opts.publish_service = Some(("sessile-system".into(), "sessile".into()));
    let state = TempDir::new("ctl-state");
    opts.serve.state_dir = state.path().to_path_buf();
    let c = start(&fake, "solo", &opts).await;
    wait_ready(&c).await;
    fake.apply_yaml(&gateway_yaml(port)).unwrap();
    fake.apply_yaml(&service_with_backends("svc", &[&a])).unwrap();
    fake.apply_yaml(&route_yaml("r", None, &[rule_yaml("/", SVC, None)])).unwrap();
    // Another controller's entry on the route: it must survive our writes.
    let foreign = json!({"parentRef": {"name": "theirs"}, "controllerName": "example.com/other",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2020-01-01T00:00:00Z", "observedGeneration": 1}]});
    fake.patch_status("HTTPRoute", "default", "r", json!({"parents": [foreign.clone()]})).unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    wait_backend(&url, "a").await;

    // Status written to the API: class, gateway (with the published address), route parent.
    eventually(WAIT, || async {
        let class = fake.get("GatewayClass", "", "sessile").unwrap();
        anyhow::ensure!(condition(&class["status"], "Accepted")["status"] == "True", "class {class:#}");
        let gw = fake.get("Gateway", "default", "gw").unwrap();
        anyhow::ensure!(condition(&gw["status"], "Programmed")["status"] == "True", "gateway {gw:#}");
        anyhow::ensure!(gw["status"]["addresses"] == json!([{"type": "IPAddress", "value": "192.0.2.10"}]), "{gw:#}");
        anyhow::ensure!(gw["status"]["listeners"][0]["attachedRoutes"] == 1, "{gw:#}");
        let p = our_parent(&fake, "r").ok_or_else(|| anyhow::anyhow!("no parent entry yet"))?;
        anyhow::ensure!(condition(&p, "Accepted")["status"] == "True", "{p:#}");
        anyhow::ensure!(condition(&p, "ResolvedRefs")["status"] == "True", "{p:#}");
        anyhow::ensure!(condition(&p, "Accepted")["observedGeneration"] == 1, "{p:#}");
        Ok(())
    })
    .await
    .expect("status written");
    let route = fake.get("HTTPRoute", "default", "r").unwrap();
    assert!(
        route["status"]["parents"].as_array().unwrap().contains(&foreign),
        "other controller's entry kept: {route:#}"
    );
    assert!(fake.status_writes().iter().all(|w| w.client == "solo"));

    // No write when nothing changed: a quiet period, then a change that does not alter any status.
    let settled = settled_status_writes(&fake).await;
    assert!(settled >= 3, "class, gateway and route were written: {settled}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut svc = fake.get("Service", "default", "svc").unwrap();
    svc["metadata"]["labels"] = json!({"touched": "yes"});
    fake.apply(svc).unwrap();
    let version = c.shared.snapshot().version;
    eventually(WAIT, || async {
        anyhow::ensure!(c.shared.snapshot().version > version, "the label change was not seen yet");
        Ok(())
    })
    .await
    .expect("irrelevant change applied");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.status_writes().len(),
        settled,
        "no status write when nothing changed: {:#?}",
        fake.status_writes()
    );

    // Update the route to a new Service: traffic moves, observedGeneration follows.
    fake.apply_yaml(&service_with_backends("svc2", &[&b])).unwrap();
    fake.apply_yaml(&route_yaml("r", None, &[rule_yaml("/", "[{name: svc2, port: 80}]", None)])).unwrap();
    wait_backend(&url, "b").await;
    eventually(WAIT, || async {
        let p = our_parent(&fake, "r").ok_or_else(|| anyhow::anyhow!("no parent"))?;
        anyhow::ensure!(condition(&p, "Accepted")["observedGeneration"] == 2, "{p:#}");
        Ok(())
    })
    .await
    .expect("observedGeneration follows the route");

    // Delete the Service: ResolvedRefs=False is written.
    assert!(fake.delete("Service", "default", "svc2"));
    eventually(WAIT, || async {
        let p = our_parent(&fake, "r").ok_or_else(|| anyhow::anyhow!("no parent"))?;
        let rr = condition(&p, "ResolvedRefs");
        anyhow::ensure!(rr["status"] == "False" && rr["reason"] == "BackendNotFound", "{p:#}");
        Ok(())
    })
    .await
    .expect("ResolvedRefs=False after the Service is deleted");
    let route = fake.get("HTTPRoute", "default", "r").unwrap();
    assert!(route["status"]["parents"].as_array().unwrap().contains(&foreign), "still kept: {route:#}");

    // Deleting the Gateway unbinds its listener.
    assert!(fake.delete("Gateway", "default", "gw"));
    eventually(WAIT, || async {
        anyhow::ensure!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "still listening");
        Ok(())
    })
    .await
    .expect("listener unbound");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_key_secret_exists() {
    let fake = FakeApi::start().await.unwrap();
    // Another replica holds the Lease (and keeps it): this one never leads, so it never creates the Secret.
    let far = "2099-01-01T00:00:00.000000Z";
    fake.apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "sessile-leader", "namespace": "default"},
        "spec": {"holderIdentity": "elsewhere", "leaseDurationSeconds": 3600, "renewTime": far}}))
        .unwrap();
    let mut opts = options([127, 0, 0, 1]);
    opts.identity = "waiting".into();
    opts.lease = Some(("default".into(), "sessile-leader".into()));
    opts.keys_secret = Some(("default".into(), "sessile-keys".into()));
    let c = start(&fake, "w", &opts).await;
    // Give it time to list everything and (not) elect itself: still not ready, no key ring.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let readyz = format!("http://{}/readyz", c.admin_addr);
    let resp = TestClient::http1().send(TestRequest::get(&readyz)).await.unwrap();
    assert_eq!(resp.status, 503, "not ready without the key ring");
    assert!(!c.is_leader());
    assert!(fake.get("Secret", "default", "sessile-keys").is_none());

    // The Secret appears (made by the leader elsewhere): ready, with that key ring.
    let ring = KeyRing::generate();
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sessile-keys", "namespace": "default"}, "type": "Opaque",
        "data": {"keyring": base64_encode(ring.to_file_text().as_bytes())}}))
        .unwrap();
    wait_ready(&c).await;
    assert_eq!(c.shared.keys().to_file_text(), ring.to_file_text());
    assert!(fake.status_writes().is_empty(), "a replica that does not lead writes no status");
    c.stop().await;
}

fn keyring_of(fake: &FakeApi) -> Option<KeyRing> {
    let secret = fake.get("Secret", "default", "sessile-keys")?;
    let data = secret["data"]["keyring"].as_str()?;
    let bytes = base64_decode(data);
    KeyRing::parse(std::str::from_utf8(&bytes).ok()?).ok()
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(value(*c)) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() { A[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_keys_and_only_the_leader_writes_status() {
    let fake = FakeApi::start().await.unwrap();
    let backends = [
        sessile_testkit::start_backend("s0").await.unwrap(),
        sessile_testkit::start_backend("s1").await.unwrap(),
        sessile_testkit::start_backend("s2").await.unwrap(),
    ];
    let port = free_port();
    fake.apply_yaml(CLASS).unwrap();
    fake.apply_yaml(&gateway_yaml(port)).unwrap();
    fake.apply_yaml(&service_with_backends("svc", &backends.iter().collect::<Vec<_>>())).unwrap();
    fake.apply_yaml(&route_yaml("r", None, &[rule_yaml("/", SVC, Some("{sessionName: sid}"))])).unwrap();

    // Two replicas, as two pods would be: each binds its own address, same port.
    let replica = |bind, tag: &str| {
        let mut opts = options(bind);
        opts.identity = tag.to_string();
        opts.lease = Some(("default".into(), "sessile-leader".into()));
        opts.keys_secret = Some(("default".into(), "sessile-keys".into()));
        opts
    };
    let a = start(&fake, "a", &replica([127, 0, 0, 1], "a")).await;
    let b = start(&fake, "b", &replica([127, 0, 0, 2], "b")).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    eventually(WAIT, || async {
        anyhow::ensure!(
            a.is_leader() != b.is_leader(),
            "exactly one leader (a: {}, b: {})",
            a.is_leader(),
            b.is_leader()
        );
        Ok(())
    })
    .await
    .expect("one leader");
    let leader = if a.is_leader() { "a" } else { "b" };

    // The leader created the key Secret; both replicas use its key ring.
    let ring = keyring_of(&fake).expect("key Secret created");
    let creators: Vec<_> = fake.writes().into_iter().filter(|w| w.kind == "Secret" && w.method == "POST").collect();
    assert_eq!(creators.len(), 1, "{creators:#?}");
    assert_eq!(creators[0].client, leader);
    for c in [&a, &b] {
        assert_eq!(c.shared.keys().to_file_text(), ring.to_file_text(), "replica uses the Secret's key ring");
    }

    // A session started on one replica sticks on the other.
    let url_a = format!("http://127.0.0.1:{port}/");
    let url_b = format!("http://127.0.0.2:{port}/");
    wait_backend_any(&url_a).await;
    wait_backend_any(&url_b).await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let first = client.send_with_jar(TestRequest::get(&url_a), &mut jar).await.unwrap();
    assert_eq!(first.status, 200);
    let pinned = first.backend().unwrap();
    assert!(jar.get("sid").is_some(), "session cookie issued: {:?}", first.set_cookies());
    for _ in 0..6 {
        let resp = client.send_with_jar(TestRequest::get(&url_b), &mut jar).await.unwrap();
        assert_eq!(resp.backend().as_deref(), Some(pinned.as_str()), "token from a honoured by b");
    }

    // Status: written, and only by the leader.
    eventually(WAIT, || async {
        our_parent(&fake, "r").ok_or_else(|| anyhow::anyhow!("route status not written yet")).map(|_| ())
    })
    .await
    .unwrap();
    settled_status_writes(&fake).await;
    let writers: Vec<String> = fake.status_writes().into_iter().map(|w| w.client).collect();
    assert!(!writers.is_empty() && writers.iter().all(|w| w == leader), "status writers: {writers:?}");

    // Rotation: a new current key in the Secret reaches both replicas without a restart.
    let rotated = ring.with_new_current_key();
    let mut secret = fake.get("Secret", "default", "sessile-keys").unwrap();
    secret["data"]["keyring"] = json!(base64_encode(rotated.to_file_text().as_bytes()));
    fake.apply(secret).unwrap();
    eventually(WAIT, || async {
        for c in [&a, &b] {
            anyhow::ensure!(c.shared.keys().current_key_id() == rotated.current_key_id(), "not rotated yet");
        }
        Ok(())
    })
    .await
    .expect("rotation picked up by both replicas");
    // The old session still sticks (its key is still in the ring); a new one from b works on a.
    let resp = client.send_with_jar(TestRequest::get(&url_a), &mut jar).await.unwrap();
    assert_eq!(resp.backend().as_deref(), Some(pinned.as_str()));
    let mut jar2 = CookieJar::new();
    let fresh = client.send_with_jar(TestRequest::get(&url_b), &mut jar2).await.unwrap();
    let pinned2 = fresh.backend().unwrap();
    for _ in 0..4 {
        let resp = client.send_with_jar(TestRequest::get(&url_a), &mut jar2).await.unwrap();
        assert_eq!(resp.backend().as_deref(), Some(pinned2.as_str()));
    }

    // The leader steps down on stop (releasing the Lease); the other takes over.
    let (gone, stays) = if leader == "a" { (a, b) } else { (b, a) };
    gone.stop().await;
    eventually(WAIT, || async {
        anyhow::ensure!(stays.is_leader(), "not leader yet");
        Ok(())
    })
    .await
    .expect("the other replica takes over");
    stays.stop().await;
}

async fn wait_backend_any(url: &str) {
    eventually(WAIT, || async {
        let resp = TestClient::http1().send(TestRequest::get(url)).await?;
        anyhow::ensure!(resp.status == 200, "status {}", resp.status);
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{url} serves: {e:#}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_status_writes_are_retried() {
    let fake = FakeApi::start().await.unwrap();
    let port = free_port();
    fake.apply_yaml(CLASS).unwrap();
    fake.apply_yaml(&gateway_yaml(port)).unwrap();
    fake.apply_yaml(&route_yaml("r", None, &[rule_yaml("/", SVC, None)])).unwrap();
    // Every status write of the first round, and some of the next, lose a race with another writer.
    fake.fail_status_writes(5);
    let c = start(&fake, "solo", &options([127, 0, 0, 1])).await;
    eventually(WAIT, || async {
        let p = our_parent(&fake, "r").ok_or_else(|| anyhow::anyhow!("route status not written yet"))?;
        let gw = fake.get("Gateway", "default", "gw").unwrap();
        anyhow::ensure!(condition(&gw["status"], "Programmed")["status"] == "True", "{gw:#}");
        anyhow::ensure!(condition(&p, "Accepted")["status"] == "True", "{p:#}");
        Ok(())
    })
    .await
    .expect("statuses written after the conflicts");
    // Retried, not hammered: each object is written once it succeeds, and then left alone.
    let settled = settled_status_writes(&fake).await;
    assert_eq!(settled, 3, "class, gateway, route: {:#?}", fake.status_writes());
    c.stop().await;
}
