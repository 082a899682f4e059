//! In-process echo backend serving HTTP/1.1 and h2c on one loopback port, stoppable and restartable.
//!
//! Request controls (headers sent by the test):
//! - `x-echo-status: 503` sets the response status;
//! - `x-delay-ms: 200` sleeps before answering;
//! - `x-set-cookie: a=b; Path=/` adds that `Set-Cookie` (may repeat);
//! - `x-cache-control: public, max-age=60` sets `Cache-Control`.
//!
//! Special requests: `GET /stream?chunks=N` streams N chunks 20 ms apart; `Upgrade: websocket`
//! switches to a WebSocket echo (text frames come back prefixed `<name>:`); `content-type:
//! application/grpc` echoes the body with trailers `grpc-status: 0` and `x-backend-trailer: <name>`.
//! Every other request gets a JSON echo of itself. Every response carries `x-backend: <name>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ws;

/// Body type of every backend response.
pub type BackendBody = BoxBody<Bytes, Infallible>;

/// Interval between chunks of `/stream` (any path ending in `/stream`).
pub const STREAM_CHUNK_INTERVAL: Duration = Duration::from_millis(20);

/// How a [`TestBackend`] behaves beyond the per-request controls.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Serve HTTP/1.1 only (h2c prior-knowledge connections are refused).
    pub http1_only: bool,
    /// Serve h2c (prior knowledge) only.
    pub http2_only: bool,
    /// Extra delay before every answer (added to `x-delay-ms`).
    pub delay: Duration,
    /// Default status when the request has no `x-echo-status`.
    pub status: Option<u16>,
    /// Headers added to every response (name, value).
    pub response_headers: Vec<(String, String)>,
}

/// A running (or stopped) in-process backend; dropping it shuts it down.
pub struct TestBackend {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    addr: SocketAddr,
    opts: BackendOptions,
    hits: AtomicU64,
    connections: AtomicU64,
    running: Mutex<Option<Running>>,
}

struct Running {
    cancel: CancellationToken,
    accept_task: JoinHandle<()>,
    /// Closes (recv → None) once the accept loop and every connection task have finished.
    all_done: mpsc::Receiver<()>,
}

/// Handle shared by the tasks of one run: cancelled on stop; `_done` keeps `all_done` open.
#[derive(Clone)]
struct RunCtx {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    done: mpsc::Sender<()>,
}

/// Starts a backend named `name` on 127.0.0.1 with an ephemeral port and default options.
pub async fn start_backend(name: &str) -> anyhow::Result<TestBackend> {
    start_backend_with(name, BackendOptions::default()).await
}

/// Starts a backend named `name` on 127.0.0.1 with an ephemeral port.
pub async fn start_backend_with(name: &str, opts: BackendOptions) -> anyhow::Result<TestBackend> {
    anyhow::ensure!(!(opts.http1_only && opts.http2_only), "http1_only and http2_only are exclusive");
    let listener = TcpListener::bind("127.0.0.1:0").await.context("bind backend listener")?;
    let addr = listener.local_addr()?;
    let inner = Arc::new(Inner {
        name: name.to_string(),
        addr,
        opts,
        hits: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        running: Mutex::new(None),
    });
    let running = spawn_run(inner.clone(), listener);
    *inner.running.lock().expect("backend lock") = Some(running);
    Ok(TestBackend { inner })
}

impl TestBackend {
    /// Listening address (stays the same across [`stop`](Self::stop)/[`restart`](Self::restart)).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Name given at start; echoed in `x-backend`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `http://127.0.0.1:<port>` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.inner.addr, path)
    }

    /// Requests served so far (every request, including upgrades), across restarts.
    pub fn hits(&self) -> u64 {
        self.inner.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far, across restarts.
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// Resets the hit and connection counters to zero.
    pub fn reset_counters(&self) {
        self.inner.hits.store(0, Ordering::SeqCst);
        self.inner.connections.store(0, Ordering::SeqCst);
    }

    /// Whether the backend is currently listening.
    pub fn is_running(&self) -> bool {
        self.inner.running.lock().expect("backend lock").is_some()
    }

    /// Closes the listener and every open connection (including WebSockets); new connects are
    /// refused afterwards. Waits (bounded, 2 s) until everything is closed. No-op if stopped.
    pub async fn stop(&self) {
        let running = self.inner.running.lock().expect("backend lock").take();
        let Some(mut running) = running else { return };
        running.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut running.accept_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), running.all_done.recv()).await;
    }

    /// Rebinds the same port and serves again, retrying the bind for up to 2 s.
    /// No-op if already running.
    pub async fn restart(&self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match TcpListener::bind(self.inner.addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("rebind {}", self.inner.addr));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let running = spawn_run(self.inner.clone(), listener);
        let mut slot = self.inner.running.lock().expect("backend lock");
        if let Some(old) = slot.replace(running) {
            old.cancel.cancel();
        }
        Ok(())
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.inner.running.lock()
            && let Some(running) = slot.take()
        {
            running.cancel.cancel();
        }
    }
}

