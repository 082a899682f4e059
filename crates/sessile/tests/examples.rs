//! Every directory of `examples/` is loaded, served and checked here, so the examples never rot.
//!
//! Each example is loaded as-is (every status must be healthy, as `sessile check` requires), then
//! served from a temporary copy in which the Gateway's listener port becomes a free port and every
//! EndpointSlice port becomes an in-process test backend named after the endpoint's `targetRef`
//! (the files themselves are never changed). The scenario the example's README describes is then
//! checked over real HTTP. A directory without a scenario here fails
//! `every_example_directory_has_a_scenario`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sessile_config::{Loader, TranslateOptions, translate};
use sessile_testkit::grpc::{frame, unframe};
use sessile_testkit::{CookieJar, TestBackend, TestClient, TestRequest, TestResponse};

/// Every example directory and the test that runs its scenario (`example_<name with _>`).
const SCENARIOS: &[&str] = &[
    "backend-lb-policy",
    "canary",
    "cookie",
    "cookie-lifetimes",
    "draining",
    "grpc",
    "header",
    "shared-session",
    "timeouts",
    "weight-zero",
];

fn examples_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn example_dirs() -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(examples_root())
        .expect("examples/ exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_example_directory_has_a_scenario() {
    let dirs: BTreeSet<String> = example_dirs().into_iter().collect();
    let covered: BTreeSet<String> = SCENARIOS.iter().map(|s| s.to_string()).collect();
    let untested: Vec<_> = dirs.difference(&covered).collect();
    let missing: Vec<_> = covered.difference(&dirs).collect();
    assert!(untested.is_empty(), "example directories without a scenario test in tests/examples.rs: {untested:?}");
    assert!(missing.is_empty(), "scenarios whose example directory is missing: {missing:?}");
}

#[test]
fn every_example_loads_with_every_status_healthy() {
    for name in example_dirs() {
        let dir = examples_root().join(&name);
        let loaded = Loader::new().load_path(&dir).expect("example readable");
        let errors: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "examples/{name}: documents not usable: {errors:#?}");
        let t = translate(&loaded.resources, &TranslateOptions::default());
        for s in &t.statuses {
            assert!(s.healthy, "examples/{name}: {} {} is not healthy: {:#}", s.kind, s.metadata.name, s.status);
        }
        let kinds: BTreeSet<&str> = t.statuses.iter().map(|s| s.kind.as_str()).collect();
        assert!(kinds.contains("Gateway"), "examples/{name}: no Gateway status: {kinds:?}");
        assert!(
            kinds.contains("HTTPRoute") || kinds.contains("GRPCRoute"),
            "examples/{name}: no route status: {kinds:?}"
        );
    }
}

#[test]
fn every_example_has_a_readme_with_its_run_command() {
    for name in example_dirs() {
        let readme = std::fs::read_to_string(examples_root().join(&name).join("README.md"))
            .unwrap_or_else(|e| panic!("examples/{name}/README.md: {e}"));
        let command = format!("cargo run --release -- demo --config examples/{name}");
        assert!(readme.contains(&command), "examples/{name}/README.md does not show `{command}`");
        let endpoints = sessile::demo::config_endpoints(&examples_root().join(&name)).expect("endpoints");
        assert!(!endpoints.is_empty(), "examples/{name}: `sessile demo --config` would start no backend");
    }
}

// ---- Serving an example with test backends --------------------------------------------------

/// A running example: the gateway over a rewritten copy, and the backends by endpoint name.
struct Example {
    gw: TestGateway,
    backends: BTreeMap<String, TestBackend>,
    /// The rewritten documents of each file, for scenarios that edit the configuration.
    files: BTreeMap<String, Vec<Value>>,
}

fn render(docs: &[Value]) -> String {
    // JSON is YAML: the copy is written as one JSON document per YAML document.
    docs.iter().map(|d| serde_json::to_string_pretty(d).expect("json")).collect::<Vec<_>>().join("\n---\n")
}

