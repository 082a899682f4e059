//! Resource statuses as the Gateway API defines them, read from the admin `/status` endpoint and
//! from `sessile check` (exit codes 0, 1 and 2).

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;
use sessile_testkit::{TestClient, TestRequest};

const V1: &str = "gateway.networking.k8s.io/v1";

fn route_in(ns: &str, name: &str, parent_refs: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: {V1}\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: {parent_refs}\n{spec}"
    )
}

fn simple_rules(backend: &str) -> String {
    format!("  rules:\n  - backendRefs: [{{name: {backend}, port: 80}}]\n")
}

/// The condition `ty` of the `parent`-th parent of a route status.
fn parent_condition(status: &Value, parent: usize, ty: &str) -> Value {
    conditions_find(&status["status"]["parents"][parent]["conditions"], ty)
        .unwrap_or_else(|| panic!("no {ty} condition in {status:#}"))
}

fn conditions_find(conditions: &Value, ty: &str) -> Option<Value> {
    conditions.as_array().and_then(|cs| cs.iter().find(|c| c["type"] == ty).cloned())
}

fn listener<'a>(gw_status: &'a Value, name: &str) -> &'a Value {
    gw_status["status"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == name))
        .unwrap_or_else(|| panic!("no listener {name} in {gw_status:#}"))
}

async fn get(gw: &TestGateway, path: &str) -> u16 {
    TestClient::http1().send(TestRequest::get(gw.url(path))).await.expect("request").status
}

/// Backends `b0..`, and a gateway with route `default/r` sending everything to Service `b0` (backed by `b0`).
async fn one_route_r(backends_n: usize) -> (Vec<sessile_testkit::TestBackend>, TestGateway) {
    let b = backends("b", backends_n).await;
    let port = free_port();
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "b0", &[&b[0]])),
            ("route.yaml", route_in("default", "r", "[{name: gw}]", &simple_rules("b0"))),
        ],
    )
    .await;
    (b, gw)
}