impl std::fmt::Debug for TestBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBackend")
            .field("name", &self.inner.name)
            .field("addr", &self.inner.addr)
            .field("hits", &self.hits())
            .finish()
    }
}

fn spawn_run(inner: Arc<Inner>, listener: TcpListener) -> Running {
    let cancel = CancellationToken::new();
    let (done, all_done) = mpsc::channel(1);
    let ctx = RunCtx { inner, cancel: cancel.clone(), done };
    let accept_task = tokio::spawn(accept_loop(listener, ctx));
    Running { cancel, accept_task, all_done }
}

async fn accept_loop(listener: TcpListener, ctx: RunCtx) {
    loop {
        let stream = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        ctx.inner.connections.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, ctx.clone()));
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, ctx: RunCtx) {
    let cancel = ctx.cancel.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        async move {
            let cancel = ctx.cancel.clone();
            tokio::select! {
                resp = handle(ctx, req) => resp,
                _ = cancel.cancelled() => {
                    let mut resp = Response::new(full(Bytes::new()));
                    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    Ok(resp)
                }
            }
        }
    });
    let io = TokioIo::new(stream);
    // auto::Builder ignores http1_only/http2_only when upgrades are enabled, so the
    // single-protocol modes use hyper's per-version builders directly.
    let serve = async move {
        if ctx.inner.opts.http1_only {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).with_upgrades().await;
        } else if ctx.inner.opts.http2_only {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await;
        } else {
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection_with_upgrades(io, svc).await;
        }
        drop(ctx);
    };
    tokio::select! {
        _ = serve => {}
        _ = cancel.cancelled() => {}
    }
}

async fn handle(ctx: RunCtx, req: Request<Incoming>) -> Result<Response<BackendBody>, Infallible> {
    ctx.inner.hits.fetch_add(1, Ordering::SeqCst);
    let name = ctx.inner.name.clone();

    if is_websocket_upgrade(&req) {
        return Ok(websocket_response(ctx, req));
    }

    let (parts, body) = req.into_parts();
    let delay_ms = header_str(&parts.headers, "x-delay-ms").and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
    let delay = ctx.inner.opts.delay + Duration::from_millis(delay_ms);

    let body_bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let status = header_str(&parts.headers, "x-echo-status")
        .and_then(|v| v.trim().parse::<u16>().ok())
        .or(ctx.inner.opts.status)
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);

    let is_grpc = header_str(&parts.headers, "content-type").is_some_and(|ct| ct.starts_with("application/grpc"));

    let mut resp = if is_grpc {
        grpc_response(&name, parts.uri.path(), body_bytes)
    } else if parts.uri.path().ends_with("/stream") {
        stream_response(&ctx, &parts.uri, status)
    } else {
        let json = echo_json(&name, &parts, &body_bytes);
        let mut resp = Response::new(full(Bytes::from(json.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    };

    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&name) {
        headers.insert("x-backend", v);
    }
    for v in parts.headers.get_all("x-set-cookie") {
        headers.append(header::SET_COOKIE, v.clone());
    }
    if let Some(v) = parts.headers.get("x-cache-control") {
        headers.insert(header::CACHE_CONTROL, v.clone());
    }
    for (k, v) in &ctx.inner.opts.response_headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            headers.append(k, v);
        }
    }
    Ok(resp)
}

