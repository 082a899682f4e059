//! End-to-end session persistence tests: every row of the table in section 12 of
//! `spec/session-persistence.md` (except GRPCRoute), plus cookie hygiene and metrics.
//! Status and conflict cases are in `sessions_policy.rs`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use sessile_session::KeyRing;
use sessile_testkit::{CookieJar, TestBackend, TestClient, TestRequest, TestResponse, websocket_echo};

const SVC: &str = "[{name: svc, port: 80}]";

/// A gateway on a free port with `gw.yaml` plus `files`.
async fn setup(files: Vec<(&str, String)>) -> TestGateway {
    let port = free_port();
    let mut all = vec![("gw.yaml", gateway_yaml(port))];
    all.extend(files);
    gateway_with(port, &all).await
}

/// One route `r` with one rule `/` to `svc` and the given persistence, over `backends`.
async fn simple(backends: &[TestBackend], persistence: &str) -> TestGateway {
    let refs: Vec<&TestBackend> = backends.iter().collect();
    setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &refs)),
        ("route.yaml", route_yaml("r", None, &[rule_yaml("/", SVC, Some(persistence))])),
    ])
    .await
}

/// GET `path` with the jar; asserts 200.
async fn get(client: &TestClient, gw: &TestGateway, path: &str, jar: &mut CookieJar) -> TestResponse {
    let resp = client.send_with_jar(TestRequest::get(gw.url(path)), jar).await.expect("request");
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
    resp
}

/// GET `path` with a raw `Cookie` header (or none); asserts 200.
async fn get_cookie(client: &TestClient, gw: &TestGateway, path: &str, cookie: Option<&str>) -> TestResponse {
    let mut req = TestRequest::get(gw.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = client.send(req).await.expect("request");
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
    resp
}

fn backend_of(resp: &TestResponse) -> String {
    resp.backend().expect("x-backend header")
}

/// The name of the (generated) session cookie set by `resp`: the one starting with `sp-`.
fn generated_cookie(resp: &TestResponse) -> (String, String) {
    resp.set_cookies()
        .iter()
        .find_map(|sc| {
            let (n, rest) = sc.split_once('=')?;
            n.starts_with("sp-").then(|| (n.to_string(), rest.split(';').next().unwrap_or("").to_string()))
        })
        .unwrap_or_else(|| panic!("no generated session cookie in {:?}", resp.set_cookies()))
}

// ---- Cookies: stickiness, attributes, lifetimes ----------------------------------------------

#[tokio::test]
async fn simple_cookie_three_endpoints_sticks_for_50_requests() {
    let b = backends("s", 3).await;
    let gw = simple(&b, "{sessionName: sid}").await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let first = get(&client, &gw, "/", &mut jar).await;
    let line = set_cookie_line(&first, "sid").expect("first response sets the session cookie");
    let token = set_cookie_value(&first, "sid").unwrap();
    assert!(token.len() <= 200 && !token.is_empty(), "{token}");
    assert!(token.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "url-safe base64: {token}");
    assert_eq!(line, format!("sid={token}; Path=/; HttpOnly; SameSite=Lax"));
    // Lifetime Session (the default): no Expires, no Max-Age.
    let lower = line.to_ascii_lowercase();
    assert!(!lower.contains("expires") && !lower.contains("max-age"), "{line}");
    assert!(!lower.contains("secure"), "plain HTTP listener: no Secure: {line}");
    // The token reveals nothing about the endpoint.
    for leak in ["127.0.0.1", "default"] {
        assert!(!token.contains(leak), "{token} leaks {leak}");
    }
    let pinned = backend_of(&first);
    for i in 0..50 {
        let resp = get(&client, &gw, "/", &mut jar).await;
        assert_eq!(backend_of(&resp), pinned, "request {i} left the pinned endpoint");
        assert!(set_cookie_line(&resp, "sid").is_none(), "token re-issued without need on request {i}");
    }
    // Without the cookie, the three endpoints all get traffic.
    let mut seen = HashSet::new();
    for _ in 0..9 {
        seen.insert(backend_of(&get_cookie(&client, &gw, "/", None).await));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sessile_session_created_total", &["rule=\"default/r/0\"", "backend=\"default/svc:80\""]),
        10.0,
        "{m}"
    );
    assert_eq!(metric(&m, "sessile_session_resumed_total", &["backend=\"default/svc:80\""]), 50.0, "{m}");
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"absent\""]), 10.0, "{m}");
    assert_eq!(metric(&m, "sessile_session_repins_total", &[]), 0.0, "{m}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn permanent_lifetime_has_max_age_of_absolute_timeout() {
    let b = backends("p", 2).await;
    // v1.1-v1.5 shape and the union shape.
    for persistence in [
        "{sessionName: sid, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}}",
        "{type: Cookie, absoluteTimeout: 60m, cookie: {name: sid, lifetimeType: Permanent}}",
    ] {
        let gw = simple(&b, persistence).await;
        let resp = get_cookie(&TestClient::http1(), &gw, "/", None).await;
        let line = set_cookie_line(&resp, "sid").expect("cookie set");
        assert!(!line.to_ascii_lowercase().contains("expires"), "{line}");
        let max_age: u64 = line
            .split(';')
            .find_map(|a| a.trim().strip_prefix("Max-Age="))
            .unwrap_or_else(|| panic!("no Max-Age in {line}"))
            .parse()
            .unwrap();
        assert!((3590..=3600).contains(&max_age), "{line}");
        gw.gateway.stop().await;
    }
}