#[tokio::test]
async fn status_document_shape() {
    let (_backends, gw) = one_route_r(1).await;
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(st["apiVersion"], V1);
    assert_eq!(st["metadata"]["namespace"], "default");
    assert_eq!(st["metadata"]["generation"], 1);
    let parent = &st["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "sessile.dev/gateway-controller");
    assert_eq!(parent["parentRef"]["name"], "gw");
    let accepted = parent_condition(&st, 0, "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["reason"], "Accepted");
    assert!(accepted["lastTransitionTime"].is_string(), "{accepted:#}");
    let gws = gw.status_of("Gateway", "gw").await;
    assert_eq!(gws["kind"], "Gateway");
    assert!(gws["status"]["conditions"].is_array());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn no_matching_parent_for_missing_gateway_or_section() {
    let b = backends("b", 1).await;
    let port = free_port();
    let routes = route_in("default", "missing-gw", "[{name: nope}]", &simple_rules("b0"))
        + &route_in("default", "bad-section", "[{name: gw, sectionName: nope}]", &simple_rules("b0"))
        + &route_in("default", "bad-port", "[{name: gw, port: 1}]", &simple_rules("b0"));
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "b0", &[&b[0]])),
            ("routes.yaml", routes),
        ],
    )
    .await;
    for name in ["missing-gw", "bad-section", "bad-port"] {
        let st = gw.status_of("HTTPRoute", name).await;
        let c = parent_condition(&st, 0, "Accepted");
        assert_eq!(c["status"], "False", "{name}: {st:#}");
        assert_eq!(c["reason"], "NoMatchingParent", "{name}: {st:#}");
    }
    assert_eq!(get(&gw, "/").await, 404, "no route is attached");
    assert_eq!(b[0].hits(), 0);
    let gws = gw.status_of("Gateway", "gw").await;
    assert_eq!(listener(&gws, "http")["attachedRoutes"], 0);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn not_allowed_by_listeners_when_namespaces_same() {
    let b = backends("b", 1).await;
    let port = free_port();
    let gwy = gateway_yaml(port).replace("from: All", "from: Same");
    let other_svc = service_yaml("other", "b0", &[&b[0]]);
    let routes = route_in(
        "other",
        "foreign",
        "[{name: gw, namespace: default}]",
        "  hostnames: [foreign.example]\n  rules:\n  - backendRefs: [{name: b0, port: 80}]\n",
    ) + &route_in(
        "default",
        "local",
        "[{name: gw}]",
        "  hostnames: [local.example]\n  rules:\n  - backendRefs: [{name: b0, port: 80}]\n",
    );
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gwy),
            ("svc.yaml", service_yaml("default", "b0", &[&b[0]]) + &other_svc),
            ("routes.yaml", routes),
        ],
    )
    .await;
    let st = gw.status_of("HTTPRoute", "foreign").await;
    let c = parent_condition(&st, 0, "Accepted");
    assert_eq!(c["status"], "False", "{st:#}");
    assert_eq!(c["reason"], "NotAllowedByListeners");
    let st = gw.status_of("HTTPRoute", "local").await;
    assert_eq!(parent_condition(&st, 0, "Accepted")["status"], "True");
    let client = TestClient::http1();
    assert_eq!(client.send(TestRequest::get(gw.url("/")).host("foreign.example")).await.unwrap().status, 404);
    assert_eq!(client.send(TestRequest::get(gw.url("/")).host("local.example")).await.unwrap().status, 200);
    assert_eq!(listener(&gw.status_of("Gateway", "gw").await, "http")["attachedRoutes"], 1);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn not_allowed_by_listeners_when_kind_is_not_allowed() {
    let b = backends("b", 1).await;
    let port = free_port();
    let gwy = gateway_yaml(port).replace(
        "allowedRoutes: {namespaces: {from: All}}",
        "allowedRoutes: {namespaces: {from: All}, kinds: [{kind: GRPCRoute}]}",
    );
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gwy),
            ("svc.yaml", service_yaml("default", "b0", &[&b[0]])),
            ("route.yaml", route_in("default", "r", "[{name: gw}]", &simple_rules("b0"))),
        ],
    )
    .await;
    let st = gw.status_of("HTTPRoute", "r").await;
    let c = parent_condition(&st, 0, "Accepted");
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("NotAllowedByListeners")), "{st:#}");
    assert_eq!(get(&gw, "/").await, 404);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn no_matching_listener_hostname() {
    let b = backends("b", 1).await;
    let port = free_port();
    let gwy = gateway_yaml(port).replace("    port:", "    hostname: '*.example.com'\n    port:");
    let routes = route_in(
        "default",
        "elsewhere",
        "[{name: gw}]",
        "  hostnames: [bar.example.net]\n  rules:\n  - backendRefs: [{name: b0, port: 80}]\n",
    ) + &route_in(
        "default",
        "inside",
        "[{name: gw}]",
        "  hostnames: [foo.example.com]\n  rules:\n  - backendRefs: [{name: b0, port: 80}]\n",
    );
    let gw = gateway_with(
        port,
        &[("gw.yaml", gwy), ("svc.yaml", service_yaml("default", "b0", &[&b[0]])), ("routes.yaml", routes)],
    )
    .await;
    let st = gw.status_of("HTTPRoute", "elsewhere").await;
    let c = parent_condition(&st, 0, "Accepted");
    assert_eq!(c["status"], "False", "{st:#}");
    assert_eq!(c["reason"], "NoMatchingListenerHostname");
    assert_eq!(parent_condition(&gw.status_of("HTTPRoute", "inside").await, 0, "Accepted")["status"], "True");
    let client = TestClient::http1();
    assert_eq!(client.send(TestRequest::get(gw.url("/")).host("bar.example.net")).await.unwrap().status, 404);
    assert_eq!(client.send(TestRequest::get(gw.url("/")).host("foo.example.com")).await.unwrap().status, 200);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn invalid_backend_kind() {
    let port = free_port();
    let routes = route_in(
        "default",
        "r",
        "[{name: gw}]",
        "  rules:\n  - backendRefs: [{group: example.com, kind: Bucket, name: b, port: 80}]\n",
    );
    let gw = gateway_with(port, &[("gw.yaml", gateway_yaml(port)), ("routes.yaml", routes)]).await;
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(parent_condition(&st, 0, "Accepted")["status"], "True", "{st:#}");
    let rr = parent_condition(&st, 0, "ResolvedRefs");
    assert_eq!(rr["status"], "False");
    assert_eq!(rr["reason"], "InvalidKind");
    assert_eq!(get(&gw, "/").await, 500);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn partially_invalid_drops_only_the_bad_rule() {
    let b = backends("b", 1).await;
    let port = free_port();
    let rules = "  rules:
  - matches: [{path: {type: RegularExpression, value: '/bad/(unclosed'}}]
    backendRefs: [{name: b0, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /good}}]
    backendRefs: [{name: b0, port: 80}]
";
    let all_bad = "  rules:\n  - matches: [{headers: [{name: x, type: RegularExpression, value: '[z-a]'}]}]\n    backendRefs: [{name: b0, port: 80}]\n";
    let routes =
        route_in("default", "partly", "[{name: gw}]", rules) + &route_in("default", "wholly", "[{name: gw}]", all_bad);
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "b0", &[&b[0]])),
            ("routes.yaml", routes),
        ],
    )
    .await;
    let st = gw.status_of("HTTPRoute", "partly").await;
    assert_eq!(parent_condition(&st, 0, "Accepted")["status"], "True", "{st:#}");
    let pi = parent_condition(&st, 0, "PartiallyInvalid");
    assert_eq!(pi["status"], "True");
    assert_eq!(pi["reason"], "UnsupportedValue");
    let msg = pi["message"].as_str().unwrap();
    assert!(msg.starts_with("Dropped Rule"), "{msg}");
    assert!(msg.contains("Rule 0"), "the message names the dropped rule: {msg}");
    assert_eq!(get(&gw, "/good/x").await, 200);
    assert_eq!(get(&gw, "/bad/(unclosed").await, 404);

    let st = gw.status_of("HTTPRoute", "wholly").await;
    let accepted = parent_condition(&st, 0, "Accepted");
    assert_eq!(accepted["status"], "False", "a route whose every rule is invalid is not accepted: {st:#}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn observed_generation_everywhere() {
    let b = backends("b", 1).await;
    let port = free_port();
    let gwy = gateway_yaml(port)
        .replace("metadata: {name: gw, namespace: default}", "metadata: {name: gw, namespace: default, generation: 3}");
    let route = format!(
        "---\napiVersion: {V1}\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default, generation: 7}}\nspec:\n  parentRefs: [{{name: gw}}]\n{}",
        simple_rules("b0")
    );
    let gw = gateway_with(
        port,
        &[("gw.yaml", gwy), ("svc.yaml", service_yaml("default", "b0", &[&b[0]])), ("route.yaml", route)],
    )
    .await;
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(st["metadata"]["generation"], 7);
    let conds = st["status"]["parents"][0]["conditions"].as_array().unwrap();
    assert!(conds.len() >= 2);
    for c in conds {
        assert_eq!(c["observedGeneration"], 7, "{c:#}");
    }
    let gws = gw.status_of("Gateway", "gw").await;
    assert_eq!(gws["metadata"]["generation"], 3);
    for c in gws["status"]["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], 3, "{c:#}");
    }
    for c in listener(&gws, "http")["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], 3, "{c:#}");
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn gateway_listener_conditions_attached_routes_and_unsupported_protocol() {
    let b = backends("b", 1).await;
    let port = free_port();
    let tcp_port = free_port();
    let gwy = gateway_yaml(port) + &format!("  - name: tcp\n    protocol: TCP\n    port: {tcp_port}\n");
    let routes = route_in("default", "r1", "[{name: gw}]", &simple_rules("b0"))
        + &route_in("default", "r2", "[{name: gw, sectionName: http}]", &simple_rules("b0"))
        + &route_in("default", "r3", "[{name: nope}]", &simple_rules("b0"));
    let gw = gateway_with(
        port,
        &[("gw.yaml", gwy), ("svc.yaml", service_yaml("default", "b0", &[&b[0]])), ("routes.yaml", routes)],
    )
    .await;
    let gws = gw.status_of("Gateway", "gw").await;
    let gc = &gws["status"]["conditions"];
    let accepted = conditions_find(gc, "Accepted").expect("Accepted");
    assert_eq!(accepted["status"], "True", "{gws:#}");
    assert_eq!(accepted["reason"], "ListenersNotValid");
    assert_eq!(conditions_find(gc, "Programmed").expect("Programmed")["status"], "True");

    let http = listener(&gws, "http");
    assert_eq!(http["attachedRoutes"], 2, "{http:#}");
    for (ty, status, reason) in [
        ("Accepted", "True", "Accepted"),
        ("Programmed", "True", "Programmed"),
        ("ResolvedRefs", "True", "ResolvedRefs"),
        ("Conflicted", "False", "NoConflicts"),
    ] {
        let c = conditions_find(&http["conditions"], ty).unwrap_or_else(|| panic!("no {ty}: {http:#}"));
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some(status), Some(reason)), "{ty}");
    }
    let kinds: Vec<&str> =
        http["supportedKinds"].as_array().expect("supportedKinds").iter().filter_map(|k| k["kind"].as_str()).collect();
    assert!(kinds.contains(&"HTTPRoute"), "{kinds:?}");

    let tcp = listener(&gws, "tcp");
    let c = conditions_find(&tcp["conditions"], "Accepted").expect("tcp Accepted");
    assert_eq!(c["status"], "False", "{tcp:#}");
    assert_eq!(c["reason"], "UnsupportedProtocol");
    assert_eq!(tcp["attachedRoutes"], 0);
    assert_eq!(tcp["supportedKinds"], serde_json::json!([]), "{tcp:#}");
    assert_eq!(get(&gw, "/").await, 200);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn one_bad_document_does_not_stop_the_others() {
    let b = backends("b", 1).await;
    let port = free_port();
    let broken = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken}\nspec:\n  parentRefs: 12\n";
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "b0", &[&b[0]])),
            ("routes.yaml", broken.to_string() + &route_in("default", "good", "[{name: gw}]", &simple_rules("b0"))),
        ],
    )
    .await;
    assert_eq!(get(&gw, "/").await, 200);
    assert_eq!(parent_condition(&gw.status_of("HTTPRoute", "good").await, 0, "Accepted")["status"], "True");
    gw.gateway.stop().await;
}

