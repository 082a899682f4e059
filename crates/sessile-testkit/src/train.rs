//! Traffic for a profile-guided build: drives a `sessile serve` child through every served protocol.
//!
//! Everything runs on 127.0.0.1 in this process (backends answering like the harness's nginx,
//! keep-alive HTTP/1.1 clients, h2c and TLS clients from this kit), so training needs neither
//! nginx nor wrk and works inside a container build. With a profile directory the child writes
//! its profile there when it exits, and the run fails if none appears. Any failed request, or a
//! persisted session that moves to another backend, fails the run too: a profile of broken
//! behaviour would be useless.
//!
//! What PGO never sees it treats as cold, so the mix covers every served protocol: the sticky
//! HTTP/1.1 paths (cookie and header, persisted and new sessions) carry most of the weight, and
//! round robin, request bodies, h2c, HTTPS with HTTP/1.1 and h2, and the default access log
//! get a share each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{TestClient, TestRequest, raw_exchange, status_line, tls};

const COOKIE: &str = "sticky";
const HEADER: &str = "x-sticky";
/// Keep-alive connections per HTTP/1.1 scenario, as in the shared harness's wrk runs.
const H1_CONNECTIONS: usize = 32;
/// Concurrent requests per h2c and TLS scenario.
const CLIENT_TASKS: usize = 8;
/// Bound on anything the trainer waits for (start-up, one request, shutdown).
const WAIT: Duration = Duration::from_secs(30);

/// What to train and for how long.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The `sessile` binary to run.
    pub sessile: PathBuf,
    /// Where the child writes its profile (`LLVM_PROFILE_FILE`); `None` for a binary built
    /// without `-Cprofile-generate` (traffic only, no profile expected).
    pub profile_dir: Option<PathBuf>,
    /// The whole run's length, shared between the scenarios by weight.
    pub seconds: f64,
}

