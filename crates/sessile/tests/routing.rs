//! Conformance-style routing: our own YAML reproducing the behaviour of the upstream Gateway API
//! HTTPRoute conformance tests, plus Sessile's routing rules (precedence, regex, weights, errors).

mod common;

use common::*;
use sessile_testkit::{BackendOptions, TestBackend, TestClient, TestRequest, TestResponse};

const V1: &str = "gateway.networking.k8s.io/v1";

/// An HTTPRoute `name` in `default` attached to `gw`; `spec` holds the remaining spec lines (indented 2).
fn route(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: {V1}\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n{spec}"
    )
}

/// One Service per backend, named after the backend, in `default`.
fn services(bs: &[TestBackend]) -> String {
    bs.iter().map(|b| service_yaml("default", b.name(), &[b])).collect()
}

/// A gateway (from `gateway_yaml`) with one Service per backend and the given routes.
async fn setup(bs: &[TestBackend], routes: String) -> TestGateway {
    let port = free_port();
    gateway_with(port, &[("gw.yaml", gateway_yaml(port)), ("svc.yaml", services(bs)), ("routes.yaml", routes)]).await
}

async fn send(gw: &TestGateway, req: TestRequest) -> TestResponse {
    let _ = gw;
    TestClient::http1().send(req).await.expect("request through the gateway")
}

/// Which backend answered, or the status code when the gateway answered itself.
async fn hit(gw: &TestGateway, req: TestRequest) -> String {
    let resp = send(gw, req).await;
    resp.backend().unwrap_or_else(|| resp.status.to_string())
}

fn get(gw: &TestGateway, path: &str) -> TestRequest {
    TestRequest::get(gw.url(path))
}

fn parent_condition(status: &serde_json::Value, ty: &str) -> serde_json::Value {
    status["status"]["parents"][0]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty).cloned())
        .unwrap_or_else(|| panic!("no {ty} condition in {status:#}"))
}

#[tokio::test]
async fn simple_same_namespace() {
    let bs = backends("b", 1).await;
    let gw = setup(&bs, route("r", "  rules:\n  - backendRefs: [{name: b0, port: 80}]\n")).await;
    let resp = send(&gw, get(&gw, "/")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.backend().as_deref(), Some("b0"));
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(parent_condition(&st, "Accepted")["status"], "True");
    assert_eq!(parent_condition(&st, "ResolvedRefs")["status"], "True");
    assert_eq!(st["status"]["parents"][0]["parentRef"]["name"], "gw");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn exact_path_matching() {
    let bs = backends("b", 2).await;
    let spec = "  rules:\n  - matches: [{path: {type: Exact, value: /one}}]\n    backendRefs: [{name: b0, port: 80}]\n  - matches: [{path: {type: Exact, value: /two}}]\n    backendRefs: [{name: b1, port: 80}]\n";
    let gw = setup(&bs, route("r", spec)).await;
    assert_eq!(hit(&gw, get(&gw, "/one")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/two")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/one?x=1")).await, "b0", "the query is not part of the path");
    for miss in ["/", "/one/", "/one/example", "/two/", "/onetwo"] {
        assert_eq!(hit(&gw, get(&gw, miss)).await, "404", "{miss}");
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn path_prefix_is_element_wise() {
    let bs = backends("b", 2).await;
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /foo}}]\n    backendRefs: [{name: b0, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /bar/}}]\n    backendRefs: [{name: b1, port: 80}]\n";
    let gw = setup(&bs, route("r", spec)).await;
    for p in ["/foo", "/foo/", "/foo/bar", "/foo?x=1"] {
        assert_eq!(hit(&gw, get(&gw, p)).await, "b0", "{p}");
    }
    for p in ["/bar", "/bar/", "/bar/baz"] {
        assert_eq!(hit(&gw, get(&gw, p)).await, "b1", "{p}");
    }
    for p in ["/foobar", "/fo", "/barbaz", "/"] {
        assert_eq!(hit(&gw, get(&gw, p)).await, "404", "{p}");
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn path_match_order() {
    let bs = backends("b", 8).await;
    let spec = "  rules:
  - matches: [{path: {type: PathPrefix, value: /match}}]
    backendRefs: [{name: b0, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /match/prefix}}]
    backendRefs: [{name: b1, port: 80}]
  - matches: [{path: {type: Exact, value: /match/exact}}]
    backendRefs: [{name: b2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /match/exact}}]
    backendRefs: [{name: b3, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /match}, method: POST}]
    backendRefs: [{name: b4, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /match}, headers: [{name: x-a, value: '1'}]}]
    backendRefs: [{name: b5, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /match}, headers: [{name: x-a, value: '1'}, {name: x-b, value: '1'}]}]
    backendRefs: [{name: b6, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /match}, queryParams: [{name: q, value: '1'}]}]
    backendRefs: [{name: b7, port: 80}]
