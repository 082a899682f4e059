//! Prometheus metrics after real sticky traffic (names, conventions, per-endpoint sessions, endpoint
//! health), and the Grafana dashboard in deploy/grafana: it parses, and every query names a metric
//! the gateway really exports.

mod common;

use std::collections::{BTreeSet, HashSet};

use common::*;
use serde::Deserialize;
use sessile_testkit::{CookieJar, TestBackend, TestClient, TestRequest};

const SVC: &str = "[{name: svc, port: 80}]";

/// Metric families (`# TYPE name kind`) and sample names in an exposition.
fn families(text: &str) -> (Vec<(String, String)>, BTreeSet<String>) {
    let types = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' ').map(|(n, k)| (n.to_string(), k.to_string())))
        .collect();
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_string())
        .collect();
    (types, samples)
}

/// A gateway with a cookie-persistence route over `b`, after traffic: new, resumed, forged, and a
/// session whose endpoint is then stopped (connect error, re-pin).
async fn gateway_after_traffic(b: &[TestBackend]) -> (TestGateway, String) {
    let refs: Vec<&TestBackend> = b.iter().collect();
    let port = free_port();
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &refs)),
            ("route.yaml", route_yaml("shop", None, &[rule_yaml("/", SVC, Some("{sessionName: sid}"))])),
            ("bad.yaml", "kind: [not, a, resource".to_string()),
        ],
    )
    .await;
    let client = TestClient::http1();
    let mut jars: Vec<CookieJar> = (0..6).map(|_| CookieJar::new()).collect();
    for jar in &mut jars {
        for _ in 0..3 {
            let r = client.send_with_jar(TestRequest::get(gw.url("/")), jar).await.expect("request");
            assert_eq!(r.status, 200);
        }
    }
    client.send(TestRequest::get(gw.url("/")).header("cookie", "sid=forged")).await.expect("request");
    // Stop the first endpoint; its sessions re-pin on their next request.
    b[0].stop().await;
    for jar in &mut jars {
        let r = client.send_with_jar(TestRequest::get(gw.url("/")), jar).await.expect("request");
        assert_eq!(r.status, 200);
    }
    let text = gw.metrics().await;
    (gw, text)
}

#[tokio::test]
async fn metric_names_follow_prometheus_conventions_and_cover_sessions_and_endpoints() {
    let b = backends("met", 3).await;
    let (gw, text) = gateway_after_traffic(&b).await;
    let (types, _) = families(&text);
    let mut seen = HashSet::new();
    for (name, kind) in &types {
        assert!(seen.insert(name.clone()), "{name} registered twice");
        assert!(name.starts_with("sessile_"), "{name}: every metric has the sessile_ prefix");
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name}");
        match kind.as_str() {
            "counter" => assert!(!name.ends_with("_total"), "{name}: the _total suffix is on samples"),
            "histogram" => assert!(name.ends_with("_seconds"), "{name}: durations are in seconds"),
            "gauge" => assert!(!name.ends_with("_total"), "{name}: a gauge is not a total"),
            other => panic!("{name}: unexpected type {other}"),
        }
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has help text");
    }
    for counter in [
        "sessile_requests_total",
        "sessile_session_created_total",
        "sessile_session_resumed_total",
        "sessile_session_rejected_total",
        "sessile_session_repins_total",
        "sessile_endpoint_sessions_total",
        "sessile_upstream_connect_errors_total",
        "sessile_config_reloads_total",
    ] {
        assert!(text.lines().any(|l| l.starts_with(counter)), "{counter} missing:\n{text}");
    }
    for gauge in [
        "sessile_request_duration_seconds_bucket",
        "sessile_endpoint_healthy",
        "sessile_endpoints",
        "sessile_config_version",
        "sessile_config_load_errors",
        "sessile_config_resources_not_accepted",
        "sessile_config_last_reload_success_timestamp_seconds",
        "sessile_access_log_dropped_total",
    ] {
        assert!(text.lines().any(|l| l.starts_with(gauge)), "{gauge} missing:\n{text}");
    }
    let dead = b[0].addr().to_string();
    let healthy = |addr: &str| metric(&text, "sessile_endpoint_healthy", &[&format!("endpoint=\"{addr}\"")]);
    assert_eq!(healthy(&dead), 0.0, "{text}");
    assert_eq!(healthy(&b[1].addr().to_string()), 1.0);
    assert_eq!(metric(&text, "sessile_endpoints", &["state=\"unhealthy\""]), 1.0);
    assert_eq!(metric(&text, "sessile_endpoints", &["state=\"ready\""]), 2.0);
    // Per-endpoint session requests add up to created + resumed.
    let created = metric(&text, "sessile_session_created_total", &[]);
    let resumed = metric(&text, "sessile_session_resumed_total", &[]);
    let per_endpoint: f64 = b
        .iter()
        .map(|x| metric(&text, "sessile_endpoint_sessions_total", &[&format!("endpoint=\"{}\"", x.addr())]))
        .sum();
    assert_eq!(per_endpoint, created + resumed, "{text}");
    assert_eq!(created + resumed, 6.0 * 4.0 + 1.0);
    assert!(metric(&text, "sessile_session_repins_total", &[]) >= 1.0);
    assert!(metric(&text, "sessile_session_rejected_total", &["reason=\"endpoint-unhealthy\""]) >= 1.0);
    assert_eq!(metric(&text, "sessile_session_rejected_total", &["reason=\"invalid\""]), 1.0);
    // The bad document does not stop the gateway; it is counted.
    assert_eq!(metric(&text, "sessile_config_load_errors", &[]), 1.0, "{text}");
    assert_eq!(metric(&text, "sessile_config_resources_not_accepted", &[]), 0.0);
    gw.gateway.stop().await;
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dashboard {
    title: String,
    uid: String,
    schema_version: u32,
    panels: Vec<Panel>,
    templating: Templating,
}