// ---- sessile check ------------------------------------------------------------------------------

fn check(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sessile"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run sessile check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn static_service(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 9}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n"
    )
}

#[test]
fn check_exits_0_when_everything_is_accepted_without_binding() {
    let dir = TempDir::new("check-ok");
    // Hold the listener port: `check` must not try to bind it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    dir.write("gw.yaml", &gateway_yaml(port));
    dir.write("svc.yaml", &static_service("web"));
    dir.write("route.yaml", &route_in("default", "r", "[{name: gw}]", &simple_rules("web")));
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("HTTPRoute") && stdout.contains("Gateway"), "{stdout}");
    assert!(stdout.contains("Accepted"), "{stdout}");
}

#[test]
fn check_exits_1_when_a_resource_is_not_accepted() {
    let dir = TempDir::new("check-bad");
    let port = free_port();
    dir.write("gw.yaml", &gateway_yaml(port));
    dir.write("route.yaml", &route_in("default", "r", "[{name: gw}]", &simple_rules("missing")));
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("BackendNotFound"), "{stdout}");
}

#[test]
fn check_exits_1_and_names_file_and_document_for_a_bad_document() {
    let dir = TempDir::new("check-doc");
    let port = free_port();
    dir.write("gw.yaml", &gateway_yaml(port));
    dir.write("svc.yaml", &static_service("web"));
    let broken = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken}\nspec:\n  parentRefs: 12\n";
    dir.write("route.yaml", &(route_in("default", "good", "[{name: gw}]", &simple_rules("web")) + broken));
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("route.yaml"), "the error names the file: {stderr}");
    assert!(stderr.contains("broken"), "the error names the resource: {stderr}");
    assert!(stdout.contains("good"), "the good route still gets a status: {stdout}");
}

