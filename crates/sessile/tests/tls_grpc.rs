//! HTTPS listeners (SNI, ALPN h2, Secure cookies, 421), h2c upstreams with trailers, and GRPCRoute
//! routing and session persistence through a real gRPC-framed client.

mod common;

use std::collections::HashMap;

use common::*;
use sessile_testkit::grpc::{frame, unframe};
use sessile_testkit::{CookieJar, TestBackend, TestClient, TestRequest, TestResponse, tls};

fn indent(pem: &[u8]) -> String {
    String::from_utf8_lossy(pem).lines().map(|l| format!("    {l}\n")).collect()
}

fn tls_secret(name: &str, cert: &[u8], key: &[u8]) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

/// Two HTTPS listeners on one port, chosen by SNI; `missing` adds a listener whose Secret does not exist.
fn https_gateway(port: u16, missing_port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  gatewayClassName: sessile\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: example, protocol: HTTPS, port: {port}, hostname: \"*.example.com\", tls: {{mode: Terminate, certificateRefs: [{{name: example-cert}}]}}}}\n  - {{name: other, protocol: HTTPS, port: {port}, hostname: other.test, tls: {{certificateRefs: [{{name: other-cert}}]}}}}\n  - {{name: broken, protocol: HTTPS, port: {missing_port}, tls: {{certificateRefs: [{{name: no-such-secret}}]}}}}\n{}{}",
        tls_secret("example-cert", tls::EXAMPLE_COM_CERT_PEM, tls::EXAMPLE_COM_KEY_PEM),
        tls_secret("other-cert", tls::OTHER_TEST_CERT_PEM, tls::OTHER_TEST_KEY_PEM),
    )
}

const COOKIE_ROUTE: &str = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: svc, port: 80}]\n    sessionPersistence: {sessionName: web-session}\n";

#[tokio::test]
async fn https_sni_alpn_secure_cookie_and_misdirected_requests() {
    let b = backends("t", 2).await;
    let (port, missing_port) = (free_port(), free_port());
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", https_gateway(port, missing_port)),
            ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
            ("route.yaml", COOKIE_ROUTE.to_string()),
        ],
    )
    .await;
    let url = format!("https://127.0.0.1:{port}/hello");
    for (alpn_h2, version) in [(false, http::Version::HTTP_11), (true, http::Version::HTTP_2)] {
        let client = TestClient::https(tls::CA_PEM, alpn_h2).unwrap();
        // The certificate verifies only if the listener chose the right one for the SNI name.
        for host in ["app.example.com", "other.test"] {
            let resp = client.send(TestRequest::get(&url).host(host)).await.unwrap();
            assert_eq!(resp.status, 200, "{host}");
            assert_eq!(resp.version, version);
            let cookie =
                resp.set_cookies().into_iter().find(|c| c.starts_with("web-session=")).expect("session cookie");
            assert!(cookie.contains("; Secure"), "HTTPS cookies carry Secure: {cookie}");
            assert_eq!(resp.json()["headers"]["x-forwarded-proto"][0], "https");
        }
        // SNI names one listener, Host another: 421 Misdirected Request.
        let resp = client.send(TestRequest::get(&url).sni("other.test").host("app.example.com")).await.unwrap();
        assert_eq!(resp.status, 421);
    }
    let status = gw.status_of("Gateway", "gw").await;
    let broken =
        status["status"]["listeners"].as_array().unwrap().iter().find(|l| l["name"] == "broken").unwrap().clone();
    let resolved =
        broken["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ResolvedRefs").unwrap().clone();
    assert_eq!(
        (resolved["status"].as_str(), resolved["reason"].as_str()),
        (Some("False"), Some("InvalidCertificateRef"))
    );
    gw.gateway.stop().await;
}

