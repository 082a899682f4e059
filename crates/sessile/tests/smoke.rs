//! Smoke tests: one route to one in-process backend, over HTTP/1.1 and h2c, with pooled upstreams.

mod common;

use common::*;
use sessile_testkit::{TestBackend, TestClient, TestRequest};

/// A gateway with one catch-all route to a Service backed by `backend`.
async fn one_route(backend: &TestBackend) -> TestGateway {
    one_route_on(free_port(), backend).await
}

async fn one_route_on(port: u16, backend: &TestBackend) -> TestGateway {
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: svc, port: 80}]\n";
    gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &[backend])),
            ("route.yaml", route.to_string()),
        ],
    )
    .await
}

#[tokio::test]
async fn proxies_http1_and_h2c_to_a_backend() {
    let b = backends("b", 1).await;
    let gw = one_route(&b[0]).await;
    for client in [TestClient::http1(), TestClient::h2c()] {
        let resp = client.send(TestRequest::get(gw.url("/hello?x=1"))).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.backend().as_deref(), Some("b0"));
        assert_eq!(resp.json()["path"], "/hello?x=1");
    }
    let other_host = TestClient::http1().send(TestRequest::get(gw.url("/x")).host("other")).await.unwrap();
    assert_eq!(other_host.status, 200, "a route without hostnames matches every host");
    let status = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(status["status"]["parents"][0]["conditions"][0]["type"], "Accepted");
    assert_eq!(status["status"]["parents"][0]["conditions"][0]["status"], "True");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let b = backends("p", 1).await;
    let gw = one_route(&b[0]).await;
    let client = TestClient::http1();
    for path in ["/small", "/stream?chunks=2", "/small"].iter().cycle().take(20) {
        let resp = client.send(TestRequest::get(gw.url(path))).await.unwrap();
        assert_eq!(resp.status, 200);
    }
    assert_eq!(b[0].hits(), 20);
    assert!(b[0].connections() <= 2, "20 sequential requests opened {} upstream connections", b[0].connections());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn not_ready_until_every_listener_is_bound_and_binding_is_retried() {
    let b = backends("r", 1).await;
    let port = free_port();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let gw = one_route_on(port, &b[0]).await;
    let readyz = || async {
        let url = format!("http://{}/readyz", gw.gateway.admin_addr);
        TestClient::http1().send(TestRequest::get(url)).await.map(|r| r.status)
    };
    assert_eq!(readyz().await.unwrap(), 503, "the listener's address is taken");
    drop(squatter);
    sessile_testkit::eventually(std::time::Duration::from_secs(5), || async {
        anyhow::ensure!(readyz().await? == 200, "not ready yet");
        Ok(())
    })
    .await
    .expect("the bind is retried and the gateway becomes ready");
    let resp = TestClient::http1().send(TestRequest::get(gw.url("/"))).await.unwrap();
    assert_eq!(resp.backend().as_deref(), Some("r0"));
    gw.gateway.stop().await;
}