impl Example {
    async fn start(name: &str) -> Example {
        let dir = examples_root().join(name);
        let port = free_port();
        let mut backends = BTreeMap::new();
        let mut ports = BTreeMap::new();
        let mut files = BTreeMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(&dir).expect("example dir").filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !(file.ends_with(".yaml") || file.ends_with(".yml")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).expect("read example file");
            let mut docs = Vec::new();
            for (_, doc) in sessile_config::load::split_documents(&text) {
                let mut value: Value = match serde_saphyr::from_str(doc) {
                    Ok(v) => v,
                    Err(e) => panic!("examples/{name}/{file}: {e}"),
                };
                if value.is_null() {
                    continue;
                }
                match value["kind"].as_str() {
                    Some("Gateway") => {
                        for l in value["spec"]["listeners"].as_array_mut().into_iter().flatten() {
                            l["port"] = Value::from(port);
                        }
                    }
                    Some("EndpointSlice") => {
                        let pod =
                            value["endpoints"][0]["targetRef"]["name"].as_str().expect("targetRef.name").to_string();
                        for p in value["ports"].as_array_mut().into_iter().flatten() {
                            let original = p["port"].as_i64().expect("endpoint port");
                            let test_port = match ports.get(&original) {
                                Some(&known) => known,
                                None => {
                                    let b = sessile_testkit::start_backend(&pod).await.expect("backend starts");
                                    let test_port = b.addr().port();
                                    ports.insert(original, test_port);
                                    backends.insert(pod.clone(), b);
                                    test_port
                                }
                            };
                            p["port"] = Value::from(test_port);
                        }
                    }
                    _ => {}
                }
                docs.push(value);
            }
            files.insert(file, docs);
        }
        let config = TempDir::new(&format!("example-{name}"));
        for (file, docs) in &files {
            config.write(file, &render(docs));
        }
        let gw = start_gateway(config, TempDir::new("example-state"), port).await;
        Example { gw, backends, files }
    }

    /// Applies `edit` to the documents of `file` and waits until the gateway reloaded them.
    async fn edit(&mut self, file: &str, edit: impl FnOnce(&mut Vec<Value>)) {
        let docs = self.files.get_mut(file).expect("example file");
        edit(docs);
        let text = render(docs);
        self.gw.update(file, &text).await;
    }

    fn url(&self, path: &str) -> String {
        self.gw.url(path)
    }

    async fn stop(self) {
        self.gw.gateway.stop().await;
    }
}

/// A client that opens a new connection for every request: stickiness must come from the token.
fn fresh_client() -> TestClient {
    TestClient::http1().fresh_connections(true)
}

async fn get(client: &TestClient, url: &str, headers: &[(&str, &str)], jar: Option<&mut CookieJar>) -> TestResponse {
    let mut req = TestRequest::get(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = match jar {
        Some(jar) => client.send_with_jar(req, jar).await,
        None => client.send(req).await,
    }
    .unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
    assert_eq!(resp.status, 200, "GET {url}: {}", resp.text());
    resp
}

fn backend(resp: &TestResponse) -> String {
    resp.backend().expect("x-backend header")
}

/// The name of the generated (`sp-`) session cookie a response sets.
fn generated_cookie_name(resp: &TestResponse) -> String {
    resp.set_cookies()
        .iter()
        .find_map(|sc| sc.split_once('=').map(|(n, _)| n.trim().to_string()).filter(|n| n.starts_with("sp-")))
        .unwrap_or_else(|| panic!("no generated session cookie in {:?}", resp.set_cookies()))
}

fn max_age(set_cookie: &str) -> Option<u64> {
    set_cookie.split(';').find_map(|a| a.trim().strip_prefix("Max-Age=")?.parse().ok())
}

// ---- Scenarios -------------------------------------------------------------------------------

/// The user guide's verification: cookie issued once, requests stick, a gateway restart keeps the session.
#[tokio::test]
async fn example_cookie() {
    let ex = Example::start("cookie").await;
    let client = fresh_client();

    // Without a cookie every request is a new session, spread over the three endpoints.
    let mut spread = BTreeSet::new();
    for _ in 0..9 {
        let resp = get(&client, &ex.url("/headers"), &[], None).await;
        assert!(set_cookie_value(&resp, "Session-A").is_some(), "a new session gets a cookie");
        spread.insert(backend(&resp));
    }
    assert_eq!(spread.len(), 3, "new sessions are balanced over all endpoints: {spread:?}");

    let mut jar = CookieJar::new();
    let first = get(&client, &ex.url("/headers"), &[], Some(&mut jar)).await;
    let line = set_cookie_line(&first, "Session-A").expect("Session-A cookie");
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(line.contains(attr), "{attr} in {line}");
    }
    assert!(!line.contains("Max-Age") && !line.contains("Expires"), "lifetimeType Session: {line}");
    assert_eq!(first.header("cache-control"), Some("private"), "a response that sets the token is private");
    let pinned = backend(&first);
    for _ in 0..20 {
        let resp = get(&client, &ex.url("/headers"), &[], Some(&mut jar)).await;
        assert_eq!(backend(&resp), pinned, "the session sticks across fresh connections");
        assert!(set_cookie_line(&resp, "Session-A").is_none(), "no new cookie for a resumed session");
    }

    // Step 7 of the guide: restart the gateway; the session continues on the same endpoint.
    let Example { gw, backends, .. } = ex;
    let TestGateway { gateway, config, state, port } = gw;
    gateway.stop().await;
    let gw = start_gateway(config, state, port).await;
    for _ in 0..5 {
        let resp = get(&client, &gw.url("/headers"), &[], Some(&mut jar)).await;
        assert_eq!(backend(&resp), pinned, "the session survives a gateway restart");
        assert!(set_cookie_line(&resp, "Session-A").is_none());
    }
    assert!(backends[&pinned].hits() >= 26, "the pinned backend served the session");
    gw.gateway.stop().await;
}

