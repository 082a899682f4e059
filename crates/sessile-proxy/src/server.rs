//! Listeners: binds what the snapshot asks for, serves HTTP/1.1, h2c and TLS, and shuts down gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sessile_core::hostname::HostPattern;
use sessile_core::{ListenerProtocol, PortConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::h1_server;
use crate::limits::{ConnTracker, Expiry, Limits, RequestBody, TrackedBody, TrackedIo};
use crate::pipeline::{ConnContext, handle};
use crate::state::Shared;
use crate::upstream::{UpstreamOptions, Upstreams};

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Upstream connections: connect timeout, pools, the HTTP/1.1 client.
    pub upstream: UpstreamOptions,
    /// How long in-flight requests may run after shutdown begins.
    pub shutdown_grace: Duration,
    /// Downstream limits (sizes, timeouts, connection and HTTP/2 stream limits).
    pub limits: Limits,
    /// HTTP/1.1 messages are written with `writev` straight from their head and body buffers,
    /// instead of copying each body into one buffer per `send` (docs/performance.md, "Tuning").
    pub h1_vectored_writes: bool,
    /// HTTP/1.1 requests without a body are served by `h1_server` (the connection's own task);
    /// `false` leaves every connection to hyper's server.
    pub h1_direct_server: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            upstream: UpstreamOptions::default(),
            shutdown_grace: Duration::from_secs(10),
            limits: Limits::default(),
            h1_vectored_writes: false,
            h1_direct_server: true,
        }
    }
}

/// Connection bookkeeping shared by every listener of a server.
struct ConnShared {
    limits: Arc<Limits>,
    h1_vectored_writes: bool,
    h1_direct_server: bool,
    /// One permit per open downstream connection.
    slots: Arc<Semaphore>,
    /// Bounds the tasks that answer refused connections.
    refusals: Arc<Semaphore>,
    /// Cancelled when the server shuts down: connections finish their requests and close.
    shutdown: CancellationToken,
    /// Connections being served (not counting upgraded tunnels), and a wake-up when it reaches 0.
    serving: std::sync::atomic::AtomicUsize,
    drained: Notify,
}

struct Serving(Arc<ConnShared>);

