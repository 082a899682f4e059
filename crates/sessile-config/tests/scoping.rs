//! Session scoping and conflict resolution through the pure `translate()` (spec sections 1-3, 10).

use std::sync::Arc;

use sessile_config::{Loader, TranslateOptions, translate};
use sessile_core::{Rule, SessionCarrier, SessionSource};

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: sessile
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: v1}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: v2}
spec: {ports: [{name: http, port: 80}]}
"#;

fn run(extra: &str) -> (Vec<Arc<Rule>>, serde_json::Value) {
    let mut loader = Loader::new();
    let loaded = loader.load_str("test.yaml", &format!("{BASE}---\n{extra}"));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let t = translate(
        &loaded.resources,
        &TranslateOptions { naming_salt: b"test-salt-0123456789".to_vec(), ..Default::default() },
    );
    let mut rules = t.snapshot.ports.first().map(|p| p.routes.rules()).unwrap_or_default();
    rules.sort_by(|a, b| a.label.cmp(&b.label));
    (rules, serde_json::to_value(&t.statuses).unwrap())
}

fn rule<'a>(rules: &'a [Arc<Rule>], label: &str) -> &'a Rule {
    rules.iter().find(|r| &*r.label == label).unwrap_or_else(|| panic!("no rule {label}"))
}

fn status<'a>(statuses: &'a serde_json::Value, kind: &str, name: &str) -> &'a serde_json::Value {
    statuses.as_array().unwrap().iter().find(|s| s["kind"] == kind && s["metadata"]["name"] == name).unwrap()
}

fn condition<'a>(conds: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    conds.as_array()?.iter().find(|c| c["type"] == kind)
}

fn cookie_name(r: &Rule) -> String {
    match &r.session.as_ref().expect("rule has persistence").carrier {
        SessionCarrier::Cookie { name, .. } => name.clone(),
        SessionCarrier::Header { name } => name.to_string(),
    }
}

fn route(name: &str, created: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}"
    )
}

#[test]
fn rule_scope_never_shares_between_rules() {
    let rules = "  - matches: [{path: {value: /a}}]\n    backendRefs: [{name: v1, port: 80}]\n    sessionPersistence: {}\n  - matches: [{path: {value: /b}}]\n    backendRefs: [{name: v1, port: 80}]\n    sessionPersistence: {}\n";
    let (rules, _) = run(&route("r", "2024-01-01T00:00:00Z", rules));
    let (a, b) = (rule(&rules, "default/r/0"), rule(&rules, "default/r/1"));
    let (sa, sb) = (a.session.as_ref().unwrap(), b.session.as_ref().unwrap());
    assert_ne!(sa.scope, sb.scope);
    assert_ne!(cookie_name(a), cookie_name(b));
    for name in [cookie_name(a), cookie_name(b)] {
        assert!(name.starts_with("sp-") && name.len() == 13, "{name}");
        assert!(name[3..].chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    }
}

#[test]
fn named_policy_is_shared_across_rules_weight_zero_case() {
    let policy = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {name: lb}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: v1}]\n  sessionPersistence: {sessionName: shared}\n";
    let routes = "  - matches: [{path: {value: /a}}]\n    backendRefs: [{name: v1, port: 80}]\n  - matches: [{path: {value: /b}}]\n    backendRefs: [{name: v1, port: 80, weight: 0}, {name: v2, port: 80, weight: 100}]\n";
    let (rules, statuses) = run(&format!("{policy}---\n{}", route("r", "2024-01-01T00:00:00Z", routes)));
    let (a, b) = (rule(&rules, "default/r/0"), rule(&rules, "default/r/1"));
    assert_eq!(
        a.session.as_ref().unwrap().scope,
        b.session.as_ref().unwrap().scope,
        "/a and /b share the named session"
    );
    assert_eq!(cookie_name(a), "shared");
    assert!(matches!(a.session.as_ref().unwrap().source, SessionSource::Policy { .. }));
    let p = status(&statuses, "BackendLBPolicy", "lb");
    let accepted = condition(&p["status"]["ancestors"][0]["conditions"], "Accepted").unwrap();
    assert_eq!(accepted["status"], "True");
    assert!(accepted["message"].as_str().unwrap().contains("all their backends"), "{accepted}");
}

