//! `explain` on every decision path: `GET /explain` on a live gateway (text and JSON) and the
//! offline `sessile explain` command, checked against what the proxy then really does.

mod common;

use std::time::Duration;

use common::*;
use sessile_testkit::{CookieJar, TestBackend, TestClient, TestRequest};

const SVC: &str = "[{name: svc, port: 80}]";

/// Percent-encodes a query parameter value.
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /explain` with `params` (name, raw value); returns the status and body.
async fn explain_raw(gw: &TestGateway, params: &[(&str, String)]) -> (u16, String) {
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
    let url = format!("http://{}/explain?{}", gw.gateway.admin_addr, query.join("&"));
    let resp = TestClient::http1().send(TestRequest::get(url)).await.expect("admin /explain");
    (resp.status, resp.text())
}

async fn explain_text(gw: &TestGateway, path: &str, extra: &[(&str, String)]) -> String {
    let mut params = vec![("url", gw.url(path))];
    params.extend(extra.iter().cloned());
    let (status, body) = explain_raw(gw, &params).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn explain_json(gw: &TestGateway, path: &str, extra: &[(&str, String)]) -> serde_json::Value {
    let mut params = vec![("url", gw.url(path)), ("format", "json".to_string())];
    params.extend(extra.iter().cloned());
    let (status, body) = explain_raw(gw, &params).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("explain JSON: {e}: {body}"))
}

async fn sticky_gateway(backends: &[TestBackend], persistence: &str) -> TestGateway {
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let port = free_port();
    gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &refs)),
            ("route.yaml", route_yaml("shop", None, &[rule_yaml("/", SVC, Some(persistence))])),
        ],
    )
    .await
}

/// `sessile explain` of `GET /` against the gateway's configuration, with its state directory `state`.
fn offline_args(
    gw: &TestGateway,
    state: &std::path::Path,
    cookies: Vec<String>,
    json: bool,
) -> sessile::explain::ExplainArgs {
    sessile::explain::ExplainArgs {
        config: gw.config.path().to_path_buf(),
        state_dir: state.to_path_buf(),
        session_keys: None,
        method: "GET".into(),
        url: gw.url("/"),
        headers: vec![],
        cookies,
        json,
    }
}

fn cookie_param(jar: &CookieJar, name: &str) -> (&'static str, String) {
    ("cookie", format!("{name}={}", jar.get(name).expect("session cookie")))
}

#[tokio::test]
async fn new_session_predicts_the_endpoint_the_proxy_then_picks() {
    let b = backends("exnew", 3).await;
    let gw = sticky_gateway(&b, "{sessionName: sid, idleTimeout: 30m}").await;
    let client = TestClient::http1();
    for _ in 0..4 {
        let ex = explain_json(&gw, "/cart", &[]).await;
        // Explaining twice does not move the rotation: same answer.
        let again = explain_json(&gw, "/cart", &[]).await;
        assert_eq!(ex["endpoint"]["address"], again["endpoint"]["address"]);
        assert_eq!(ex["session"]["decision"], "new", "{ex:#}");
        assert_eq!(ex["session"]["rejection"], "absent");
        assert_eq!(ex["session"]["issues_token"], true);
        assert_eq!(ex["session"]["tokens"].as_array().map(Vec::len), Some(0));
        assert_eq!(ex["route"]["name"], "shop");
        assert_eq!(ex["route"]["precedence"], "the only match for this request");
        // The real request goes where explain said.
        let resp = client.send(TestRequest::get(gw.url("/cart"))).await.expect("request");
        let real = b.iter().find(|x| Some(x.name().to_string()) == resp.backend()).expect("known backend");
        assert_eq!(ex["endpoint"]["address"], real.addr().to_string(), "{ex:#}");
    }
    let text = explain_text(&gw, "/cart", &[]).await;
    assert!(text.contains("route:    HTTPRoute default/shop rule 0"), "{text}");
    assert!(text.contains("session:  cookie \"sid\" from HTTPRoute default/shop rule 0"), "{text}");
    assert!(text.contains("idle timeout 30m"), "{text}");
    assert!(text.contains("no token in the request"), "{text}");
    assert!(text.contains("decision: new (rejected: absent); a new token is issued"), "{text}");
    assert!(text.contains("why: new session: no usable session (absent); weighted pick"), "{text}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn resumed_session_shows_the_decoded_token_but_never_the_token() {
    let b = backends("exres", 3).await;
    let gw = sticky_gateway(&b, "{sessionName: sid, absoluteTimeout: 1h, idleTimeout: 10m}").await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let resp = client.send_with_jar(TestRequest::get(gw.url("/")), &mut jar).await.expect("request");
    let pinned = b.iter().find(|x| Some(x.name().to_string()) == resp.backend()).unwrap().addr().to_string();
    let token = jar.get("sid").unwrap().to_string();
    let extra = [cookie_param(&jar, "sid"), ("cookie", "other=1".to_string())];
    let ex = explain_json(&gw, "/", &extra).await;
    assert_eq!(ex["session"]["decision"], "resumed", "{ex:#}");
    assert_eq!(ex["session"]["issues_token"], false);
    let t = &ex["session"]["tokens"][0];
    assert_eq!(t["index"], 1);
    assert_eq!(t["verdict"], "resumes");
    assert_eq!(t["claims"]["endpoint"], pinned);
    assert_eq!(t["claims"]["backend"], "default/svc:80");
    assert_eq!(t["claims"]["scope_matches"], true);
    assert!(t["claims"]["age_secs"].as_u64().unwrap() < 60);
    let abs = t["claims"]["absolute_expires_in_secs"].as_i64().unwrap();
    assert!((3500..=3600).contains(&abs), "{abs}");
    let idle = t["claims"]["idle_expires_in_secs"].as_i64().unwrap();
    assert!((800..=900).contains(&idle), "1.5 x 10m: {idle}");
    assert_eq!(ex["endpoint"]["address"], pinned);
    let text = explain_text(&gw, "/", &extra).await;
    assert!(text.contains(&format!("token #1 ({} chars): resumes; endpoint {pinned} of default/svc:80", token.len())));
    assert!(text.contains("why: pinned by the session token #1"), "{text}");
    assert!(!text.contains(&token), "the raw token is never printed: {text}");
    let json_body = explain_raw(&gw, &[("url", gw.url("/")), ("format", "json".into()), extra[0].clone()]).await.1;
    assert!(!json_body.contains(&token), "the raw token is never printed");
    // The proxy agrees: the request with the cookie goes to the pinned endpoint.
    let resp = client.send_with_jar(TestRequest::get(gw.url("/")), &mut jar).await.expect("request");
    assert_eq!(b.iter().find(|x| Some(x.name().to_string()) == resp.backend()).unwrap().addr().to_string(), pinned);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn forged_expired_and_other_scope_tokens_are_explained() {
    let b = backends("exrej", 2).await;
    let port = free_port();
    let refs: Vec<&TestBackend> = b.iter().collect();
    let rules = [
        rule_yaml("/a", SVC, Some("{sessionName: sid, idleTimeout: 1s}")),
        // No name: a generated cookie name and a scope of its own.
        rule_yaml("/b", SVC, Some("{type: Cookie}")),
    ];
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &refs)),
            ("route.yaml", route_yaml("r", None, &rules)),
        ],
    )
    .await;
    // Forged.
    let ex = explain_json(&gw, "/a", &[("cookie", "sid=not-a-token".into())]).await;
    assert_eq!(ex["session"]["tokens"][0]["verdict"], "invalid", "{ex:#}");
    assert_eq!(ex["session"]["tokens"][0]["error"], "malformed token");
    assert_eq!(ex["session"]["decision"], "invalid");
    // A real token of rule /a.
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    client.send_with_jar(TestRequest::get(gw.url("/a")), &mut jar).await.expect("request");
    let cookie = cookie_param(&jar, "sid");
    // Presented under rule /b's cookie name: authentic, but another scope.
    let b_name = explain_json(&gw, "/b", &[]).await["session"]["name"].as_str().unwrap().to_string();
    assert!(b_name.starts_with("sp-"), "{b_name}");
    let foreign = ("cookie", format!("{b_name}={}", jar.get("sid").unwrap()));
    let ex = explain_json(&gw, "/b", &[foreign]).await;
    assert_eq!(ex["session"]["tokens"][0]["verdict"], "other-scope", "{ex:#}");
    assert_eq!(ex["session"]["tokens"][0]["claims"]["scope_matches"], false);
    assert_eq!(ex["session"]["decision"], "invalid");
    // Idle timeout 1 s: expired after 1.5 s without requests.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let ex = explain_json(&gw, "/a", std::slice::from_ref(&cookie)).await;
    assert_eq!(ex["session"]["tokens"][0]["verdict"], "expired-idle", "{ex:#}");
    assert_eq!(ex["session"]["decision"], "expired");
    assert!(ex["session"]["tokens"][0]["claims"]["idle_expires_in_secs"].as_i64().unwrap() <= 0);
    let text = explain_text(&gw, "/a", std::slice::from_ref(&cookie)).await;
    assert!(text.contains("decision: expired (rejected: expired-idle); a new token is issued"), "{text}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn draining_and_unhealthy_pinned_endpoints_are_explained() {
    let b = backends("exdrain", 3).await;
    let gw = sticky_gateway(&b, "{sessionName: sid}").await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let resp = client.send_with_jar(TestRequest::get(gw.url("/")), &mut jar).await.expect("request");
    let pinned = b.iter().position(|x| Some(x.name().to_string()) == resp.backend()).unwrap();
    let cookie = cookie_param(&jar, "sid");
    // Draining: the session stays; new sessions skip the endpoint.
    let states: Vec<(&TestBackend, &str)> =
        b.iter().enumerate().map(|(i, x)| (x, if i == pinned { "draining" } else { "ready" })).collect();
    gw.update("svc.yaml", &service_yaml_states("default", "svc", &states)).await;
    let ex = explain_json(&gw, "/", std::slice::from_ref(&cookie)).await;
    assert_eq!(ex["endpoint"]["address"], b[pinned].addr().to_string(), "{ex:#}");
    assert_eq!(ex["endpoint"]["state"], "draining");
    let why = ex["endpoint"]["why"].as_str().unwrap();
    assert!(why.contains("draining but keeps its existing sessions"), "{why}");
    let skipped = ex["endpoint"]["skipped"].to_string();
    assert!(skipped.contains(&format!("{} draining", b[pinned].addr())), "{skipped}");
    let fresh = explain_json(&gw, "/", &[]).await;
    assert_ne!(fresh["endpoint"]["address"], b[pinned].addr().to_string(), "new sessions avoid draining");
    // Unhealthy: the endpoint refuses connections; after the proxy sees that, explain re-pins.
    let ready: Vec<(&TestBackend, &str)> = b.iter().map(|x| (x, "ready")).collect();
    gw.update("svc.yaml", &service_yaml_states("default", "svc", &ready)).await;
    b[pinned].stop().await;
    let resp = client.send(TestRequest::get(gw.url("/")).header("cookie", &cookie.1)).await.expect("request");
    assert_eq!(resp.status, 200);
    let ex = explain_json(&gw, "/", std::slice::from_ref(&cookie)).await;
    assert_eq!(ex["session"]["tokens"][0]["verdict"], "endpoint-unhealthy", "{ex:#}");
    assert_eq!(ex["session"]["decision"], "re-pinned");
    assert_ne!(ex["endpoint"]["address"], b[pinned].addr().to_string());
    let text = explain_text(&gw, "/", &[cookie]).await;
    assert!(text.contains(&format!("skipped for new sessions: {} unhealthy", b[pinned].addr())), "{text}");
    assert!(text.contains("why: re-pinned: no usable session (endpoint-unhealthy)"), "{text}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn route_precedence_and_outcomes_without_an_endpoint() {
    let b = backends("exprec", 1).await;
    let port = free_port();
    let refs: Vec<&TestBackend> = b.iter().collect();
    let exact = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: exact, namespace: default}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: Exact, value: /cart}}]\n    backendRefs: [{name: svc, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /old}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}}]\n  - matches: [{path: {type: PathPrefix, value: /broken}}]\n    backendRefs: [{name: missing, port: 80}]\n";
    let headers = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: canary, namespace: default}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: x-canary, value: \"yes\"}]}]\n    backendRefs: [{name: svc, port: 80}]\n";
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &refs)),
            ("all.yaml", route_yaml("all", Some("2020-01-01T00:00:00Z"), &[rule_yaml("/", SVC, None)])),
            ("exact.yaml", exact.to_string()),
            ("canary.yaml", headers.to_string()),
        ],
    )
    .await;
    let ex = explain_json(&gw, "/cart", &[]).await;
    assert_eq!(ex["route"]["name"], "exact", "{ex:#}");
    assert_eq!(ex["route"]["precedence"], "Exact path match beats PathPrefix (path type)");
    assert_eq!(ex["route"]["candidates"], 2);
    assert_eq!(ex["session"], serde_json::Value::Null);
    assert!(ex["endpoint"]["why"].as_str().unwrap().starts_with("weighted pick: the rule's only backendRef"));
    let ex = explain_json(&gw, "/shop", &[("header", "X-Canary: yes".into())]).await;
    assert_eq!(ex["route"]["name"], "canary", "{ex:#}");
    assert_eq!(ex["route"]["precedence"], "more header matches: 1 > 0");
    assert!(ex["route"]["match_text"].as_str().unwrap().contains("header x-canary = \"yes\""));
    let ex = explain_json(&gw, "/shop", &[]).await;
    assert_eq!(ex["route"]["name"], "all");
    let ex = explain_json(&gw, "/old/page", &[]).await;
    assert!(ex["outcome"].as_str().unwrap().starts_with("301 redirect"), "{ex:#}");
    assert_eq!(ex["endpoint"], serde_json::Value::Null);
    let ex = explain_json(&gw, "/broken", &[]).await;
    assert!(ex["outcome"].as_str().unwrap().starts_with("500"), "{ex:#}");
    // No listener on that port.
    let (status, body) = explain_raw(&gw, &[("url", "http://127.0.0.1:1/".into())]).await;
    assert_eq!(status, 200);
    assert!(body.contains("connection refused: no listener on port 1"), "{body}");
    // Bad input: a clear 400, the gateway keeps serving.
    let (status, body) = explain_raw(&gw, &[("url", "not a url".into())]).await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid URL"), "{body}");
    let (status, body) = explain_raw(&gw, &[]).await;
    assert_eq!(status, 400);
    assert!(body.contains("usage"), "{body}");
    let (status, _) = explain_raw(&gw, &[("url", gw.url("/")), ("header", "no-colon".into())]).await;
    assert_eq!(status, 400);
    let resp = TestClient::http1().send(TestRequest::get(gw.url("/cart"))).await.expect("request");
    assert_eq!(resp.status, 200);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn policy_origin_and_route_override_are_named() {
    let b = backends("expol", 2).await;
    let port = free_port();
    let refs: Vec<&TestBackend> = b.iter().collect();
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &refs)),
            ("policy.yaml", lb_policy_yaml("sticky", None, "svc", "{sessionName: pol, type: Header}")),
            (
                "route.yaml",
                route_yaml(
                    "r",
                    None,
                    &[rule_yaml("/policy", SVC, None), rule_yaml("/own", SVC, Some("{sessionName: own}"))],
                ),
            ),
        ],
    )
    .await;
    let ex = explain_json(&gw, "/policy", &[]).await;
    assert_eq!(ex["session"]["carrier"], "header", "{ex:#}");
    assert_eq!(ex["session"]["source"], "BackendLBPolicy default/sticky (targets the rule's Service)");
    let ex = explain_json(&gw, "/own", &[]).await;
    assert_eq!(ex["session"]["carrier"], "cookie", "{ex:#}");
    assert_eq!(ex["session"]["overrides"], serde_json::json!(["BackendLBPolicy default/sticky"]));
    let text = explain_text(&gw, "/own", &[]).await;
    assert!(text.contains("overrides BackendLBPolicy default/sticky"), "{text}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn offline_command_decodes_tokens_with_the_gateways_key_ring() {
    let b = backends("excli", 2).await;
    let gw = sticky_gateway(&b, "{sessionName: sid}").await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let resp = client.send_with_jar(TestRequest::get(gw.url("/")), &mut jar).await.expect("request");
    let pinned = b.iter().find(|x| Some(x.name().to_string()) == resp.backend()).unwrap().addr().to_string();
    let cookies = vec![format!("sid={}", jar.get("sid").unwrap())];
    let args = |json: bool, state: &std::path::Path| offline_args(&gw, state, cookies.clone(), json);
    let text = sessile::explain::render(&args(false, gw.state.path())).expect("explain");
    assert!(text.contains(&format!("resumes; endpoint {pinned} of default/svc:80")), "{text}");
    assert!(text.contains("offline: endpoint health is not known"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&sessile::explain::render(&args(true, gw.state.path())).unwrap()).unwrap();
    assert_eq!(json["endpoint"]["address"], pinned);
    // Without the gateway's key ring the token cannot be opened, and explain says why.
    let elsewhere = TempDir::new("nokeys");
    let text = sessile::explain::render(&args(false, elsewhere.path())).expect("explain");
    assert!(text.contains("token #1") && text.contains("invalid (token not authentic)"), "{text}");
    assert!(text.contains("no key ring at"), "{text}");
    // The binary: exit 2 on unusable input, 0 with the explanation on stdout.
    let bin = env!("CARGO_BIN_EXE_sessile");
    let out = std::process::Command::new(bin)
        .args(["explain", "--config"])
        .arg(gw.config.path())
        .args(["GET", "ftp://x/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute with http or https"));
    let out = std::process::Command::new(bin)
        .args(["explain", "--json", "--state-dir"])
        .arg(gw.state.path())
        .arg("--config")
        .arg(gw.config.path())
        .args(["GET", &gw.url("/x"), "-H", "X-Test: 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["route"]["name"], "shop");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn idle_refresh_weighted_fallback_and_no_endpoint_are_explained() {
    let b = backends("exmore", 3).await;
    let port = free_port();
    let two_services = format!(
        "{}{}",
        service_yaml_states("default", "drained", &[(&b[0], "draining")]),
        service_yaml_states("default", "live", &[(&b[1], "ready"), (&b[2], "ready")])
    );
    let rules = [
        rule_yaml("/split", "[{name: drained, port: 80, weight: 1}, {name: live, port: 80, weight: 1}]", None),
        rule_yaml("/none", "[{name: drained, port: 80}]", None),
        rule_yaml("/idle", "[{name: live, port: 80}]", Some("{sessionName: sid, idleTimeout: 2s}")),
    ];
    let gw = gateway_with(
        port,
        &[("gw.yaml", gateway_yaml(port)), ("svc.yaml", two_services), ("route.yaml", route_yaml("r", None, &rules))],
    )
    .await;
    // The first weighted pick is backendRef 0, whose only endpoint drains: the request falls back.
    let ex = explain_json(&gw, "/split", &[]).await;
    let why = ex["endpoint"]["why"].as_str().unwrap();
    assert!(why.contains("the weighted pick was backendRef 0, which has no usable endpoint"), "{ex:#}");
    assert_eq!(ex["endpoint"]["backend"], "default/live:80");
    // Nothing ready at all: 503.
    let ex = explain_json(&gw, "/none", &[]).await;
    assert_eq!(ex["outcome"], "503: no endpoint can take the request (none ready and healthy)", "{ex:#}");
    assert_eq!(ex["endpoint"], serde_json::Value::Null);
    let real = TestClient::http1().send(TestRequest::get(gw.url("/none"))).await.expect("request");
    assert_eq!(real.status, 503);
    // Idle refresh: after more than half the idle timeout the token is re-issued.
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    client.send_with_jar(TestRequest::get(gw.url("/idle")), &mut jar).await.expect("request");
    let cookie = cookie_param(&jar, "sid");
    let fresh = explain_json(&gw, "/idle", std::slice::from_ref(&cookie)).await;
    assert_eq!(fresh["session"]["decision"], "resumed", "{fresh:#}");
    assert_eq!(fresh["session"]["tokens"][0]["claims"]["refresh_due"], false);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ex = explain_json(&gw, "/idle", std::slice::from_ref(&cookie)).await;
    assert_eq!(ex["session"]["decision"], "refreshed", "{ex:#}");
    assert_eq!(ex["session"]["issues_token"], true);
    assert_eq!(ex["session"]["tokens"][0]["claims"]["refresh_due"], true);
    let text = explain_text(&gw, "/idle", &[cookie]).await;
    assert!(text.contains("idle refresh due, so the token is re-issued"), "{text}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn offline_explain_uses_the_gateways_first_seen_times_without_changing_them() {
    let b = backends("exage", 1).await;
    let port = free_port();
    let refs: Vec<&TestBackend> = b.iter().collect();
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &refs)),
            ("zeta.yaml", route_yaml("zeta", None, &[rule_yaml("/", SVC, None)])),
        ],
    )
    .await;
    // First seen a second later: younger, although it sorts first alphabetically.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.update("alpha.yaml", &route_yaml("alpha", None, &[rule_yaml("/", SVC, None)])).await;
    let live = explain_json(&gw, "/", &[]).await;
    assert_eq!(live["route"]["name"], "zeta", "{live:#}");
    assert!(live["route"]["precedence"].as_str().unwrap().starts_with("older route"), "{live:#}");
    let memory = gw.state.path().join("first-seen.json");
    let before = std::fs::read(&memory).expect("first-seen times saved");
    let args = offline_args(&gw, gw.state.path(), vec![], true);
    let offline: serde_json::Value = serde_json::from_str(&sessile::explain::render(&args).unwrap()).unwrap();
    assert_eq!(offline["route"]["name"], "zeta", "{offline:#}");
    assert_eq!(std::fs::read(&memory).unwrap(), before, "explain never writes the gateway's state");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn https_listener_certificate_and_grpc_method_precedence_are_explained() {
    let b = backends("exgrpc", 2).await;
    let port = free_port();
    let rules = "  - matches: [{method: {method: Get}}]\n    backendRefs: [{name: by-method, port: 80}]\n  - matches: [{method: {service: svc.Foo}}]\n    backendRefs: [{name: by-service, port: 80}]\n";
    let grpc = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}"
    );
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", https_gateway_yaml(port, "example-cert")),
            (
                "secret.yaml",
                tls_secret_yaml(
                    "example-cert",
                    sessile_testkit::tls::EXAMPLE_COM_CERT_PEM,
                    sessile_testkit::tls::EXAMPLE_COM_KEY_PEM,
                ),
            ),
            (
                "svc.yaml",
                format!(
                    "{}{}",
                    service_yaml("default", "by-method", &[&b[0]]),
                    service_yaml("default", "by-service", &[&b[1]])
                ),
            ),
            ("route.yaml", grpc),
        ],
    )
    .await;
    let url = format!("https://shop.example.com:{port}/svc.Foo/Get");
    let params = [
        ("url", url.clone()),
        ("method", "POST".to_string()),
        ("header", "content-type: application/grpc".to_string()),
        ("format", "json".to_string()),
    ];
    let (status, body) = explain_raw(&gw, &params).await;
    assert_eq!(status, 200, "{body}");
    let ex: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ex["listener"]["protocol"], "HTTPS", "{ex:#}");
    assert!(ex["listener"]["certificate"].as_str().unwrap().starts_with("default/example-cert"), "{ex:#}");
    assert_eq!(ex["route"]["kind"], "GRPCRoute");
    assert_eq!(ex["route"]["rule"], 1, "more service characters win: {ex:#}");
    assert!(ex["route"]["precedence"].as_str().unwrap().starts_with("longer path/service match"), "{ex:#}");
    assert_eq!(ex["endpoint"]["address"], b[1].addr().to_string());
    // The URL's scheme disagreeing with the listener is pointed out.
    let (_, text) = explain_raw(&gw, &[("url", format!("http://shop.example.com:{port}/svc.Foo/Get"))]).await;
    assert!(text.contains(&format!("port {port} is an HTTPS listener but the URL says http")), "{text}");
    gw.gateway.stop().await;
}
