//! Data plane end to end: HTTP/1.1 and h2c, WebSocket, streaming, forwarding headers, hop-by-hop
//! headers, retries of connect failures, hot reload under traffic, graceful stop, the admin server
//! and the PGO training run.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use sessile_testkit::{TestBackend, TestClient, TestRequest, eventually, websocket_echo, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V1: &str = "gateway.networking.k8s.io/v1";

fn route(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: {V1}\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n{spec}"
    )
}

fn to(backend: &str) -> String {
    route("r", &format!("  rules:\n  - backendRefs: [{{name: {backend}, port: 80}}]\n"))
}

/// A gateway with one Service `svc` over `bs` and a catch-all route to it.
async fn setup(bs: &[&TestBackend]) -> TestGateway {
    let port = free_port();
    gateway_with(
        port,
        &[("gw.yaml", gateway_yaml(port)), ("svc.yaml", service_yaml("default", "svc", bs)), ("route.yaml", to("svc"))],
    )
    .await
}

#[tokio::test]
async fn h2c_request_through_the_proxy() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let gw = setup(&[&b]).await;
    let client = TestClient::h2c();
    for i in 0..3 {
        let resp = client.send(TestRequest::post(gw.url(&format!("/h2/{i}"))).body("payload")).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.version, http::Version::HTTP_2);
        assert_eq!(resp.backend().as_deref(), Some("b0"));
        let j = resp.json();
        assert_eq!(j["path"], format!("/h2/{i}"));
        assert_eq!(j["method"], "POST");
        assert_eq!(j["body"], "payload");
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let gw = setup(&[&b]).await;
    let ws = websocket_echo(gw.addr(), "ws.example", "/chat", &[], "hello").await.expect("websocket exchange");
    assert_eq!(ws.status, 101, "{:?}", ws.headers);
    assert_eq!(ws.echoed, "b0:hello");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn streaming_response_is_not_buffered() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let gw = setup(&[&b]).await;
    let resp = TestClient::http1().send(TestRequest::get(gw.url("/stream?chunks=3"))).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "b0:chunk0\nb0:chunk1\nb0:chunk2\n");

    // 40 chunks take about 800 ms at the backend: the first one must arrive while the rest are
    // still being produced (a buffering proxy would deliver the terminating chunk with it).
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /stream?chunks=40 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    within(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&got).contains("b0:chunk0") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("first chunk");
    let first = String::from_utf8_lossy(&got).into_owned();
    assert!(!first.contains("b0:chunk39"), "the whole body arrived at once: {first}");
    within(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&got).contains("b0:chunk39"));
    gw.gateway.stop().await;
}

