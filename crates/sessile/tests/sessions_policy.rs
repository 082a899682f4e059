//! Session persistence configuration end to end: policies, name conflicts and invalid
//! configuration, with their statuses (spec sections 1, 3 and 10) and their traffic.

mod common;

use common::*;
use serde_json::Value;
use sessile_testkit::{TestClient, TestRequest, TestResponse};

const OLD: Option<&str> = Some("2020-01-01T00:00:00Z");
const NEW: Option<&str> = Some("2021-01-01T00:00:00Z");

async fn setup(files: Vec<(&str, String)>) -> TestGateway {
    let port = free_port();
    let mut all = vec![("gw.yaml", gateway_yaml(port))];
    all.extend(files);
    gateway_with(port, &all).await
}

async fn get(gw: &TestGateway, path: &str, cookie: Option<&str>) -> TestResponse {
    let mut req = TestRequest::get(gw.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    TestClient::http1().send(req).await.expect("request")
}

/// Condition `kind` of the first route parent or policy ancestor of `status`.
fn condition(status: &Value, kind: &str) -> Option<Value> {
    let s = &status["status"];
    let list = if s["parents"].is_array() { &s["parents"][0]["conditions"] } else { &s["ancestors"][0]["conditions"] };
    list.as_array()?.iter().find(|c| c["type"] == kind).cloned()
}

fn assert_condition(status: &Value, kind: &str, value: &str, reason: &str) -> String {
    let c = condition(status, kind).unwrap_or_else(|| panic!("no {kind} condition in {status:#}"));
    assert_eq!(c["status"], value, "{kind} in {status:#}");
    assert_eq!(c["reason"], reason, "{kind} in {status:#}");
    assert!(c.get("observedGeneration").is_some_and(|g| g.is_number()), "observedGeneration in {c:#}");
    let msg = c["message"].as_str().unwrap_or_default().to_string();
    assert!(!msg.is_empty(), "a person needs a message: {c:#}");
    msg
}

/// The route is fully fine: Accepted, ResolvedRefs, no PartiallyInvalid.
fn assert_route_clean(status: &Value) {
    assert_condition(status, "Accepted", "True", "Accepted");
    assert_condition(status, "ResolvedRefs", "True", "ResolvedRefs");
    assert!(condition(status, "PartiallyInvalid").is_none(), "{status:#}");
}

/// Asserts a sticky session on `path` with cookie `name`: token set, then 10 requests stay.
async fn assert_sticky(gw: &TestGateway, path: &str, name: &str) {
    let first = get(gw, path, None).await;
    assert_eq!(first.status, 200, "{path}: {}", first.text());
    let token =
        set_cookie_value(&first, name).unwrap_or_else(|| panic!("{path}: no {name} in {:?}", first.set_cookies()));
    for _ in 0..10 {
        let resp = get(gw, path, Some(&format!("{name}={token}"))).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.backend(), first.backend(), "{path} sticks");
        assert!(resp.set_cookies().is_empty());
    }
}