impl Serving {
    fn new(shared: &Arc<ConnShared>) -> Serving {
        shared.serving.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Serving(shared.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if self.0.serving.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

struct BoundListener {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    protocol: ListenerProtocol,
    tls: Arc<ArcSwap<Option<TlsAcceptor>>>,
}

/// Runs every listener the configuration asks for until `shutdown` resolves.
pub struct Server {
    shared: Arc<Shared>,
    upstreams: Arc<Upstreams>,
    opts: ServerOptions,
}

impl Server {
    pub fn new(shared: Arc<Shared>, opts: ServerOptions) -> Server {
        Server { upstreams: Upstreams::new(opts.upstream.clone(), opts.h1_vectored_writes), shared, opts }
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let limits = self.opts.limits.clone();
        let graceful = Arc::new(ConnShared {
            slots: Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS))),
            refusals: Arc::new(Semaphore::new(64)),
            limits: Arc::new(limits),
            h1_vectored_writes: self.opts.h1_vectored_writes,
            h1_direct_server: self.opts.h1_direct_server,
            shutdown: CancellationToken::new(),
            serving: std::sync::atomic::AtomicUsize::new(0),
            drained: Notify::new(),
        });
        let mut bound: HashMap<SocketAddr, BoundListener> = HashMap::new();
        let mut changes = self.shared.subscribe();
        tokio::pin!(shutdown);
        loop {
            let snapshot = self.shared.snapshot();
            let mut all_bound = true;
            if snapshot.version > 0 {
                all_bound = self.reconcile(&snapshot.ports, &mut bound, &graceful).await;
                // Ready means every listener is bound; an address in use is retried every second.
                if all_bound {
                    self.shared.set_ready();
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(Duration::from_secs(1)), if !all_bound => {}
            }
        }
        for (_, l) in bound.drain() {
            l.cancel.cancel();
            let _ = l.task.await;
        }
        graceful.shutdown.cancel();
        let drained = async {
            loop {
                let notified = graceful.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if graceful.serving.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(self.opts.shutdown_grace, drained).await.is_err() {
            tracing::warn!("shutdown grace period ended with requests still in flight");
        }
    }

    async fn reconcile(
        &self,
        ports: &[PortConfig],
        bound: &mut HashMap<SocketAddr, BoundListener>,
        graceful: &Arc<ConnShared>,
    ) -> bool {
        let mut all_bound = true;
        // Stop listeners that are gone or changed protocol (open connections finish).
        bound.retain(|addr, l| {
            let keep = ports.iter().any(|p| p.bind == *addr && p.protocol == l.protocol);
            if !keep {
                l.cancel.cancel();
                tracing::info!(%addr, "listener removed");
            }
            keep
        });
        for port in ports {
            let acceptor = match port.protocol {
                ListenerProtocol::Https => match tls_acceptor(port) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        tracing::error!(addr = %port.bind, error = %e, "TLS configuration rejected; listener not serving");
                        None
                    }
                },
                ListenerProtocol::Http => None,
            };
            if let Some(l) = bound.get(&port.bind) {
                l.tls.store(Arc::new(acceptor));
                continue;
            }
            let listener = match bind(port.bind).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(addr = %port.bind, error = %e, "cannot bind listener; retrying");
                    all_bound = false;
                    continue;
                }
            };
            tracing::info!(addr = %port.bind, protocol = ?port.protocol, "listening");
            let cancel = CancellationToken::new();
            let tls = Arc::new(ArcSwap::from_pointee(acceptor));
            let task = tokio::spawn(accept_loop(
                listener,
                port.bind,
                port.protocol,
                tls.clone(),
                self.shared.clone(),
                self.upstreams.clone(),
                cancel.clone(),
                graceful.clone(),
            ));
            bound.insert(port.bind, BoundListener { cancel, task, protocol: port.protocol, tls });
        }
        all_bound
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    bind: SocketAddr,
    protocol: ListenerProtocol,
    tls: Arc<ArcSwap<Option<TlsAcceptor>>>,
    shared: Arc<Shared>,
    upstreams: Arc<Upstreams>,
    cancel: CancellationToken,
    graceful: Arc<ConnShared>,
) {
    let builder = Arc::new(connection_builder(&graceful.limits, graceful.h1_vectored_writes));
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = graceful.slots.clone().try_acquire_owned() else {
            refuse(stream, protocol, &graceful);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tracker = ConnTracker::new();
        let (conn_shared, conn_upstreams) = (shared.clone(), upstreams.clone());
        let conn_limits = graceful.limits.clone();
        let context = move |sni: Option<String>| {
            Arc::new(ConnContext {
                shared: conn_shared,
                upstreams: conn_upstreams,
                bind,
                peer,
                peer_ip: http::HeaderValue::from_str(&peer.ip().to_string())
                    .unwrap_or(http::HeaderValue::from_static("unknown")),
                https: protocol == ListenerProtocol::Https,
                sni,
                limits: conn_limits,
                token_memo: Default::default(),
            })
        };
        let builder = builder.clone();
        match protocol {
            ListenerProtocol::Http => {
                let ctx = context(None);
                let io = TrackedIo::new(stream, tracker.clone(), permit);
                let direct = graceful.h1_direct_server;
                tokio::spawn(serve_connection(builder, io, ctx, tracker, Serving::new(&graceful), direct));
            }
            ListenerProtocol::Https => {
                let Some(acceptor) = tls.load_full().as_ref().clone() else { continue };
                let serving = Serving::new(&graceful);
                let handshake_timeout = graceful.limits.header_read_timeout;
                tokio::spawn(async move {
                    let Ok(Ok(stream)) = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await else {
                        return;
                    };
                    let tls = stream.get_ref().1;
                    let ctx = context(tls.server_name().map(str::to_ascii_lowercase));
                    let direct = serving.0.h1_direct_server && tls.alpn_protocol() != Some(b"h2");
                    let io = TrackedIo::new(stream, tracker.clone(), permit);
                    serve_connection(builder, io, ctx, tracker, serving, direct).await;
                });
            }
        }
    }
}

/// The hyper connection builder with every limit applied.
fn connection_builder(limits: &Limits, vectored_writes: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_headers(limits.max_request_headers)
        .max_buf_size(limits.h1_max_buf_size())
        .writev(vectored_writes)
        // The header read and idle timeouts are kept by `ConnTracker` (hyper's would also end idle connections).
        .header_read_timeout(None)
        .timer(TokioTimer::new());
    builder
        .http2()
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .max_header_list_size(limits.h2_max_header_list_size())
        .max_send_buf_size(limits.h2_max_send_buf_size)
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_timeout)
        .timer(TokioTimer::new());
    builder
}