";
    let gw = setup(&bs, route("r", spec)).await;
    let cases: Vec<(TestRequest, &str)> = vec![
        (get(&gw, "/match/x"), "b0"),
        (get(&gw, "/match/prefix/x"), "b1"),
        (get(&gw, "/match/exact"), "b2"),
        (get(&gw, "/match/exact/x"), "b3"),
        (get(&gw, "/match/x").method("POST"), "b4"),
        (get(&gw, "/match/prefix/x").method("POST"), "b1"),
        (get(&gw, "/match/x").header("x-a", "1"), "b5"),
        (get(&gw, "/match/x").header("x-a", "1").header("x-b", "1"), "b6"),
        (get(&gw, "/match/x").method("POST").header("x-a", "1").header("x-b", "1"), "b4"),
        (get(&gw, "/match/x?q=1"), "b7"),
        (get(&gw, "/match/x?q=1").header("x-a", "1"), "b5"),
        (get(&gw, "/nomatch"), "404"),
    ];
    for (req, want) in cases {
        let what = format!("{} {} {:?}", req.method, req.url, req.headers);
        assert_eq!(hit(&gw, req).await, want, "{what}");
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn header_matching_exact_and_regex() {
    let bs = backends("b", 4).await;
    let spec = "  rules:
  - matches: [{headers: [{name: version, value: one}]}]
    backendRefs: [{name: b0, port: 80}]
  - matches: [{headers: [{name: version, value: two}]}]
    backendRefs: [{name: b1, port: 80}]
  - matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}]
    backendRefs: [{name: b2, port: 80}]
  - matches: [{headers: [{name: x-re, type: RegularExpression, value: '^v[0-9]+$'}]}]
    backendRefs: [{name: b3, port: 80}]