#[tokio::test]
async fn rule_vs_rule_same_route_first_rule_wins() {
    let b = backends("rr", 3).await;
    let svc = "[{name: svc, port: 80}]";
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1], &b[2]])),
        (
            "route.yaml",
            route_yaml(
                "r",
                None,
                &[
                    rule_yaml("/one", svc, Some("{sessionName: sid}")),
                    rule_yaml("/two", svc, Some("{sessionName: sid}")),
                    rule_yaml("/three", svc, Some("{type: Header, sessionName: X-Sess}")),
                    rule_yaml("/four", svc, Some("{type: Header, header: {name: x-sess}}")),
                    rule_yaml("/five", svc, None),
                ],
            ),
        ),
    ])
    .await;
    let status = gw.status_of("HTTPRoute", "r").await;
    assert_condition(&status, "Accepted", "True", "Accepted");
    let msg = assert_condition(&status, "PartiallyInvalid", "True", "UnsupportedValue");
    assert!(msg.starts_with("Dropped Rule"), "{msg}");
    assert!(msg.contains("Dropped Rule 1") && msg.contains("rule 0"), "names the loser and the winner: {msg}");
    assert!(msg.contains("Dropped Rule 3") && msg.contains("rule 2"), "header names are case-insensitive: {msg}");
    assert!(!msg.contains("Dropped Rule 0") && !msg.contains("Dropped Rule 2"), "{msg}");
    assert_sticky(&gw, "/one", "sid").await;
    assert_eq!(get(&gw, "/two", None).await.status, 404, "the losing rule is dropped");
    assert_eq!(get(&gw, "/four", None).await.status, 404, "the losing rule is dropped");
    let three = get(&gw, "/three", None).await;
    assert!(three.header("x-sess").is_some());
    let five = get(&gw, "/five", None).await;
    assert_eq!(five.status, 200);
    assert!(five.set_cookies().is_empty());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn rule_vs_rule_across_routes_older_route_wins() {
    let b = backends("xr", 2).await;
    let svc = "[{name: svc, port: 80}]";
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
        // The newer route sorts first by name: age must decide, not order.
        ("a.yaml", route_yaml("a-new", NEW, &[rule_yaml("/new", svc, Some("{sessionName: sid}"))])),
        ("b.yaml", route_yaml("b-old", OLD, &[rule_yaml("/old", svc, Some("{sessionName: sid}"))])),
        // Same timestamp: the alphabetically first namespace/name wins.
        ("m.yaml", route_yaml("m-tie", OLD, &[rule_yaml("/m", svc, Some("{sessionName: tie}"))])),
        ("z.yaml", route_yaml("z-tie", OLD, &[rule_yaml("/z", svc, Some("{sessionName: tie}"))])),
    ])
    .await;
    assert_route_clean(&gw.status_of("HTTPRoute", "b-old").await);
    assert_route_clean(&gw.status_of("HTTPRoute", "m-tie").await);
    for (loser, winner) in [("a-new", "default/b-old"), ("z-tie", "default/m-tie")] {
        let status = gw.status_of("HTTPRoute", loser).await;
        let msg = assert_condition(&status, "PartiallyInvalid", "True", "UnsupportedValue");
        assert!(msg.starts_with("Dropped Rule 0") && msg.contains(winner), "{loser}: {msg}");
    }
    assert_sticky(&gw, "/old", "sid").await;
    assert_sticky(&gw, "/m", "tie").await;
    assert_eq!(get(&gw, "/new", None).await.status, 404);
    assert_eq!(get(&gw, "/z", None).await.status, 404);
    // Reloading (a newcomer appears) never disturbs the winner.
    gw.update("c.yaml", &route_yaml("c-newest", None, &[rule_yaml("/c", svc, Some("{sessionName: sid}"))])).await;
    assert_route_clean(&gw.status_of("HTTPRoute", "b-old").await);
    assert_condition(&gw.status_of("HTTPRoute", "c-newest").await, "PartiallyInvalid", "True", "UnsupportedValue");
    assert_sticky(&gw, "/old", "sid").await;
    gw.gateway.stop().await;
}

