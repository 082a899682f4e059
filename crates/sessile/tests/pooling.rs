//! Upstream connection reuse: sequential requests share pooled backend connections.

mod common;

use common::*;
use sessile_testkit::{TestClient, TestRequest};

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let b = backends("p", 1).await;
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
    let client = TestClient::http1();
    for path in ["/small", "/stream?chunks=2", "/small"].iter().cycle().take(20) {
        let resp = client.send(TestRequest::get(gw.url(path))).await.unwrap();
        assert_eq!(resp.status, 200);
    }
    assert_eq!(b[0].hits(), 20);
    assert!(b[0].connections() <= 2, "20 sequential requests opened {} upstream connections", b[0].connections());
    gw.gateway.stop().await;
}