";
    let gw = setup(&bs, route("r", spec)).await;
    assert_eq!(hit(&gw, get(&gw, "/").header("version", "one")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/").header("Version", "two")).await, "b1", "header names are case-insensitive");
    assert_eq!(hit(&gw, get(&gw, "/").header("version", "two").header("color", "orange")).await, "b2");
    assert_eq!(hit(&gw, get(&gw, "/").header("version", "two").header("color", "blue")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/").header("color", "orange")).await, "404", "every header must match");
    assert_eq!(hit(&gw, get(&gw, "/").header("version", "ONE")).await, "404", "values are case-sensitive");
    assert_eq!(hit(&gw, get(&gw, "/").header("x-re", "v42")).await, "b3");
    assert_eq!(hit(&gw, get(&gw, "/").header("x-re", "version42")).await, "404");
    assert_eq!(hit(&gw, get(&gw, "/")).await, "404");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn regex_path_matching() {
    let bs = backends("b", 2).await;
    let spec = "  rules:
  - matches: [{path: {type: RegularExpression, value: '/users/[0-9]+'}}]
    backendRefs: [{name: b0, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /users}}]
    backendRefs: [{name: b1, port: 80}]
";
    let gw = setup(&bs, route("r", spec)).await;
    assert_eq!(hit(&gw, get(&gw, "/users/42")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/users/42?x=y")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/users/abc")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/users")).await, "b1");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn query_param_matching() {
    let bs = backends("b", 3).await;
    let spec = "  rules:
  - matches: [{queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: b0, port: 80}]
  - matches: [{queryParams: [{name: animal, value: dolphin}]}]
    backendRefs: [{name: b1, port: 80}]
  - matches: [{queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]}]
    backendRefs: [{name: b2, port: 80}]
";
    let gw = setup(&bs, route("r", spec)).await;
    assert_eq!(hit(&gw, get(&gw, "/?animal=whale")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/?animal=dolphin")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/?animal=dolphin&color=blue")).await, "b2");
    assert_eq!(hit(&gw, get(&gw, "/?color=blue&animal=dolphin")).await, "b2");
    assert_eq!(hit(&gw, get(&gw, "/?animal=dolphin&color=red")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/?animal=shark")).await, "404");
    assert_eq!(hit(&gw, get(&gw, "/?ANIMAL=whale")).await, "404", "query param names are case-sensitive");
    assert_eq!(hit(&gw, get(&gw, "/")).await, "404");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn method_matching() {
    let bs = backends("b", 3).await;
    let spec = "  rules:
  - matches: [{method: POST}]
    backendRefs: [{name: b0, port: 80}]
  - matches: [{method: GET}]
    backendRefs: [{name: b1, port: 80}]
  - matches: [{method: GET, headers: [{name: version, value: two}]}]
    backendRefs: [{name: b2, port: 80}]
";
    let gw = setup(&bs, route("r", spec)).await;
    assert_eq!(hit(&gw, get(&gw, "/").method("POST")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/").header("version", "two")).await, "b2");
    assert_eq!(hit(&gw, get(&gw, "/").method("POST").header("version", "two")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/").method("DELETE")).await, "404");
    assert_eq!(hit(&gw, get(&gw, "/").method("HEAD")).await, "404");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn matching_across_routes() {
    let bs = backends("b", 2).await;
    let routes = route(
        "r1",
        "  hostnames: [example.com, example.net]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: b0, port: 80}]\n",
    ) + &route(
        "r2",
        "  hostnames: [example.com]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n    backendRefs: [{name: b1, port: 80}]\n",
    );
    let gw = setup(&bs, routes).await;
    assert_eq!(hit(&gw, get(&gw, "/").host("example.com")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/example").host("example.net")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/v2").host("example.com")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/v2/example").host("example.com")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/").host("example.com").header("version", "two")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/v2").host("example.net")).await, "b0", "r2 does not serve example.net");
    assert_eq!(hit(&gw, get(&gw, "/").host("example.com:8080")).await, "b0", "the port of Host is ignored");
    assert_eq!(hit(&gw, get(&gw, "/").host("example.org")).await, "404");
    gw.gateway.stop().await;
}

/// A Gateway `gw` on `port` with one HTTP listener per (name, hostname); an empty hostname means none.
fn gateway_with_listeners(port: u16, listeners: &[(&str, &str)]) -> String {
    let mut out = format!(
        "apiVersion: {V1}\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: sessile\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n"
    );
    for (name, host) in listeners {
        out.push_str(&format!("  - name: {name}\n    protocol: HTTP\n    port: {port}\n"));
        if !host.is_empty() {
            out.push_str(&format!("    hostname: '{host}'\n"));
        }
        out.push_str("    allowedRoutes: {namespaces: {from: All}}\n");
    }
    out
}

#[tokio::test]
async fn listener_hostname_matching() {
    let bs = backends("b", 3).await;
    let port = free_port();
    let gwy = gateway_with_listeners(
        port,
        &[
            ("listener-1", "bar.com"),
            ("listener-2", "foo.bar.com"),
            ("listener-3", "*.bar.com"),
            ("listener-4", "*.foo.com"),
        ],
    );
    let sect = |name: &str, sections: &[&str], backend: &str| {
        let refs: Vec<String> = sections.iter().map(|s| format!("{{name: gw, sectionName: {s}}}")).collect();
        format!(
            "---\napiVersion: {V1}\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  parentRefs: [{}]\n  rules:\n  - backendRefs: [{{name: {backend}, port: 80}}]\n",
            refs.join(", ")
        )
    };
    let routes = sect("v1", &["listener-1"], "b0")
        + &sect("v2", &["listener-2"], "b1")
        + &sect("v3", &["listener-3", "listener-4"], "b2");
    let gw = gateway_with(port, &[("gw.yaml", gwy), ("svc.yaml", services(&bs)), ("routes.yaml", routes)]).await;
    let cases = [
        ("bar.com", "b0"),
        ("foo.bar.com", "b1"),
        ("baz.bar.com", "b2"),
        ("boo.bar.com", "b2"),
        ("multiple.prefixes.bar.com", "b2"),
        ("multiple.prefixes.foo.com", "b2"),
        ("foo.com", "404"),
        ("no.matching.host", "404"),
    ];
    for (host, want) in cases {
        assert_eq!(hit(&gw, get(&gw, "/").host(host)).await, want, "{host}");
    }
    let gws = gw.status_of("Gateway", "gw").await;
    let attached: Vec<(String, i64)> = gws["status"]["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_string(), l["attachedRoutes"].as_i64().unwrap()))
        .collect();
    for (name, n) in [("listener-1", 1), ("listener-2", 1), ("listener-3", 1), ("listener-4", 1)] {
        assert!(attached.contains(&(name.to_string(), n)), "{name} has {n} attached routes: {attached:?}");
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn hostname_intersection() {
    let bs = backends("b", 4).await;
    let port = free_port();
    let gwy =
        gateway_with_listeners(port, &[("specific", "very.specific.com"), ("wild", "*.wildcard.io"), ("any", "")]);
    let on = |name: &str, section: &str, spec: &str| {
        route(name, spec)
            .replace("parentRefs: [{name: gw}]", &format!("parentRefs: [{{name: gw, sectionName: {section}}}]"))
    };
    let routes = on(
        "specific",
        "specific",
        "  hostnames: [non.matching.com, '*.nonmatchingwildcard.io', very.specific.com]\n  rules:\n  - backendRefs: [{name: b0, port: 80}]\n",
    ) + &on(
        "wild",
        "wild",
        "  hostnames: [foo.wildcard.io, bar.wildcard.io]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /w}}]\n    backendRefs: [{name: b1, port: 80}]\n",
    ) + &route(
        "broad",
        "  hostnames: ['*.io']\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /b}}]\n    backendRefs: [{name: b2, port: 80}]\n",
    ) + &route(
        "fallback",
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /f}}]\n    backendRefs: [{name: b3, port: 80}]\n",
    );
    let gw = gateway_with(port, &[("gw.yaml", gwy), ("svc.yaml", services(&bs)), ("routes.yaml", routes)]).await;
    let cases = [
        ("very.specific.com", "/", "b0"),
        ("non.matching.com", "/", "404"),
        ("foo.nonmatchingwildcard.io", "/", "404"),
        ("foo.wildcard.io", "/w", "b1"),
        ("bar.wildcard.io", "/w", "b1"),
        ("baz.wildcard.io", "/w", "404"),
        // *.io intersected with *.wildcard.io is *.wildcard.io; with the hostname-less listener it stays *.io.
        ("baz.wildcard.io", "/b", "b2"),
        ("other.io", "/b", "b2"),
        // A route without hostnames takes the listener's hostname: on very.specific.com both routes
        // match with an exact hostname, so the longer prefix wins.
        ("very.specific.com", "/f", "b3"),
        ("anything.example", "/f", "b3"),
    ];
    for (host, path, want) in cases {
        assert_eq!(hit(&gw, get(&gw, path).host(host)).await, want, "{host}{path}");
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn weighted_backends_70_30_0() {
    let bs = backends("b", 3).await;
    let spec = "  rules:\n  - backendRefs:\n    - {name: b0, port: 80, weight: 70}\n    - {name: b1, port: 80, weight: 30}\n    - {name: b2, port: 80, weight: 0}\n";
    let gw = setup(&bs, route("r", spec)).await;
    let client = TestClient::http1();
    // Picks are random: a correct 70/30 split lands within 5 points ~98.5% of the time per round,
    // so (as the upstream conformance test does) a failing round is retried, up to 3 rounds.
    let mut last = String::new();
    let mut passed = false;
    for _round in 0..3 {
        let mut counts = std::collections::HashMap::<String, u32>::new();
        for _ in 0..500 {
            let resp = client.send(get(&gw, "/")).await.expect("request");
            assert_eq!(resp.status, 200);
            *counts.entry(resp.backend().expect("x-backend")).or_default() += 1;
        }
        let share = |name: &str| f64::from(counts.get(name).copied().unwrap_or(0)) * 100.0 / 500.0;
        assert_eq!(share("b2"), 0.0, "weight 0 gets nothing ({counts:?})");
        if (share("b0") - 70.0).abs() <= 5.0 && (share("b1") - 30.0).abs() <= 5.0 {
            passed = true;
            break;
        }
        last = format!("{counts:?}");
    }
    assert!(passed, "70/30 split not within 5 points in 3 rounds of 500; last: {last}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn weights_up_to_one_million() {
    let bs = backends("b", 2).await;
    let spec = "  rules:\n  - backendRefs:\n    - {name: b0, port: 80, weight: 1000000}\n    - {name: b1, port: 80, weight: 1}\n";
    let gw = setup(&bs, route("r", spec)).await;
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(parent_condition(&st, "Accepted")["status"], "True", "{st:#}");
    assert!(
        st["status"]["parents"][0]["conditions"].as_array().unwrap().iter().all(|c| c["type"] != "PartiallyInvalid")
    );
    let client = TestClient::http1();
    let mut to_b0 = 0;
    for _ in 0..50 {
        if client.send(get(&gw, "/")).await.unwrap().backend().as_deref() == Some("b0") {
            to_b0 += 1;
        }
    }
    assert!(to_b0 >= 49, "weight 1,000,000 against 1: {to_b0} of 50 to b0");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn no_backend_refs_is_500() {
    let bs = backends("b", 1).await;
    let spec =
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /none}}]\n  - backendRefs: [{name: b0, port: 80}]\n";
    let gw = setup(&bs, route("r", spec)).await;
    assert_eq!(hit(&gw, get(&gw, "/none")).await, "500");
    assert_eq!(hit(&gw, get(&gw, "/other")).await, "b0");
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(parent_condition(&st, "Accepted")["status"], "True");
    assert_eq!(parent_condition(&st, "ResolvedRefs")["status"], "True");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn nonexistent_backend_ref_is_500_and_backend_not_found() {
    let bs = backends("b", 1).await;
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /missing}}]\n    backendRefs: [{name: nonexistent, port: 80}]\n  - backendRefs: [{name: b0, port: 80}]\n";
    let gw = setup(&bs, route("r", spec)).await;
    assert_eq!(hit(&gw, get(&gw, "/missing")).await, "500");
    assert_eq!(hit(&gw, get(&gw, "/")).await, "b0");
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(parent_condition(&st, "Accepted")["status"], "True");
    let rr = parent_condition(&st, "ResolvedRefs");
    assert_eq!(rr["status"], "False");
    assert_eq!(rr["reason"], "BackendNotFound");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn invalid_backends_get_their_share_of_500s() {
    let bs = backends("b", 1).await;
    let spec = "  rules:\n  - backendRefs:\n    - {name: b0, port: 80, weight: 1}\n    - {name: nonexistent, port: 80, weight: 1}\n";
    let gw = setup(&bs, route("r", spec)).await;
    let client = TestClient::http1();
    let (mut ok, mut err) = (0, 0);
    for _ in 0..200 {
        match client.send(get(&gw, "/")).await.unwrap().status {
            200 => ok += 1,
            500 => err += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert!((70..=130).contains(&ok), "about half succeed: {ok} ok, {err} 500s");
    gw.gateway.stop().await;
}

fn cross_ns_route() -> String {
    route("r", "  rules:\n  - backendRefs: [{name: web, namespace: backends, port: 80}]\n")
}

fn grant(to_name: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: allow, namespace: backends}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}}]\n  to: [{{group: '', kind: Service, name: {to_name}}}]\n"
    )
}

#[tokio::test]
async fn cross_namespace_backend_ref_needs_a_reference_grant() {
    let b = sessile_testkit::start_backend("web").await.unwrap();
    let port = free_port();
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("backends", "web", &[&b])),
            ("grant.yaml", grant("someone-else")),
            ("routes.yaml", cross_ns_route()),
        ],
    )
    .await;
    assert_eq!(hit(&gw, get(&gw, "/")).await, "500");
    let st = gw.status_of("HTTPRoute", "r").await;
    let rr = parent_condition(&st, "ResolvedRefs");
    assert_eq!(rr["status"], "False");
    assert_eq!(rr["reason"], "RefNotPermitted");
    assert_eq!(parent_condition(&st, "Accepted")["status"], "True");

    // HTTPRouteReferenceGrant: a grant naming this Service allows it.
    gw.update("grant.yaml", &grant("web")).await;
    assert_eq!(hit(&gw, get(&gw, "/")).await, "web");
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(parent_condition(&st, "ResolvedRefs")["status"], "True", "{st:#}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn request_header_modifier() {
    let bs = backends("b", 1).await;
    let spec = "  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: add-appends-values}]
        remove: [X-Header-Remove]
    backendRefs: [{name: b0, port: 80}]
";
    let gw = setup(&bs, route("r", spec)).await;
    let resp = send(
        &gw,
        get(&gw, "/")
            .header("X-Header-Set", "some-other-value")
            .header("X-Header-Add", "add-existing")
            .header("X-Header-Remove", "gone")
            .header("X-Untouched", "kept"),
    )
    .await;
    assert_eq!(resp.status, 200);
    let h = &resp.json()["headers"];
    assert_eq!(h["x-header-set"], serde_json::json!(["set-overwrites-values"]));
    let added: Vec<String> =
        h["x-header-add"].as_array().expect("x-header-add").iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(added.join(","), "add-existing,add-appends-values");
    assert!(h.get("x-header-remove").is_none(), "removed header reached the backend: {h:#}");
    assert_eq!(h["x-untouched"], serde_json::json!(["kept"]));

    // Without the headers in the request, set and add both create them.
    let h = send(&gw, get(&gw, "/")).await.json()["headers"].clone();
    assert_eq!(h["x-header-set"], serde_json::json!(["set-overwrites-values"]));
    assert_eq!(h["x-header-add"], serde_json::json!(["add-appends-values"]));
    gw.gateway.stop().await;
}

#[tokio::test]
async fn response_header_modifier() {
    let opts = BackendOptions {
        response_headers: vec![
            ("x-header-set".into(), "original".into()),
            ("x-header-add".into(), "existing".into()),
            ("x-header-remove".into(), "present".into()),
        ],
        ..BackendOptions::default()
    };
    let b = sessile_testkit::start_backend_with("b0", opts).await.unwrap();
    let spec = "  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Header-Set, value: overwritten}]
        add: [{name: X-Header-Add, value: appended}]
        remove: [X-Header-Remove]
    backendRefs: [{name: b0, port: 80}]
";
    let gw = setup(std::slice::from_ref(&b), route("r", spec)).await;
    let resp = send(&gw, get(&gw, "/")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header_all("x-header-set"), vec!["overwritten"]);
    assert_eq!(resp.header_all("x-header-add").join(","), "existing,appended");
    assert!(resp.header("x-header-remove").is_none());
    assert_eq!(resp.backend().as_deref(), Some("b0"));
    gw.gateway.stop().await;
}

#[tokio::test]
async fn redirect_host_and_status() {
    let bs = backends("b", 1).await;
    let spec = "  rules:
  - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org}}]
  - backendRefs: [{name: b0, port: 80}]
";
    let gw = setup(&bs, route("r", spec)).await;
    let port = gw.port;
    let resp = send(&gw, get(&gw, "/hostname-redirect").host("example.com")).await;
    assert_eq!(resp.status, 302);
    // No scheme in the filter: the port is the listener's (not 80, so it is written).
    assert_eq!(resp.header("location"), Some(format!("http://example.org:{port}/hostname-redirect").as_str()));
    let resp = send(&gw, get(&gw, "/host-and-status?a=b").host("example.com")).await;
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some(format!("http://example.org:{port}/host-and-status?a=b").as_str()));
    // A scheme without a port uses the scheme's well-known port, which is left out.
    let resp = send(&gw, get(&gw, "/scheme").host("example.com")).await;
    assert_eq!(resp.status, 302);
    assert_eq!(resp.header("location"), Some("https://example.org/scheme"));
    assert!(resp.backend().is_none(), "a redirect never reaches the backend");
    assert_eq!(bs[0].hits(), 0);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn rewrite_path() {
    let bs = backends("b", 1).await;
    let spec = "  rules:
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: b0, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /strip}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: b0, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten.example, path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: b0, port: 80}]
";
    let gw = setup(&bs, route("r", spec)).await;
    let cases = [
        ("/prefix/one", "/one"),
        ("/prefix/one/", "/one/"),
        ("/prefix/one/two", "/one/two"),
        ("/prefix/one/two?q=1", "/one/two?q=1"),
        ("/strip", "/"),
        ("/strip/x", "/x"),
        ("/strip/x/y", "/x/y"),
        ("/full", "/one"),
        ("/full/path/ignored?k=v", "/one?k=v"),
    ];
    for (from, to) in cases {
        let resp = send(&gw, get(&gw, from)).await;
        assert_eq!(resp.status, 200, "{from}");
        assert_eq!(resp.json()["path"], to, "{from}");
    }
    let resp = send(&gw, get(&gw, "/full")).await;
    assert_eq!(resp.json()["authority"], "rewritten.example");
    assert_eq!(hit(&gw, get(&gw, "/prefix/onetwo")).await, "404");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn request_timeout_is_504_and_zero_disables() {
    let bs = backends("b", 1).await;
    let spec = "  rules:
  - matches: [{path: {type: PathPrefix, value: /limited}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: b0, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /unlimited}}]
    timeouts: {request: 0s}
    backendRefs: [{name: b0, port: 80}]
