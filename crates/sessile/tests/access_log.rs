//! Access log lines: one per request with route, rule, backend, endpoint, status, bytes, duration and
//! the session flag; JSON and logfmt; sampling and off; written to a real file by the writer thread.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use sessile::run::{ServeOptions, Source, start};
use sessile_proxy::state::AccessLog;
use sessile_testkit::{CookieJar, TestBackend, TestClient, TestRequest};

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {value: /app}}]\n    backendRefs: [{name: svc, port: 80}]\n    sessionPersistence: {sessionName: sid, idleTimeout: 1h}\n";

/// A gateway logging to `log` in `format`, sampling `sample`.
async fn logging_gateway(
    b: &[TestBackend],
    format: AccessLog,
    sample: f64,
    log: &std::path::Path,
) -> (sessile::run::Gateway, u16, TempDir, TempDir) {
    let port = free_port();
    let config = TempDir::new("access-log");
    config.write("gw.yaml", &gateway_yaml(port));
    let refs: Vec<&TestBackend> = b.iter().collect();
    config.write("svc.yaml", &service_yaml("default", "svc", &refs));
    config.write("route.yaml", ROUTE);
    let state = TempDir::new("access-log-state");
    let opts = ServeOptions {
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir: state.path().to_path_buf(),
        access_log: format,
        access_log_sample: sample,
        access_log_file: Some(log.to_path_buf()),
        ..ServeOptions::default()
    };
    let gw = start(Source::Path(config.path().to_path_buf()), &opts).await.unwrap();
    (gw, port, config, state)
}

/// Waits (bounded) until the log file holds `n` lines, and returns them.
async fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let read = || std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();
    let _ = sessile_testkit::eventually(Duration::from_secs(5), || async {
        if read().len() >= n { Ok(()) } else { anyhow::bail!("{} of {n} lines", read().len()) }
    })
    .await;
    read()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!(" {key}="))
        .map(|i| i + key.len() + 2)
        .or_else(|| line.starts_with(&format!("{key}=")).then_some(key.len() + 1));
    let Some(start) = start else { panic!("no {key} in {line}") };
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        &quoted[..quoted.find('"').unwrap_or(quoted.len())]
    } else {
        &rest[..rest.find(' ').unwrap_or(rest.len())]
    }
}

#[tokio::test]
async fn logfmt_lines_carry_every_field_and_the_session_flag() {
    let b = backends("log", 2).await;
    let dir = TempDir::new("access-log-file");
    let path = dir.path().join("access.log");
    let (gw, port, _c, _s) = logging_gateway(&b, AccessLog::Logfmt, 1.0, &path).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let first = client.send_with_jar(TestRequest::get(url("/app")), &mut jar).await.unwrap();
    client.send_with_jar(TestRequest::get(url("/app")), &mut jar).await.unwrap();
    client.send(TestRequest::get(url("/app")).header("cookie", "sid=forged")).await.unwrap();
    client.send(TestRequest::get(url("/nowhere"))).await.unwrap();
    let lines = lines(&path, 4).await;
    gw.stop().await;

    assert_eq!(lines.len(), 4, "one line per request: {lines:#?}");
    let endpoint = first.json()["backend"].as_str().unwrap().to_string();
    let pinned = if endpoint == "log0" { b[0].addr() } else { b[1].addr() };
    let l0 = &lines[0];
    assert_eq!(field(l0, "method"), "GET");
    assert_eq!(field(l0, "path"), "/app");
    assert_eq!(field(l0, "host"), format!("127.0.0.1:{port}"));
    assert_eq!(field(l0, "protocol"), "HTTP/1.1");
    assert_eq!(field(l0, "status"), "200");
    assert_eq!(field(l0, "route"), "HTTPRoute default/web");
    assert_eq!(field(l0, "rule"), "0");
    assert_eq!(field(l0, "backend"), "default/svc:80");
    assert_eq!(field(l0, "endpoint"), pinned.to_string());
    assert_eq!(field(l0, "session"), "new");
    assert_eq!(field(l0, "session_rejected"), "absent");
    assert_eq!(field(l0, "bytes").parse::<usize>().unwrap(), first.body.len(), "{l0}");
    let duration: f64 = field(l0, "duration_ms").parse().unwrap();
    let response: f64 = field(l0, "response_ms").parse().unwrap();
    assert!(duration >= response && response > 0.0, "{l0}");
    assert!(field(l0, "time").ends_with('Z'));
    assert_eq!(field(&lines[1], "session"), "resumed");
    assert_eq!(field(&lines[1], "endpoint"), pinned.to_string());
    assert_eq!(field(&lines[1], "session_rejected"), "-");
    assert_eq!(field(&lines[2], "session"), "invalid");
    assert_eq!(field(&lines[2], "session_rejected"), "invalid");
    let l3 = &lines[3];
    assert_eq!((field(l3, "status"), field(l3, "route"), field(l3, "session")), ("404", "-", "-"), "{l3}");
    assert_eq!((field(l3, "backend"), field(l3, "endpoint")), ("-", "-"));
}

