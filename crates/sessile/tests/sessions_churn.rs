//! Session persistence under endpoint churn and reloads (spec sections 8 and 9), beyond the
//! table rows in `sessions.rs`.

mod common;

use std::time::Duration;

use common::*;
use sessile_testkit::{CookieJar, TestBackend, TestClient, TestRequest, TestResponse, websocket_echo};

const SVC: &str = "[{name: svc, port: 80}]";

async fn simple_with(backends: &[TestBackend], persistence: &str, grace: Option<Duration>) -> TestGateway {
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let config = TempDir::new("config");
    let port = free_port();
    config.write("gw.yaml", &gateway_yaml(port));
    config.write("svc.yaml", &service_yaml("default", "svc", &refs));
    config.write("route.yaml", &route_yaml("r", None, &[rule_yaml("/", SVC, Some(persistence))]));
    start_gateway_with(config, TempDir::new("state"), port, |o| {
        if let Some(g) = grace {
            o.drain_grace = g;
        }
    })
    .await
}

async fn get(client: &TestClient, gw: &TestGateway, jar: &mut CookieJar) -> TestResponse {
    let resp = client.send_with_jar(TestRequest::get(gw.url("/")), jar).await.expect("request");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp
}

fn backend_of(resp: &TestResponse) -> String {
    resp.backend().expect("x-backend header")
}

/// An EndpointSlice for `backend` whose targetRef uid is `uid` (a new pod on the same address).
fn slice_with_uid(service: &str, backend: &TestBackend, uid: &str) -> String {
    endpoint_slice_yaml("default", service, backend, "ready")
        .replace(&format!("uid: uid-{}", backend.name()), &format!("uid: {uid}"))
}