/// Header persistence: the token comes in the `Session-B` response header and sticks when echoed.
#[tokio::test]
async fn example_header() {
    let ex = Example::start("header").await;
    let client = fresh_client();
    let first = get(&client, &ex.url("/path-B/"), &[], None).await;
    assert!(first.set_cookies().is_empty(), "type Header sets no cookie: {:?}", first.set_cookies());
    let token = first.header("session-b").expect("Session-B response header").to_string();
    let pinned = backend(&first);
    for _ in 0..15 {
        let resp = get(&client, &ex.url("/path-B/"), &[("Session-B", &token)], None).await;
        assert_eq!(backend(&resp), pinned, "echoing the header sticks");
        assert!(resp.header("session-b").is_none(), "no new token for a resumed session");
    }
    // The same token in a cookie is not a session header: a new session starts.
    let cookie = format!("Session-B={token}");
    let resp = get(&client, &ex.url("/path-B/"), &[("cookie", &cookie)], None).await;
    assert!(resp.header("session-b").is_some(), "a cookie does not carry a header session");
    // Paths outside the rule are not routed.
    let resp = client.send(TestRequest::get(ex.url("/path-A/"))).await.expect("request");
    assert_eq!(resp.status, 404);
    ex.stop().await;
}

/// Permanent cookies carry Max-Age = absoluteTimeout (and the configured path); Session cookies none.
#[tokio::test]
async fn example_cookie_lifetimes() {
    let ex = Example::start("cookie-lifetimes").await;
    let client = fresh_client();

    let mut jar = CookieJar::new();
    let first = get(&client, &ex.url("/permanent"), &[], Some(&mut jar)).await;
    let line = set_cookie_line(&first, "remember-me").expect("remember-me cookie");
    let age = max_age(&line).unwrap_or_else(|| panic!("Permanent cookie has Max-Age: {line}"));
    assert!((3590..=3600).contains(&age), "Max-Age is the absolute timeout (1h): {line}");
    assert!(line.contains("Path=/permanent"), "cookie.path is used: {line}");
    let pinned = backend(&first);
    for _ in 0..5 {
        assert_eq!(backend(&get(&client, &ex.url("/permanent/x"), &[], Some(&mut jar)).await), pinned);
    }

    let mut jar = CookieJar::new();
    let first = get(&client, &ex.url("/session"), &[], Some(&mut jar)).await;
    let line = set_cookie_line(&first, "browser-session").expect("browser-session cookie");
    assert!(!line.contains("Max-Age") && !line.contains("Expires"), "Session cookie: {line}");
    assert!(line.contains("Path=/;") || line.ends_with("Path=/"), "default path /: {line}");
    let pinned = backend(&first);
    for _ in 0..5 {
        assert_eq!(backend(&get(&client, &ex.url("/session"), &[], Some(&mut jar)).await), pinned);
    }
    ex.stop().await;
}