#[tokio::test]
async fn forwarding_headers_and_host_reach_the_backend() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let gw = setup(&[&b]).await;
    let resp = TestClient::http1()
        .send(TestRequest::get(gw.url("/fwd")).host("app.example:1234").header("x-forwarded-for", "203.0.113.9"))
        .await
        .unwrap();
    let j = resp.json();
    let h = &j["headers"];
    let xff: Vec<&str> =
        h["x-forwarded-for"].as_array().expect("x-forwarded-for").iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(xff.join(", ").replace(' ', ""), "203.0.113.9,127.0.0.1", "{h:#}");
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(j["authority"], "app.example:1234", "Host is forwarded unchanged");

    // Two X-Forwarded-For lines: both are kept, in order, before the peer.
    let req = "GET /fwd HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2, 192.0.2.3\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
    let raw = sessile_testkit::raw_exchange(gw.addr(), req.as_bytes(), Duration::from_secs(5)).await.unwrap();
    let resps = sessile_testkit::raw::parse_responses(&raw);
    assert_eq!(resps.first().map(|r| r.status), Some(200), "{}", String::from_utf8_lossy(&raw));
    let j: serde_json::Value = serde_json::from_slice(&resps[0].body).unwrap();
    let xff: Vec<&str> =
        j["headers"]["x-forwarded-for"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(xff.join(",").replace(' ', ""), "192.0.2.1,192.0.2.2,192.0.2.3,127.0.0.1");
    assert_eq!(j["headers"]["x-forwarded-proto"], serde_json::json!(["http"]), "a client cannot claim https");

    let j = TestClient::h2c().send(TestRequest::get(gw.url("/fwd")).host("h2.example")).await.unwrap().json();
    assert_eq!(j["headers"]["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(j["headers"]["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(j["authority"], "h2.example");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let gw = setup(&[&b]).await;
    let req = "GET /hop HTTP/1.1\r\nHost: x\r\nConnection: close, x-foo\r\nX-Foo: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-End-To-End: kept\r\n\r\n";
    let raw = sessile_testkit::raw_exchange(gw.addr(), req.as_bytes(), Duration::from_secs(5)).await.unwrap();
    let resps = sessile_testkit::raw::parse_responses(&raw);
    assert_eq!(resps.len(), 1, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(resps[0].status, 200);
    let j: serde_json::Value = serde_json::from_slice(&resps[0].body).unwrap();
    let h = j["headers"].as_object().unwrap();
    for name in ["x-foo", "keep-alive", "proxy-connection"] {
        assert!(!h.contains_key(name), "{name} was forwarded: {h:?}");
    }
    if let Some(c) = h.get("connection") {
        assert!(!c.to_string().contains("x-foo"), "the client's Connection header was forwarded: {c}");
    }
    if let Some(te) = h.get("te") {
        assert_eq!(te, &serde_json::json!(["trailers"]), "only TE: trailers may pass");
    }
    assert_eq!(h["x-end-to-end"], serde_json::json!(["kept"]));
    gw.gateway.stop().await;
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_endpoint() {
    let bs = backends("b", 2).await;
    let gw = setup(&[&bs[0], &bs[1]]).await;
    bs[1].stop().await;
    let client = TestClient::http1().fresh_connections(true);
    for i in 0..20 {
        let resp = client.send(TestRequest::get(gw.url(&format!("/r{i}")))).await.unwrap();
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.backend().as_deref(), Some("b0"));
    }
    assert_eq!(bs[0].hits(), 20);
    // Round robin sent at least one of them to the stopped endpoint first: that connect failed and was retried.
    let metrics = gw.metrics().await;
    let refused = format!("endpoint=\"{}\"", bs[1].addr());
    assert!(
        metrics.lines().any(|l| l.starts_with("sessile_upstream_connect_errors_total") && l.contains(&refused)),
        "no connect error recorded for the stopped endpoint:\n{metrics}"
    );
    gw.gateway.stop().await;
}

#[tokio::test]
async fn reload_under_traffic_drops_nothing() {
    let bs = backends("b", 2).await;
    let port = free_port();
    let svcs = service_yaml("default", "b0", &[&bs[0]]) + &service_yaml("default", "b1", &[&bs[1]]);
    let gw = Arc::new(
        gateway_with(port, &[("gw.yaml", gateway_yaml(port)), ("svc.yaml", svcs), ("route.yaml", to("b0"))]).await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for fresh in [false, true] {
        let (gw, stop) = (gw.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = TestClient::http1().fresh_connections(fresh);
            let (mut ok, mut failed) = (0u32, Vec::new());
            // Bounded: at most 5000 requests per task.
            for i in 0..5000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match client.send(TestRequest::get(gw.url(&format!("/n{i}")))).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status)),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            (ok, failed)
        }));
    }
    let mut versions = vec![gw.version()];
    for i in 0..5 {
        let target = if i % 2 == 0 { "b1" } else { "b0" };
        gw.update("route.yaml", &to(target)).await;
        versions.push(gw.version());
        // Each configuration serves traffic before the next one replaces it.
        let want = target.to_string();
        eventually(Duration::from_secs(5), || {
            let gw = gw.clone();
            let want = want.clone();
            async move {
                let got = TestClient::http1().send(TestRequest::get(gw.url("/probe"))).await?.backend();
                anyhow::ensure!(got.as_deref() == Some(want.as_str()), "served by {got:?}, want {want}");
                Ok(())
            }
        })
        .await
        .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for t in tasks {
        let (ok, failed) = t.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} failed requests during reloads: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        total += ok;
    }
    assert!(total >= 20, "traffic ran during the reloads ({total} requests)");
    assert!(versions.windows(2).all(|w| w[1] > w[0]), "{versions:?}");
    assert!(bs[0].hits() > 0 && bs[1].hits() > 0);
    let gw = Arc::try_unwrap(gw).ok().expect("no other gateway handle");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn stop_finishes_in_flight_requests_then_refuses_connections() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let gw = setup(&[&b]).await;
    let url = gw.url("/slow");
    let in_flight =
        tokio::spawn(async move { TestClient::http1().send(TestRequest::get(url).header("x-delay-ms", "400")).await });
    eventually(Duration::from_secs(5), || async {
        anyhow::ensure!(b.hits() == 1, "request not at the backend yet");
        Ok(())
    })
    .await
    .unwrap();
    let addr = gw.addr();
    within(Duration::from_secs(10), gw.gateway.stop()).await.expect("stop is bounded");
    let resp = in_flight.await.unwrap().expect("the in-flight request completes");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.backend().as_deref(), Some("b0"));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed after stop");
}