";
    let gw = setup(&bs, route("r", spec)).await;
    let resp = send(&gw, get(&gw, "/limited").header("x-delay-ms", "2000")).await;
    assert_eq!(resp.status, 504);
    let resp = send(&gw, get(&gw, "/limited")).await;
    assert_eq!(resp.status, 200);
    let resp = send(&gw, get(&gw, "/unlimited").header("x-delay-ms", "600")).await;
    assert_eq!(resp.status, 200, "0s disables the timeout");
    // The request timeout covers the response body too: a stream outliving it is cut short.
    let client = TestClient::http1();
    let cut = client.send(TestRequest::get(gw.url("/limited/stream?chunks=40"))).await;
    assert!(cut.is_err(), "a 800 ms stream must not complete under a 300 ms request timeout");
    let whole = client.send(TestRequest::get(gw.url("/unlimited/stream?chunks=40"))).await.unwrap();
    assert_eq!(whole.status, 200);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn no_ready_endpoints_is_503_with_retry_after() {
    let b = sessile_testkit::start_backend("b0").await.unwrap();
    let svc = "---\napiVersion: v1\nkind: Service\nmetadata: {name: b0, namespace: default}\nspec:\n  ports: [{name: http, port: 80}]\n"
        .to_string()
        + &endpoint_slice_yaml("default", "b0", &b, "gone");
    let port = free_port();
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", svc),
            ("routes.yaml", route("r", "  rules:\n  - backendRefs: [{name: b0, port: 80}]\n")),
        ],
    )
    .await;
    let resp = send(&gw, get(&gw, "/")).await;
    assert_eq!(resp.status, 503);
    assert!(resp.header("retry-after").is_some(), "503 without Retry-After: {:?}", resp.headers);
    assert_eq!(b.hits(), 0);
    gw.gateway.stop().await;
}