/// absoluteTimeout 4s ends even a busy session; idleTimeout 2s keeps an active one and ends an idle one.
#[tokio::test]
async fn example_timeouts() {
    let ex = Example::start("timeouts").await;
    let client = fresh_client();

    let absolute = async {
        let mut jar = CookieJar::new();
        let start = Instant::now();
        let first = get(&client, &ex.url("/absolute"), &[], Some(&mut jar)).await;
        let token = set_cookie_value(&first, "absolute-session").expect("absolute-session cookie");
        let pinned = backend(&first);
        while start.elapsed() < Duration::from_millis(3000) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let resp = get(&client, &ex.url("/absolute"), &[], Some(&mut jar)).await;
            assert_eq!(backend(&resp), pinned, "before the absolute timeout the session sticks");
            assert!(set_cookie_line(&resp, "absolute-session").is_none(), "no refresh without idleTimeout");
        }
        tokio::time::sleep(Duration::from_millis(4300).saturating_sub(start.elapsed())).await;
        let resp = get(&client, &ex.url("/absolute"), &[], Some(&mut jar)).await;
        let new = set_cookie_value(&resp, "absolute-session").expect("after 4 s: a new session");
        assert_ne!(new, token);
    };
    let idle = async {
        let mut jar = CookieJar::new();
        let first = get(&client, &ex.url("/idle"), &[], Some(&mut jar)).await;
        let pinned = backend(&first);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(3500) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let resp = get(&client, &ex.url("/idle"), &[], Some(&mut jar)).await;
            assert_eq!(backend(&resp), pinned, "a client active every 0.5 s keeps its 2 s idle session");
        }
        let token = jar.get("idle-session").expect("newest token").to_string();
        tokio::time::sleep(Duration::from_millis(3200)).await;
        let resp = get(&client, &ex.url("/idle"), &[], Some(&mut jar)).await;
        let new = set_cookie_value(&resp, "idle-session").expect("after 3.2 s idle: a new session");
        assert_ne!(new, token);
    };
    tokio::join!(absolute, idle);
    let m = ex.gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"expired-absolute\""]), 1.0, "{m}");
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"expired-idle\""]), 1.0, "{m}");
    ex.stop().await;
}

/// An unnamed BackendLBPolicy: one session per rule with generated names; a rule's own config wins.
#[tokio::test]
async fn example_backend_lb_policy() {
    let ex = Example::start("backend-lb-policy").await;
    let client = fresh_client();

    let mut jar = CookieJar::new();
    let app = get(&client, &ex.url("/app"), &[], Some(&mut jar)).await;
    let app_cookie = generated_cookie_name(&app);
    let pinned = backend(&app);
    for _ in 0..10 {
        let resp = get(&client, &ex.url("/app"), &[], Some(&mut jar)).await;
        assert_eq!(backend(&resp), pinned, "the policy's persistence applies to /app");
        assert!(resp.set_cookies().is_empty(), "resumed: {:?}", resp.set_cookies());
    }
    let api = get(&client, &ex.url("/api"), &[], Some(&mut jar)).await;
    let api_cookie = generated_cookie_name(&api);
    assert_ne!(app_cookie, api_cookie, "without a sessionName each rule has its own session");

    let admin = get(&client, &ex.url("/admin"), &[], None).await;
    assert!(admin.set_cookies().is_empty(), "the rule's header config overrides the policy's cookie");
    let token = admin.header("x-admin-session").expect("x-admin-session header").to_string();
    let pinned = backend(&admin);
    for _ in 0..10 {
        assert_eq!(backend(&get(&client, &ex.url("/admin"), &[("x-admin-session", &token)], None).await), pinned);
    }

    let policy = ex.gw.status_of("BackendLBPolicy", "app-sticky").await;
    let accepted = &policy["status"]["ancestors"][0]["conditions"][0];
    assert_eq!(accepted["type"], "Accepted");
    assert_eq!(accepted["status"], "True", "{policy:#}");
    assert!(accepted["message"].as_str().unwrap_or("").contains("overridden"), "status says who overrides: {policy:#}");
    ex.stop().await;
}