#[tokio::test]
async fn routes_on_disjoint_hostnames_may_reuse_a_name() {
    let b = backends("hn", 2).await;
    let svc = "[{name: svc, port: 80}]";
    let with_host = |name: &str, host: &str, path: &str| {
        route_yaml(name, None, &[rule_yaml(path, svc, Some("{sessionName: sid}"))])
            .replace("  parentRefs:", &format!("  hostnames: [{host}]\n  parentRefs:"))
    };
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
        ("a.yaml", with_host("a", "a.example", "/a")),
        ("b.yaml", with_host("b", "b.example", "/b")),
    ])
    .await;
    assert_route_clean(&gw.status_of("HTTPRoute", "a").await);
    assert_route_clean(&gw.status_of("HTTPRoute", "b").await);
    for (host, path) in [("a.example", "/a"), ("b.example", "/b")] {
        let resp = TestClient::http1().send(TestRequest::get(gw.url(path)).host(host)).await.unwrap();
        assert_eq!(resp.status, 200);
        assert!(set_cookie_value(&resp, "sid").is_some());
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn policy_vs_policy_older_wins_loser_is_conflicted() {
    let a = backends("pa", 2).await;
    let bb = backends("pb", 2).await;
    let gw = setup(vec![
        ("a.yaml", service_yaml("default", "svc-a", &[&a[0], &a[1]])),
        ("b.yaml", service_yaml("default", "svc-b", &[&bb[0], &bb[1]])),
        ("p-old.yaml", lb_policy_yaml("p-old", OLD, "svc-a", "{sessionName: psid}")),
        ("a-new.yaml", lb_policy_yaml("a-new", NEW, "svc-b", "{sessionName: psid}")),
        (
            "route.yaml",
            route_yaml(
                "r",
                None,
                &[
                    rule_yaml("/a", "[{name: svc-a, port: 80}]", None),
                    rule_yaml("/b", "[{name: svc-b, port: 80}]", None),
                ],
            ),
        ),
    ])
    .await;
    assert_condition(&gw.status_of("BackendLBPolicy", "p-old").await, "Accepted", "True", "Accepted");
    let msg = assert_condition(&gw.status_of("BackendLBPolicy", "a-new").await, "Accepted", "False", "Conflicted");
    assert!(msg.contains("p-old"), "{msg}");
    assert_route_clean(&gw.status_of("HTTPRoute", "r").await);
    assert_sticky(&gw, "/a", "psid").await;
    let resp = get(&gw, "/b", None).await;
    assert_eq!(resp.status, 200, "traffic of the conflicted policy's Service keeps flowing");
    assert!(resp.set_cookies().is_empty(), "{:?}", resp.set_cookies());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn two_policies_on_one_service_older_wins() {
    let b = backends("ps", 2).await;
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
        ("p1.yaml", lb_policy_yaml("z-older", OLD, "svc", "{sessionName: older}")),
        ("p2.yaml", lb_policy_yaml("a-newer", NEW, "svc", "{sessionName: newer}")),
        ("route.yaml", route_yaml("r", None, &[rule_yaml("/", "[{name: svc, port: 80}]", None)])),
    ])
    .await;
    assert_condition(&gw.status_of("BackendLBPolicy", "z-older").await, "Accepted", "True", "Accepted");
    let msg = assert_condition(&gw.status_of("BackendLBPolicy", "a-newer").await, "Accepted", "False", "Conflicted");
    assert!(msg.contains("z-older"), "{msg}");
    assert_sticky(&gw, "/", "older").await;
    assert!(set_cookie_value(&get(&gw, "/", None).await, "newer").is_none());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn rule_vs_policy_with_the_same_name_rule_wins() {
    let a = backends("rpa", 2).await;
    let bb = backends("rpb", 2).await;
    let gw = setup(vec![
        ("a.yaml", service_yaml("default", "svc-a", &[&a[0], &a[1]])),
        ("b.yaml", service_yaml("default", "svc-b", &[&bb[0], &bb[1]])),
        // The policy is older than the route: the route rule still wins.
        ("policy.yaml", lb_policy_yaml("lb", OLD, "svc-b", "{sessionName: sid}")),
        (
            "route.yaml",
            route_yaml(
                "r",
                NEW,
                &[
                    rule_yaml("/x", "[{name: svc-a, port: 80}]", Some("{sessionName: sid}")),
                    rule_yaml("/y", "[{name: svc-b, port: 80}]", None),
                ],
            ),
        ),
    ])
    .await;
    let msg = assert_condition(&gw.status_of("BackendLBPolicy", "lb").await, "Accepted", "False", "Conflicted");
    assert!(msg.contains("default/r"), "names the winning route: {msg}");
    assert_route_clean(&gw.status_of("HTTPRoute", "r").await);
    assert_sticky(&gw, "/x", "sid").await;
    let y = get(&gw, "/y", None).await;
    assert_eq!(y.status, 200);
    assert!(y.set_cookies().is_empty(), "{:?}", y.set_cookies());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn invalid_permanent_without_absolute_timeout_is_reported_and_nothing_else_breaks() {
    let b = backends("inv", 2).await;
    let other = backends("inv-o", 1).await;
    let svc = "[{name: svc, port: 80}]";
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
        ("other.yaml", service_yaml("default", "other", &[&other[0]])),
        (
            "route.yaml",
            route_yaml(
                "r",
                None,
                &[
                    rule_yaml("/good", svc, Some("{sessionName: sid}")),
                    rule_yaml("/bad", svc, Some("{sessionName: bad, cookieConfig: {lifetimeType: Permanent}}")),
                    rule_yaml("/other", "[{name: other, port: 80}]", None),
                ],
            ),
        ),
        ("policy.yaml", lb_policy_yaml("bad-policy", None, "other", "{cookie: {name: x, lifetimeType: Permanent}}")),
    ])
    .await;
    let status = gw.status_of("HTTPRoute", "r").await;
    assert_condition(&status, "Accepted", "True", "Accepted");
    let msg = assert_condition(&status, "PartiallyInvalid", "True", "UnsupportedValue");
    assert!(msg.starts_with("Dropped Rule 1"), "{msg}");
    assert!(msg.contains("sessionPersistence"), "names the field: {msg}");
    assert!(msg.contains("AbsoluteTimeout must be specified when cookie lifetimeType is Permanent"), "{msg}");
    let msg = assert_condition(&gw.status_of("BackendLBPolicy", "bad-policy").await, "Accepted", "False", "Invalid");
    assert!(msg.contains("AbsoluteTimeout must be specified"), "{msg}");
    assert_sticky(&gw, "/good", "sid").await;
    assert_eq!(get(&gw, "/bad", None).await.status, 404);
    let o = get(&gw, "/other", None).await;
    assert_eq!(o.status, 200);
    assert!(o.set_cookies().is_empty());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn policy_target_not_found_and_accepted_shapes() {
    let b = backends("tn", 2).await;
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
        ("missing.yaml", lb_policy_yaml("missing", None, "nope", "{sessionName: m}")),
        (
            "x.yaml",
            "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackendTrafficPolicy\nmetadata: {name: xp, namespace: default}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: svc}]\n  sessionPersistence: {sessionName: xsid, type: Cookie, absoluteTimeout: 1h}\n".to_string(),
        ),
        ("route.yaml", route_yaml("r", None, &[rule_yaml("/", "[{name: svc, port: 80}]", None)])),
    ])
    .await;
    let msg =
        assert_condition(&gw.status_of("BackendLBPolicy", "missing").await, "Accepted", "False", "TargetNotFound");
    assert!(msg.contains("targetRefs"), "{msg}");
    assert_condition(&gw.status_of("XBackendTrafficPolicy", "xp").await, "Accepted", "True", "Accepted");
    let status = gw.status_of("XBackendTrafficPolicy", "xp").await;
    assert_eq!(status["status"]["ancestors"][0]["ancestorRef"]["name"], "gw", "{status:#}");
    assert_sticky(&gw, "/", "xsid").await;
    gw.gateway.stop().await;
}