#[tokio::test]
async fn admin_endpoints() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let gw = setup(&[&b]).await;
    let admin = |p: &str| format!("http://{}{p}", gw.gateway.admin_addr);
    let client = TestClient::http1();
    assert_eq!(client.send(TestRequest::get(admin("/healthz"))).await.unwrap().status, 200);
    assert_eq!(client.send(TestRequest::get(admin("/readyz"))).await.unwrap().status, 200);
    assert_eq!(client.send(TestRequest::get(admin("/nope"))).await.unwrap().status, 404);
    let config = client.send(TestRequest::get(admin("/config"))).await.unwrap();
    assert_eq!(config.status, 200);
    let config_text = config.json().to_string();
    assert!(
        config_text.contains(&b.addr().port().to_string()),
        "the endpoint is in the effective config: {config_text}"
    );
    for _ in 0..3 {
        assert_eq!(client.send(TestRequest::get(gw.url("/m"))).await.unwrap().status, 200);
    }
    let metrics = gw.metrics().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("sessile_requests_total") && l.contains("code=\"200\"") && l.contains("route=\"default/r/0\"")
        })
        .unwrap_or_else(|| panic!("no sessile_requests_total for status 200:\n{metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{line}");
    assert!(
        metrics.lines().any(|l| l.starts_with("sessile_request_duration_seconds_bucket") && l.contains("default/r/0")),
        "a latency histogram per route: {metrics}"
    );
    gw.gateway.stop().await;
}

#[tokio::test]
async fn large_request_body_and_h2c_upstream() {
    let b = sessile_testkit::start_backend_with(
        "h2only",
        sessile_testkit::BackendOptions { http2_only: true, ..Default::default() },
    )
    .await
    .unwrap();
    let port = free_port();
    let svc = service_yaml("default", "svc", &[&b])
        .replace("[{name: http, port: 80}]", "[{name: http, port: 80, appProtocol: kubernetes.io/h2c}]");
    let gw = gateway_with(port, &[("gw.yaml", gateway_yaml(port)), ("svc.yaml", svc), ("route.yaml", to("svc"))]).await;
    let body = "x".repeat(1 << 20);
    let resp = TestClient::http1().send(TestRequest::post(gw.url("/up")).body(body.clone())).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let j = resp.json();
    assert_eq!(j["version"], "HTTP/2", "appProtocol kubernetes.io/h2c speaks h2c upstream");
    assert_eq!(j["body"].as_str().map(str::len), Some(body.len()));
    gw.gateway.stop().await;
}