/// A named policy: /cart, /checkout (one route) and /account (another route) share one session.
#[tokio::test]
async fn example_shared_session() {
    let ex = Example::start("shared-session").await;
    let client = fresh_client();
    let mut pinned_to = BTreeSet::new();
    for _ in 0..6 {
        let mut jar = CookieJar::new();
        let cart = get(&client, &ex.url("/cart"), &[], Some(&mut jar)).await;
        assert!(set_cookie_value(&cart, "shop-session").is_some(), "the named cookie is issued");
        let pinned = backend(&cart);
        for path in ["/checkout", "/account", "/cart", "/checkout/pay"] {
            let resp = get(&client, &ex.url(path), &[], Some(&mut jar)).await;
            assert_eq!(backend(&resp), pinned, "{path} follows the session made on /cart");
            assert!(set_cookie_line(&resp, "shop-session").is_none(), "{path} resumes the shared session");
        }
        pinned_to.insert(pinned);
    }
    assert!(pinned_to.len() >= 2, "new sessions are still balanced: {pinned_to:?}");
    ex.stop().await;
}

/// GEP-1619's weight-0 case: a servicev1 session made on /a is honoured on /b, where servicev1 has weight 0;
/// new sessions on /b go to servicev2 and stick there (the policy covers the whole rule, as its status says).
#[tokio::test]
async fn example_weight_zero() {
    let ex = Example::start("weight-zero").await;
    let client = fresh_client();
    for _ in 0..3 {
        let mut jar = CookieJar::new();
        let a = get(&client, &ex.url("/a"), &[], Some(&mut jar)).await;
        assert!(set_cookie_value(&a, "v1-session").is_some());
        let pinned = backend(&a);
        assert!(pinned.starts_with("v1-"), "/a routes to servicev1: {pinned}");
        for _ in 0..5 {
            let resp = get(&client, &ex.url("/b"), &[], Some(&mut jar)).await;
            assert_eq!(backend(&resp), pinned, "/b follows the servicev1 session despite weight 0");
            assert!(resp.set_cookies().is_empty(), "resumed, not re-pinned: {:?}", resp.set_cookies());
        }
    }
    for _ in 0..10 {
        let mut jar = CookieJar::new();
        let resp = get(&client, &ex.url("/b"), &[], Some(&mut jar)).await;
        let pinned = backend(&resp);
        assert!(pinned.starts_with("v2-"), "new sessions on /b go by weight to servicev2");
        assert!(set_cookie_value(&resp, "v1-session").is_some(), "the policy applies to the whole rule");
        let again = get(&client, &ex.url("/b"), &[], Some(&mut jar)).await;
        assert_eq!(backend(&again), pinned, "sessions started on servicev2 stick too");
    }
    let policy = ex.gw.status_of("XBackendTrafficPolicy", "v1-sticky").await;
    let message = policy["status"]["ancestors"][0]["conditions"][0]["message"].as_str().unwrap_or("").to_string();
    assert!(message.contains("apply this persistence to all their backends"), "status reports the choice: {policy:#}");
    ex.stop().await;
}