/// Serves one connection until it ends, the server shuts down, or a timeout closes it. `direct`:
/// HTTP/1.1 requests without a body are served by `h1_server` until one needs hyper's server.
async fn serve_connection<T>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: TrackedIo<T>,
    ctx: Arc<ConnContext>,
    tracker: Arc<ConnTracker>,
    serving: Serving,
    direct: bool,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shared = serving.0.clone();
    let limits = shared.limits.clone();
    // Asks the connection to finish its request in flight and close: cancelled by the server's
    // shutdown (a child token: no second wait polled on every wake-up; requests in flight finish
    // within the server's shutdown grace) or the idle timeout.
    let graceful = shared.shutdown.child_token();
    let conn = drive_connection(builder, io, ctx, tracker.clone(), graceful.clone(), direct);
    tokio::pin!(conn);
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let fallback = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = conn.as_mut() => break,
            expiry = tracker.expired(limits.header_read_timeout, limits.idle_timeout), if closing.is_none() => {
                match expiry {
                    // The head is late (slowloris): close now.
                    Expiry::HeaderRead => break,
                    // Idle: close between requests; a request caught arriving gets its answer.
                    Expiry::Idle => {
                        graceful.cancel();
                        closing = Some(tokio::time::Instant::now() + limits.header_read_timeout);
                    }
                }
            }
            _ = fallback => break,
        }
    }
    drop(serving);
}

/// The connection's protocol work: `h1_server` first when `direct`, then hyper's server (HTTP/1.1
/// with upgrades, h2c, HTTP/2) over the bytes `h1_server` read and did not consume.
async fn drive_connection<T>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut io: TrackedIo<T>,
    ctx: Arc<ConnContext>,
    tracker: Arc<ConnTracker>,
    graceful: CancellationToken,
    direct: bool,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if direct {
        match h1_server::serve(&mut io, &ctx, &tracker, &graceful).await {
            h1_server::Served::Closed => return,
            h1_server::Served::HandOff(read_ahead) => io.put_back(read_ahead),
        }
    }
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (token, verdict) = tracker.begin_request(req.version());
        let token = Arc::new(token);
        let limit = ctx.limits.max_request_body;
        let mut req = req.map(|body| RequestBody::new(body, limit, Some(token.clone())));
        if let Some(v) = verdict {
            req.extensions_mut().insert(v);
        }
        // Boxed: the request future is large, and hyper moves it into its dispatcher (perf: memmove
        // under `recv_msg` ~1% of CPU); a box moves as a pointer.
        let handled = Box::pin(handle(ctx.clone(), req));
        async move {
            let mut resp = handled.await?;
            crate::pipeline::restore_passed_fields(&mut resp);
            Ok::<_, std::convert::Infallible>(resp.map(|body| TrackedBody::new(body, token)))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = graceful.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// Refuses a connection beyond `max_connections`: HTTP listeners answer 503 and close; HTTPS
/// listeners close (no TLS handshake is spent on it).
fn refuse(mut stream: TcpStream, protocol: ListenerProtocol, shared: &ConnShared) {
    tracing::debug!("connection limit reached; refusing a connection");
    if protocol != ListenerProtocol::Http {
        return;
    }
    let Ok(permit) = shared.refusals.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        let _permit = permit;
        const RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\n\r\ntoo many connections\n";
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            stream.write_all(RESPONSE).await?;
            stream.shutdown().await?;
            // Read what the client sent so closing does not reset the connection under the answer.
            let mut buf = [0u8; 4096];
            while tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// Picks the certificate whose hostname best matches the SNI name.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<(HostPattern, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        let best = sni.as_deref().and_then(|name| {
            self.certs
                .iter()
                .filter(|(p, _)| p.matches(name))
                .max_by_key(|(p, _)| p.specificity())
                .map(|(_, k)| k.clone())
        });
        best.or_else(|| self.certs.first().map(|(_, k)| k.clone()))
    }
}

fn tls_acceptor(port: &PortConfig) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut certs = Vec::new();
    for c in &port.certificates {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&c.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("Secret {}: tls.crt: {e}", c.secret))?;
        let key =
            PrivateKeyDer::from_pem_slice(&c.key_pem).map_err(|e| format!("Secret {}: tls.key: {e}", c.secret))?;
        let signing =
            provider.key_provider.load_private_key(key).map_err(|e| format!("Secret {}: tls.key: {e}", c.secret))?;
        certs.push((c.hostname.clone(), Arc::new(CertifiedKey::new(chain, signing))));
    }
    if certs.is_empty() {
        return Err("no certificates".into());
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