/// Both HTTP/1.1 write strategies (one copied buffer per `send`, the default; `writev` from the
/// message's buffers) carry large bodies both ways and streamed responses intact.
#[tokio::test]
async fn large_bodies_with_either_http1_write_strategy() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    for vectored in [false, true] {
        let port = free_port();
        let config = TempDir::new("write-strategy");
        config.write("gw.yaml", &gateway_yaml(port));
        config.write("svc.yaml", &service_yaml("default", "svc", &[&b]));
        config.write("route.yaml", &to("svc"));
        let gw = start_gateway_with(config, TempDir::new("state"), port, |o| o.h1_vectored_writes = vectored).await;
        // 3 MiB up, echoed back inside the JSON answer: a large request and a large response.
        let body: String = (0..3 << 20).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let resp = TestClient::http1().send(TestRequest::post(gw.url("/up")).body(body.clone())).await.unwrap();
        assert_eq!(resp.status, 200, "vectored {vectored}: {}", resp.text());
        let j = resp.json();
        assert_eq!(j["version"], "HTTP/1.1", "vectored {vectored}");
        assert!(j["body"].as_str() == Some(body.as_str()), "vectored {vectored}: the body changed on the way");
        let resp = TestClient::http1().send(TestRequest::get(gw.url("/stream?chunks=3"))).await.unwrap();
        assert_eq!(resp.text(), "b0:chunk0\nb0:chunk1\nb0:chunk2\n", "vectored {vectored}");
        gw.gateway.stop().await;
    }
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_forwarded() {
    let opts = sessile_testkit::BackendOptions {
        response_headers: vec![
            ("connection".into(), "x-bar".into()),
            ("x-bar".into(), "secret".into()),
            ("keep-alive".into(), "timeout=5".into()),
            ("x-end-to-end".into(), "kept".into()),
        ],
        ..Default::default()
    };
    let b = sessile_testkit::start_backend_with("b0", opts).await.unwrap();
    let gw = setup(&[&b]).await;
    let resp = TestClient::http1().send(TestRequest::get(gw.url("/"))).await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.header("x-bar").is_none(), "{:?}", resp.headers);
    assert!(resp.header("keep-alive").is_none(), "{:?}", resp.headers);
    assert!(!resp.header_all("connection").iter().any(|c| c.contains("x-bar")), "{:?}", resp.headers);
    assert_eq!(resp.header("x-end-to-end"), Some("kept"));
    gw.gateway.stop().await;
}