/// A Service whose port speaks h2c (`appProtocol: kubernetes.io/h2c`).
fn h2c_service(name: &str, backends: &[&TestBackend]) -> String {
    service_yaml("default", name, backends).replacen(
        "ports: [{name: http, port: 80}]",
        "ports: [{name: http, port: 80, appProtocol: kubernetes.io/h2c}]",
        1,
    )
}

fn grpc_route(name: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}"
    )
}

fn grpc_call(gw: &TestGateway, method: &str, msg: &str) -> TestRequest {
    TestRequest::post(gw.url(method))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame(msg.as_bytes()))
}

fn grpc_ok(resp: &TestResponse) {
    assert_eq!(resp.status, 200);
    assert_eq!(resp.trailer("grpc-status"), Some("0"), "trailers reach the client: {:?}", resp.trailers);
}

#[tokio::test]
async fn h2c_upstream_carries_trailers_and_grpc_routes_by_method() {
    let a = backends("a", 1).await;
    let b = backends("b", 1).await;
    let port = free_port();
    let rules = "  - matches: [{method: {service: svc.Foo, method: A}}]\n    backendRefs: [{name: sa, port: 80}]\n  - matches: [{method: {service: svc.Foo, method: BStream}}]\n    backendRefs: [{name: sb, port: 80}]\n";
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", format!("{}{}", h2c_service("sa", &[&a[0]]), service_yaml("default", "sb", &[&b[0]]))),
            ("route.yaml", grpc_route("g", rules)),
        ],
    )
    .await;
    let client = TestClient::h2c();
    let unary = client.send(grpc_call(&gw, "/svc.Foo/A", "ping")).await.unwrap();
    grpc_ok(&unary);
    assert_eq!(unary.backend().as_deref(), Some("a0"));
    assert_eq!(unframe(&unary.body), vec![b"ping".to_vec()]);
    assert_eq!(unary.trailer("x-backend-trailer"), Some("a0"));
    // GRPCRoute backends speak h2c even without appProtocol; server streaming arrives message by message.
    let streamed = client.send(grpc_call(&gw, "/svc.Foo/BStream", "hi")).await.unwrap();
    grpc_ok(&streamed);
    assert_eq!(unframe(&streamed.body), vec![b"b0:0:hi".to_vec(), b"b0:1:hi".to_vec(), b"b0:2:hi".to_vec()]);
    let unknown = client.send(grpc_call(&gw, "/svc.Foo/C", "x")).await.unwrap();
    assert_eq!(unknown.status, 200, "gRPC clients get errors as grpc-status");
    assert_eq!(unknown.header("grpc-status"), Some("12"), "UNIMPLEMENTED when no rule matches");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn grpc_weights_and_unavailable_status() {
    let bs = backends("w", 2).await;
    let port = free_port();
    let rules = "  - matches: [{method: {service: svc.W}}]\n    backendRefs: [{name: s70, port: 80, weight: 70}, {name: s30, port: 80, weight: 30}]\n  - matches: [{method: {service: svc.Empty}}]\n    backendRefs: [{name: empty, port: 80}]\n";
    let empty =
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty}\nspec: {ports: [{name: http, port: 80}]}\n";
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            (
                "svc.yaml",
                format!(
                    "{}{}{empty}",
                    service_yaml("default", "s70", &[&bs[0]]),
                    service_yaml("default", "s30", &[&bs[1]])
                ),
            ),
            ("route.yaml", grpc_route("g", rules)),
        ],
    )
    .await;
    let client = TestClient::h2c();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..500 {
        let resp = client.send(grpc_call(&gw, "/svc.W/Get", "x")).await.unwrap();
        grpc_ok(&resp);
        *counts.entry(resp.backend().unwrap()).or_default() += 1;
    }
    let share = f64::from(counts["w0"]) / 5.0;
    assert!((65.0..=75.0).contains(&share), "70/30 split gave {counts:?}");
    let resp = client.send(grpc_call(&gw, "/svc.Empty/Get", "x")).await.unwrap();
    assert_eq!(resp.status, 200, "gRPC errors travel in grpc-status");
    let status = resp.header("grpc-status").or(resp.trailer("grpc-status"));
    assert_eq!(status, Some("14"), "UNAVAILABLE when no endpoint can serve");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn grpc_sessions_stick_across_fresh_connections_and_are_scoped_per_rule() {
    let bs = backends("g", 3).await;
    let port = free_port();
    let rules = "  - matches: [{method: {service: svc.Foo, method: A}}]\n    backendRefs: [{name: svc, port: 80}]\n    sessionPersistence: {sessionName: x-grpc-session, type: Header}\n  - matches: [{method: {service: svc.Foo, method: B}}]\n    backendRefs: [{name: svc, port: 80}]\n    sessionPersistence: {sessionName: grpc-cookie, type: Cookie}\n";
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &[&bs[0], &bs[1], &bs[2]])),
            ("route.yaml", grpc_route("g", rules)),
        ],
    )
    .await;
    let client = TestClient::h2c().fresh_connections(true);

    // Header type: the token comes back in response metadata and is echoed in request metadata.
    let first = client.send(grpc_call(&gw, "/svc.Foo/A", "x")).await.unwrap();
    grpc_ok(&first);
    let token = first.header("x-grpc-session").expect("session token in response metadata").to_string();
    let pinned = first.backend().unwrap();
    for _ in 0..50 {
        let resp = client.send(grpc_call(&gw, "/svc.Foo/A", "x").header("x-grpc-session", &token)).await.unwrap();
        grpc_ok(&resp);
        assert_eq!(resp.backend().as_deref(), Some(pinned.as_str()));
    }

    // Cookie type: the client copies set-cookie into a cookie metadata entry.
    let mut jar = CookieJar::new();
    let first = client.send_with_jar(grpc_call(&gw, "/svc.Foo/B", "x"), &mut jar).await.unwrap();
    grpc_ok(&first);
    assert!(jar.get("grpc-cookie").is_some());
    let pinned_b = first.backend().unwrap();
    for _ in 0..50 {
        let resp = client.send_with_jar(grpc_call(&gw, "/svc.Foo/B", "x"), &mut jar).await.unwrap();
        assert_eq!(resp.backend().as_deref(), Some(pinned_b.as_str()));
    }

    // Rule scope: method A's token presented to method B (as B's cookie) is ignored; B mints its own.
    let cross =
        client.send(grpc_call(&gw, "/svc.Foo/B", "x").header("cookie", &format!("grpc-cookie={token}"))).await.unwrap();
    grpc_ok(&cross);
    assert!(cross.set_cookies().iter().any(|c| c.starts_with("grpc-cookie=")), "B issues its own token");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn httproute_and_grpcroute_on_one_hostname_conflict_oldest_wins() {
    let bs = backends("c", 2).await;
    let port = free_port();
    let http = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, creationTimestamp: \"2024-01-01T00:00:00Z\"}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [api.example.com]\n  rules:\n  - backendRefs: [{name: s0, port: 80}]\n";
    let grpc = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: rpc, creationTimestamp: \"2024-06-01T00:00:00Z\"}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [api.example.com]\n  rules:\n  - backendRefs: [{name: s1, port: 80}]\n";
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            (
                "svc.yaml",
                format!("{}{}", service_yaml("default", "s0", &[&bs[0]]), service_yaml("default", "s1", &[&bs[1]])),
            ),
            ("routes.yaml", format!("{http}{grpc}")),
        ],
    )
    .await;
    let resp = TestClient::h2c().send(grpc_call(&gw, "/svc.X/Y", "x").host("api.example.com")).await.unwrap();
    assert_eq!(resp.backend().as_deref(), Some("c0"), "the older HTTPRoute keeps the hostname");
    let rpc = gw.status_of("GRPCRoute", "rpc").await;
    let accepted = rpc["status"]["parents"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap()
        .clone();
    assert_eq!(accepted["status"], "False");
    assert!(accepted["message"].as_str().unwrap().contains("HTTPRoute default/web"), "{accepted}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn certificates_reload_with_the_config_and_bad_pem_is_reported() {
    let b = backends("r", 1).await;
    let (port, missing_port) = (free_port(), free_port());
    // Start with the wrong certificate behind the *.example.com listener.
    let wrong = https_gateway(port, missing_port).replacen(
        &tls_secret("example-cert", tls::EXAMPLE_COM_CERT_PEM, tls::EXAMPLE_COM_KEY_PEM),
        &tls_secret("example-cert", tls::OTHER_TEST_CERT_PEM, tls::OTHER_TEST_KEY_PEM),
        1,
    );
    let garbage = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: no-such-secret}\ntype: kubernetes.io/tls\nstringData: {tls.crt: \"-----BEGIN CERTIFICATE-----\\nnot base64!\\n-----END CERTIFICATE-----\\n\", tls.key: nope}\n";
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", format!("{wrong}{garbage}")),
            ("svc.yaml", service_yaml("default", "svc", &[&b[0]])),
            ("route.yaml", COOKIE_ROUTE.to_string()),
        ],
    )
    .await;
    let client = TestClient::https(tls::CA_PEM, false).unwrap().fresh_connections(true);
    let url = format!("https://127.0.0.1:{port}/");
    assert!(client.send(TestRequest::get(&url).host("app.example.com")).await.is_err(), "wrong certificate is served");
    gw.update("gw.yaml", &format!("{}{garbage}", https_gateway(port, missing_port))).await;
    let resp =
        client.send(TestRequest::get(&url).host("app.example.com")).await.expect("the reloaded certificate verifies");
    assert_eq!(resp.status, 200);
    let status = gw.status_of("Gateway", "gw").await;
    let broken =
        status["status"]["listeners"].as_array().unwrap().iter().find(|l| l["name"] == "broken").unwrap().clone();
    let resolved =
        broken["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ResolvedRefs").unwrap().clone();
    assert_eq!(resolved["reason"], "InvalidCertificateRef");
    assert!(resolved["message"].as_str().unwrap().contains("tls.crt"), "{resolved}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn grpc_precedence_prefers_service_characters_and_supports_regex_methods() {
    let bs = backends("p", 3).await;
    let port = free_port();
    let rules = "  - matches: [{method: {method: Get}}]\n    backendRefs: [{name: by-method, port: 80}]\n  - matches: [{method: {service: svc.Foo}}]\n    backendRefs: [{name: by-service, port: 80}]\n  - matches: [{method: {type: RegularExpression, service: \"svc\\\\.Ba[rz]\", method: \"List.*\"}}]\n    backendRefs: [{name: by-regex, port: 80}]\n";
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            (
                "svc.yaml",
                format!(
                    "{}{}{}",
                    service_yaml("default", "by-method", &[&bs[0]]),
                    service_yaml("default", "by-service", &[&bs[1]]),
                    service_yaml("default", "by-regex", &[&bs[2]])
                ),
            ),
            ("route.yaml", grpc_route("g", rules)),
        ],
    )
    .await;
    let client = TestClient::h2c();
    let call = |method: &'static str| client.send(grpc_call(&gw, method, "x"));
    // Both the method-only and the service-only rule match; more service characters win.
    assert_eq!(call("/svc.Foo/Get").await.unwrap().backend().as_deref(), Some("p1"));
    assert_eq!(call("/other.Svc/Get").await.unwrap().backend().as_deref(), Some("p0"));
    assert_eq!(call("/svc.Baz/ListAll").await.unwrap().backend().as_deref(), Some("p2"));
    let miss = call("/svc.Bax/ListAll").await.unwrap();
    assert_eq!(miss.header("grpc-status"), Some("12"));
    gw.gateway.stop().await;
}
