//! Security review of sessions: tokens reveal nothing, never cross listeners, and the key ring
//! file must be private.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;

use common::*;
use sessile::run::{ServeOptions, Source, start};
use sessile_proxy::state::AccessLog;
use sessile_testkit::{CookieJar, TestClient, TestRequest};

/// Two Gateways (two listeners on two ports), each routing to its own Service under the same cookie name.
fn two_listeners(
    port_a: u16,
    port_b: u16,
    a: &sessile_testkit::TestBackend,
    b: &sessile_testkit::TestBackend,
) -> String {
    let gw = |name: &str, port: u16| {
        gateway_yaml(port).replace("name: gw, namespace: default", &format!("name: {name}, namespace: tenant-secret"))
    };
    let route = |name: &str, gateway: &str, svc: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: tenant-secret}}\nspec:\n  parentRefs: [{{name: {gateway}}}]\n  rules:\n  - backendRefs: [{{name: {svc}, port: 80}}]\n    sessionPersistence: {{sessionName: sid}}\n"
        )
    };
    format!(
        "{}---\n{}{}{}{}{}",
        gw("gw-a", port_a),
        gw("gw-b", port_b),
        route("secret-route-a", "gw-a", "hidden-svc-a"),
        route("secret-route-b", "gw-b", "hidden-svc-b"),
        service_yaml("tenant-secret", "hidden-svc-a", &[a]),
        service_yaml("tenant-secret", "hidden-svc-b", &[b]),
    )
}

#[tokio::test]
async fn tokens_reveal_nothing_and_never_cross_listeners() {
    let bs = backends("sec", 2).await;
    let (port_a, port_b) = (free_port(), free_port());
    let gw = gateway_with(port_a, &[("all.yaml", two_listeners(port_a, port_b, &bs[0], &bs[1]))]).await;
    let client = TestClient::http1();

    let mut jar = CookieJar::new();
    let first = client.send_with_jar(TestRequest::get(format!("http://127.0.0.1:{port_a}/")), &mut jar).await.unwrap();
    assert_eq!(first.backend().as_deref(), Some("sec0"));
    let token = jar.get("sid").expect("token issued").to_string();
    let raw = b64url_decode(&token).expect("URL-safe base64");
    let endpoint = bs[0].addr();
    let SocketAddr::V4(v4) = endpoint else { unreachable!() };
    let mut addr_bytes = v4.ip().octets().to_vec();
    addr_bytes.extend_from_slice(&endpoint.port().to_be_bytes());
    for secret in [
        b"tenant-secret".as_slice(),
        b"secret-route-a",
        b"hidden-svc-a",
        b"sec0",
        b"gw-a",
        b"127.0.0.1",
        endpoint.to_string().as_bytes(),
        &addr_bytes,
    ] {
        assert!(!raw.windows(secret.len()).any(|w| w == secret), "token reveals {:?}", String::from_utf8_lossy(secret));
        assert!(!token.as_bytes().windows(secret.len()).any(|w| w == secret));
    }

    // The same cookie name on the other listener: the token is another scope's, so it is ignored.
    for _ in 0..5 {
        let resp = client
            .send(TestRequest::get(format!("http://127.0.0.1:{port_b}/")).header("cookie", &format!("sid={token}")))
            .await
            .unwrap();
        assert_eq!(resp.backend().as_deref(), Some("sec1"), "a token from listener A never selects an endpoint on B");
        assert!(resp.set_cookies().iter().any(|c| c.starts_with("sid=")), "B mints its own token");
    }
    let metrics = gw.metrics().await;
    assert!(metric(&metrics, "sessile_session_rejected_total", &["reason=\"other-scope\""]) >= 5.0, "{metrics}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn a_key_ring_readable_by_others_is_refused() {
    let keys = TempDir::new("keys");
    let path = keys.path().join("ring");
    std::fs::write(&path, sessile_session::KeyRing::generate().to_file_text()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = TempDir::new("keys-config");
    let port = free_port();
    config.write("gw.yaml", &gateway_yaml(port));
    let opts = ServeOptions {
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir: keys.path().join("state"),
        session_keys: Some(path.clone()),
        access_log: AccessLog::Off,
        ..ServeOptions::default()
    };
    let refused = match start(Source::Path(config.path().to_path_buf()), &opts).await {
        Ok(_) => panic!("a world-readable key ring must be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(refused.contains("chmod 600") && refused.contains("ring"), "{refused}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let gw = start(Source::Path(config.path().to_path_buf()), &opts).await.expect("a private key ring is accepted");
    gw.stop().await;
}
