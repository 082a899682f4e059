//! `sessile demo`: built-in echo backends and a sticky gateway, for a first look and for `examples/`.
//!
//! Without `--config`: three echo backends on ephemeral ports and a cookie-persistence route on
//! 127.0.0.1:8080. With `--config PATH` (an `examples/` directory, say): one echo backend on every
//! loopback endpoint address the EndpointSlices in PATH name (fixed ports, named after the
//! endpoint's `targetRef`), and a gateway serving PATH exactly as `sessile serve` would.
//! `--backends-only` starts the backends and no gateway, for use with a separate `sessile serve`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::run::{self, ServeOptions, Source};

/// The demo's gateway port.
pub const DEMO_PORT: u16 = 8080;

/// What `sessile demo` runs besides the gateway options.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Serve this configuration (file or directory) and start backends for its endpoints.
    pub config: Option<PathBuf>,
    /// Start only the backends of `config`, no gateway.
    pub backends_only: bool,
}

/// A response body of at most one data frame and optional trailers (gRPC needs trailers).
struct EchoBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// Starts one echo backend on `127.0.0.1:0` (see [`echo_backend_on`]).
pub async fn echo_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    echo_backend_on(SocketAddr::from(([127, 0, 0, 1], 0)), name).await
}

/// Starts one echo backend on `addr` (HTTP/1.1 and h2c). It answers `hello from <name> (METHOD /path)`
/// with header `x-backend: <name>`; gRPC requests (`content-type: application/grpc`) get their
/// message echoed back with `grpc-status: 0` in the trailers.
pub async fn echo_backend_on(addr: SocketAddr, name: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let name: Arc<str> = Arc::from(name);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(echo(&name, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
}

async fn echo(name: &str, req: Request<Incoming>) -> Response<EchoBody> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let backend = HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("echo"));
    let mut resp = if grpc {
        let message = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut resp = Response::new(EchoBody { data: Some(message), trailers: Some(trailers) });
        resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        resp
    } else {
        let body = format!("hello from {name} ({} {})\n", req.method(), req.uri().path());
        Response::new(EchoBody { data: Some(Bytes::from(body)), trailers: None })
    };
    resp.headers_mut().insert("x-backend", backend);
    resp
}

/// The demo configuration for three backends listening on `ports`.
pub fn demo_config(gateway_port: u16, ports: &[u16]) -> String {
    let endpoints: String = ports
        .iter()
        .enumerate()
        .map(|(i, _)| format!("  - addresses: [\"127.0.0.1\"]\n    targetRef: {{kind: Pod, name: echo-{i}}}\n"))
        .collect();
    let mut slices = String::new();
    for (i, p) in ports.iter().enumerate() {
        // One EndpointSlice per backend port, since each demo backend listens on its own port.
        let ep = endpoints.lines().skip(i * 2).take(2).collect::<Vec<_>>().join("\n");
        slices.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: echo-{i}\n  labels: {{kubernetes.io/service-name: echo}}\naddressType: IPv4\nports: [{{name: http, port: {p}}}]\nendpoints:\n{ep}\n"
        ));
    }
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: demo}}
spec:
  gatewayClassName: sessile
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
  - {{name: http, protocol: HTTP, port: {gateway_port}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo}}
spec:
  parentRefs: [{{name: demo}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: echo, port: 80}}]
    sessionPersistence:
      sessionName: demo-session
      type: Cookie
      idleTimeout: 30m
      absoluteTimeout: 8h
---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  ports: [{{name: http, port: 80}}]
{slices}"#
    )
}

/// Every loopback endpoint the EndpointSlices under `path` name, with a name for its echo backend
/// (the endpoint's `targetRef.name`, else its address), in file order without duplicates.
/// Endpoints on other addresses cannot be served on this machine and are left out.
pub fn config_endpoints(path: &Path) -> anyhow::Result<Vec<(SocketAddr, String)>> {
    let loaded = sessile_config::Loader::new().load_path(path)?;
    let mut out: Vec<(SocketAddr, String)> = Vec::new();
    for slice in &loaded.resources.endpoint_slices {
        let ports: Vec<u16> =
            slice.spec.ports.iter().flatten().filter_map(|p| p.port).filter_map(|p| u16::try_from(p).ok()).collect();
        for ep in &slice.spec.endpoints {
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
            if !ip.is_loopback() {
                continue;
            }
            for &port in &ports {
                let addr = SocketAddr::new(ip, port);
                let name = ep.target_ref.as_ref().and_then(|t| t.name.clone()).unwrap_or_else(|| addr.to_string());
                if !out.iter().any(|(a, _)| *a == addr) {
                    out.push((addr, name));
                }
            }
        }
    }
    Ok(out)
}