#[tokio::test]
async fn cookie_path_is_configurable() {
    let b = backends("cp", 1).await;
    let gw = simple(&b, "{cookie: {name: sid, path: /app}}").await;
    let resp = get_cookie(&TestClient::http1(), &gw, "/app/x", None).await;
    let line = set_cookie_line(&resp, "sid").expect("cookie set");
    assert!(line.contains("; Path=/app;"), "{line}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn cache_control_private_on_responses_that_set_a_token() {
    let b = backends("cc", 2).await;
    let gw = simple(&b, "{sessionName: sid}").await;
    let client = TestClient::http1();
    let resp = get_cookie(&client, &gw, "/", None).await;
    assert!(set_cookie_line(&resp, "sid").is_some());
    assert_eq!(resp.header_all("cache-control"), vec!["private".to_string()]);
    // A weaker backend directive is replaced: shared caches must not keep this response.
    let resp =
        client.send(TestRequest::get(gw.url("/")).header("x-cache-control", "public, max-age=60")).await.unwrap();
    assert!(set_cookie_line(&resp, "sid").is_some());
    let cc = resp.header_all("cache-control").join(", ");
    assert!(cc.contains("private") && !cc.contains("public"), "{cc}");
    // A stronger backend directive is left alone.
    let resp = client.send(TestRequest::get(gw.url("/")).header("x-cache-control", "no-store")).await.unwrap();
    assert!(set_cookie_line(&resp, "sid").is_some());
    assert_eq!(resp.header_all("cache-control"), vec!["no-store".to_string()]);
    // A resumed session sets nothing and leaves the backend's caching alone.
    let token = set_cookie_value(&resp, "sid").unwrap();
    let resp = client
        .send(
            TestRequest::get(gw.url("/"))
                .header("cookie", &format!("sid={token}"))
                .header("x-cache-control", "public, max-age=60"),
        )
        .await
        .unwrap();
    assert!(resp.set_cookies().is_empty());
    assert_eq!(resp.header_all("cache-control"), vec!["public, max-age=60".to_string()]);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn backend_cookies_and_other_cookies_pass_through_untouched() {
    let b = backends("bc", 2).await;
    let gw = simple(&b, "{sessionName: sid}").await;
    let client = TestClient::http1();
    let req = TestRequest::get(gw.url("/"))
        .header("x-set-cookie", "app=1; Path=/app; HttpOnly")
        .header("x-set-cookie", "theme=dark")
        .header("cookie", "other=1; tracking=\"a b\"");
    let resp = client.send(req).await.unwrap();
    assert_eq!(resp.status, 200);
    let cookies = resp.set_cookies();
    assert!(cookies.contains(&"app=1; Path=/app; HttpOnly".to_string()), "{cookies:?}");
    assert!(cookies.contains(&"theme=dark".to_string()), "{cookies:?}");
    assert_eq!(cookies.len(), 3, "{cookies:?}");
    let received = resp.json()["headers"]["cookie"].clone();
    assert_eq!(received, serde_json::json!(["other=1; tracking=\"a b\""]));
    // Resumed: the backend's cookies still pass, the session cookie is not re-issued, and the
    // request's cookies (including the session cookie) reach the backend as sent.
    let token = set_cookie_value(&resp, "sid").unwrap();
    let sent = format!("other=1; sid={token}; z=2");
    let resp = client
        .send(TestRequest::get(gw.url("/")).header("x-set-cookie", "app=2; Path=/app").header("cookie", &sent))
        .await
        .unwrap();
    assert_eq!(resp.set_cookies(), vec!["app=2; Path=/app".to_string()]);
    assert_eq!(resp.json()["headers"]["cookie"], serde_json::json!([sent]));
    gw.gateway.stop().await;
}

#[tokio::test]
async fn several_cookies_with_the_session_name_first_usable_one_wins() {
    let b = backends("mc", 3).await;
    let gw = simple(&b, "{sessionName: sid}").await;
    let client = TestClient::http1();
    let first = get_cookie(&client, &gw, "/", None).await;
    let pinned = backend_of(&first);
    let token = set_cookie_value(&first, "sid").unwrap();
    for cookie in [
        format!("sid=garbage; sid={token}"),
        format!("sid=; other=x; sid={token}"),
        format!("sid={}", &token[..token.len() - 4]) + &format!("; sid={token}"),
    ] {
        for _ in 0..5 {
            let resp = get_cookie(&client, &gw, "/", Some(&cookie)).await;
            assert_eq!(backend_of(&resp), pinned, "{cookie}");
            assert!(resp.set_cookies().is_empty(), "{cookie}: {:?}", resp.set_cookies());
        }
    }
    // Two Cookie header lines: the second one carries the valid token.
    let req = TestRequest::get(gw.url("/")).header("cookie", "sid=nope").header("cookie", &format!("sid={token}"));
    let resp = client.send(req).await.unwrap();
    assert_eq!(backend_of(&resp), pinned);
    assert!(resp.set_cookies().is_empty());
    gw.gateway.stop().await;
}

// ---- Weights ---------------------------------------------------------------------------------

async fn weighted_gateway() -> (Vec<TestBackend>, TestGateway) {
    let a = backends("wa", 2).await;
    let b = backends("wb", 1).await;
    let gw = setup(vec![
        ("a.yaml", service_yaml("default", "svc-a", &[&a[0], &a[1]])),
        ("b.yaml", service_yaml("default", "svc-b", &[&b[0]])),
        (
            "route.yaml",
            route_yaml(
                "r",
                None,
                &[rule_yaml(
                    "/",
                    "[{name: svc-a, port: 80, weight: 70}, {name: svc-b, port: 80, weight: 30}]",
                    Some("{sessionName: sid}"),
                )],
            ),
        ),
    ])
    .await;
    let mut all = a;
    all.extend(b);
    (all, gw)
}

#[tokio::test]
async fn weights_70_30_without_token() {
    let (_b, gw) = weighted_gateway().await;
    let client = TestClient::http1();
    let mut to_a = 0;
    for _ in 0..500 {
        let mut jar = CookieJar::new();
        let resp = get(&client, &gw, "/", &mut jar).await;
        assert!(jar.get("sid").is_some(), "every new session gets a token");
        if backend_of(&resp).starts_with("wa") {
            to_a += 1;
        }
    }
    let share = to_a as f64 / 500.0 * 100.0;
    assert!((65.0..=75.0).contains(&share), "svc-a got {share}% of new sessions, want 70 +- 5");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn weights_70_30_with_token_stay_pinned() {
    let (_b, gw) = weighted_gateway().await;
    let client = TestClient::http1();
    // Clients pinned to each backend: weights never move an existing session.
    let mut pinned_to: BTreeMap<String, CookieJar> = BTreeMap::new();
    for _ in 0..60 {
        let mut jar = CookieJar::new();
        let resp = get(&client, &gw, "/", &mut jar).await;
        pinned_to.entry(backend_of(&resp)).or_insert(jar);
    }
    assert!(pinned_to.keys().any(|k| k.starts_with("wb")), "{:?}", pinned_to.keys());
    for (backend, jar) in &mut pinned_to {
        for _ in 0..100 {
            let resp = get(&client, &gw, "/", jar).await;
            assert_eq!(&backend_of(&resp), backend);
        }
    }
    gw.gateway.stop().await;
}

// ---- Scopes ----------------------------------------------------------------------------------

#[tokio::test]
async fn two_rules_same_service_inline_config_have_independent_sessions() {
    let b = backends("tr", 3).await;
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1], &b[2]])),
        (
            "route.yaml",
            route_yaml("r", None, &[rule_yaml("/a", SVC, Some("{}")), rule_yaml("/b", SVC, Some("{type: Cookie}"))]),
        ),
    ])
    .await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let a = get(&client, &gw, "/a", &mut jar).await;
    let (name_a, token_a) = generated_cookie(&a);
    let b1 = get(&client, &gw, "/b", &mut jar).await;
    let (name_b, token_b) = generated_cookie(&b1);
    assert_ne!(name_a, name_b, "two rules never share a session");
    assert_eq!(name_a.len(), "sp-".len() + 10, "{name_a}");
    let (pin_a, pin_b) = (backend_of(&a), backend_of(&b1));
    assert_ne!(pin_a, pin_b, "round robin gave the second session another endpoint");
    for _ in 0..10 {
        assert_eq!(backend_of(&get(&client, &gw, "/a/x", &mut jar).await), pin_a);
        assert_eq!(backend_of(&get(&client, &gw, "/b/y", &mut jar).await), pin_b);
    }
    // Rule A's token presented to rule B under B's cookie name: other scope, ignored.
    let resp = get_cookie(&client, &gw, "/b", Some(&format!("{name_b}={token_a}"))).await;
    let new = set_cookie_value(&resp, &name_b).expect("B mints its own token");
    assert_ne!(new, token_a);
    assert_ne!(new, token_b);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"other-scope\""]), 1.0, "{m}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn named_policy_weight_zero_follows_the_session() {
    let v1 = backends("v1-", 2).await;
    let v2 = backends("v2-", 1).await;
    let gw = setup(vec![
        ("v1.yaml", service_yaml("default", "servicev1", &[&v1[0], &v1[1]])),
        ("v2.yaml", service_yaml("default", "servicev2", &[&v2[0]])),
        ("policy.yaml", lb_policy_yaml("lb", None, "servicev1", "{sessionName: shared}")),
        (
            "route.yaml",
            route_yaml(
                "r",
                None,
                &[
                    rule_yaml("/a", "[{name: servicev1, port: 80}]", None),
                    rule_yaml(
                        "/b",
                        "[{name: servicev1, port: 80, weight: 0}, {name: servicev2, port: 80, weight: 100}]",
                        None,
                    ),
                ],
            ),
        ),
    ])
    .await;
    let client = TestClient::http1();
    // Without a session, /b goes to servicev2 (weight 100) and still gets a token of the named session.
    let fresh = get_cookie(&client, &gw, "/b", None).await;
    assert_eq!(backend_of(&fresh), "v2-0");
    assert!(set_cookie_value(&fresh, "shared").is_some(), "option 1: the policy applies to the whole rule");
    let mut jar = CookieJar::new();
    let a = get(&client, &gw, "/a", &mut jar).await;
    let pinned = backend_of(&a);
    assert!(pinned.starts_with("v1-"), "{pinned}");
    for _ in 0..10 {
        let resp = get(&client, &gw, "/b", &mut jar).await;
        assert_eq!(backend_of(&resp), pinned, "/b follows the session made on /a to servicev1");
        assert!(resp.set_cookies().is_empty());
        assert_eq!(backend_of(&get(&client, &gw, "/a", &mut jar).await), pinned);
    }
    let status = gw.status_of("BackendLBPolicy", "lb").await;
    let c = &status["status"]["ancestors"][0]["conditions"][0];
    assert_eq!(c["type"], "Accepted");
    assert_eq!(c["status"], "True", "{status:#}");
    assert!(c["message"].as_str().unwrap().contains("all their backends"), "{status:#}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn route_rule_config_overrides_policy_config() {
    let b = backends("ov", 2).await;
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
        ("policy.yaml", lb_policy_yaml("lb", None, "svc", "{sessionName: from-policy}")),
        ("route.yaml", route_yaml("r", None, &[rule_yaml("/", SVC, Some("{sessionName: from-rule}"))])),
    ])
    .await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let first = get(&client, &gw, "/", &mut jar).await;
    assert!(set_cookie_value(&first, "from-rule").is_some(), "{:?}", first.set_cookies());
    assert!(set_cookie_value(&first, "from-policy").is_none(), "{:?}", first.set_cookies());
    for _ in 0..10 {
        assert_eq!(backend_of(&get(&client, &gw, "/", &mut jar).await), backend_of(&first));
    }
    let status = gw.status_of("BackendLBPolicy", "lb").await;
    let c = &status["status"]["ancestors"][0]["conditions"][0];
    assert_eq!(c["status"], "True", "{status:#}");
    assert!(c["message"].as_str().unwrap().contains("overridden"), "{status:#}");
    gw.gateway.stop().await;
}