/// Runs every scenario against fresh `sessile serve` children; returns each scenario's name and
/// how many requests it completed.
pub async fn train(opts: &TrainOptions) -> anyhow::Result<Vec<(String, u64)>> {
    ensure!(opts.seconds > 0.0 && opts.seconds <= 600.0, "the training time must be in (0, 600] seconds");
    if let Some(dir) = &opts.profile_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let backends = [start_backend("b1").await?, start_backend("b2").await?, start_backend("b3").await?];
    let work = tempdir()?;
    // Weights in shares of the whole time: the sticky HTTP/1.1 paths first, every other protocol a share.
    let unit = Duration::from_secs_f64(opts.seconds / 22.0);
    let plain = [
        Scenario::H1 { path: "/cookie", carrier: Carrier::Cookie, persisted: true, body: 0, weight: 5 },
        Scenario::H1 { path: "/cookie", carrier: Carrier::Cookie, persisted: false, body: 0, weight: 3 },
        Scenario::H1 { path: "/header", carrier: Carrier::Header, persisted: true, body: 0, weight: 3 },
        Scenario::H1 { path: "/header", carrier: Carrier::Header, persisted: false, body: 0, weight: 2 },
        Scenario::H1 { path: "/plain", carrier: Carrier::None, persisted: false, body: 0, weight: 1 },
        Scenario::H1 { path: "/cookie", carrier: Carrier::Cookie, persisted: true, body: 2048, weight: 1 },
        Scenario::Client { kind: ClientKind::H2c, weight: 1 },
        Scenario::Client { kind: ClientKind::Https { h2: false }, weight: 1 },
        Scenario::Client { kind: ClientKind::Https { h2: true }, weight: 1 },
    ];
    let logged = [
        Scenario::H1 { path: "/cookie", carrier: Carrier::Cookie, persisted: true, body: 0, weight: 2 },
        Scenario::H1 { path: "/cookie", carrier: Carrier::Cookie, persisted: false, body: 0, weight: 2 },
    ];
    let access_log = work.join("access.log");
    let access_log_args = ["--access-log-file", access_log.to_str().context("temporary path is not UTF-8")?];
    let mut done = Vec::new();
    for (phase, scenarios, extra) in
        [("access log off", &plain[..], &["--access-log", "off"][..]), ("access log on", &logged[..], &access_log_args)]
    {
        let gateway = Gateway::start(opts, &work, &backends, extra).await?;
        for scenario in scenarios {
            let name = format!("{phase}: {scenario:?}");
            let requests = scenario.run(&gateway, unit).await.with_context(|| name.clone())?;
            done.push((name, requests));
        }
        gateway.stop(opts.profile_dir.as_deref())?;
    }
    std::fs::remove_dir_all(&work).ok();
    Ok(done)
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sessile-pgo-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// How a scenario's clients carry their session.
#[derive(Clone, Copy, Debug)]
enum Carrier {
    Cookie,
    Header,
    None,
}

#[derive(Clone, Copy, Debug)]
enum ClientKind {
    H2c,
    Https { h2: bool },
}

#[derive(Debug)]
enum Scenario {
    /// Keep-alive HTTP/1.1 connections; `persisted` sends back the first token, else every request opens a session.
    H1 { path: &'static str, carrier: Carrier, persisted: bool, body: usize, weight: u32 },
    /// The testkit's hyper client on the cookie route, session persisted.
    Client { kind: ClientKind, weight: u32 },
}

impl Scenario {
    async fn run(&self, gateway: &Gateway, unit: Duration) -> anyhow::Result<u64> {
        match *self {
            Scenario::H1 { path, carrier, persisted, body, weight } => {
                let deadline = Instant::now() + unit * weight;
                let conns = (0..H1_CONNECTIONS)
                    .map(|_| tokio::spawn(h1_connection(gateway.http, path, carrier, persisted, body, deadline)));
                let mut total = 0;
                for conn in conns.collect::<Vec<_>>() {
                    total += conn.await??;
                }
                Ok(total)
            }
            Scenario::Client { kind, weight } => {
                let deadline = Instant::now() + unit * weight;
                let (client, url) = match kind {
                    ClientKind::H2c => (TestClient::h2c(), format!("http://{}/cookie", gateway.http)),
                    ClientKind::Https { h2 } => {
                        (TestClient::https(tls::CA_PEM, h2)?, format!("https://{}/cookie", gateway.https))
                    }
                };
                let tasks = (0..CLIENT_TASKS).map(|_| tokio::spawn(client_loop(client.clone(), url.clone(), deadline)));
                let mut total = 0;
                for task in tasks.collect::<Vec<_>>() {
                    total += task.await??;
                }
                Ok(total)
            }
        }
    }
}

/// One keep-alive connection sending requests until `deadline`; returns how many it sent.
async fn h1_connection(
    addr: SocketAddr,
    path: &str,
    carrier: Carrier,
    persisted: bool,
    body: usize,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let (mut session, mut pinned) = (String::new(), None::<String>);
    let payload = "x".repeat(body);
    let mut sent = 0;
    while Instant::now() < deadline {
        let method = if body > 0 { "POST" } else { "GET" };
        let length = if body > 0 { format!("Content-Length: {body}\r\n") } else { String::new() };
        let request = format!(
            "{method} {path}/item?id={sent} HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: pgo-train\r\nAccept: */*\r\n{session}{length}\r\n{payload}"
        );
        stream.write_all(request.as_bytes()).await?;
        let response = tokio::time::timeout(WAIT, read_message(&mut stream, &mut buf))
            .await
            .context("no response in time")??
            .context("the gateway closed the connection")?;
        ensure!(response.start.starts_with("HTTP/1.1 200"), "{method} {path}: {}", response.start);
        let backend = response.header("x-backend").context("no x-backend in the response")?;
        if persisted {
            match &pinned {
                Some(p) => ensure!(p == backend, "a persisted session moved from {p} to {backend}"),
                None => {
                    pinned = Some(backend.to_string());
                    session = match carrier {
                        Carrier::Cookie => {
                            let set = response.header("set-cookie").context("no Set-Cookie on a new session")?;
                            format!("Cookie: {}\r\n", set.split(';').next().unwrap_or_default())
                        }
                        Carrier::Header => {
                            format!("{HEADER}: {}\r\n", response.header(HEADER).context("no session header")?)
                        }
                        Carrier::None => String::new(),
                    };
                }
            }
        }
        sent += 1;
    }
    Ok(sent)
}

/// Requests on `url` through the testkit client (h2c or HTTPS), session persisted, until `deadline`.
async fn client_loop(client: TestClient, url: String, deadline: Instant) -> anyhow::Result<u64> {
    let first = client.send(TestRequest::get(&url)).await?;
    ensure!(first.status == 200, "GET {url}: {}", first.status);
    let cookie = first.set_cookies().into_iter().next().context("no Set-Cookie on a new session")?;
    let cookie = cookie.split(';').next().unwrap_or_default().to_string();
    let pinned = first.backend().context("no x-backend")?;
    let mut sent = 1;
    while Instant::now() < deadline {
        let resp = client.send(TestRequest::get(&url).header("cookie", &cookie)).await?;
        ensure!(resp.status == 200, "GET {url}: {}", resp.status);
        ensure!(resp.backend().as_ref() == Some(&pinned), "a persisted session moved from {pinned}");
        sent += 1;
    }
    Ok(sent)
}

/// A parsed HTTP/1.1 message head (the body is read and dropped).
struct Message {
    start: String,
    headers: Vec<(String, String)>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one message framed by Content-Length (or none); `None` on a clean close between messages.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Option<Message>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("message head is not UTF-8")?;
            let mut lines = head.split("\r\n");
            let start = lines.next().unwrap_or_default().to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect();
            let message = Message { start, headers };
            ensure!(message.header("transfer-encoding").is_none(), "unexpected chunked message: {}", message.start);
            let length: usize = message.header("content-length").map_or(Ok(0), str::parse)?;
            let total = end + 4 + length;
            while buf.len() < total {
                ensure!(stream.read_buf(buf).await? > 0, "connection closed inside a message body");
            }
            buf.drain(..total);
            return Ok(Some(message));
        }
        if stream.read_buf(buf).await? == 0 {
            ensure!(buf.is_empty(), "connection closed inside a message head");
            return Ok(None);
        }
    }
}

