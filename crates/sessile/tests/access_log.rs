//! Access log lines: one per request, with route, endpoint, status and the session flag.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use sessile::run::{ServeOptions, Source, start};
use sessile_proxy::state::AccessLog;
use sessile_testkit::{CookieJar, TestClient, TestRequest};

/// Collects everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn access_lines(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains("session=")).map(str::to_string).collect()
    }
}

#[tokio::test]
async fn access_log_lines_carry_route_endpoint_status_and_session_flag() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).init();

    let b = backends("log", 2).await;
    let port = free_port();
    let config = TempDir::new("access-log");
    config.write("gw.yaml", &gateway_yaml(port));
    config.write("svc.yaml", &service_yaml("default", "svc", &[&b[0], &b[1]]));
    config.write(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {value: /app}}]\n    backendRefs: [{name: svc, port: 80}]\n    sessionPersistence: {sessionName: sid, idleTimeout: 1h}\n",
    );
    let state = TempDir::new("access-log-state");
    let opts = ServeOptions {
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir: state.path().to_path_buf(),
        access_log: AccessLog::Logfmt,
        ..ServeOptions::default()
    };
    let gw = start(Source::Path(config.path().to_path_buf()), &opts).await.unwrap();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let first = client.send_with_jar(TestRequest::get(url("/app")), &mut jar).await.unwrap();
    client.send_with_jar(TestRequest::get(url("/app")), &mut jar).await.unwrap();
    client.send(TestRequest::get(url("/app")).header("cookie", "sid=forged")).await.unwrap();
    client.send(TestRequest::get(url("/nowhere"))).await.unwrap();
    gw.stop().await;

    let lines = captured.access_lines();
    assert_eq!(lines.len(), 4, "one line per request: {lines:#?}");
    let endpoint = first.json()["backend"].as_str().unwrap().to_string();
    let pinned = if endpoint == "log0" { b[0].addr() } else { b[1].addr() };
    assert!(lines[0].contains("session=new") && lines[0].contains("route=default/web/0"), "{}", lines[0]);
    assert!(lines[0].contains(&format!("endpoint={pinned}")) && lines[0].contains("status=200"), "{}", lines[0]);
    assert!(lines[1].contains("session=resumed") && lines[1].contains(&format!("endpoint={pinned}")), "{}", lines[1]);
    assert!(lines[2].contains("session=invalid"), "{}", lines[2]);
    assert!(
        lines[3].contains("status=404") && lines[3].contains("route=-") && lines[3].contains("session=-"),
        "{}",
        lines[3]
    );
}
