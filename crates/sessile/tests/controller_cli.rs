//! `sessile controller` as a process: a kubeconfig pointing at the fake API server, readiness on the
//! admin port, status written, a clean exit on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use sessile_kube::fake::FakeApi;
use sessile_testkit::{TestClient, TestRequest, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_against_a_kubeconfig_and_stops_on_sigterm() {
    let fake = FakeApi::start().await.unwrap();
    let port = common::free_port();
    fake.apply_yaml("apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sessile}\nspec: {controllerName: sessile.dev/gateway-controller}\n").unwrap();
    fake.apply_yaml(&common::gateway_yaml(port)).unwrap();
    let dir = common::TempDir::new("ctl-cli");
    dir.write(
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            fake.url()
        ),
    );
    let admin = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessile"))
        .args(["controller", "--bind-address", "127.0.0.1", "--access-log", "off", "--identity", "cli"])
        .arg("--kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin}"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--lease", "default/sessile-leader", "--keys-secret", "default/sessile-keys"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sessile starts");
    let ready = eventually(Duration::from_secs(10), || async {
        let resp = TestClient::http1().send(TestRequest::get(format!("http://127.0.0.1:{admin}/readyz"))).await?;
        anyhow::ensure!(resp.status == 200, "readyz {}", resp.status);
        Ok(())
    })
    .await;
    let status = eventually(Duration::from_secs(10), || async {
        let class = fake.get("GatewayClass", "", "sessile").unwrap();
        anyhow::ensure!(class["status"]["conditions"][0]["status"] == "True", "{class:#}");
        Ok(())
    })
    .await;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let mut exit = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            exit = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if exit.is_none() {
        let _ = child.kill();
    }
    ready.expect("ready");
    status.expect("GatewayClass accepted");
    assert!(exit.expect("exits after SIGTERM").success());
    // The leader released its Lease on the way out.
    let lease = fake.get("Lease", "default", "sessile-leader").unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease:#}");
    assert!(fake.get("Secret", "default", "sessile-keys").is_some(), "key Secret created");
}
