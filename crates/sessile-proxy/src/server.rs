//! Listeners: binds what the snapshot asks for, serves HTTP/1.1, h2c and TLS, and shuts down gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sessile_core::hostname::HostPattern;
use sessile_core::{ListenerProtocol, PortConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{ConnContext, handle};
use crate::state::Shared;
use crate::upstream::Upstreams;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// How long in-flight requests may run after shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { connect_timeout: Duration::from_secs(2), shutdown_grace: Duration::from_secs(10) }
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
        Server { upstreams: Upstreams::new(opts.connect_timeout), shared, opts }
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let graceful = Arc::new(GracefulShutdown::new());
        let mut bound: HashMap<SocketAddr, BoundListener> = HashMap::new();
        let mut changes = self.shared.subscribe();
        tokio::pin!(shutdown);
        loop {
            let snapshot = self.shared.snapshot();
            if snapshot.version > 0 {
                self.reconcile(&snapshot.ports, &mut bound, &graceful).await;
                self.shared.set_ready();
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = &mut shutdown => break,
            }
        }
        for (_, l) in bound.drain() {
            l.cancel.cancel();
            let _ = l.task.await;
        }
        let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
        if tokio::time::timeout(self.opts.shutdown_grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("shutdown grace period ended with requests still in flight");
        }
    }

    async fn reconcile(
        &self,
        ports: &[PortConfig],
        bound: &mut HashMap<SocketAddr, BoundListener>,
        graceful: &Arc<GracefulShutdown>,
    ) {
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
                    tracing::error!(addr = %port.bind, error = %e, "cannot bind listener");
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
    graceful: Arc<GracefulShutdown>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
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
        let _ = stream.set_nodelay(true);
        let (conn_shared, conn_upstreams) = (shared.clone(), upstreams.clone());
        let context = move |sni: Option<String>| {
            Arc::new(ConnContext {
                shared: conn_shared,
                upstreams: conn_upstreams,
                bind,
                peer,
                https: protocol == ListenerProtocol::Https,
                sni,
            })
        };
        let builder = builder.clone();
        match protocol {
            ListenerProtocol::Http => {
                let ctx = context(None);
                let service = service_fn(move |req| handle(ctx.clone(), req));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let watched = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = watched.await;
                });
            }
            ListenerProtocol::Https => {
                let Some(acceptor) = tls.load_full().as_ref().clone() else { continue };
                let graceful = graceful.clone();
                tokio::spawn(async move {
                    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let ctx = context(stream.get_ref().1.server_name().map(str::to_ascii_lowercase));
                    let service = service_fn(move |req| handle(ctx.clone(), req));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let _ = graceful.watch(conn).await;
                });
            }
        }
    }
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
