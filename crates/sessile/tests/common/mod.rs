//! Shared end-to-end harness: temp config directories, in-process gateways and YAML builders.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sessile::run::{Gateway, ServeOptions, Source, start};
use sessile_proxy::state::AccessLog;
use sessile_testkit::TestBackend;

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sessile-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) {
        let path = self.0.join(name);
        // Write then rename so the watcher never sees a half-written file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; the gateway binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A gateway serving a config directory, with its own state directory.
pub struct TestGateway {
    pub gateway: Gateway,
    pub config: TempDir,
    pub state: TempDir,
    pub port: u16,
}

impl TestGateway {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn version(&self) -> u64 {
        self.gateway.shared.snapshot().version
    }

    /// Rewrites `file` and waits (bounded) until the watcher applied a newer configuration.
    pub async fn update(&self, file: &str, yaml: &str) {
        let before = self.version();
        self.config.write(file, yaml);
        sessile_testkit::eventually(Duration::from_secs(5), || async {
            if self.version() > before { Ok(()) } else { anyhow::bail!("config not reloaded yet") }
        })
        .await
        .expect("configuration reload");
    }

    /// `GET /status` from the admin server, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let client = sessile_testkit::TestClient::http1();
        let resp = client
            .send(sessile_testkit::TestRequest::get(format!("http://{}/status", self.gateway.admin_addr)))
            .await
            .expect("admin /status");
        resp.json()
    }

    /// The status object of one resource.
    pub async fn status_of(&self, kind: &str, name: &str) -> serde_json::Value {
        let all = self.status().await;
        all.as_array()
            .and_then(|a| a.iter().find(|s| s["kind"] == kind && s["metadata"]["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no status for {kind} {name} in {all:#}"))
    }

    pub async fn metrics(&self) -> String {
        let client = sessile_testkit::TestClient::http1();
        let resp = client
            .send(sessile_testkit::TestRequest::get(format!("http://{}/metrics", self.gateway.admin_addr)))
            .await
            .expect("admin /metrics");
        resp.text()
    }
}

/// Starts a gateway on `port` over a directory holding `files` (name, yaml).
pub async fn gateway_with(port: u16, files: &[(&str, String)]) -> TestGateway {
    let config = TempDir::new("config");
    for (name, yaml) in files {
        config.write(name, yaml);
    }
    let state = TempDir::new("state");
    start_gateway(config, state, port).await
}

/// Starts a gateway over an existing config and state directory (restarts reuse both).
pub async fn start_gateway(config: TempDir, state: TempDir, port: u16) -> TestGateway {
    let opts = ServeOptions {
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir: state.path().to_path_buf(),
        access_log: AccessLog::Off,
        ..ServeOptions::default()
    };
    let gateway = start(Source::Path(config.path().to_path_buf()), &opts).await.expect("gateway starts");
    TestGateway { gateway, config, state, port }
}

/// A Gateway named `gw` with one HTTP listener on 127.0.0.1:`port` accepting routes from all namespaces.
pub fn gateway_yaml(port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: sessile\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: {port}\n    allowedRoutes: {{namespaces: {{from: All}}}}\n"
    )
}

/// A Service `name` (port 80, named `http`) in `namespace` whose endpoints are the given backends.
/// Each backend gets its own EndpointSlice because each listens on its own port.
pub fn service_yaml(namespace: &str, name: &str, backends: &[&TestBackend]) -> String {
    let mut out = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n"
    );
    for b in backends {
        out.push_str(&endpoint_slice_yaml(namespace, name, b, "ready"));
    }
    out
}

/// One EndpointSlice for `backend`; `state` is `ready`, `draining` (serving+terminating) or `gone` (not serving).
pub fn endpoint_slice_yaml(namespace: &str, service: &str, backend: &TestBackend, state: &str) -> String {
    let (ready, serving, terminating) = match state {
        "ready" => (true, true, false),
        "draining" => (false, true, true),
        _ => (false, false, true),
    };
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{}\n  namespace: {namespace}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n  targetRef: {{kind: Pod, name: {}, uid: uid-{}}}\n",
        backend.name(),
        backend.addr().port(),
        backend.name(),
        backend.name()
    )
}

/// Starts `n` backends named `{prefix}0..`.
pub async fn backends(prefix: &str, n: usize) -> Vec<TestBackend> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(sessile_testkit::start_backend(&format!("{prefix}{i}")).await.expect("backend starts"));
    }
    out
}