/// 90/10 canary: new sessions split by weight, sessions stay on their version, weight changes move only new ones.
#[tokio::test]
async fn example_canary() {
    let mut ex = Example::start("canary").await;
    let client = fresh_client();
    let mut canary_cookie = None;
    let mut stable_cookie = None;
    let mut on_canary = 0;
    for _ in 0..100 {
        let resp = get(&client, &ex.url("/"), &[], None).await;
        let token = set_cookie_value(&resp, "web-session").expect("every new session gets a cookie");
        if backend(&resp) == "canary-1" {
            on_canary += 1;
            canary_cookie = Some(token);
        } else {
            stable_cookie = Some((backend(&resp), token));
        }
    }
    assert!((5..=15).contains(&on_canary), "about 10 of 100 new sessions on the canary, got {on_canary}");
    let canary_cookie = format!("web-session={}", canary_cookie.expect("a canary session"));
    let (stable_backend, stable_token) = stable_cookie.expect("a stable session");
    let stable_cookie = format!("web-session={stable_token}");
    for _ in 0..10 {
        assert_eq!(backend(&get(&client, &ex.url("/"), &[("cookie", &canary_cookie)], None).await), "canary-1");
        assert_eq!(backend(&get(&client, &ex.url("/"), &[("cookie", &stable_cookie)], None).await), stable_backend);
    }

    // Stop the rollout for new users: canary weight 0. Existing canary sessions stay.
    ex.edit("route.yaml", |docs| {
        docs[0]["spec"]["rules"][0]["backendRefs"][1]["weight"] = Value::from(0);
    })
    .await;
    for _ in 0..5 {
        let resp = get(&client, &ex.url("/"), &[("cookie", &canary_cookie)], None).await;
        assert_eq!(backend(&resp), "canary-1", "weights apply to new sessions only");
        assert!(resp.set_cookies().is_empty());
    }
    for _ in 0..30 {
        assert_ne!(
            backend(&get(&client, &ex.url("/"), &[], None).await),
            "canary-1",
            "weight 0: no new canary session"
        );
    }
    ex.stop().await;
}

/// GRPCRoute with header persistence over h2c: the `x-session` metadata sticks across fresh connections.
#[tokio::test]
async fn example_grpc() {
    let ex = Example::start("grpc").await;
    let client = TestClient::h2c().fresh_connections(true);
    let call = |meta: Option<&str>| {
        let mut req = TestRequest::post(ex.url("/echo.Echo/Say"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(frame(b"hello"));
        if let Some(token) = meta {
            req = req.header("x-session", token);
        }
        req
    };
    let first = client.send(call(None)).await.expect("grpc call");
    assert_eq!(first.status, 200);
    assert_eq!(first.trailer("grpc-status"), Some("0"), "trailers reach the client");
    assert_eq!(unframe(&first.body), vec![b"hello".to_vec()], "the message is echoed");
    let token = first.header("x-session").expect("x-session response metadata").to_string();
    let pinned = backend(&first);
    for _ in 0..10 {
        let resp = client.send(call(Some(&token))).await.expect("grpc call");
        assert_eq!(resp.trailer("grpc-status"), Some("0"));
        assert_eq!(backend(&resp), pinned, "request metadata x-session pins the call");
        assert!(resp.header("x-session").is_none(), "resumed");
    }
    let unknown = client
        .send(
            TestRequest::post(ex.url("/other.Svc/Do"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(frame(b"x")),
        )
        .await
        .expect("grpc call");
    assert_eq!(unknown.header("grpc-status"), Some("12"), "unmatched service: UNIMPLEMENTED");
    ex.stop().await;
}

/// A draining endpoint keeps its sessions and gets no new ones.
#[tokio::test]
async fn example_draining() {
    let mut ex = Example::start("draining").await;
    let client = fresh_client();
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(backend(&get(&client, &ex.url("/"), &[], None).await));
    }
    assert_eq!(seen, BTreeSet::from(["cart-1".to_string(), "cart-2".to_string()]), "no new session on cart-3");

    // Make cart-3 ready, start a session on it, then let it drain again as in the example.
    let conditions = |ready: bool| serde_json::json!({"ready": ready, "serving": true, "terminating": !ready});
    let drained = ex.files["backends.yaml"].iter().find(|d| d["metadata"]["name"] == "cart-3").cloned();
    assert_eq!(drained.map(|d| d["endpoints"][0]["conditions"].clone()), Some(conditions(false)), "cart-3 drains");
    let set = |ready: bool| {
        move |docs: &mut Vec<Value>| {
            for d in docs.iter_mut().filter(|d| d["metadata"]["name"] == "cart-3") {
                d["endpoints"][0]["conditions"] = conditions(ready);
            }
        }
    };
    ex.edit("backends.yaml", set(true)).await;
    let mut cookie = None;
    for _ in 0..30 {
        let resp = get(&client, &ex.url("/"), &[], None).await;
        if backend(&resp) == "cart-3" {
            cookie = set_cookie_value(&resp, "cart-session");
            break;
        }
    }
    let cookie = format!("cart-session={}", cookie.expect("a session on cart-3 once it is ready"));
    ex.edit("backends.yaml", set(false)).await;
    for _ in 0..10 {
        let resp = get(&client, &ex.url("/"), &[("cookie", &cookie)], None).await;
        assert_eq!(backend(&resp), "cart-3", "the draining endpoint keeps its session");
        assert!(resp.set_cookies().is_empty());
    }
    for _ in 0..20 {
        assert_ne!(backend(&get(&client, &ex.url("/"), &[], None).await), "cart-3", "no new sessions while draining");
    }
    ex.stop().await;
}

// ---- Documentation links -----------------------------------------------------------------------

/// The anchor mdBook (and GitHub) gives a heading: lower case, spaces to `-`, punctuation dropped.
fn heading_anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_ascii_lowercase())
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// Lines of a Markdown file outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut in_fence = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                in_fence = !in_fence;
                return false;
            }
            !in_fence
        })
        .collect()
}