// ---- Headers ---------------------------------------------------------------------------------

#[tokio::test]
async fn header_type_issues_a_header_and_echoing_it_sticks() {
    let b = backends("h", 3).await;
    for persistence in ["{type: Header, header: {name: X-Session}}", "{type: Header, sessionName: x-session}"] {
        let gw = simple(&b, persistence).await;
        let client = TestClient::http1();
        let first = get_cookie(&client, &gw, "/", None).await;
        let token = first.header("x-session").expect("response carries the session header").to_string();
        assert!(first.set_cookies().is_empty(), "no cookie for type Header");
        assert_eq!(first.header("cache-control"), Some("private"));
        let pinned = backend_of(&first);
        for _ in 0..20 {
            let resp = client.send(TestRequest::get(gw.url("/")).header("x-session", &token)).await.unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(backend_of(&resp), pinned);
            assert!(resp.header("x-session").is_none(), "not re-issued without need");
        }
        // Several values: the first usable one wins.
        let resp =
            client.send(TestRequest::get(gw.url("/")).header("x-session", &format!("junk, {token}"))).await.unwrap();
        assert_eq!(backend_of(&resp), pinned);
        gw.gateway.stop().await;
    }
}

#[tokio::test]
async fn a_backend_field_named_like_the_session_header_gives_way_to_a_new_token() {
    let opts = sessile_testkit::BackendOptions {
        response_headers: vec![("x-session".into(), "from-the-app".into()), ("x-app".into(), "kept".into())],
        ..sessile_testkit::BackendOptions::default()
    };
    let mut b = Vec::new();
    for i in 0..2 {
        b.push(sessile_testkit::start_backend_with(&format!("hb{i}"), opts.clone()).await.unwrap());
    }
    let gw = simple(&b, "{type: Header, header: {name: X-Session}}").await;
    // HTTP/1.1 is written by the direct server, h2 by hyper's: both see every field.
    for client in [TestClient::http1(), TestClient::h2c()] {
        let first = client.send(TestRequest::get(gw.url("/"))).await.unwrap();
        assert_eq!(first.status, 200);
        let issued = first.header_all("x-session");
        assert_eq!(issued.len(), 1, "one value: the token replaces the backend's field: {issued:?}");
        assert_ne!(issued[0], "from-the-app");
        assert_eq!(first.header_all("x-app"), ["kept"], "the backend's other fields pass");
        let pinned = backend_of(&first);
        let again = client.send(TestRequest::get(gw.url("/")).header("x-session", &issued[0])).await.unwrap();
        assert_eq!(backend_of(&again), pinned);
        assert_eq!(again.header_all("x-session"), ["from-the-app"], "no token issued: the backend's field passes");
        assert_eq!(again.header_all("x-app"), ["kept"]);
    }
    gw.gateway.stop().await;
}