fn x_policy_yaml(name: &str, target: &str, persistence: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackendTrafficPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: {target}}}]\n  sessionPersistence: {persistence}\n"
    )
}

#[tokio::test]
async fn every_policy_shape_is_accepted() {
    let b1 = backends("sh1-", 2).await;
    let b2 = backends("sh2-", 2).await;
    let b3 = backends("sh3-", 2).await;
    let singular = "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {name: singular, namespace: default}\nspec:\n  targetRef: {group: \"\", kind: Service, name: s3}\n  sessionPersistence: {sessionName: one, absoluteTimeout: 1h, idleTimeout: 30m, cookieConfig: {lifetimeType: Permanent}}\n";
    let gw = setup(vec![
        ("s1.yaml", service_yaml("default", "s1", &[&b1[0], &b1[1]])),
        ("s2.yaml", service_yaml("default", "s2", &[&b2[0], &b2[1]])),
        ("s3.yaml", service_yaml("default", "s3", &[&b3[0], &b3[1]])),
        (
            "x1.yaml",
            x_policy_yaml(
                "union-cookie",
                "s1",
                "{type: Cookie, absoluteTimeout: 1h, idleTimeout: 30m, cookie: {name: uc, path: /, lifetimeType: Permanent}}",
            ),
        ),
        ("x2.yaml", x_policy_yaml("union-header", "s2", "{type: Header, header: {name: X-Union}}")),
        ("p3.yaml", singular.to_string()),
        (
            "route.yaml",
            route_yaml(
                "r",
                None,
                &[
                    rule_yaml("/1", "[{name: s1, port: 80}]", None),
                    rule_yaml("/2", "[{name: s2, port: 80}]", None),
                    rule_yaml("/3", "[{name: s3, port: 80}]", None),
                ],
            ),
        ),
    ])
    .await;
    assert_condition(&gw.status_of("XBackendTrafficPolicy", "union-cookie").await, "Accepted", "True", "Accepted");
    assert_condition(&gw.status_of("XBackendTrafficPolicy", "union-header").await, "Accepted", "True", "Accepted");
    assert_condition(&gw.status_of("BackendLBPolicy", "singular").await, "Accepted", "True", "Accepted");
    assert_sticky(&gw, "/1", "uc").await;
    let perm = get(&gw, "/1", None).await;
    assert!(set_cookie_line(&perm, "uc").unwrap().contains("Max-Age=3"), "{:?}", perm.set_cookies());
    assert_sticky(&gw, "/3", "one").await;
    let first = get(&gw, "/2", None).await;
    let token = first.header("x-union").expect("header token").to_string();
    for _ in 0..5 {
        let resp = TestClient::http1().send(TestRequest::get(gw.url("/2")).header("X-Union", &token)).await.unwrap();
        assert_eq!(resp.backend(), first.backend());
        assert!(resp.header("x-union").is_none());
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn observed_generation_follows_metadata_generation() {
    let b = backends("gen", 1).await;
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0]])),
        (
            "policy.yaml",
            lb_policy_yaml("lb", None, "svc", "{sessionName: s}")
                .replace("namespace: default}", "namespace: default, generation: 7}"),
        ),
        (
            "route.yaml",
            route_yaml(
                "r",
                None,
                &[rule_yaml("/", "[{name: svc, port: 80}]", Some("{cookieConfig: {lifetimeType: Permanent}}"))],
            )
            .replace("namespace: default}", "namespace: default, generation: 4}"),
        ),
    ])
    .await;
    let p = condition(&gw.status_of("BackendLBPolicy", "lb").await, "Accepted").unwrap();
    assert_eq!(p["observedGeneration"], 7, "{p:#}");
    let status = gw.status_of("HTTPRoute", "r").await;
    let c = condition(&status, "PartiallyInvalid").unwrap();
    assert_eq!(c["observedGeneration"], 4, "{c:#}");
    // Every rule invalid: the route is not accepted.
    assert_condition(&status, "Accepted", "False", "UnsupportedValue");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn a_policy_listing_its_target_twice_does_not_conflict_with_itself() {
    let b = backends("dup", 2).await;
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
        (
            "policy.yaml",
            lb_policy_yaml("lb", None, "svc", "{sessionName: dup}").replace(
                "targetRefs: [{group: \"\", kind: Service, name: svc}]",
                "targetRefs: [{group: \"\", kind: Service, name: svc}, {group: \"\", kind: Service, name: svc}]",
            ),
        ),
        ("route.yaml", route_yaml("r", None, &[rule_yaml("/", "[{name: svc, port: 80}]", None)])),
    ])
    .await;
    assert_condition(&gw.status_of("BackendLBPolicy", "lb").await, "Accepted", "True", "Accepted");
    assert_sticky(&gw, "/", "dup").await;
    gw.gateway.stop().await;
}

