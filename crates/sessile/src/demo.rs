//! `sessile demo`: three built-in echo backends and a cookie-persistence route on 127.0.0.1:8080.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::run::{self, ServeOptions, Source};

/// The demo's gateway port.
pub const DEMO_PORT: u16 = 8080;

/// Starts one echo backend answering `hello from <name>` with header `x-backend: <name>`.
pub async fn echo_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let body = format!("hello from {name} ({} {})\n", req.method(), req.uri().path());
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut().insert("x-backend", http::HeaderValue::from_static(name));
                    Ok::<_, Infallible>(resp)
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
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

pub fn run(opts: &ServeOptions) -> ExitCode {
    run::init_tracing();
    let runtime = match run::runtime(opts.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sessile demo: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
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
        let token = gateway.shutdown_token();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = token.cancelled() => {},
        }
        gateway.stop().await;
        ExitCode::SUCCESS
    })
}