#[tokio::test]
async fn address_reused_by_a_new_pod_does_not_inherit_sessions() {
    let b = backends("reuse", 2).await;
    let gw = simple_with(&b, "{sessionName: sid}", None).await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let first = get(&client, &gw, &mut jar).await;
    let pinned = backend_of(&first);
    let old_token = jar.get("sid").unwrap().to_string();
    let (reused, other) = if pinned == b[0].name() { (&b[0], &b[1]) } else { (&b[1], &b[0]) };
    // Same address, new pod identity.
    let svc = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: default}}\nspec:\n  ports: [{{name: http, port: 80}}]\n{}{}",
        slice_with_uid("svc", reused, "uid-new-pod"),
        endpoint_slice_yaml("default", "svc", other, "ready")
    );
    gw.update("svc.yaml", &svc).await;
    let resp = get(&client, &gw, &mut jar).await;
    let new = set_cookie_value(&resp, "sid").expect("the old pod's session is not inherited: new token");
    assert_ne!(new, old_token);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"endpoint-gone\""]), 1.0, "{m}");
    // The new session sticks.
    let now_pinned = backend_of(&resp);
    for _ in 0..5 {
        let resp = get(&client, &gw, &mut jar).await;
        assert_eq!(backend_of(&resp), now_pinned);
        assert!(resp.set_cookies().is_empty());
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn reloads_never_break_sessions_whose_endpoint_still_exists() {
    let b = backends("rl", 4).await;
    let gw = simple_with(&b[..3], "{sessionName: sid}", None).await;
    let client = TestClient::http1();
    let mut jars = Vec::new();
    for _ in 0..3 {
        let mut jar = CookieJar::new();
        let pinned = backend_of(&get(&client, &gw, &mut jar).await);
        jars.push((jar, pinned));
    }
    // Scale out, reorder, remove one endpoint, then an unrelated change: sessions stay put.
    let updates = [
        service_yaml("default", "svc", &[&b[3], &b[2], &b[1], &b[0]]),
        service_yaml("default", "svc", &[&b[1], &b[3], &b[2]]),
        service_yaml("default", "svc", &[&b[1], &b[3], &b[2]])
            .replace("name: http, port: 80}]", "name: http, port: 80}]\n  selector: {app: x}"),
    ];
    for svc in &updates {
        gw.update("svc.yaml", svc).await;
        for (jar, pinned) in &mut jars {
            let resp = get(&client, &gw, jar).await;
            assert_eq!(&backend_of(&resp), pinned, "a reload moved a session");
            assert!(resp.set_cookies().is_empty());
        }
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn departed_endpoint_loses_its_sessions_after_the_grace_period() {
    let b = backends("gr", 2).await;
    let gw = simple_with(&b, "{sessionName: sid}", Some(Duration::from_secs(1))).await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let pinned = backend_of(&get(&client, &gw, &mut jar).await);
    let stays = if pinned == b[0].name() { &b[1] } else { &b[0] };
    gw.update("svc.yaml", &service_yaml("default", "svc", &[stays])).await;
    assert_eq!(backend_of(&get(&client, &gw, &mut jar).await), pinned, "within the grace period");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let resp = get(&client, &gw, &mut jar).await;
    assert_eq!(backend_of(&resp), stays.name(), "after the grace period the session moves");
    assert!(set_cookie_value(&resp, "sid").is_some());
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"endpoint-gone\""]), 1.0, "{m}");
    assert_eq!(metric(&m, "sessile_session_repins_total", &[]), 1.0, "{m}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn draining_endpoint_that_stops_moves_its_sessions_without_errors() {
    let b = backends("dk", 2).await;
    let gw = simple_with(&b, "{sessionName: sid}", None).await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let pinned = backend_of(&get(&client, &gw, &mut jar).await);
    let (draining, ready) = if pinned == b[0].name() { (&b[0], &b[1]) } else { (&b[1], &b[0]) };
    gw.update("svc.yaml", &service_yaml_states("default", "svc", &[(draining, "draining"), (ready, "ready")])).await;
    assert_eq!(backend_of(&get(&client, &gw, &mut jar).await), pinned);
    draining.stop().await;
    let resp = get(&client, &gw, &mut jar).await;
    assert_eq!(backend_of(&resp), ready.name());
    assert!(set_cookie_value(&resp, "sid").is_some());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn no_endpoint_at_all_is_503_with_retry_after() {
    let b = backends("none", 2).await;
    let gw = simple_with(&b, "{sessionName: sid}", None).await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    get(&client, &gw, &mut jar).await;
    for x in &b {
        x.stop().await;
    }
    let resp = client.send_with_jar(TestRequest::get(gw.url("/")), &mut jar).await.unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.header("retry-after").is_some());
    // One endpoint is back: with every endpoint in its refused-connection back-off, they are
    // tried anyway (panic mode), so it serves at once, and the session moves there.
    b[1].restart().await.unwrap();
    let resp = client.send_with_jar(TestRequest::get(gw.url("/")), &mut jar).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(backend_of(&resp), b[1].name());
    assert!(set_cookie_value(&resp, "sid").is_some());
    assert_eq!(backend_of(&get(&client, &gw, &mut jar).await), b[1].name());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn websocket_to_a_killed_pinned_endpoint_repins_with_a_new_cookie() {
    let b = backends("wsk", 2).await;
    let gw = simple_with(&b, "{sessionName: sid}", None).await;
    let first = websocket_echo(gw.addr(), "localhost", "/ws", &[], "a").await.unwrap();
    let sc = first.header("set-cookie").unwrap().to_string();
    let cookie = sc.split(';').next().unwrap().to_string();
    let (pinned, _) = first.echoed.split_once(':').unwrap();
    b.iter().find(|x| x.name() == pinned).unwrap().stop().await;
    let again = websocket_echo(gw.addr(), "localhost", "/ws", &[("Cookie", &cookie)], "b").await.unwrap();
    assert_eq!(again.status, 101);
    assert!(!again.echoed.starts_with(&format!("{pinned}:")), "{}", again.echoed);
    let new = again.header("set-cookie").expect("re-pinned: new cookie on the 101");
    assert_ne!(new.split(';').next().unwrap(), cookie);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn policy_scopes_named_shared_across_routes_unnamed_per_rule() {
    let b = backends("pscope", 3).await;
    let named = backends("pnamed", 3).await;
    let gw = {
        let port = free_port();
        gateway_with(
            port,
            &[
                ("gw.yaml", gateway_yaml(port)),
                ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1], &b[2]])),
                ("named.yaml", service_yaml("default", "named", &[&named[0], &named[1], &named[2]])),
                ("p1.yaml", lb_policy_yaml("unnamed", None, "svc", "{absoluteTimeout: 1h}")),
                ("p2.yaml", lb_policy_yaml("named", None, "named", "{sessionName: shared}")),
                (
                    "r1.yaml",
                    route_yaml(
                        "r1",
                        None,
                        &[rule_yaml("/u1", SVC, None), rule_yaml("/n1", "[{name: named, port: 80}]", None)],
                    ),
                ),
                (
                    "r2.yaml",
                    route_yaml(
                        "r2",
                        None,
                        &[rule_yaml("/u2", SVC, None), rule_yaml("/n2", "[{name: named, port: 80}]", None)],
                    ),
                ),
            ],
        )
        .await
    };
    let client = TestClient::http1();
    // Unnamed policy: each rule has its own generated cookie.
    let mut names = Vec::new();
    for path in ["/u1", "/u2"] {
        let resp = client.send(TestRequest::get(gw.url(path))).await.unwrap();
        let sc = resp.set_cookies();
        let name = sc.iter().find_map(|c| c.split_once('=').map(|(n, _)| n.to_string())).expect("cookie");
        assert!(name.starts_with("sp-"), "{name}");
        names.push(name);
    }
    assert_ne!(names[0], names[1], "unnamed policy: the scope is each rule");
    // Named policy: one session across rules of different routes.
    let mut jar = CookieJar::new();
    let first = client.send_with_jar(TestRequest::get(gw.url("/n1")), &mut jar).await.unwrap();
    let pinned = backend_of(&first);
    for _ in 0..5 {
        for path in ["/n2", "/n1"] {
            let resp = client.send_with_jar(TestRequest::get(gw.url(path)), &mut jar).await.unwrap();
            assert_eq!(backend_of(&resp), pinned, "{path}");
            assert!(resp.set_cookies().is_empty(), "{path}");
        }
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn clock_skew_of_30s_between_replicas_is_tolerated() {
    let b = backends("skew", 3).await;
    let gw = simple_with(&b, "{sessionName: sid, idleTimeout: 10s}", None).await;
    let client = TestClient::http1();
    let first = client.send(TestRequest::get(gw.url("/"))).await.unwrap();
    let token = set_cookie_value(&first, "sid").unwrap();
    let ring = gw.gateway.shared.keys();
    let claims = sessile_session::open(&ring, &token).unwrap();
    let now = sessile_session::now_ms();
    // A replica whose clock is 20 s ahead minted this token: accepted.
    let ahead = sessile_session::Claims { created_ms: now + 20_000, refreshed_ms: now + 20_000, ..claims };
    let resp = client
        .send(TestRequest::get(gw.url("/")).header("cookie", &format!("sid={}", sessile_session::seal(&ring, &ahead))))
        .await
        .unwrap();
    assert_eq!(resp.backend(), first.backend());
    assert!(resp.set_cookies().is_empty(), "{:?}", resp.set_cookies());
    // A minute ahead is not skew: treated as invalid.
    let far = sessile_session::Claims { created_ms: now + 60_000, refreshed_ms: now + 60_000, ..claims };
    let resp = client
        .send(TestRequest::get(gw.url("/")).header("cookie", &format!("sid={}", sessile_session::seal(&ring, &far))))
        .await
        .unwrap();
    assert!(set_cookie_value(&resp, "sid").is_some());
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"invalid\""]), 1.0, "{m}");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn inserting_a_rule_above_does_not_break_existing_sessions() {
    let b = backends("ins", 3).await;
    let svc = "[{name: svc, port: 80}]";
    let port = free_port();
    let named_rule = |path: &str, name: &str, sp: &str| {
        rule_yaml(path, svc, Some(sp)).replacen("  - matches:", &format!("  - name: {name}\n    matches:"), 1)
    };
    let before =
        route_yaml("r", None, &[rule_yaml("/a", svc, Some("{sessionName: sid}")), named_rule("/b", "bee", "{}")]);
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1], &b[2]])),
            ("route.yaml", before),
        ],
    )
    .await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let a = client.send_with_jar(TestRequest::get(gw.url("/a")), &mut jar).await.unwrap();
    let b_resp = client.send_with_jar(TestRequest::get(gw.url("/b")), &mut jar).await.unwrap();
    let (pin_a, pin_b) = (backend_of(&a), backend_of(&b_resp));
    assert_eq!(jar.len(), 2);
    // A new rule is inserted first: the explicitly named session (rule 0 -> 1) and the
    // named rule with a generated session name (rule 1 -> 2) keep their sessions.
    let after = route_yaml(
        "r",
        None,
        &[
            rule_yaml("/new", svc, Some("{}")),
            rule_yaml("/a", svc, Some("{sessionName: sid}")),
            named_rule("/b", "bee", "{}"),
        ],
    );
    gw.update("route.yaml", &after).await;
    for _ in 0..5 {
        let resp = client.send_with_jar(TestRequest::get(gw.url("/a")), &mut jar).await.unwrap();
        assert_eq!(backend_of(&resp), pin_a);
        assert!(resp.set_cookies().is_empty(), "/a: {:?}", resp.set_cookies());
        let resp = client.send_with_jar(TestRequest::get(gw.url("/b")), &mut jar).await.unwrap();
        assert_eq!(backend_of(&resp), pin_b);
        assert!(resp.set_cookies().is_empty(), "/b: {:?}", resp.set_cookies());
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn conflict_winner_without_timestamps_survives_a_restart() {
    let b = backends("cw", 2).await;
    let svc = "[{name: svc, port: 80}]";
    let port = free_port();
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &[&b[0], &b[1]])),
            ("z.yaml", route_yaml("z-first", None, &[rule_yaml("/z", svc, Some("{sessionName: sid}"))])),
        ],
    )
    .await;
    // Make sure the newcomer is seen at least a second later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.update("a.yaml", &route_yaml("a-later", None, &[rule_yaml("/a", svc, Some("{sessionName: sid}"))])).await;
    let works = |gw: &TestGateway| {
        let url = gw.url("/z");
        async move { TestClient::http1().send(TestRequest::get(url)).await.unwrap().status }
    };
    assert_eq!(works(&gw).await, 200, "the first route keeps its name");
    let TestGateway { gateway, config, state, port } = gw;
    gateway.stop().await;
    let gw = start_gateway(config, state, port).await;
    assert_eq!(works(&gw).await, 200, "after a restart the winner must not change");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn h2c_upstream_pinned_endpoint_killed_repins() {
    let b = backends("h2up", 2).await;
    let refs: Vec<&TestBackend> = b.iter().collect();
    let port = free_port();
    let svc = service_yaml("default", "svc", &refs)
        .replace("{name: http, port: 80}", "{name: http, port: 80, appProtocol: kubernetes.io/h2c}");
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", svc),
            ("route.yaml", route_yaml("r", None, &[rule_yaml("/", SVC, Some("{sessionName: sid}"))])),
        ],
    )
    .await;
    let client = TestClient::h2c();
    let mut jar = CookieJar::new();
    let first = get(&client, &gw, &mut jar).await;
    assert_eq!(first.json()["version"], "HTTP/2", "{}", first.text());
    let pinned = backend_of(&first);
    assert_eq!(backend_of(&get(&client, &gw, &mut jar).await), pinned);
    b.iter().find(|x| x.name() == pinned).unwrap().stop().await;
    let resp = get(&client, &gw, &mut jar).await;
    assert_ne!(backend_of(&resp), pinned);
    assert!(set_cookie_value(&resp, "sid").is_some());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn h2_clients_may_split_cookies_across_header_fields() {
    let b = backends("split", 3).await;
    let gw = simple_with(&b, "{sessionName: sid}", None).await;
    let client = TestClient::h2c();
    let first = client.send(TestRequest::get(gw.url("/"))).await.unwrap();
    let token = set_cookie_value(&first, "sid").unwrap();
    for _ in 0..5 {
        let req = TestRequest::get(gw.url("/"))
            .header("cookie", "a=1")
            .header("cookie", &format!("sid={token}"))
            .header("cookie", "b=2");
        let resp = client.send(req).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.backend(), first.backend());
        assert!(resp.set_cookies().is_empty());
    }
    gw.gateway.stop().await;
}

