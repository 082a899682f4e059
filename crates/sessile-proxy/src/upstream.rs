//! Upstream connections: per-endpoint pools of HTTP/1.1 connections (direct ones for bodiless
//! requests, hyper's for the rest) and shared h2c connections.
//!
//! Connecting is separate from sending so that a refused connect leaves the request in hand for
//! another endpoint. A request that was sent is retried only when it is idempotent, went out on a
//! reused direct connection, and that connection closed before any byte of a response (the backend
//! closed it while idle: the request cannot have been processed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sessile_core::UpstreamProtocol;
use tokio::net::TcpStream;

use crate::direct_h1::{self, DirectBody, DirectConn, ExchangeError, PassedFields};
use crate::error::ProxyError;
use crate::limits::RequestBody;
use crate::pipeline::PassesFields;

/// How connections to backends are made and kept (`sessile serve --upstream-*`).
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Connect timeout (`--upstream-connect-timeout`).
    pub connect_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per endpoint, in each pool (`--upstream-max-idle`).
    pub max_idle_per_endpoint: usize,
    /// An idle HTTP/1.1 connection older than this is closed, not reused (`--upstream-idle-timeout`).
    pub idle_timeout: Duration,
    /// Bodiless HTTP/1.1 requests use direct connections (`direct_h1`); false sends every request
    /// through hyper's client (`--h1-upstream-client hyper`).
    pub direct_h1: bool,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            connect_timeout: Duration::from_secs(2),
            max_idle_per_endpoint: 256,
            // Above the keep-alive timeouts backends commonly use (nginx 75 s), so the backend
            // usually closes first; hyper-util's pool uses the same.
            idle_timeout: Duration::from_secs(90),
            direct_h1: true,
        }
    }
}

/// The X-Forwarded-* fields the gateway adds to every request towards a backend. Each client
/// adds them its own way: the direct one writes them after the request's fields (no insert into
/// a full header map, which grows and rehashes it), hyper's clients insert them.
pub struct Forwarded {
    /// The whole `X-Forwarded-For` value (earlier hops, then the client's address).
    pub forwarded_for: HeaderValue,
    pub https: bool,
}

impl Forwarded {
    pub fn proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.https { "https" } else { "http" })
    }

    fn insert_into(self, headers: &mut http::HeaderMap) {
        let proto = self.proto();
        headers.insert(HeaderName::from_static("x-forwarded-for"), self.forwarded_for);
        headers.insert(HeaderName::from_static("x-forwarded-proto"), proto);
    }
}

/// Idle connections by endpoint, newest last.
type Pool<T> = Mutex<HashMap<SocketAddr, Vec<T>, AddrHash>>;

pub struct Upstreams {
    /// Each connection with the time it went idle.
    idle_h1: Pool<(http1::SendRequest<RequestBody>, Instant)>,
    /// Boxed: connections leave the pool as the boxes the request moves around.
    idle_direct: Pool<Box<DirectConn>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<RequestBody>>>,
    opts: UpstreamOptions,
    /// `writev` from the message's buffers rather than one copied buffer per `send` (see `ServerOptions`).
    vectored_writes: bool,
}

/// A connection ready to take one request.
pub enum Conn {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
    Direct(Box<DirectConn>),
}

/// What the request needs from its connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Exchange {
    /// No request body (`Content-Length: 0` or none) and no upgrade: a direct HTTP/1.1 exchange.
    Bodiless,
    /// A request body to stream.
    WithBody,
    /// A protocol upgrade: the connection is taken for good, never pooled.
    Upgrade,
}

impl Upstreams {
    pub fn new(opts: UpstreamOptions, vectored_writes: bool) -> Arc<Upstreams> {
        Arc::new(Upstreams {
            idle_h1: Mutex::default(),
            idle_direct: Mutex::default(),
            h2: Mutex::default(),
            opts,
            vectored_writes,
        })
    }