// ---- Timeouts --------------------------------------------------------------------------------

#[tokio::test]
async fn absolute_timeout_rebalances_with_a_new_token() {
    let b = backends("abs", 3).await;
    let gw = simple(&b, "{sessionName: sid, absoluteTimeout: 2s}").await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let first = get(&client, &gw, "/", &mut jar).await;
    let token = set_cookie_value(&first, "sid").unwrap();
    let pinned = backend_of(&first);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let resp = get(&client, &gw, "/", &mut jar).await;
        assert_eq!(backend_of(&resp), pinned);
        assert!(resp.set_cookies().is_empty(), "activity does not extend an absolute timeout");
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let resp = get(&client, &gw, "/", &mut jar).await;
    let new = set_cookie_value(&resp, "sid").expect("expired session: new token");
    assert_ne!(new, token);
    assert_ne!(backend_of(&resp), pinned, "re-balanced (round robin moves on)");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"expired-absolute\""]), 1.0, "{m}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn idle_timeout_keeps_active_sessions_and_ends_idle_ones() {
    let b = backends("idle", 3).await;
    let gw = simple(&b, "{sessionName: sid, idleTimeout: 2s}").await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let first = get(&client, &gw, "/", &mut jar).await;
    let pinned = backend_of(&first);
    let mut refreshed = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resp = get(&client, &gw, "/", &mut jar).await;
        assert_eq!(backend_of(&resp), pinned, "an active session never idles out");
        if set_cookie_line(&resp, "sid").is_some() {
            refreshed += 1;
        }
    }
    assert!(refreshed >= 1, "the token is refreshed while the client is active");
    assert!(refreshed <= 6, "refreshed at most once per half idle budget, got {refreshed}");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_created_total", &[]), 1.0, "{m}");
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"expired-idle\""]), 0.0, "{m}");
    let token = jar.get("sid").unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let resp = get(&client, &gw, "/", &mut jar).await;
    let new = set_cookie_value(&resp, "sid").expect("idle session: new token");
    assert_ne!(new, token);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_created_total", &[]), 2.0, "{m}");
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"expired-idle\""]), 1.0, "{m}");
    gw.gateway.stop().await;
}

