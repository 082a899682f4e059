//! Opt-in: controller mode against a real cluster. Skipped unless `SESSILE_E2E_KUBECONFIG` names a
//! kubeconfig of a cluster with the Gateway API experimental CRDs installed (docs/kubernetes.md shows
//! how with kind). The controller and its data plane run in this process, so the EndpointSlice points at
//! an in-process echo server on 127.0.0.1 and the test sends traffic to the listener on 127.0.0.1. If the
//! cluster's API server refuses a loopback address in an EndpointSlice, set `SESSILE_E2E_BACKEND_IP` to
//! another address of this machine: the test forwards from it to the echo server. Lease, key Secret, statuses and the watch
//! protocol are the real cluster's. Everything is created in namespace `sessile-e2e` and deleted at the end.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};
use sessile::controller::ControllerOptions;
use sessile_kube::kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use sessile_kube::kube::discovery::ApiResource;
use sessile_testkit::{TestClient, TestRequest, eventually};

const NS: &str = "sessile-e2e";

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    ApiResource { group: group.into(), version: version.into(), api_version, kind: kind.into(), plural: plural.into() }
}

async fn create(
    client: &sessile_kube::Client,
    ar: &ApiResource,
    namespaced: bool,
    object: Value,
) -> anyhow::Result<()> {
    let api: Api<DynamicObject> =
        if namespaced { Api::namespaced_with(client.clone(), NS, ar) } else { Api::all_with(client.clone(), ar) };
    let object: DynamicObject = serde_json::from_value(object)?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(sessile_kube::kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Forwards connections from `ip` (a free port) to `to`; returns the port.
async fn forward(ip: IpAddr, to: SocketAddr) -> u16 {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind forwarder");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster() {
    let Some(kubeconfig) = std::env::var_os("SESSILE_E2E_KUBECONFIG") else {
        eprintln!("skipped: set SESSILE_E2E_KUBECONFIG to run controller mode against a real cluster");
        return;
    };
    let client = sessile_kube::connect(Some(std::path::Path::new(&kubeconfig))).await.expect("kubeconfig works");
    let backend = sessile_testkit::start_backend("e2e").await.expect("backend");
    let (backend_ip, backend_port) = match std::env::var("SESSILE_E2E_BACKEND_IP") {
        Ok(ip) => {
            let ip: IpAddr = ip.parse().expect("SESSILE_E2E_BACKEND_IP is an IP address");
            (ip, forward(ip, backend.addr()).await)
        }
        Err(_) => (backend.addr().ip(), backend.addr().port()),
    };
    let port = common::free_port();

    let core = |kind: &str, plural: &str| resource("", "v1", kind, plural);
    let gw_api = |kind: &str, plural: &str| resource("gateway.networking.k8s.io", "v1", kind, plural);
    create(
        &client,
        &core("Namespace", "namespaces"),
        false,
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS}}),
    )
    .await
    .unwrap();
    create(
        &client,
        &gw_api("GatewayClass", "gatewayclasses"),
        false,
        json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "sessile-e2e"},
        "spec": {"controllerName": sessile_config::CONTROLLER_NAME}}),
    )
    .await
    .unwrap();
    create(
        &client,
        &gw_api("Gateway", "gateways"),
        true,
        json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": NS},
        "spec": {"gatewayClassName": "sessile-e2e",
                 "listeners": [{"name": "http", "protocol": "HTTP", "port": port}]}}),
    )
    .await
    .unwrap();
    create(
        &client,
        &core("Service", "services"),
        true,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": NS}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
    )
    .await
    .unwrap();
    create(
        &client,
        &resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
        true,
        json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "echo-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": if backend_ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "ports": [{"name": "http", "port": backend_port}],
        "endpoints": [{"addresses": [backend_ip.to_string()], "conditions": {"ready": true}}]}),
    )
    .await
    .unwrap();
    create(&client, &gw_api("HTTPRoute", "httproutes"), true, json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "echo", "namespace": NS},
        "spec": {"parentRefs": [{"name": "gw"}],
                 "rules": [{"backendRefs": [{"name": "echo", "port": 80}], "sessionPersistence": {"sessionName": "e2e"}}]}}))
        .await
        .unwrap();

    let mut opts = ControllerOptions {
        bind_address: IpAddr::from([127, 0, 0, 1]),
        identity: "sessile-e2e-test".into(),
        lease: Some((NS.into(), "sessile-e2e-leader".into())),
        keys_secret: Some((NS.into(), "sessile-e2e-keys".into())),
        ..ControllerOptions::default()
    };
    opts.serve.admin = SocketAddr::from(([127, 0, 0, 1], 0));
    let state = common::TempDir::new("e2e-state");
    opts.serve.state_dir = state.path().to_path_buf();
    let controller = sessile::controller::start(client.clone(), &opts).await.expect("controller starts");

    let url = format!("http://127.0.0.1:{port}/");
    eventually(Duration::from_secs(60), || async {
        let resp = TestClient::http1().send(TestRequest::get(&url)).await?;
        anyhow::ensure!(resp.status == 200 && resp.backend().as_deref() == Some("e2e"), "status {}", resp.status);
        Ok(())
    })
    .await
    .expect("traffic served from the cluster's configuration");
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &gw_api("HTTPRoute", "httproutes"));
    eventually(Duration::from_secs(60), || async {
        let route = routes.get("echo").await?;
        let parents = route.data["status"]["parents"].as_array().cloned().unwrap_or_default();
        let ours = parents.iter().find(|p| p["controllerName"] == sessile_config::CONTROLLER_NAME);
        let accepted = ours
            .and_then(|p| p["conditions"].as_array())
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Accepted" && c["status"] == "True"));
        anyhow::ensure!(accepted, "route status: {:#}", route.data["status"]);
        Ok(())
    })
    .await
    .expect("route status written to the cluster");
    controller.stop().await;

    // Clean up: the namespace takes its objects with it; the class is cluster-scoped.
    let classes: Api<DynamicObject> = Api::all_with(client.clone(), &gw_api("GatewayClass", "gatewayclasses"));
    let _ = classes.delete("sessile-e2e", &DeleteParams::default()).await;
    let namespaces: Api<DynamicObject> = Api::all_with(client, &core("Namespace", "namespaces"));
    let _ = namespaces.delete(NS, &DeleteParams::default()).await;
}