fn echo_json(name: &str, parts: &http::request::Parts, body: &[u8]) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for key in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(key)
            .iter()
            .map(|v| serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.insert(key.as_str().to_string(), serde_json::Value::Array(values));
    }
    let path = parts.uri.path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_else(|| "/".to_string());
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| header_str(&parts.headers, "host").map(str::to_string));
    serde_json::json!({
        "backend": name,
        "method": parts.method.as_str(),
        "path": path,
        "authority": authority,
        "version": version_str(parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    })
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

/// gRPC echo: a unary call returns the request messages; a method whose name ends in `Stream`
/// returns three messages `"<name>:<i>:<request>"` 20 ms apart (server streaming). Trailers carry
/// `grpc-status: 0` and `x-backend-trailer: <name>`.
fn grpc_response(name: &str, path: &str, body: Bytes) -> Response<BackendBody> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    if let Ok(v) = HeaderValue::from_str(name) {
        trailers.insert("x-backend-trailer", v);
    }
    let (tx, rx) = mpsc::channel(4);
    if path.ends_with("Stream") {
        let request = crate::grpc::unframe(&body).into_iter().next().unwrap_or_default();
        let name = name.to_string();
        tokio::spawn(async move {
            for i in 0..3 {
                let mut msg = format!("{name}:{i}:").into_bytes();
                msg.extend_from_slice(&request);
                if tx.send(Frame::data(crate::grpc::frame(&msg))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = tx.send(Frame::trailers(trailers)).await;
        });
    } else {
        // Capacity 4: both sends succeed immediately.
        let _ = tx.try_send(Frame::data(body));
        let _ = tx.try_send(Frame::trailers(trailers));
    }
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    // HTTP/1.1 (chunked) only sends trailer fields announced here; harmless on HTTP/2.
    resp.headers_mut().insert(header::TRAILER, HeaderValue::from_static("grpc-status, x-backend-trailer"));
    resp
}

fn stream_response(ctx: &RunCtx, uri: &http::Uri, status: StatusCode) -> Response<BackendBody> {
    let chunks: u32 = uri
        .query()
        .and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "chunks")
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(5);
    let (tx, rx) = mpsc::channel(1);
    let name = ctx.inner.name.clone();
    let cancel = ctx.cancel.clone();
    let done = ctx.done.clone();
    tokio::spawn(async move {
        let _done = done;
        for i in 0..chunks {
            if i > 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(STREAM_CHUNK_INTERVAL) => {}
                }
            }
            let chunk = Bytes::from(format!("{name}:chunk{i}\n"));
            if tx.send(Frame::data(chunk)).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && header_str(req.headers(), "upgrade").is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket"))
}

fn websocket_response(ctx: RunCtx, mut req: Request<Incoming>) -> Response<BackendBody> {
    let name = ctx.inner.name.clone();
    let Some(key) = header_str(req.headers(), "sec-websocket-key").map(str::to_string) else {
        let mut resp = Response::new(full(Bytes::from_static(b"missing Sec-WebSocket-Key")));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        insert_backend(&mut resp, &name);
        return resp;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_ctx = ctx.clone();
    tokio::spawn(async move {
        let ctx = task_ctx;
        let Ok(upgraded) = on_upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        tokio::select! {
            _ = ctx.cancel.cancelled() => {}
            _ = ws_echo_loop(&mut io, &ctx.inner.name) => {}
        }
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&ws::accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    insert_backend(&mut resp, &name);
    resp
}

async fn ws_echo_loop<IO>(io: &mut IO, name: &str)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let Ok(frame) = ws::read_frame(io).await else { return };
        let result = match frame.opcode {
            ws::OP_TEXT => {
                let mut payload = format!("{name}:").into_bytes();
                payload.extend_from_slice(&frame.payload);
                ws::write_frame(io, ws::OP_TEXT, &payload, false).await
            }
            ws::OP_BINARY | ws::OP_CONTINUATION => ws::write_frame(io, frame.opcode, &frame.payload, false).await,
            ws::OP_PING => ws::write_frame(io, ws::OP_PONG, &frame.payload, false).await,
            ws::OP_CLOSE => {
                let _ = ws::write_frame(io, ws::OP_CLOSE, &frame.payload, false).await;
                return;
            }
            _ => Ok(()),
        };
        if result.is_err() {
            return;
        }
    }
}

fn insert_backend(resp: &mut Response<BackendBody>, name: &str) {
    if let Ok(v) = HeaderValue::from_str(name) {
        resp.headers_mut().insert("x-backend", v);
    }
}

fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn full(bytes: Bytes) -> BackendBody {
    Full::new(bytes).boxed()
}

/// A body fed frame by frame through a channel (data chunks, then optional trailers).
struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}