// ---- Bad tokens ------------------------------------------------------------------------------

#[tokio::test]
async fn forged_truncated_altered_other_scope_and_other_key_tokens_are_treated_as_absent() {
    let b = backends("bad", 3).await;
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1], &b[2]])),
        (
            "route.yaml",
            route_yaml(
                "r",
                None,
                &[
                    rule_yaml("/a", SVC, Some("{sessionName: sid}")),
                    rule_yaml("/other", SVC, Some("{sessionName: sid2}")),
                ],
            ),
        ),
    ])
    .await;
    let client = TestClient::http1();
    let first = get_cookie(&client, &gw, "/a", None).await;
    let token = set_cookie_value(&first, "sid").unwrap();
    let other_scope = set_cookie_value(&get_cookie(&client, &gw, "/other", None).await, "sid2").unwrap();
    let bytes = b64url_decode(&token).expect("token is base64url");
    let mut forged_bytes = bytes.clone();
    for (i, byte) in forged_bytes.iter_mut().enumerate().skip(5) {
        *byte = (i as u8).wrapping_mul(37) ^ 0x5a;
    }
    let forged = b64url_encode(&forged_bytes);
    let truncated = token[..token.len() - 6].to_string();
    let mut altered_bytes = bytes.clone();
    let mid = altered_bytes.len() / 2;
    altered_bytes[mid] ^= 0x01;
    let altered = b64url_encode(&altered_bytes);
    assert_eq!(b64url_encode(&bytes), token, "test codec round trip");
    let claims = sessile_session::open(&gw.gateway.shared.keys(), &token).expect("the gateway's own token opens");
    let other_key = sessile_session::seal(&KeyRing::generate(), &claims);
    let cases = [
        ("forged", forged),
        ("truncated", truncated),
        ("altered", altered),
        ("other-scope", other_scope),
        ("other-key", other_key),
        ("not base64", "!!!".to_string()),
    ];
    for (what, bad) in &cases {
        let resp = get_cookie(&client, &gw, "/a", Some(&format!("sid={bad}"))).await;
        let new = set_cookie_value(&resp, "sid").unwrap_or_else(|| panic!("{what}: no new token"));
        assert_ne!(&new, bad, "{what}");
        assert_ne!(new, token, "{what}");
    }
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"invalid\""]), 5.0, "{m}");
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"other-scope\""]), 1.0, "{m}");
    // The genuine token still works.
    let resp = get_cookie(&client, &gw, "/a", Some(&format!("sid={token}"))).await;
    assert_eq!(backend_of(&resp), backend_of(&first));
    assert!(resp.set_cookies().is_empty());
    gw.gateway.stop().await;
}

// ---- Endpoint failure, removal, draining -----------------------------------------------------