#[test]
fn unnamed_policy_scopes_each_rule() {
    let policy = "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackendTrafficPolicy\nmetadata: {name: tp}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: v1}]\n  sessionPersistence: {type: Header}\n";
    let routes = "  - matches: [{path: {value: /a}}]\n    backendRefs: [{name: v1, port: 80}]\n  - matches: [{path: {value: /b}}]\n    backendRefs: [{name: v1, port: 80}]\n";
    let (rules, _) = run(&format!("{policy}---\n{}", route("r", "2024-01-01T00:00:00Z", routes)));
    let (a, b) = (rule(&rules, "default/r/0"), rule(&rules, "default/r/1"));
    assert_ne!(a.session.as_ref().unwrap().scope, b.session.as_ref().unwrap().scope);
    assert!(matches!(a.session.as_ref().unwrap().carrier, SessionCarrier::Header { .. }));
}

#[test]
fn route_rule_overrides_policy_and_policy_status_says_so() {
    let policy = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {name: lb}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: v1}]\n  sessionPersistence: {sessionName: from-policy}\n";
    let routes =
        "  - backendRefs: [{name: v1, port: 80}]\n    sessionPersistence: {sessionName: from-rule, type: Header}\n";
    let (rules, statuses) = run(&format!("{policy}---\n{}", route("r", "2024-01-01T00:00:00Z", routes)));
    let r = rule(&rules, "default/r/0");
    assert_eq!(cookie_name(r), "from-rule");
    assert!(matches!(r.session.as_ref().unwrap().source, SessionSource::RouteRule { .. }));
    let p = status(&statuses, "BackendLBPolicy", "lb");
    let msg = condition(&p["status"]["ancestors"][0]["conditions"], "Accepted").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("overridden by HTTPRoute default/r rule 0"), "{msg}");
}

#[test]
fn older_route_wins_a_cookie_name_conflict() {
    let rules = "  - backendRefs: [{name: v1, port: 80}]\n    sessionPersistence: {sessionName: same}\n";
    let newer = route("newer", "2024-06-01T00:00:00Z", &rules.replace("v1", "v2"));
    let older =
        route("older", "2024-01-01T00:00:00Z", rules).replace("rules:\n", "hostnames: [a.example.com]\n  rules:\n");
    let (rules, statuses) = run(&format!("{newer}---\n{older}"));
    assert_eq!(cookie_name(rule(&rules, "default/older/0")), "same");
    assert!(rules.iter().all(|r| &*r.label != "default/newer/0"), "the losing rule is dropped");
    let parent = &status(&statuses, "HTTPRoute", "newer")["status"]["parents"][0]["conditions"];
    let pi = condition(parent, "PartiallyInvalid").unwrap();
    assert_eq!(pi["status"], "True");
    assert_eq!(pi["reason"], "UnsupportedValue");
    let msg = pi["message"].as_str().unwrap();
    assert!(msg.starts_with("Dropped Rule 0") && msg.contains("HTTPRoute default/older rule 0"), "{msg}");
    let older_parent = &status(&statuses, "HTTPRoute", "older")["status"]["parents"][0]["conditions"];
    assert!(condition(older_parent, "PartiallyInvalid").is_none(), "the winner is undisturbed");
}

#[test]
fn disjoint_hostnames_do_not_conflict() {
    let rules = "  - backendRefs: [{name: v1, port: 80}]\n    sessionPersistence: {sessionName: same}\n";
    let a = route("a", "2024-01-01T00:00:00Z", rules).replace("rules:\n", "hostnames: [a.example.com]\n  rules:\n");
    let b = route("b", "2024-02-01T00:00:00Z", rules).replace("rules:\n", "hostnames: [b.example.com]\n  rules:\n");
    let (rules, _) = run(&format!("{a}---\n{b}"));
    assert_eq!(rules.len(), 2);
}