    /// A connection to `addr`: pooled when possible. Errors here are connect errors (retryable).
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        exchange: Exchange,
    ) -> Result<Conn, ProxyError> {
        match protocol {
            UpstreamProtocol::Http1 if exchange == Exchange::Bodiless && self.opts.direct_h1 => {
                let now = Instant::now();
                loop {
                    let pooled =
                        self.idle_direct.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&addr).and_then(Vec::pop);
                    match pooled {
                        Some(conn) if conn.is_reusable(now, self.opts.idle_timeout) => return Ok(Conn::Direct(conn)),
                        Some(_) => continue,
                        None => break,
                    }
                }
                Ok(Conn::Direct(DirectConn::new(self.connect(addr).await?)))
            }
            UpstreamProtocol::Http1 => {
                if exchange != Exchange::Upgrade {
                    let now = Instant::now();
                    loop {
                        let pooled =
                            self.idle_h1.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&addr).and_then(Vec::pop);
                        let Some((mut sender, idle_since)) = pooled else { break };
                        if sender.is_closed() || now.saturating_duration_since(idle_since) >= self.opts.idle_timeout {
                            continue;
                        }
                        if sender.ready().await.is_ok() {
                            return Ok(Conn::H1(sender));
                        }
                    }
                }
                let io = TokioIo::new(self.connect(addr).await?);
                let (sender, conn) = http1::Builder::new()
                    .writev(self.vectored_writes)
                    .handshake(io)
                    .await
                    .map_err(|e| ProxyError::connect(format!("HTTP/1.1 handshake with {addr}: {e}")))?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                Ok(Conn::H1(sender))
            }
            UpstreamProtocol::H2c => {
                let existing = self.h2.lock().unwrap_or_else(|e| e.into_inner()).get(&addr).cloned();
                if let Some(mut sender) = existing
                    && !sender.is_closed()
                    && sender.ready().await.is_ok()
                {
                    return Ok(Conn::H2(sender));
                }
                let io = TokioIo::new(self.connect(addr).await?);
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .map_err(|e| ProxyError::connect(format!("h2c handshake with {addr}: {e}")))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                self.h2.lock().unwrap_or_else(|e| e.into_inner()).insert(addr, sender.clone());
                Ok(Conn::H2(sender))
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ProxyError> {
        let stream = match tokio::time::timeout(self.opts.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ProxyError::connect(format!("connect to {addr}: {e}"))),
            Err(_) => return Err(ProxyError::connect(format!("connect to {addr}: timed out"))),
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends the request on `conn`; the response body returns an HTTP/1.1 connection to the pool when it ends.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        conn: Conn,
        req: &mut Request<RequestBody>,
        forwarded: Forwarded,
        reusable: bool,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        match conn {
            Conn::Direct(conn) => self.exchange(addr, conn, req, &forwarded).await,
            Conn::H1(mut sender) => {
                let mut req = std::mem::take(req);
                forwarded.insert_into(req.headers_mut());
                let resp = sender.send_request(req).await.map_err(|e| ProxyError::upstream(format!("{addr}: {e}")))?;
                let mut release = reusable.then(|| Release { pool: self.clone(), addr, sender });
                if resp.body().is_end_stream()
                    && let Some(r) = release.take()
                {
                    r.run();
                }
                Ok(resp.map(|body| UpstreamBody { inner: Inner::Hyper { body, release }, deadline: None }))
            }
            Conn::H2(mut sender) => {
                let mut req = std::mem::take(req);
                forwarded.insert_into(req.headers_mut());
                let resp = sender.send_request(req).await.map_err(|e| ProxyError::upstream(format!("{addr}: {e}")))?;
                Ok(resp.map(|body| UpstreamBody { inner: Inner::Hyper { body, release: None }, deadline: None }))
            }
        }
    }

    /// A bodiless request over a direct connection. The request stays with the caller (moving
    /// it into each phase's state cost a copy per phase); its header map goes back to the pool.
    async fn exchange(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut conn: Box<DirectConn>,
        req: &mut Request<RequestBody>,
        forwarded: &Forwarded,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        conn.encode_request(req, forwarded);
        direct_h1::recycle_header_map(std::mem::take(req.headers_mut()));
        let method = req.method();
        let (head, framing, passed) = match conn.round_trip(method).await {
            Ok(r) => r,
            Err(ExchangeError::ClosedBeforeResponse(e)) if conn.served() > 1 && method.is_idempotent() => {
                tracing::debug!(endpoint = %addr, error = %e, "pooled connection closed while idle; sending again on a new one");
                let mut fresh = DirectConn::new(self.connect(addr).await.map_err(|e| ProxyError::upstream(e.message))?);
                fresh.take_request_from(&mut conn);
                let r = fresh.round_trip(method).await;
                conn = fresh;
                r.map_err(|e| ProxyError::upstream(format!("{addr}: {e}")))?
            }
            Err(e) => return Err(ProxyError::upstream(format!("{addr}: {e}"))),
        };
        let body = DirectBody::new(conn, framing, passed, self.clone(), addr);
        Ok(head.map(|()| UpstreamBody { inner: Inner::Direct(body), deadline: None }))
    }

    pub(crate) fn give_back_direct(&self, addr: SocketAddr, conn: Box<DirectConn>) {
        let mut idle = self.idle_direct.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        // The oldest connection (at the bottom) goes when the list is full or it idled too long.
        if list.len() >= self.opts.max_idle_per_endpoint
            || list.first().is_some_and(|c| c.idled_out(conn.idle_since(), self.opts.idle_timeout))
        {
            if list.is_empty() {
                return;
            }
            list.remove(0);
        }
        list.push(conn);
    }

    fn give_back(&self, addr: SocketAddr, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle_h1.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < self.opts.max_idle_per_endpoint {
            list.push((sender, Instant::now()));
        }
    }
}