fn timed_route(ns: &str, name: &str, created: &str, backend: &str) -> String {
    format!(
        "---\napiVersion: {V1}\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: '{created}'}}\nspec:\n  parentRefs: [{{name: gw, namespace: default}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /same}}}}]\n    backendRefs: [{{name: {backend}, namespace: default, port: 80}}]\n"
    )
}

fn grant_all_from(ns: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: from-{ns}, namespace: default}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {ns}}}]\n  to: [{{group: '', kind: Service}}]\n"
    )
}

#[tokio::test]
async fn precedence_across_routes_oldest_then_namespace_name() {
    let bs = backends("b", 4).await;
    // Oldest wins, whatever the names.
    let routes = timed_route("default", "a-new", "2024-01-02T00:00:00Z", "b0")
        + &timed_route("default", "z-old", "2024-01-01T00:00:00Z", "b1");
    let gw = setup(&bs, routes).await;
    assert_eq!(hit(&gw, get(&gw, "/same")).await, "b1");
    // Same timestamp: alphabetical namespace/name; namespace first.
    let same = "2024-01-01T00:00:00Z";
    let routes = timed_route("default", "b", same, "b0")
        + &timed_route("default", "a", same, "b1")
        + &timed_route("aaa", "z", same, "b2")
        + &grant_all_from("aaa");
    gw.update("routes.yaml", &routes).await;
    assert_eq!(hit(&gw, get(&gw, "/same")).await, "b2", "aaa/z sorts before default/a");
    let routes = timed_route("default", "b", same, "b0") + &timed_route("default", "a", same, "b1");
    gw.update("routes.yaml", &routes).await;
    assert_eq!(hit(&gw, get(&gw, "/same")).await, "b1", "default/a sorts before default/b");
    // Rule order breaks the last tie inside one route.
    let two_rules = route(
        "only",
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /same}}]\n    backendRefs: [{name: b3, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /same}}]\n    backendRefs: [{name: b0, port: 80}]\n",
    );
    gw.update("routes.yaml", &two_rules).await;
    assert_eq!(hit(&gw, get(&gw, "/same")).await, "b3");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn backend_request_timeout_is_504() {
    let bs = backends("b", 1).await;
    let spec =
        "  rules:\n  - timeouts: {request: 4s, backendRequest: 300ms}\n    backendRefs: [{name: b0, port: 80}]\n";
    let gw = setup(&bs, route("r", spec)).await;
    assert_eq!(send(&gw, get(&gw, "/").header("x-delay-ms", "2000")).await.status, 504);
    assert_eq!(send(&gw, get(&gw, "/")).await.status, 200);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn all_weights_zero_is_500() {
    let bs = backends("b", 1).await;
    let spec = "  rules:\n  - backendRefs: [{name: b0, port: 80, weight: 0}]\n";
    let gw = setup(&bs, route("r", spec)).await;
    assert_eq!(hit(&gw, get(&gw, "/")).await, "500");
    assert_eq!(bs[0].hits(), 0);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn exact_hostname_beats_wildcard_and_hosts_are_case_insensitive() {
    let bs = backends("b", 2).await;
    let routes = route(
        "wild",
        "  hostnames: ['*.example.com']\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /long/path}}]\n    backendRefs: [{name: b0, port: 80}]\n",
    ) + &route(
        "exact",
        "  hostnames: [foo.example.com]\n  rules:\n  - backendRefs: [{name: b1, port: 80}]\n",
    );
    let gw = setup(&bs, routes).await;
    assert_eq!(hit(&gw, get(&gw, "/long/path").host("foo.example.com")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/long/path").host("FOO.Example.com")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/long/path").host("bar.example.com")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/long/path").host("example.com")).await, "404", "a wildcard needs a label");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn service_port_maps_to_endpoint_port_by_name() {
    let bs = backends("b", 2).await;
    let svc = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: multi, namespace: default}}\nspec:\n  ports: [{{name: a, port: 80}}, {{name: b, port: 81}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: multi-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: multi}}\naddressType: IPv4\nports: [{{name: b, port: {}}}, {{name: a, port: {}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n",
        bs[1].addr().port(),
        bs[0].addr().port()
    );
    let spec = "  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: multi, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /b}}]
    backendRefs: [{name: multi, port: 81}]
  - matches: [{path: {type: PathPrefix, value: /c}}]
    backendRefs: [{name: multi, port: 82}]
";
    let port = free_port();
    let gw =
        gateway_with(port, &[("gw.yaml", gateway_yaml(port)), ("svc.yaml", svc), ("routes.yaml", route("r", spec))])
            .await;
    assert_eq!(hit(&gw, get(&gw, "/a")).await, "b0");
    assert_eq!(hit(&gw, get(&gw, "/b")).await, "b1");
    assert_eq!(hit(&gw, get(&gw, "/c")).await, "500");
    let st = gw.status_of("HTTPRoute", "r").await;
    let rr = parent_condition(&st, "ResolvedRefs");
    assert_eq!((rr["status"].as_str(), rr["reason"].as_str()), (Some("False"), Some("BackendNotFound")), "{st:#}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn redirect_scheme_port_and_path() {
    let bs = backends("b", 1).await;
    let spec = "  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, port: 80, statusCode: 308, path: {type: ReplaceFullPath, replaceFullPath: /landing}}}]
";
    let gw = setup(&bs, route("r", spec)).await;
    let resp = send(&gw, get(&gw, "/old/x?q=1").host("site.example")).await;
    assert_eq!(resp.status, 302);
    assert_eq!(resp.header("location"), Some("https://site.example:8443/new/x?q=1"));
    let resp = send(&gw, get(&gw, "/full/anything").host("site.example")).await;
    assert_eq!(resp.status, 308);
    assert_eq!(resp.header("location"), Some("http://example.org/landing"), "port 80 with http is left out");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn endpoint_conditions_and_unnamed_ports() {
    let bs = backends("b", 3).await;
    // Unnamed Service port, unnamed slice port, endpoint without conditions (nil ready means ready).
    let plain = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: plain, namespace: default}}\nspec:\n  ports: [{{port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: plain-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: plain}}\naddressType: IPv4\nports: [{{port: {}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n",
        bs[0].addr().port()
    );
    // One ready and one draining endpoint: new requests only go to the ready one.
    let mixed = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: mixed, namespace: default}}\nspec:\n  ports: [{{name: http, port: 80}}]\n{}{}",
        endpoint_slice_yaml("default", "mixed", &bs[1], "ready"),
        endpoint_slice_yaml("default", "mixed", &bs[2], "draining")
    );
    // Only a draining endpoint: no ready endpoint, 503.
    let draining = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: draining, namespace: default}}\nspec:\n  ports: [{{name: http, port: 80}}]\n{}",
        endpoint_slice_yaml("default", "draining", &bs[2], "draining")
    );
    let spec = "  rules:
  - matches: [{path: {type: PathPrefix, value: /plain}}]
    backendRefs: [{name: plain, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mixed}}]
    backendRefs: [{name: mixed, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /draining}}]
    backendRefs: [{name: draining, port: 80}]