#[test]
fn older_policy_wins_and_loser_is_conflicted() {
    let p = |name: &str, created: &str, svc: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: {svc}}}]\n  sessionPersistence: {{sessionName: {name}-session}}\n"
        )
    };
    let routes = "  - backendRefs: [{name: v1, port: 80}]\n";
    let (rules, statuses) = run(&format!(
        "{}---\n{}---\n{}",
        p("young", "2024-05-01T00:00:00Z", "v1"),
        p("old", "2024-01-01T00:00:00Z", "v1"),
        route("r", "2024-01-01T00:00:00Z", routes)
    ));
    assert_eq!(cookie_name(rule(&rules, "default/r/0")), "old-session");
    let young =
        condition(&status(&statuses, "BackendLBPolicy", "young")["status"]["ancestors"][0]["conditions"], "Accepted")
            .unwrap()
            .clone();
    assert_eq!(young["status"], "False");
    assert_eq!(young["reason"], "Conflicted");
}

#[test]
fn rule_beats_policy_with_the_same_name() {
    let policy = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {name: lb, creationTimestamp: \"2020-01-01T00:00:00Z\"}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: v2}]\n  sessionPersistence: {sessionName: same}\n";
    let routes = "  - matches: [{path: {value: /x}}]\n    backendRefs: [{name: v1, port: 80}]\n    sessionPersistence: {sessionName: same}\n  - matches: [{path: {value: /y}}]\n    backendRefs: [{name: v2, port: 80}]\n";
    let (rules, statuses) = run(&format!("{policy}---\n{}", route("r", "2024-01-01T00:00:00Z", routes)));
    assert_eq!(cookie_name(rule(&rules, "default/r/0")), "same");
    assert!(rule(&rules, "default/r/1").session.is_none(), "the conflicted policy is not applied");
    let c = condition(&status(&statuses, "BackendLBPolicy", "lb")["status"]["ancestors"][0]["conditions"], "Accepted")
        .unwrap()
        .clone();
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("Conflicted")));
}

#[test]
fn invalid_persistence_drops_only_that_rule() {
    let routes = "  - matches: [{path: {value: /bad}}]\n    backendRefs: [{name: v1, port: 80}]\n    sessionPersistence: {cookieConfig: {lifetimeType: Permanent}}\n  - matches: [{path: {value: /good}}]\n    backendRefs: [{name: v1, port: 80}]\n";
    let (rules, statuses) = run(&route("r", "2024-01-01T00:00:00Z", routes));
    assert_eq!(rules.len(), 1);
    assert_eq!(&*rules[0].label, "default/r/1");
    let parent = &status(&statuses, "HTTPRoute", "r")["status"]["parents"][0]["conditions"];
    assert_eq!(condition(parent, "Accepted").unwrap()["status"], "True");
    let msg = condition(parent, "PartiallyInvalid").unwrap()["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Dropped Rule 0: spec.rules[0].sessionPersistence: AbsoluteTimeout must be specified"),
        "{msg}"
    );
}

#[test]
fn invalid_policy_is_not_accepted() {
    let policy = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {name: lb}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: v1}]\n  sessionPersistence: {absoluteTimeout: forever}\n";
    let missing = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {name: nowhere}\nspec:\n  targetRef: {group: \"\", kind: Service, name: ghost}\n  sessionPersistence: {}\n";
    let (_, statuses) = run(&format!("{policy}---\n{missing}"));
    let c = condition(&status(&statuses, "BackendLBPolicy", "lb")["status"]["ancestors"][0]["conditions"], "Accepted")
        .unwrap()
        .clone();
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("Invalid")));
    assert!(c["message"].as_str().unwrap().contains("absoluteTimeout"));
    let c =
        condition(&status(&statuses, "BackendLBPolicy", "nowhere")["status"]["ancestors"][0]["conditions"], "Accepted")
            .unwrap()
            .clone();
    assert_eq!(c["reason"], "TargetNotFound");
}