/// Hashes endpoint addresses for the pools without SipHash (~200 instructions per lookup, twice
/// per request): the keys come from the configuration, not from clients.
#[derive(Default, Clone, Copy)]
struct AddrHash;

impl std::hash::BuildHasher for AddrHash {
    type Hasher = AddrHasher;
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher(0)
    }
}

struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        // FxHash's step: rotate, mix in, multiply by an odd constant.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

struct Release {
    pool: Arc<Upstreams>,
    addr: SocketAddr,
    sender: http1::SendRequest<RequestBody>,
}

impl Release {
    fn run(self) {
        self.pool.give_back(self.addr, self.sender);
    }
}

/// An upstream response body; returns its connection to the pool once fully read, and fails
/// (ending the response early) when the route's request timeout passes mid-body.
pub struct UpstreamBody {
    inner: Inner,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

enum Inner {
    Hyper { body: Incoming, release: Option<Release> },
    Direct(DirectBody),
}

impl UpstreamBody {
    /// Ends the body with an error if it is not complete at `deadline`.
    pub fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
        self
    }
}

impl PassesFields for UpstreamBody {
    fn passed_fields(&self) -> Option<&PassedFields> {
        match &self.inner {
            Inner::Direct(body) => Some(body.passed_fields()),
            Inner::Hyper { .. } => None,
        }
    }

    fn passed_fields_mut(&mut self) -> Option<&mut PassedFields> {
        match &mut self.inner {
            Inner::Direct(body) => Some(body.passed_fields_mut()),
            Inner::Hyper { .. } => None,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Hyper { body, release } => {
                let polled = Pin::new(&mut *body).poll_frame(cx).map_err(BoxError::from);
                // The server may stop polling once `is_end_stream` is true, so release on the last frame too.
                let done = match &polled {
                    Poll::Ready(None) => true,
                    // Trailers end a body (and hyper's server stops polling at them).
                    Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || body.is_end_stream(),
                    _ => false,
                };
                if done && let Some(r) = release.take() {
                    r.run();
                }
                polled
            }
            Inner::Direct(body) => body.poll_frame(cx),
        };
        if polled.is_pending()
            && let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            // The connection is mid-response: never pool it.
            match &mut this.inner {
                Inner::Hyper { release, .. } => *release = None,
                Inner::Direct(body) => body.abandon(),
            }
            return Poll::Ready(Some(Err(BoxError::from("request timeout reached while streaming the response"))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper { body, .. } => body.is_end_stream(),
            Inner::Direct(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper { body, .. } => body.size_hint(),
            Inner::Direct(body) => body.size_hint(),
        }
    }
}