#[tokio::test]
async fn json_lines_over_http2() {
    let b = backends("logj", 1).await;
    let dir = TempDir::new("access-log-json");
    let path = dir.path().join("access.json");
    let (gw, port, _c, _s) = logging_gateway(&b, AccessLog::Json, 1.0, &path).await;
    let resp = TestClient::h2c().send(TestRequest::get(format!("http://127.0.0.1:{port}/app/x"))).await.unwrap();
    assert_eq!(resp.status, 200);
    let lines = lines(&path, 1).await;
    gw.stop().await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["protocol"], "HTTP/2");
    assert_eq!(v["path"], "/app/x");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "HTTPRoute default/web");
    assert_eq!(v["rule"], 0);
    assert_eq!(v["backend"], "default/svc:80");
    assert_eq!(v["endpoint"], b[0].addr().to_string());
    assert_eq!(v["session"], "new");
    assert_eq!(v["bytes"].as_u64().unwrap() as usize, resp.body.len());
}

#[tokio::test]
async fn sampling_keeps_a_fraction_and_every_server_error_and_off_writes_nothing() {
    let b = backends("logs", 1).await;
    let dir = TempDir::new("access-log-sample");
    let path = dir.path().join("sampled.log");
    let (gw, port, _c, _s) = logging_gateway(&b, AccessLog::Logfmt, 0.25, &path).await;
    let client = TestClient::http1();
    for _ in 0..40 {
        client.send(TestRequest::get(format!("http://127.0.0.1:{port}/app"))).await.unwrap();
    }
    // Server errors are always logged: a backend answering 503.
    for _ in 0..3 {
        let r = client
            .send(TestRequest::get(format!("http://127.0.0.1:{port}/app")).header("x-echo-status", "503"))
            .await
            .unwrap();
        assert_eq!(r.status, 503);
    }
    let got = lines(&path, 13).await;
    gw.stop().await;
    let errors = got.iter().filter(|l| field(l, "status") == "503").count();
    assert_eq!(errors, 3, "{got:#?}");
    assert_eq!(got.len() - errors, 10, "1 in 4 of 40: {got:#?}");

    let off_path = dir.path().join("off.log");
    let (gw, port, _c, _s) = logging_gateway(&b, AccessLog::Off, 1.0, &off_path).await;
    client.send(TestRequest::get(format!("http://127.0.0.1:{port}/app"))).await.unwrap();
    gw.stop().await;
    assert!(std::fs::read_to_string(&off_path).unwrap_or_default().is_empty());
}

#[tokio::test]
async fn an_unwritable_log_file_is_a_clear_startup_error() {
    let b = backends("logbad", 1).await;
    let port = free_port();
    let config = TempDir::new("access-log-bad");
    config.write("gw.yaml", &gateway_yaml(port));
    config.write("svc.yaml", &service_yaml("default", "svc", &[&b[0]]));
    let state = TempDir::new("access-log-bad-state");
    let opts = ServeOptions {
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir: state.path().to_path_buf(),
        access_log: AccessLog::Json,
        access_log_file: Some(config.path().join("no-such-dir").join("access.log")),
        ..ServeOptions::default()
    };
    let err = start(Source::Path(config.path().to_path_buf()), &opts).await.err().expect("refused");
    assert!(format!("{err:#}").contains("access log") && format!("{err:#}").contains("no-such-dir"), "{err:#}");
}