#[tokio::test]
async fn every_invalid_rule_shape_drops_only_its_rule() {
    let b = backends("shape", 2).await;
    let svc = "[{name: svc, port: 80}]";
    let bad = [
        ("{type: Header, cookieConfig: {lifetimeType: Session}}", "cookieConfig"),
        ("{type: Header, cookie: {name: c}}", "cookie"),
        ("{type: Cookie, header: {name: h}}", "header"),
        ("{absoluteTimeout: 1d}", "absoluteTimeout"),
        ("{idleTimeout: 100000s}", "idleTimeout"),
        ("{sessionName: \"bad name\"}", "sessionName"),
        ("{cookie: {name: a}, sessionName: b}", "disagree"),
    ];
    let mut rules = vec![rule_yaml("/ok", svc, Some("{sessionName: ok, absoluteTimeout: 1h30m10s, idleTimeout: 0s}"))];
    for (i, (sp, _)) in bad.iter().enumerate() {
        rules.push(rule_yaml(&format!("/bad{i}"), svc, Some(sp)));
    }
    let gw = setup(vec![
        ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
        ("route.yaml", route_yaml("r", None, &rules)),
    ])
    .await;
    let status = gw.status_of("HTTPRoute", "r").await;
    assert_condition(&status, "Accepted", "True", "Accepted");
    let msg = assert_condition(&status, "PartiallyInvalid", "True", "UnsupportedValue");
    assert!(msg.starts_with("Dropped Rule"), "{msg}");
    let parts: Vec<&str> = msg.split("; ").collect();
    for (i, (_, field)) in bad.iter().enumerate() {
        let rule = i + 1;
        let part = parts
            .iter()
            .find(|p| p.starts_with(&format!("Dropped Rule {rule}:")))
            .unwrap_or_else(|| panic!("rule {rule} not reported in {msg}"));
        assert!(part.contains("sessionPersistence") && part.contains(field), "rule {rule}: {part}");
        assert_eq!(get(&gw, &format!("/bad{i}"), None).await.status, 404);
    }
    assert!(!msg.contains("Dropped Rule 0"), "{msg}");
    assert_sticky(&gw, "/ok", "ok").await;
    gw.gateway.stop().await;
}