#[derive(Deserialize)]
struct Templating {
    list: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Panel {
    id: u32,
    #[serde(rename = "type")]
    kind: String,
    title: String,
    grid_pos: GridPos,
    #[serde(default)]
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct GridPos {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    ref_id: String,
    expr: String,
}

#[tokio::test]
async fn grafana_dashboard_parses_and_queries_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana/sessile-dashboard.json");
    let text = std::fs::read_to_string(path).expect("dashboard file");
    let dash: Dashboard = serde_json::from_str(&text).expect("a Grafana dashboard");
    assert!(!dash.title.is_empty() && !dash.uid.is_empty() && dash.schema_version >= 36);
    assert!(dash.templating.list.iter().any(|v| v["type"] == "datasource"));
    let b = backends("dash", 3).await;
    let (gw, metrics) = gateway_after_traffic(&b).await;
    gw.gateway.stop().await;
    let (types, samples) = families(&metrics);
    let exported: HashSet<String> = types.into_iter().map(|(n, _)| n).chain(samples).collect();
    let mut ids = HashSet::new();
    let mut queried = BTreeSet::new();
    let known_kinds = ["row", "timeseries", "stat", "piechart", "state-timeline"];
    for p in &dash.panels {
        assert!(ids.insert(p.id), "panel id {} repeated", p.id);
        assert!(known_kinds.contains(&p.kind.as_str()), "{}: panel type {}", p.title, p.kind);
        assert!(p.grid_pos.x + p.grid_pos.w <= 24 && p.grid_pos.w > 0 && p.grid_pos.h > 0, "{}", p.title);
        assert!(p.kind == "row" || !p.targets.is_empty(), "{} has no query", p.title);
        let _ = p.grid_pos.y;
        let mut refs = HashSet::new();
        for t in &p.targets {
            assert!(refs.insert(t.ref_id.clone()), "{}: refId repeated", p.title);
            let balanced = |open: char, close: char| {
                let mut depth = 0i32;
                t.expr.chars().all(|c| {
                    depth += i32::from(c == open) - i32::from(c == close);
                    depth >= 0
                }) && depth == 0
            };
            assert!(balanced('(', ')') && balanced('{', '}') && balanced('[', ']'), "{}", t.expr);
            let mut rest = t.expr.as_str();
            while let Some(i) = rest.find("sessile_") {
                let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[i + name.len()..];
                assert!(exported.contains(&name), "{}: {name} is not exported", p.title);
                queried.insert(name);
            }
        }
    }
    // The sticky-session panels the operators need are there.
    for needed in [
        "sessile_session_created_total",
        "sessile_session_resumed_total",
        "sessile_session_rejected_total",
        "sessile_endpoint_sessions_total",
        "sessile_endpoint_healthy",
        "sessile_request_duration_seconds_bucket",
        "sessile_config_reloads_total",
    ] {
        assert!(queried.contains(needed), "no panel queries {needed}");
    }
}
