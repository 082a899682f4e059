//! Smoke test: a gateway over a config directory proxies to in-process backends.

mod common;

use common::*;
use sessile_testkit::{TestClient, TestRequest};

#[tokio::test]
async fn proxies_http1_and_h2c_to_a_backend() {
    let b = backends("b", 1).await;
    let port = free_port();
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: svc, port: 80}]\n";
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &[&b[0]])),
            ("route.yaml", route.to_string()),
        ],
    )
    .await;
    for client in [TestClient::http1(), TestClient::h2c()] {
        let resp = client.send(TestRequest::get(gw.url("/hello?x=1"))).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.backend().as_deref(), Some("b0"));
        assert_eq!(resp.json()["path"], "/hello?x=1");
    }
    let missing = TestClient::http1().send(TestRequest::get(gw.url("/x")).host("other")).await.unwrap();
    assert_eq!(missing.status, 200, "a route without hostnames matches every host");
    let status = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(status["status"]["parents"][0]["conditions"][0]["type"], "Accepted");
    assert_eq!(status["status"]["parents"][0]["conditions"][0]["status"], "True");
    gw.gateway.stop().await;
}