";
    let port = free_port();
    let gw = gateway_with(
        port,
        &[("gw.yaml", gateway_yaml(port)), ("svc.yaml", plain + &mixed + &draining), ("routes.yaml", route("r", spec))],
    )
    .await;
    assert_eq!(hit(&gw, get(&gw, "/plain")).await, "b0");
    for _ in 0..10 {
        assert_eq!(hit(&gw, get(&gw, "/mixed")).await, "b1");
    }
    let resp = send(&gw, get(&gw, "/draining")).await;
    assert_eq!(resp.status, 503);
    assert!(resp.header("retry-after").is_some());
    assert_eq!(bs[2].hits(), 0);
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(parent_condition(&st, "ResolvedRefs")["status"], "True", "{st:#}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn replace_prefix_match_table_from_the_spec() {
    let bs = backends("b", 1).await;
    // (prefix, replacement) per hostname; the table is the one in the HTTPPathModifier API docs.
    let combos =
        [("/foo", "/xyz"), ("/foo", "/xyz/"), ("/foo/", "/xyz"), ("/foo/", "/xyz/"), ("/foo", ""), ("/foo", "/")];
    let mut routes = String::new();
    for (i, (prefix, repl)) in combos.iter().enumerate() {
        routes += &route(
            &format!("c{i}"),
            &format!(
                "  hostnames: [c{i}.example]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: '{prefix}'}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: '{repl}'}}}}}}]\n    backendRefs: [{{name: b0, port: 80}}]\n"
            ),
        );
    }
    let gw = setup(&bs, routes).await;
    let table = [
        (0, "/foo/bar", "/xyz/bar"),
        (1, "/foo/bar", "/xyz/bar"),
        (2, "/foo/bar", "/xyz/bar"),
        (3, "/foo/bar", "/xyz/bar"),
        (0, "/foo", "/xyz"),
        (0, "/foo/", "/xyz/"),
        (4, "/foo/bar", "/bar"),
        (4, "/foo/", "/"),
        (4, "/foo", "/"),
        (5, "/foo/", "/"),
        (5, "/foo", "/"),
    ];
    for (i, from, to) in table {
        let resp = send(&gw, get(&gw, from).host(&format!("c{i}.example"))).await;
        assert_eq!(resp.status, 200, "c{i} {from}");
        assert_eq!(resp.json()["path"], to, "prefix {:?} replaced by {:?} on {from}", combos[i].0, combos[i].1);
    }
    gw.gateway.stop().await;
}
