//! `deploy/`: the Helm chart renders (with a documented subset renderer, as no helm binary is available
//! here) to exactly `deploy/manifests/sessile.yaml`, and every manifest document deserializes into its
//! k8s-openapi / gateway-api type without losing a field. RBAC covers what the controller does.
//!
//! `SESSILE_BLESS=1 cargo test -p sessile-kube --test deploy` rewrites `deploy/manifests/sessile.yaml`
//! from the chart after a chart change.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const RELEASE: &str = "sessile";
const NAMESPACE: &str = "sessile-system";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("valid YAML")
}

/// The template subset the chart may use: `{{ .Values.a.b }}`, `{{ .Release.Name }}`,
/// `{{ .Release.Namespace }}` and `{{ .Chart.AppVersion }}`, each with single spaces inside the braces.
/// Anything else fails the test, which keeps the chart within what this renderer and helm agree on.
fn render(template: &str, values: &Value, chart: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or("unclosed {{")? + start;
        let expr = &rest[start + 2..end];
        let inner = expr
            .strip_prefix(' ')
            .and_then(|e| e.strip_suffix(' '))
            .ok_or(format!("{{{{{expr}}}}}: use {{{{ x }}}}"))?;
        let value = match inner {
            ".Release.Name" => Value::from(RELEASE),
            ".Release.Namespace" => Value::from(NAMESPACE),
            ".Chart.AppVersion" => chart["appVersion"].clone(),
            path if path.starts_with(".Values.") => {
                let mut v = values;
                for part in path[".Values.".len()..].split('.') {
                    v = v.get(part).ok_or(format!("{path}: no such value"))?;
                }
                v.clone()
            }
            other => return Err(format!("template construct {other:?} is outside the supported subset")),
        };
        match value {
            Value::String(s) => out.push_str(&s),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::Bool(b) => out.push_str(&b.to_string()),
            other => return Err(format!("{inner} is not a scalar: {other}")),
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn rendered_chart() -> String {
    let chart_dir = deploy_dir().join("helm/sessile");
    let values = yaml(&read(&chart_dir.join("values.yaml")));
    let chart = yaml(&read(&chart_dir.join("Chart.yaml")));
    let mut templates: Vec<PathBuf> = std::fs::read_dir(chart_dir.join("templates"))
        .expect("templates")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    templates.sort();
    let mut out = String::from(
        "# Generated from deploy/helm/sessile with its default values (release sessile, namespace sessile-system).\n\
         # Do not edit: change the chart, then run `SESSILE_BLESS=1 cargo test -p sessile-kube --test deploy`.\n",
    );
    for t in templates {
        let name = t.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let text = render(&read(&t), &values, &chart).unwrap_or_else(|e| panic!("templates/{name}: {e}"));
        out.push_str(&format!("---\n# Source: sessile/templates/{name}\n{text}"));
    }
    out
}

#[test]
fn manifests_are_the_rendered_chart() {
    let rendered = rendered_chart();
    let path = deploy_dir().join("manifests/sessile.yaml");
    if std::env::var_os("SESSILE_BLESS").is_some() {
        std::fs::write(&path, &rendered).expect("write manifests");
    }
    let on_disk = read(&path);
    assert!(
        on_disk == rendered,
        "deploy/manifests/sessile.yaml is not the rendered chart; run `SESSILE_BLESS=1 cargo test -p sessile-kube --test deploy`"
    );
}

#[test]
fn the_renderer_rejects_what_it_does_not_support() {
    let values = yaml("a: {b: 1}\n");
    assert_eq!(render("x: {{ .Values.a.b }}", &values, &Value::Null).unwrap(), "x: 1");
    assert!(render("{{ if .Values.a }}", &values, &Value::Null).is_err());
    assert!(render("{{- .Values.a.b }}", &values, &Value::Null).is_err());
    assert!(render("{{ .Values.a.c }}", &values, &Value::Null).is_err());
}

/// Deserializes into `T` and serializes back: a misspelt or misplaced field would be dropped and differ.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc:#}"));
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(back, *doc, "{} {} does not round-trip", doc["kind"], doc["metadata"]["name"]);
}

fn documents() -> Vec<Value> {
    let mut docs = Vec::new();
    let dir = deploy_dir().join("manifests");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("manifests").map(|e| e.expect("entry").path()).collect();
    files.sort();
    for f in files {
        for (_, doc) in sessile_config::load::split_documents(&read(&f)) {
            let v = yaml(doc);
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

#[test]
fn every_manifest_is_a_valid_object() {
    use k8s_openapi::api::{apps, core, policy, rbac};
    let docs = documents();
    let mut kinds: Vec<String> = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        match kind {
            "Namespace" => round_trip::<core::v1::Namespace>(doc),
            "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(doc),
            "Service" => round_trip::<core::v1::Service>(doc),
            "ClusterRole" => round_trip::<rbac::v1::ClusterRole>(doc),
            "ClusterRoleBinding" => round_trip::<rbac::v1::ClusterRoleBinding>(doc),
            "Role" => round_trip::<rbac::v1::Role>(doc),
            "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(doc),
            "Deployment" => round_trip::<apps::v1::Deployment>(doc),
            "PodDisruptionBudget" => round_trip::<policy::v1::PodDisruptionBudget>(doc),
            "GatewayClass" => {
                let _: gateway_api::experimental::gatewayclasses::GatewayClass =
                    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("GatewayClass: {e}"));
                assert_eq!(doc["spec"]["controllerName"], sessile_config::CONTROLLER_NAME);
            }
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind.to_string());
    }
    kinds.sort();
    let want = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "GatewayClass",
        "Namespace",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(kinds, want);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
}

/// Every verb the controller uses is granted, and nothing more on Secrets and Leases.
#[test]
fn rbac_covers_the_controller() {
    let docs = documents();
    let rules = |kind: &str| -> Vec<Value> {
        let doc = docs.iter().find(|d| d["kind"] == kind).expect("role present");
        doc["rules"].as_array().cloned().unwrap_or_default()
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let grants = |rules: &[Value], group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            list(&r["apiGroups"]).iter().any(|g| g == group)
                && list(&r["resources"]).iter().any(|x| x == resource)
                && list(&r["verbs"]).iter().any(|v| v == verb)
        })
    };
    let cluster = rules("ClusterRole");
    for kind in sessile_kube::kinds::WATCHED {
        for verb in ["list", "watch"] {
            assert!(grants(&cluster, kind.group, kind.plural, verb), "{verb} {}", kind.plural);
        }
        if kind.group.starts_with("gateway.networking") && kind.kind != "ReferenceGrant" {
            let status = format!("{}/status", kind.plural);
            assert!(grants(&cluster, kind.group, &status, "patch"), "patch {status}");
        }
    }
    let verbs: Vec<Value> = cluster.iter().flat_map(|r| list(&r["verbs"])).collect();
    assert!(verbs.iter().all(|v| ["get", "list", "watch", "patch"].iter().any(|w| v == w)), "{verbs:?}");
    let ns = rules("Role");
    assert!(grants(&ns, "coordination.k8s.io", "leases", "create"));
    assert!(grants(&ns, "coordination.k8s.io", "leases", "update"));
    assert!(grants(&ns, "", "secrets", "create"));
    assert!(!grants(&ns, "", "secrets", "update"), "replicas never modify the key Secret");
}