pub fn run(opts: &ServeOptions, demo: &DemoOptions) -> ExitCode {
    run::init_tracing();
    let runtime = match run::runtime(opts.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sessile demo: {e}");
            return ExitCode::from(1);
        }
    };
    match &demo.config {
        None => runtime.block_on(builtin(opts)),
        Some(path) => runtime.block_on(with_config(opts, path, demo.backends_only)),
    }
}

/// The default demo: three echo backends and the built-in cookie route on 127.0.0.1:8080.
async fn builtin(opts: &ServeOptions) -> ExitCode {
    let mut ports = Vec::new();
    for name in ["echo-0", "echo-1", "echo-2"] {
        match echo_backend(name).await {
            Ok(a) => ports.push(a.port()),
            Err(e) => {
                eprintln!("sessile demo: cannot start backend: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let source = Source::Inline { label: "<demo>".into(), text: demo_config(DEMO_PORT, &ports) };
    let gateway = match run::start(source, opts).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("sessile demo: {e:#}");
            return ExitCode::from(1);
        }
    };
    println!(
        "\nSessile demo: gateway on http://127.0.0.1:{DEMO_PORT}, three echo backends, cookie session persistence.\n\n\
         Without a cookie, requests are balanced round-robin:\n  \
         for i in 1 2 3; do curl -s http://127.0.0.1:{DEMO_PORT}/; done\n\n\
         With a cookie jar, every request sticks to one backend:\n  \
         curl -si -c /tmp/sessile-jar -b /tmp/sessile-jar http://127.0.0.1:{DEMO_PORT}/ | grep -i -e set-cookie -e hello\n  \
         for i in 1 2 3 4 5; do curl -s -c /tmp/sessile-jar -b /tmp/sessile-jar http://127.0.0.1:{DEMO_PORT}/; done\n\n\
         Status and metrics:\n  curl -s http://{}/status\n  curl -s http://{}/metrics | grep session\n\n\
         Press Ctrl-C to stop.\n",
        gateway.admin_addr, gateway.admin_addr
    );
    serve_until_stopped(gateway).await
}

/// `demo --config PATH`: echo backends on the endpoints of PATH, then (unless backends-only) serve PATH.
async fn with_config(opts: &ServeOptions, path: &Path, backends_only: bool) -> ExitCode {
    let endpoints = match config_endpoints(path) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("sessile demo: {e:#}");
            return ExitCode::from(2);
        }
    };
    if endpoints.is_empty() {
        eprintln!("sessile demo: no EndpointSlice in {} names a loopback endpoint (127.0.0.1)", path.display());
        return ExitCode::from(1);
    }
    println!();
    for (addr, name) in &endpoints {
        if let Err(e) = echo_backend_on(*addr, name).await {
            eprintln!("sessile demo: cannot start backend {name} on {addr}: {e}");
            return ExitCode::from(1);
        }
        println!("echo backend {name} on {addr}");
    }
    if backends_only {
        println!("\nBackends only: run `sessile serve --config {}` in another terminal. Ctrl-C stops.", path.display());
        let _ = tokio::signal::ctrl_c().await;
        return ExitCode::SUCCESS;
    }
    let gateway = match run::start(Source::Path(path.to_path_buf()), opts).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("sessile demo: {e:#}");
            return ExitCode::from(1);
        }
    };
    let listeners: Vec<String> = gateway.shared.snapshot().ports.iter().map(|p| p.bind.to_string()).collect();
    println!(
        "\nServing {} (watched: edits apply without a restart) on {}; admin on http://{}.\n\
         The README.md beside the YAML has the commands to try. Ctrl-C stops.\n",
        path.display(),
        listeners.join(", "),
        gateway.admin_addr
    );
    serve_until_stopped(gateway).await
}

/// Runs until Ctrl-C (or a stop from elsewhere), then drains.
async fn serve_until_stopped(gateway: run::Gateway) -> ExitCode {
    let token = gateway.shutdown_token();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = token.cancelled() => {},
    }
    gateway.stop().await;
    ExitCode::SUCCESS
}