#[tokio::test]
async fn pinned_endpoint_killed_next_request_succeeds_elsewhere_with_a_new_token() {
    let b = backends("k", 3).await;
    let gw = simple(&b, "{sessionName: sid}").await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let first = get(&client, &gw, "/", &mut jar).await;
    let old_token = jar.get("sid").unwrap().to_string();
    let pinned = backend_of(&first);
    get(&client, &gw, "/", &mut jar).await;
    b.iter().find(|x| x.name() == pinned).unwrap().stop().await;
    let resp = client.send_with_jar(TestRequest::get(gw.url("/")), &mut jar).await.unwrap();
    assert_eq!(resp.status, 200, "never a 5xx for a refused pinned endpoint: {}", resp.text());
    let moved = backend_of(&resp);
    assert_ne!(moved, pinned);
    let new = set_cookie_value(&resp, "sid").expect("re-pinned with a new token");
    assert_ne!(new, old_token);
    for _ in 0..10 {
        let resp = get(&client, &gw, "/", &mut jar).await;
        assert_eq!(backend_of(&resp), moved, "sticks to the new endpoint");
        assert!(resp.set_cookies().is_empty());
    }
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_repins_total", &[]), 1.0, "{m}");
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"endpoint-unhealthy\""]), 1.0, "{m}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn endpoint_removed_by_reload_keeps_its_sessions_while_it_serves() {
    let b = backends("rm", 2).await;
    let gw = simple(&b, "{sessionName: sid}").await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let first = get(&client, &gw, "/", &mut jar).await;
    let pinned = backend_of(&first);
    let (gone, stays) = if pinned == b[0].name() { (&b[0], &b[1]) } else { (&b[1], &b[0]) };
    gw.update("svc.yaml", &service_yaml("default", "svc", &[stays])).await;
    for _ in 0..10 {
        let resp = get(&client, &gw, "/", &mut jar).await;
        assert_eq!(backend_of(&resp), pinned, "the session continues during the grace period");
        assert!(resp.set_cookies().is_empty());
    }
    for _ in 0..10 {
        assert_eq!(backend_of(&get_cookie(&client, &gw, "/", None).await), stays.name(), "no new sessions on it");
    }
    let old_token = jar.get("sid").unwrap().to_string();
    gone.stop().await;
    let resp = client.send_with_jar(TestRequest::get(gw.url("/")), &mut jar).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(backend_of(&resp), stays.name());
    let new = set_cookie_value(&resp, "sid").expect("re-pinned with a new token");
    assert_ne!(new, old_token);
    assert_eq!(backend_of(&get(&client, &gw, "/", &mut jar).await), stays.name());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn draining_endpoint_keeps_existing_sessions_and_gets_no_new_ones() {
    let b = backends("dr", 2).await;
    let gw = simple(&b, "{sessionName: sid}").await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let pinned = backend_of(&get(&client, &gw, "/", &mut jar).await);
    let (draining, ready) = if pinned == b[0].name() { (&b[0], &b[1]) } else { (&b[1], &b[0]) };
    gw.update("svc.yaml", &service_yaml_states("default", "svc", &[(draining, "draining"), (ready, "ready")])).await;
    for _ in 0..10 {
        let resp = get(&client, &gw, "/", &mut jar).await;
        assert_eq!(backend_of(&resp), pinned, "draining endpoints keep their sessions");
        assert!(resp.set_cookies().is_empty());
    }
    for _ in 0..20 {
        let resp = get_cookie(&client, &gw, "/", None).await;
        assert_eq!(backend_of(&resp), ready.name(), "draining endpoints get no new sessions");
    }
    gw.gateway.stop().await;
}

// ---- Restart, replicas, keys -----------------------------------------------------------------

#[tokio::test]
async fn gateway_restart_keeps_the_session_on_the_same_endpoint() {
    let b = backends("rs", 3).await;
    // Generated name: it must be stable across restarts too.
    let gw = simple(&b, "{absoluteTimeout: 1h}").await;
    let client = TestClient::http1().fresh_connections(true);
    let first = get_cookie(&client, &gw, "/", None).await;
    let (name, token) = generated_cookie(&first);
    let pinned = backend_of(&first);
    let cookie = format!("{name}={token}");
    let TestGateway { gateway, config, state, port } = gw;
    gateway.stop().await;
    let gw = start_gateway(config, state, port).await;
    for _ in 0..10 {
        let resp = get_cookie(&client, &gw, "/", Some(&cookie)).await;
        assert_eq!(backend_of(&resp), pinned, "the session survives the restart");
        assert!(resp.set_cookies().is_empty(), "{:?}", resp.set_cookies());
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn two_replicas_with_one_key_ring_honour_each_others_tokens() {
    let b = backends("rep", 3).await;
    let refs: Vec<&TestBackend> = b.iter().collect();
    let files = |port: u16| {
        vec![
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &refs)),
            ("route.yaml", route_yaml("r", None, &[rule_yaml("/", SVC, Some("{}"))])),
        ]
    };
    let port1 = free_port();
    let gw1 = gateway_with(port1, &files(port1)).await;
    // The second replica gets a copy of the first one's key ring (mode preserved).
    let (config2, state2) = (TempDir::new("config"), TempDir::new("state"));
    let port2 = free_port();
    for (name, yaml) in files(port2) {
        config2.write(name, &yaml);
    }
    let keys = gw1.state.path().join(sessile_session::KEY_FILE_NAME);
    std::fs::copy(&keys, state2.path().join(sessile_session::KEY_FILE_NAME)).expect("copy key ring");
    let gw2 = start_gateway(config2, state2, port2).await;
    let client = TestClient::http1();
    for (from, to) in [(&gw1, &gw2), (&gw2, &gw1)] {
        for _ in 0..3 {
            let first = get_cookie(&client, from, "/", None).await;
            let (name, token) = generated_cookie(&first);
            let resp = get_cookie(&client, to, "/", Some(&format!("{name}={token}"))).await;
            assert_eq!(backend_of(&resp), backend_of(&first), "a token from one replica works on the other");
            assert!(resp.set_cookies().is_empty(), "{:?}", resp.set_cookies());
        }
    }
    // A third replica shares the first one's state directory (and so its key ring file).
    let (config3, port3) = (TempDir::new("config"), free_port());
    for (name, yaml) in files(port3) {
        config3.write(name, &yaml);
    }
    let gw3 = start_gateway(config3, TempDir(gw1.state.path().to_path_buf()), port3).await;
    let first = get_cookie(&client, &gw1, "/", None).await;
    let (name, token) = generated_cookie(&first);
    let resp = get_cookie(&client, &gw3, "/", Some(&format!("{name}={token}"))).await;
    assert_eq!(backend_of(&resp), backend_of(&first));
    assert!(resp.set_cookies().is_empty(), "{:?}", resp.set_cookies());
    gw3.gateway.stop().await;
    gw1.gateway.stop().await;
    gw2.gateway.stop().await;
}

