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

/// A free TCP port on 127.0.0.1 for a gateway listener (checked free, then released).
///
/// Ports come from a per-process sequence below the kernel's ephemeral range, so tests running
/// in parallel never receive the same port (port 0 may hand a just-released port out again),
/// and outgoing connections, which use ephemeral ports, never take one.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = 12_000 + (std::process::id() as usize * 7919) % 18_000;
    for _ in 0..2_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        let port = (base + offset) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
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
    start_gateway_with(config, state, port, |_| {}).await
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

// ---- Session persistence helpers -------------------------------------------------------------

/// Starts a gateway like [`start_gateway`], letting the caller adjust the options (key file, grace).
pub async fn start_gateway_with(
    config: TempDir,
    state: TempDir,
    port: u16,
    adjust: impl FnOnce(&mut ServeOptions),
) -> TestGateway {
    let mut opts = ServeOptions {
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir: state.path().to_path_buf(),
        access_log: AccessLog::Off,
        ..ServeOptions::default()
    };
    adjust(&mut opts);
    let gateway = start(Source::Path(config.path().to_path_buf()), &opts).await.expect("gateway starts");
    TestGateway { gateway, config, state, port }
}

/// A Service whose endpoints are the given backends, each in the given state (`ready`, `draining`, `gone`).
pub fn service_yaml_states(namespace: &str, name: &str, backends: &[(&TestBackend, &str)]) -> String {
    let mut out = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n"
    );
    for (b, state) in backends {
        out.push_str(&endpoint_slice_yaml(namespace, name, b, state));
    }
    out
}

/// An HTTPRoute `name` in `default` attached to `gw`, with `rules` (YAML list items indented by two spaces).
/// `created` sets `metadata.creationTimestamp` when given.
pub fn route_yaml(name: &str, created: Option<&str>, rules: &[String]) -> String {
    let ts = created.map(|c| format!(", creationTimestamp: \"{c}\"")).unwrap_or_default();
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default{ts}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{}",
        rules.concat()
    )
}

/// One route rule: PathPrefix `path`, `backends` (a YAML flow list) and an optional `sessionPersistence` (flow map).
pub fn rule_yaml(path: &str, backends: &str, persistence: Option<&str>) -> String {
    let mut out =
        format!("  - matches: [{{path: {{type: PathPrefix, value: \"{path}\"}}}}]\n    backendRefs: {backends}\n");
    if let Some(p) = persistence {
        out.push_str(&format!("    sessionPersistence: {p}\n"));
    }
    out
}

/// A `BackendLBPolicy` (v1alpha2) targeting Service `target` with `persistence` (a flow map).
pub fn lb_policy_yaml(name: &str, created: Option<&str>, target: &str, persistence: &str) -> String {
    let ts = created.map(|c| format!(", creationTimestamp: \"{c}\"")).unwrap_or_default();
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {{name: {name}, namespace: default{ts}}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: {target}}}]\n  sessionPersistence: {persistence}\n"
    )
}

/// A `kubernetes.io/tls` Secret holding `cert_pem` and `key_pem`.
pub fn tls_secret_yaml(name: &str, cert_pem: &[u8], key_pem: &[u8]) -> String {
    let indent = |pem: &[u8]| String::from_utf8_lossy(pem).lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert_pem),
        indent(key_pem)
    )
}

/// A Gateway `gw` with one HTTPS listener on 127.0.0.1:`port` terminating TLS with Secret `secret`.
pub fn https_gateway_yaml(port: u16, secret: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: sessile\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - name: https\n    protocol: HTTPS\n    port: {port}\n    tls: {{mode: Terminate, certificateRefs: [{{name: {secret}}}]}}\n    allowedRoutes: {{namespaces: {{from: All}}}}\n"
    )
}

/// The value of the `Set-Cookie` named `name` in `resp`, if any.
pub fn set_cookie_value(resp: &sessile_testkit::TestResponse, name: &str) -> Option<String> {
    resp.set_cookies().iter().find_map(|sc| {
        let (n, rest) = sc.split_once('=')?;
        (n.trim() == name).then(|| rest.split(';').next().unwrap_or("").trim().to_string())
    })
}

/// The whole `Set-Cookie` line for cookie `name`, if any.
pub fn set_cookie_line(resp: &sessile_testkit::TestResponse, name: &str) -> Option<String> {
    resp.set_cookies().into_iter().find(|sc| sc.split_once('=').is_some_and(|(n, _)| n.trim() == name))
}

/// Sum of the samples of metric `name` whose line contains every string of `filters`.
pub fn metric(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// URL-safe base64 without padding (enough for tokens in tests).
pub fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64URL[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes URL-safe base64 without padding; `None` on a bad character.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = B64URL.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Runs every async case `case(Kind::Variant)` once per variant, each variant in a module of
/// its own: `crate::test_matrix!(Client { direct => Direct, hyper_client => Hyper }: [a, b]);`
#[macro_export]
macro_rules! test_matrix {
    ($kind:ident { $($module:ident => $variant:ident),+ $(,)? }: $cases:tt) => {
        $( $crate::test_matrix!(@module $module, $kind, $variant, $cases); )+
    };
    (@module $module:ident, $kind:ident, $variant:ident, [$($case:ident),* $(,)?]) => {
        mod $module {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::$kind::$variant).await
            })*
        }
    };
}