#[test]
fn check_exits_2_when_the_input_cannot_be_read() {
    let dir = TempDir::new("check-missing");
    let (code, _, stderr) = check(&dir.path().join("does-not-exist"));
    assert_eq!(code, 2, "{stderr}");
    assert!(!stderr.is_empty());
}

#[tokio::test]
async fn listener_conflicts_and_invalid_route_kinds() {
    let port = free_port();
    let gwy = format!(
        "apiVersion: {V1}\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: sessile\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: one, protocol: HTTP, port: {port}, hostname: a.example}}\n  - {{name: two, protocol: HTTP, port: {port}, hostname: a.example}}\n  - {{name: three, protocol: HTTP, port: {port}, hostname: b.example, allowedRoutes: {{kinds: [{{kind: TCPRoute}}]}}}}\n  - {{name: four, protocol: HTTP, port: {port}, hostname: c.example}}\n"
    );
    let gw = gateway_with(port, &[("gw.yaml", gwy)]).await;
    let gws = gw.status_of("Gateway", "gw").await;
    for name in ["one", "two"] {
        let c = conditions_find(&listener(&gws, name)["conditions"], "Conflicted").expect("Conflicted");
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("True"), Some("HostnameConflict")), "{gws:#}");
    }
    let c = conditions_find(&listener(&gws, "three")["conditions"], "ResolvedRefs").expect("ResolvedRefs");
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("InvalidRouteKinds")), "{gws:#}");
    assert_eq!(listener(&gws, "three")["supportedKinds"], serde_json::json!([]));
    let c = conditions_find(&listener(&gws, "four")["conditions"], "Conflicted").expect("Conflicted");
    assert_eq!(c["status"], "False");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn gateways_of_another_controller_are_left_alone() {
    let b = backends("b", 1).await;
    let port = free_port();
    let class = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: theirs}\nspec: {controllerName: example.com/other}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sessile}\nspec: {controllerName: sessile.dev/gateway-controller}\n";
    let other_port = free_port();
    let other = gateway_yaml(other_port)
        .replace("name: gw,", "name: other,")
        .replace("gatewayClassName: sessile", "gatewayClassName: theirs");
    let gw = gateway_with(
        port,
        &[
            ("class.yaml", class.to_string()),
            ("gw.yaml", gateway_yaml(port)),
            ("other.yaml", other),
            ("svc.yaml", service_yaml("default", "b0", &[&b[0]])),
            ("route.yaml", route_in("default", "r", "[{name: gw}, {name: other}]", &simple_rules("b0"))),
        ],
    )
    .await;
    let gc = gw.status_of("GatewayClass", "sessile").await;
    assert_eq!(conditions_find(&gc["status"]["conditions"], "Accepted").expect("Accepted")["status"], "True");
    let all = gw.status().await;
    assert!(
        !all.as_array().unwrap().iter().any(|s| s["metadata"]["name"] == "theirs"),
        "another controller's class gets no status from us: {all:#}"
    );
    let st = gw.status_of("HTTPRoute", "r").await;
    let parents = st["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 1, "only our parent gets an entry: {st:#}");
    assert_eq!(parents[0]["parentRef"]["name"], "gw");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", other_port)).await.is_err(), "their Gateway is not bound");
    assert_eq!(get(&gw, "/").await, 200);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn api_server_validation_drops_rules_it_would_reject() {
    let b = backends("b", 1).await;
    let port = free_port();
    let rules = "  rules:
  - matches: [{path: {type: PathPrefix, value: /twice}}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: '1'}]}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: '2'}]}}
    backendRefs: [{name: b0, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /p1}}, {path: {type: PathPrefix, value: /p2}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}}]
    backendRefs: [{name: b0, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /bad//path}}]
    backendRefs: [{name: b0, port: 80}]
  - timeouts: {request: 1s, backendRequest: 2s}
    backendRefs: [{name: b0, port: 80}]
  - backendRefs: [{name: b0, port: 80, weight: 1000001}]
  - matches: [{path: {type: PathPrefix, value: /ok}}]
    backendRefs: [{name: b0, port: 80}]
";
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "b0", &[&b[0]])),
            ("route.yaml", route_in("default", "r", "[{name: gw}]", rules)),
        ],
    )
    .await;
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(parent_condition(&st, 0, "Accepted")["status"], "True", "{st:#}");
    let pi = parent_condition(&st, 0, "PartiallyInvalid");
    let msg = pi["message"].as_str().unwrap();
    for i in 0..5 {
        assert!(msg.contains(&format!("Dropped Rule {i}")), "rule {i} should be dropped: {msg}");
    }
    assert!(!msg.contains("Dropped Rule 5"), "{msg}");
    assert_eq!(get(&gw, "/ok").await, 200);
    for p in ["/twice", "/p1", "/p2", "/"] {
        assert_eq!(get(&gw, p).await, 404, "{p} belongs to a dropped rule");
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn last_transition_time_moves_only_on_transitions() {
    let (b, gw) = one_route_r(2).await;
    let st = gw.status_of("HTTPRoute", "r").await;
    let t0 = parent_condition(&st, 0, "Accepted")["lastTransitionTime"].as_str().unwrap().to_string();
    let gw_t0 = listener(&gw.status_of("Gateway", "gw").await, "http")["conditions"][0]["lastTransitionTime"].clone();
    // Let the (second-resolution) clock move past t0, so a rewritten time would differ.
    sessile_testkit::eventually(std::time::Duration::from_secs(3), || async {
        let now = sessile_config::resources::format_timestamp(sessile_config::load::now_secs());
        anyhow::ensure!(now != t0, "same second");
        Ok(())
    })
    .await
    .unwrap();
    // Another endpoint: nothing transitions.
    gw.update("svc.yaml", &service_yaml("default", "b0", &[&b[1]])).await;
    let st = gw.status_of("HTTPRoute", "r").await;
    assert_eq!(parent_condition(&st, 0, "Accepted")["lastTransitionTime"], t0.as_str(), "{st:#}");
    assert_eq!(parent_condition(&st, 0, "ResolvedRefs")["lastTransitionTime"], t0.as_str(), "{st:#}");
    assert_eq!(listener(&gw.status_of("Gateway", "gw").await, "http")["conditions"][0]["lastTransitionTime"], gw_t0);
    // The Service disappears: ResolvedRefs transitions (new time), Accepted does not.
    gw.update("svc.yaml", "").await;
    let st = gw.status_of("HTTPRoute", "r").await;
    let rr = parent_condition(&st, 0, "ResolvedRefs");
    assert_eq!(rr["status"], "False");
    assert_ne!(rr["lastTransitionTime"], t0.as_str(), "{st:#}");
    assert_eq!(parent_condition(&st, 0, "Accepted")["lastTransitionTime"], t0.as_str());
    gw.gateway.stop().await;
}

#[test]
fn check_accepts_a_single_multi_document_file() {
    let dir = TempDir::new("check-file");
    let port = free_port();
    let all =
        gateway_yaml(port) + &static_service("web") + &route_in("default", "r", "[{name: gw}]", &simple_rules("web"));
    dir.write("all.yaml", &all);
    let (code, stdout, stderr) = check(&dir.path().join("all.yaml"));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("name: r"), "{stdout}");
}