fn write_key_file(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A gateway over three backends and one cookie-persistence route (`sessionName: sid`) that
/// reads its key ring from a key file the test may rewrite.
struct KeyFileGateway {
    gw: TestGateway,
    key_file: std::path::PathBuf,
    _keys: TempDir,
    _backends: Vec<TestBackend>,
}

async fn key_file_gateway(prefix: &str, ring: &KeyRing) -> KeyFileGateway {
    let b = backends(prefix, 3).await;
    let keys = TempDir::new("keys");
    let key_file = keys.path().join("session-keys");
    write_key_file(&key_file, &ring.to_file_text());
    let config = TempDir::new("config");
    let port = free_port();
    config.write("gw.yaml", &gateway_yaml(port));
    config.write("svc.yaml", &service_yaml("default", "svc", &[&b[0], &b[1], &b[2]]));
    config.write("route.yaml", &route_yaml("r", None, &[rule_yaml("/", SVC, Some("{sessionName: sid}"))]));
    let path = key_file.clone();
    let gw = start_gateway_with(config, TempDir::new("state"), port, move |o| o.session_keys = Some(path)).await;
    KeyFileGateway { gw, key_file, _keys: keys, _backends: b }
}

/// Writes `ring` to the gateway's key file and waits until the gateway uses it (its current key
/// id must differ from the ring in use).
async fn replace_key_ring(gw: &TestGateway, key_file: &std::path::Path, ring: &KeyRing) {
    write_key_file(key_file, &ring.to_file_text());
    let want = ring.current_key_id();
    sessile_testkit::eventually(Duration::from_secs(5), || async {
        anyhow::ensure!(gw.gateway.shared.keys().current_key_id() == want, "key ring not reloaded yet");
        Ok(())
    })
    .await
    .expect("the gateway picks up the new key ring");
}

fn key_id(token: &str) -> u32 {
    let bytes = b64url_decode(token).expect("base64url token");
    u32::from_be_bytes(bytes[1..5].try_into().unwrap())
}

#[tokio::test]
async fn key_rotation_accepts_old_tokens_and_seals_new_ones_with_the_new_key() {
    let old_ring = KeyRing::generate();
    let KeyFileGateway { gw, key_file, _keys, _backends } = key_file_gateway("rot", &old_ring).await;
    let client = TestClient::http1();
    let first = get_cookie(&client, &gw, "/", None).await;
    let old_token = set_cookie_value(&first, "sid").unwrap();
    assert_eq!(key_id(&old_token), old_ring.current_key_id());
    let pinned = backend_of(&first);

    let new_ring = KeyRing::parse(&old_ring.to_file_text()).unwrap().with_new_current_key();
    assert_ne!(new_ring.current_key_id(), old_ring.current_key_id());
    let want = new_ring.current_key_id();
    replace_key_ring(&gw, &key_file, &new_ring).await;

    for _ in 0..5 {
        let resp = get_cookie(&client, &gw, "/", Some(&format!("sid={old_token}"))).await;
        assert_eq!(backend_of(&resp), pinned, "old-key tokens are still accepted");
        assert!(resp.set_cookies().is_empty());
    }
    let fresh = get_cookie(&client, &gw, "/", None).await;
    let new_token = set_cookie_value(&fresh, "sid").unwrap();
    assert_eq!(key_id(&new_token), want, "new tokens use the new key");
    assert!(sessile_session::open(&old_ring, &new_token).is_err());
    assert!(sessile_session::open(&new_ring, &new_token).is_ok());
    let resp = get_cookie(&client, &gw, "/", Some(&format!("sid={new_token}"))).await;
    assert_eq!(backend_of(&resp), backend_of(&fresh));
    gw.gateway.stop().await;
}

/// A connection remembers the last token it opened (to skip decrypting it again): a key ring
/// reload that drops the token's key must still reject it on that same keep-alive connection.
#[tokio::test]
async fn a_dropped_key_rejects_its_tokens_on_a_connection_that_sent_them_before() {
    let old_ring = KeyRing::generate();
    let KeyFileGateway { gw, key_file, _keys, _backends } = key_file_gateway("drop", &old_ring).await;
    // One pooled keep-alive connection carries every request below.
    let client = TestClient::http1();
    let first = get_cookie(&client, &gw, "/", None).await;
    let old_token = set_cookie_value(&first, "sid").unwrap();
    let cookie = format!("sid={old_token}");
    for _ in 0..3 {
        let resp = get_cookie(&client, &gw, "/", Some(&cookie)).await;
        assert_eq!(backend_of(&resp), backend_of(&first));
        assert!(resp.set_cookies().is_empty(), "resumed, not re-issued");
    }

    // New key material only, under another key id (so the reload can be seen happening).
    let new_ring = KeyRing::generate().with_new_current_key();
    assert_ne!(new_ring.current_key_id(), old_ring.current_key_id());
    assert!(sessile_session::open(&new_ring, &old_token).is_err());
    let want = new_ring.current_key_id();
    replace_key_ring(&gw, &key_file, &new_ring).await;
    for _ in 0..3 {
        let resp = get_cookie(&client, &gw, "/", Some(&cookie)).await;
        let reissued = set_cookie_value(&resp, "sid")
            .unwrap_or_else(|| panic!("a token under a dropped key starts a new session: {resp:?}"));
        assert_eq!(key_id(&reissued), want);
    }
    let metrics = gw.metrics().await;
    assert!(metric(&metrics, "sessile_session_rejected_total", &["reason=\"invalid\""]) >= 3.0, "{metrics}");
    gw.gateway.stop().await;
}

// ---- WebSocket and HTTPS ---------------------------------------------------------------------

#[tokio::test]
async fn websocket_upgrade_carries_the_cookie_and_later_upgrades_stick() {
    let b = backends("ws", 3).await;
    let gw = simple(&b, "{sessionName: sid}").await;
    let first = websocket_echo(gw.addr(), "localhost", "/ws", &[], "hello").await.unwrap();
    assert_eq!(first.status, 101);
    let sc = first.header("set-cookie").expect("the 101 response carries the session cookie").to_string();
    assert!(sc.starts_with("sid="), "{sc}");
    let token = sc.trim_start_matches("sid=").split(';').next().unwrap().to_string();
    let (pinned, msg) = first.echoed.split_once(':').expect("echo is prefixed with the backend name");
    assert_eq!(msg, "hello");
    let cookie = format!("sid={token}");
    for i in 0..5 {
        let again = websocket_echo(gw.addr(), "localhost", "/ws", &[("Cookie", &cookie)], "again").await.unwrap();
        assert_eq!(again.status, 101);
        assert_eq!(again.echoed, format!("{pinned}:again"), "upgrade {i} left the pinned endpoint");
        assert!(again.header("set-cookie").is_none());
    }
    // Plain HTTP requests with the cookie land there too.
    let resp = get_cookie(&TestClient::http1(), &gw, "/", Some(&cookie)).await;
    assert_eq!(backend_of(&resp), pinned);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn https_listener_session_cookie_is_secure() {
    use sessile_testkit::tls::{CA_PEM, LOCALHOST_CERT_PEM, LOCALHOST_KEY_PEM};
    let b = backends("tls", 2).await;
    let port = free_port();
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", https_gateway_yaml(port, "tls")),
            ("secret.yaml", tls_secret_yaml("tls", LOCALHOST_CERT_PEM, LOCALHOST_KEY_PEM)),
            ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
            ("route.yaml", route_yaml("r", None, &[rule_yaml("/", SVC, Some("{sessionName: sid}"))])),
        ],
    )
    .await;
    let url = format!("https://localhost:{port}/");
    for alpn_h2 in [false, true] {
        let client = TestClient::https(CA_PEM, alpn_h2).unwrap();
        let first = client
            .send(TestRequest::get(url.replace("localhost", "127.0.0.1")).host(&format!("localhost:{port}")))
            .await
            .unwrap();
        assert_eq!(first.status, 200, "{}", first.text());
        let line = set_cookie_line(&first, "sid").expect("cookie set over HTTPS");
        assert!(line.ends_with("; Secure") || line.contains("; Secure;"), "{line}");
        let token = set_cookie_value(&first, "sid").unwrap();
        for _ in 0..5 {
            let resp = client
                .send(
                    TestRequest::get(url.replace("localhost", "127.0.0.1"))
                        .host(&format!("localhost:{port}"))
                        .header("cookie", &format!("sid={token}")),
                )
                .await
                .unwrap();
            assert_eq!(resp.backend(), first.backend());
            assert!(resp.set_cookies().is_empty());
        }
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn no_cache_from_the_backend_still_keeps_the_token_out_of_shared_caches() {
    // `no-cache` lets a shared cache store the response (Set-Cookie included) and serve it to
    // another client after revalidation; only `private` or `no-store` keep the token out.
    let b = backends("nc", 1).await;
    let gw = simple(&b, "{sessionName: sid}").await;
    let resp =
        TestClient::http1().send(TestRequest::get(gw.url("/")).header("x-cache-control", "no-cache")).await.unwrap();
    assert!(set_cookie_line(&resp, "sid").is_some());
    let cc = resp.header_all("cache-control").join(", ");
    assert!(cc.contains("private") || cc.contains("no-store"), "{cc}");
    assert!(cc.contains("no-cache"), "the backend's directive is kept: {cc}");
    gw.gateway.stop().await;
}