/// Every heading anchor of a Markdown file (duplicates get `-1`, `-2`, ... as in mdBook).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in prose_lines(text) {
        let Some(rest) = line.strip_prefix('#') else { continue };
        let title = rest.trim_start_matches('#').trim();
        // Link syntax in a heading keeps only its text.
        let title = title.replace("](", "\u{0}");
        let title: String = title.split('\u{0}').next().unwrap_or("").to_string();
        let base = heading_anchor(&title.replace(['[', ']'], ""));
        let mut id = base.clone();
        let mut n = 0;
        while out.contains(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        out.insert(id);
    }
    out
}

/// Relative link targets (`path`, `path#anchor`, `#anchor`) in the prose of a Markdown file.
fn relative_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        // Drop inline code spans so `a](b)` inside backticks is not a link.
        let mut prose = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push_str(part);
            }
        }
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].trim();
            if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
                out.push(target.to_string());
            }
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn documentation_links_and_anchors_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut pages: Vec<PathBuf> = vec![root.join("README.md"), examples_root().join("README.md")];
    for dir in [root.join("docs")] {
        for e in std::fs::read_dir(&dir).expect("docs/").filter_map(|e| e.ok()) {
            if e.path().extension().is_some_and(|x| x == "md") {
                pages.push(e.path());
            }
        }
    }
    for name in example_dirs() {
        pages.push(examples_root().join(name).join("README.md"));
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        for link in relative_links(&text) {
            checked += 1;
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() { page.clone() } else { page.parent().expect("dir").join(path) };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", page.display()));
                continue;
            }
            if let Some(anchor) = anchor
                && target.extension().is_some_and(|x| x == "md")
            {
                let text = std::fs::read_to_string(&target).expect("read link target");
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{}: {link}: no heading with that anchor", page.display()));
                }
            }
        }
    }
    assert!(checked > 100, "the link scanner found only {checked} links: it is broken");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_page_of_the_book_is_in_its_summary() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let summary = std::fs::read_to_string(docs.join("SUMMARY.md")).expect("docs/SUMMARY.md");
    let listed: BTreeSet<String> = relative_links(&summary).into_iter().collect();
    for e in std::fs::read_dir(&docs).expect("docs/").filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") && name != "SUMMARY.md" {
            assert!(listed.contains(&name), "docs/{name} is not listed in docs/SUMMARY.md");
        }
    }
    assert_eq!(heading_anchor("9. Header mode"), "9-header-mode");
    assert_eq!(heading_anchor("`sessile serve`"), "sessile-serve");
}

/// YAML blocks of a Markdown file (the text of each ```yaml fence).
fn yaml_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```yaml") => current = Some(String::new()),
            Some(block) if fence.starts_with("```") => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Every Gateway API and Kubernetes object shown in the book loads without error (the schema