#[tokio::test]
async fn h2_split_cookies_reach_an_http1_backend_as_one_field() {
    let b = backends("join", 1).await;
    let gw = simple_with(&b, "{sessionName: sid}", None).await;
    let req = TestRequest::get(gw.url("/")).header("cookie", "a=1").header("cookie", "b=2");
    let resp = TestClient::h2c().send(req).await.unwrap();
    assert_eq!(resp.json()["headers"]["cookie"], serde_json::json!(["a=1; b=2"]), "RFC 9113 section 8.2.3");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn generated_key_ring_is_private_to_the_gateway() {
    use std::os::unix::fs::PermissionsExt;
    let b = backends("kr", 1).await;
    let gw = simple_with(&b, "{}", None).await;
    let path = gw.state.path().join(sessile_session::KEY_FILE_NAME);
    let mode = std::fs::metadata(&path).expect("key ring stored in the state directory").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let ring = sessile_session::KeyRing::load(&path).unwrap();
    assert_eq!(ring.current_key_id(), gw.gateway.shared.keys().current_key_id());
    gw.gateway.stop().await;
}

#[tokio::test]
async fn token_minted_for_a_draining_endpoint_after_the_drain_began_is_refused() {
    let b = backends("dn", 2).await;
    let gw = simple_with(&b, "{sessionName: sid}", None).await;
    let client = TestClient::http1();
    let mut jar = CookieJar::new();
    let pinned = backend_of(&get(&client, &gw, &mut jar).await);
    let token = jar.get("sid").unwrap().to_string();
    let (draining, ready) = if pinned == b[0].name() { (&b[0], &b[1]) } else { (&b[1], &b[0]) };
    gw.update("svc.yaml", &service_yaml_states("default", "svc", &[(draining, "draining"), (ready, "ready")])).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another replica (clock just under 30 s ahead) pinned a new session there after the drain began.
    let ring = gw.gateway.shared.keys();
    let claims = sessile_session::open(&ring, &token).unwrap();
    let late = sessile_session::now_ms() + 29_900;
    let minted =
        sessile_session::seal(&ring, &sessile_session::Claims { created_ms: late, refreshed_ms: late, ..claims });
    let resp = client.send(TestRequest::get(gw.url("/")).header("cookie", &format!("sid={minted}"))).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(backend_of(&resp), ready.name(), "new sessions never go to a draining endpoint");
    assert!(set_cookie_value(&resp, "sid").is_some());
    // The session that existed before the drain keeps going there.
    let resp = get(&client, &gw, &mut jar).await;
    assert_eq!(backend_of(&resp), pinned);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sessile_session_rejected_total", &["reason=\"endpoint-draining-new\""]), 1.0, "{m}");
    gw.gateway.stop().await;
}
