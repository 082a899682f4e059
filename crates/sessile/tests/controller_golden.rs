//! Golden tests: the statuses controller mode writes to the cluster equal what file mode's `translate`
//! gives for the same objects (YAML fixtures in `controller_fixtures/`), transition times aside.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use sessile::controller::ControllerOptions;
use sessile_config::{Loader, TranslateOptions, translate};
use sessile_kube::fake::FakeApi;
use sessile_proxy::access_log::AccessLog;

/// Every `lastTransitionTime` replaced, as the two runs happen at different times.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), if k == "lastTransitionTime" { Value::from("T") } else { normalize(v) }))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

async fn golden(file: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controller_fixtures").join(file);
    let text = std::fs::read_to_string(&path)
        .expect("fixture")
        .replace("{PORT2}", &common::free_port().to_string())
        .replace("{PORT}", &common::free_port().to_string());

    // File mode.
    let loaded = Loader::new().load_str(file, &text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let expected = translate(&loaded.resources, &TranslateOptions::default()).statuses;
    assert!(expected.len() >= 4, "the fixture yields statuses");

    // Controller mode against the fake API server.
    let fake = FakeApi::start().await.unwrap();
    fake.apply_yaml(&text).unwrap();
    let mut opts = ControllerOptions {
        bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        debounce: Duration::from_millis(20),
        ..ControllerOptions::default()
    };
    opts.serve.admin = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.serve.access_log = AccessLog::Off;
    let state = common::TempDir::new("golden-state");
    opts.serve.state_dir = state.path().to_path_buf();
    let controller = sessile::controller::start(fake.client("golden").unwrap(), &opts).await.unwrap();

    let cluster_status = |kind: &str, ns: &str, name: &str| {
        let ns = if kind == "GatewayClass" { "" } else { ns };
        fake.get(kind, ns, name).and_then(|o| o.get("status").cloned())
    };
    // A bound, not a wait: it passes as soon as the statuses match (well under a second). It is
    // wide because a reflector that meets a transient error backs off (kube's default, 0.8 s
    // doubling), and one clean-clone CI run on a loaded machine went past 10 s.
    let result = sessile_testkit::eventually(Duration::from_secs(30), || async {
        for s in &expected {
            let want = normalize(&s.status.to_value());
            // An empty `parents`/`ancestors` list means "none of ours": the controller does not touch such an
            // object (it may belong to another controller), so the cluster shows no status at all.
            let nothing_ours = ["parents", "ancestors"].iter().any(|k| want[*k] == serde_json::json!([]));
            let want = if nothing_ours { Value::Null } else { want };
            let got = cluster_status(&s.kind, &s.metadata.namespace, &s.metadata.name).map(|v| normalize(&v));
            anyhow::ensure!(
                got.clone().unwrap_or(Value::Null) == want,
                "{} {}/{}:\n  file mode: {want:#}\n  cluster:   {got:#?}",
                s.kind,
                s.metadata.namespace,
                s.metadata.name
            );
        }
        Ok(())
    })
    .await;
    if let Err(e) = result {
        panic!("{file}: cluster status differs from file mode: {e:#}");
    }
    // Objects file mode gives no status to get none in the cluster either (another controller's Gateway,
    // a route attached only to it).
    for (kind, name) in [("Gateway", "theirs"), ("HTTPRoute", "only-theirs"), ("GatewayClass", "other")] {
        if expected.iter().all(|s| !(s.kind == kind && s.metadata.name == name)) {
            assert_eq!(cluster_status(kind, "default", name), None, "{kind} {name} has no status of ours");
        }
    }
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_objects_match_file_mode() {
    golden("mixed.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_match_file_mode() {
    golden("conflicts.yaml").await;
}