/// A backend on 127.0.0.1 answering every request like the harness's nginx (a short text body).
async fn start_backend(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Err(e) = serve_backend_connection(stream, name).await {
                    eprintln!("pgo-train: backend {name}: {e:#}");
                }
            });
        }
    });
    Ok(addr)
}

async fn serve_backend_connection(mut stream: TcpStream, name: &str) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let body = format!("hello from {name}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nServer: pgo-train\r\nDate: Sun, 06 Dec 2026 06:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: keep-alive\r\nx-backend: {name}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = Vec::with_capacity(16 * 1024);
    while read_message(&mut stream, &mut buf).await?.is_some() {
        stream.write_all(response.as_bytes()).await?;
    }
    Ok(())
}

/// A `sessile serve` child process with an HTTP and an HTTPS listener over the three backends.
struct Gateway {
    child: Child,
    http: SocketAddr,
    https: SocketAddr,
}

impl Gateway {
    async fn start(
        opts: &TrainOptions,
        work: &Path,
        backends: &[SocketAddr],
        extra: &[&str],
    ) -> anyhow::Result<Gateway> {
        let (http, https, admin) = (free_addr()?, free_addr()?, free_addr()?);
        let config = work.join("config.yaml");
        std::fs::write(&config, config_yaml(http.port(), https.port(), backends))
            .with_context(|| format!("writing {}", config.display()))?;
        let mut command = Command::new(&opts.sessile);
        command
            .args(["serve", "--workers", "1", "--config"])
            .arg(&config)
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--state-dir")
            .arg(work.join("state"))
            .args(extra)
            .stdout(Stdio::null());
        if let Some(dir) = &opts.profile_dir {
            // %p: one file per process, which `stop` looks for.
            command.env("LLVM_PROFILE_FILE", dir.join("sessile-%p-%m.profraw"));
        }
        let child = command.spawn().with_context(|| format!("starting {}", opts.sessile.display()))?;
        let gateway = Gateway { child, http, https };
        let started = Instant::now();
        loop {
            let ready = raw_exchange(admin, b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n", WAIT)
                .await
                .ok()
                .and_then(|r| status_line(&r));
            if ready == Some(200) {
                return Ok(gateway);
            }
            ensure!(started.elapsed() < WAIT, "sessile was not ready within {WAIT:?} (admin {admin})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the child with SIGTERM (a clean exit writes the profile) and checks that its profile appeared.
    fn stop(mut self, profile_dir: Option<&Path>) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        // The shell's kill builtin: no signal crate, and no procps needed in a container build.
        let status = Command::new("sh").args(["-c", "kill -TERM \"$0\"", &pid]).status().context("running sh")?;
        ensure!(status.success(), "kill -TERM {pid} failed");
        let started = Instant::now();
        let exit = loop {
            if let Some(exit) = self.child.try_wait()? {
                break exit;
            }
            ensure!(started.elapsed() < WAIT, "sessile {pid} did not exit within {WAIT:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        ensure!(exit.success(), "sessile {pid} exited with {exit}");
        if let Some(dir) = profile_dir {
            let written = std::fs::read_dir(dir)?
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with(&format!("sessile-{pid}-")));
            ensure!(
                written,
                "sessile {pid} wrote no profile to {}: is it built with -Cprofile-generate?",
                dir.display()
            );
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Stops the child on an error path; after `stop` it has already exited and this does nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn indent(pem: &[u8]) -> String {
    String::from_utf8_lossy(pem).lines().map(|l| format!("    {l}\n")).collect()
}

/// One Gateway (HTTP and HTTPS listeners), a cookie route, a header route and a round-robin route.
fn config_yaml(http: u16, https: u16, backends: &[SocketAddr]) -> String {
    let mut yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: train}}
spec:
  gatewayClassName: sessile
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
  - {{name: http, protocol: HTTP, port: {http}}}
  - {{name: https, protocol: HTTPS, port: {https}, tls: {{mode: Terminate, certificateRefs: [{{name: cert}}]}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cert}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: train}}
spec:
  parentRefs: [{{name: train}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /cookie}}}}]
    backendRefs: [{{name: backends, port: 80}}]
    sessionPersistence: {{sessionName: {COOKIE}, type: Cookie, absoluteTimeout: 3600s, cookieConfig: {{lifetimeType: Permanent}}}}
  - matches: [{{path: {{type: PathPrefix, value: /header}}}}]
    backendRefs: [{{name: backends, port: 80}}]
    sessionPersistence: {{sessionName: {HEADER}, type: Header, absoluteTimeout: 3600s}}
  - backendRefs: [{{name: backends, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: backends}}
spec: {{ports: [{{name: http, port: 80}}]}}
",
        indent(tls::LOCALHOST_CERT_PEM),
        indent(tls::LOCALHOST_KEY_PEM)
    );
    for (i, b) in backends.iter().enumerate() {
        yaml.push_str(&format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backends-{i}
  labels: {{kubernetes.io/service-name: backends}}
addressType: IPv4
ports: [{{name: http, port: {}}}]
endpoints: [{{addresses: [\"{}\"], targetRef: {{kind: Pod, name: b{i}}}}}]
",
            b.port(),
            b.ip()
        ));
    }
    yaml
}