#[tokio::test]
async fn absolute_form_request_target_routes_by_its_authority() {
    let bs = backends("b", 2).await;
    let port = free_port();
    let routes = route("a", "  hostnames: [a.example]\n  rules:\n  - backendRefs: [{name: b0, port: 80}]\n")
        + &route("b", "  hostnames: [b.example]\n  rules:\n  - backendRefs: [{name: b1, port: 80}]\n");
    let svcs = service_yaml("default", "b0", &[&bs[0]]) + &service_yaml("default", "b1", &[&bs[1]]);
    let gw = gateway_with(port, &[("gw.yaml", gateway_yaml(port)), ("svc.yaml", svcs), ("route.yaml", routes)]).await;
    let req = "GET http://b.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n";
    let raw = sessile_testkit::raw_exchange(gw.addr(), req.as_bytes(), Duration::from_secs(5)).await.unwrap();
    let resps = sessile_testkit::raw::parse_responses(&raw);
    assert_eq!(resps.first().map(|r| r.status), Some(200), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(resps[0].header("x-backend"), Some("b1"));
    gw.gateway.stop().await;
}

#[tokio::test]
async fn all_endpoints_refusing_is_an_error_not_a_hang() {
    let bs = backends("b", 2).await;
    let gw = setup(&[&bs[0], &bs[1]]).await;
    bs[0].stop().await;
    bs[1].stop().await;
    let resp = TestClient::http1().send(TestRequest::get(gw.url("/"))).await.unwrap();
    assert!(resp.status == 502 || resp.status == 503, "status {}", resp.status);
    bs[0].restart().await.unwrap();
    // Refused endpoints are skipped for a bounded back-off (health::UNHEALTHY_BACKOFF, 5 s), then tried again.
    eventually(Duration::from_secs(8), || async {
        let resp = TestClient::http1().send(TestRequest::get(gw.url("/"))).await?;
        anyhow::ensure!(resp.status == 200, "status {}", resp.status);
        Ok(())
    })
    .await
    .expect("a restarted endpoint serves again");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn a_restarted_endpoint_is_tried_when_every_endpoint_is_in_back_off() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let gw = setup(&[&b]).await;
    b.stop().await;
    let resp = TestClient::http1().send(TestRequest::get(gw.url("/"))).await.unwrap();
    assert_eq!(resp.status, 503);
    b.restart().await.unwrap();
    let resp = TestClient::http1().send(TestRequest::get(gw.url("/"))).await.unwrap();
    assert_eq!(resp.status, 200, "the only endpoint is back; it should be tried rather than skipped");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn reload_removes_routes_and_keeps_serving_past_a_bad_document() {
    let bs = backends("b", 1).await;
    let gw = setup(&[&bs[0]]).await;
    let client = TestClient::http1();
    assert_eq!(client.send(TestRequest::get(gw.url("/"))).await.unwrap().status, 200);
    // A broken document next to the good route: the good one stays served.
    let broken = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken}\nspec:\n  parentRefs: 12\n";
    gw.update("route.yaml", &(to("svc") + broken)).await;
    assert_eq!(client.send(TestRequest::get(gw.url("/"))).await.unwrap().status, 200);
    // Removing the route file removes the route.
    let before = gw.version();
    std::fs::remove_file(gw.config.path().join("route.yaml")).unwrap();
    eventually(Duration::from_secs(5), || async {
        anyhow::ensure!(gw.version() > before, "not reloaded");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(client.send(TestRequest::get(gw.url("/"))).await.unwrap().status, 404);
    gw.gateway.stop().await;
}

/// Kills the child on drop so a failing test never leaves a gateway running.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sessile_serve_drains_and_exits_0_on_sigterm() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let config = TempDir::new("serve-config");
    let state = TempDir::new("serve-state");
    let port = free_port();
    let admin_port = free_port();
    config.write("gw.yaml", &gateway_yaml(port));
    config.write("svc.yaml", &service_yaml("default", "svc", &[&b]));
    config.write("route.yaml", &to("svc"));
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_sessile"))
            .args(["serve", "--access-log", "off", "--workers", "1", "--config"])
            .arg(config.path())
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--state-dir")
            .arg(state.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sessile serve"),
    );
    let client = TestClient::http1().fresh_connections(true);
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    eventually(Duration::from_secs(10), || async {
        let r = client.send(TestRequest::get(readyz.clone())).await?;
        anyhow::ensure!(r.status == 200, "readyz {}", r.status);
        Ok(())
    })
    .await
    .expect("sessile serve becomes ready");
    let url = format!("http://127.0.0.1:{port}/slow");
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.send(TestRequest::get(url).header("x-delay-ms", "500")).await }
    });
    eventually(Duration::from_secs(5), || async {
        anyhow::ensure!(b.hits() == 1, "request not at the backend yet");
        Ok(())
    })
    .await
    .unwrap();
    let pid = child.0.id().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(killed.success());
    let resp = in_flight.await.unwrap().expect("the in-flight request completes");
    assert_eq!(resp.status, 200);
    let status = eventually(Duration::from_secs(10), || {
        let status = child.0.try_wait();
        async move { status?.ok_or_else(|| anyhow::anyhow!("still running")) }
    })
    .await
    .expect("sessile exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_old_configuration() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let gw = setup(&[&b]).await;
    let url = gw.url("/slow");
    let in_flight =
        tokio::spawn(async move { TestClient::http1().send(TestRequest::get(url).header("x-delay-ms", "500")).await });
    eventually(Duration::from_secs(5), || async {
        anyhow::ensure!(b.hits() == 1, "request not at the backend yet");
        Ok(())
    })
    .await
    .unwrap();
    // The new configuration no longer has the route nor the Service.
    gw.update("route.yaml", "").await;
    gw.update("svc.yaml", "").await;
    assert_eq!(TestClient::http1().send(TestRequest::get(gw.url("/slow"))).await.unwrap().status, 404);
    let resp = in_flight.await.unwrap().expect("in-flight request");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.backend().as_deref(), Some("b0"));
    gw.gateway.stop().await;
}

/// The profile-guided build's training run (`bench/pgo-build.sh`) against this binary: every
/// scenario completes requests, and `train` itself fails on any non-200 answer, any persisted
/// session that moves, or a child that does not exit cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pgo_training_run_serves_every_scenario_through_the_binary() {
    let opts = sessile_testkit::train::TrainOptions {
        sessile: env!("CARGO_BIN_EXE_sessile").into(),
        profile_dir: None,
        seconds: 2.2,
    };
    let done = sessile_testkit::train::train(&opts).await.expect("training run");
    assert_eq!(done.len(), 11, "{done:#?}");
    for (scenario, requests) in &done {
        assert!(*requests > 0, "{scenario}: no requests completed");
    }
    assert!(done.iter().any(|(s, _)| s.contains("Https { h2: true }")), "{done:#?}");
}