/// check `kubectl apply` would do), and every `sessionPersistence` snippet is valid, so the
/// documentation's YAML cannot drift from what Sessile accepts. Objects of other gateways'
/// APIs (shown on the migration pages) and status excerpts are skipped.
#[test]
fn yaml_in_the_documentation_is_accepted() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    // The kinds Sessile reads (docs/configuration.md, "File mode"); others (Deployments, RBAC,
    // other gateways' policies) are not its to judge.
    const KINDS: &[&str] = &[
        "GatewayClass",
        "Gateway",
        "HTTPRoute",
        "GRPCRoute",
        "ReferenceGrant",
        "BackendLBPolicy",
        "XBackendTrafficPolicy",
        "Service",
        "EndpointSlice",
        "Secret",
    ];
    let read_by_sessile = |api: &str, kind: &str| {
        KINDS.contains(&kind)
            && (api.starts_with("gateway.networking.k8s.io/")
                || api.starts_with("gateway.networking.x-k8s.io/")
                || api == "v1"
                || api == "discovery.k8s.io/v1")
    };
    let mut objects = 0;
    let mut snippets = 0;
    let mut problems = Vec::new();
    let mut pages: Vec<PathBuf> =
        std::fs::read_dir(&docs).expect("docs/").filter_map(|e| e.ok()).map(|e| e.path()).collect();
    pages.sort();
    for page in pages.iter().filter(|p| p.extension().is_some_and(|x| x == "md")) {
        let text = std::fs::read_to_string(page).expect("read page");
        for block in yaml_blocks(&text) {
            for (_, doc) in sessile_config::load::split_documents(&block) {
                let value: Value = match serde_saphyr::from_str(doc) {
                    Ok(v) => v,
                    Err(e) => {
                        problems.push(format!("{}: YAML does not parse: {e}\n{doc}", page.display()));
                        continue;
                    }
                };
                if let Some(sp) = value.get("sessionPersistence").filter(|_| value.get("kind").is_none()) {
                    snippets += 1;
                    if let Err(e) = sessile_config::persistence::parse(sp, "sessionPersistence") {
                        problems.push(format!("{}: {e}\n{doc}", page.display()));
                    }
                    continue;
                }
                let Some(api) = value["apiVersion"].as_str() else { continue };
                if !read_by_sessile(api, value["kind"].as_str().unwrap_or("")) || value.get("status").is_some() {
                    continue;
                }
                objects += 1;
                let loaded = Loader::new().load_str(&page.display().to_string(), doc);
                for e in &loaded.errors {
                    problems.push(format!("{e}\n{doc}"));
                }
            }
        }
    }
    assert!(
        objects > 40 && snippets > 5,
        "found only {objects} objects and {snippets} snippets: the scanner is broken"
    );
    assert!(problems.is_empty(), "documentation YAML that Sessile refuses:\n{}", problems.join("\n---\n"));
}

// ---- `sessile demo --config`: the backends the examples' READMEs rely on ---------------------

#[test]
fn demo_config_finds_the_example_endpoints_with_their_pod_names() {
    let endpoints = sessile::demo::config_endpoints(&examples_root().join("weight-zero")).expect("endpoints");
    let found: Vec<(String, u16)> = endpoints.iter().map(|(a, n)| (n.clone(), a.port())).collect();
    let expected: Vec<(String, u16)> =
        [("v1-1", 9001), ("v1-2", 9002), ("v1-3", 9003), ("v2-1", 9011), ("v2-2", 9012), ("v2-3", 9013)]
            .iter()
            .map(|(n, p)| (n.to_string(), *p))
            .collect();
    assert_eq!(found, expected);
    assert!(endpoints.iter().all(|(a, _)| a.ip().is_loopback()));
}

#[tokio::test]
async fn demo_echo_backend_answers_http_and_grpc() {
    let addr = sessile::demo::echo_backend_on("127.0.0.1:0".parse().unwrap(), "pod-a").await.expect("echo backend");
    let resp = TestClient::http1().send(TestRequest::get(format!("http://{addr}/cart"))).await.expect("GET");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.backend().as_deref(), Some("pod-a"));
    assert_eq!(resp.text(), "hello from pod-a (GET /cart)\n");
    let grpc = TestRequest::post(format!("http://{addr}/echo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame(b"hi"));
    let resp = TestClient::h2c().send(grpc).await.expect("gRPC call");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/grpc"));
    assert_eq!(resp.trailer("grpc-status"), Some("0"));
    assert_eq!(unframe(&resp.body), vec![b"hi".to_vec()]);
}
