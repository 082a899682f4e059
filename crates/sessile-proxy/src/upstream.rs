//! Upstream connections: a per-endpoint pool of HTTP/1.1 connections and shared h2c connections.
//!
//! Connecting is separate from sending so that a refused connect leaves the request in hand for
//! another endpoint (a request is never retried once it was sent).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sessile_core::UpstreamProtocol;
use tokio::net::TcpStream;

use crate::error::ProxyError;
use crate::limits::RequestBody;

const MAX_IDLE_PER_ENDPOINT: usize = 256;

pub struct Upstreams {
    idle_h1: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<RequestBody>>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<RequestBody>>>,
    pub connect_timeout: Duration,
    /// `writev` from the message's buffers rather than one copied buffer per `send` (see `ServerOptions`).
    vectored_writes: bool,
}

/// A connection ready to take one request.
pub enum Conn {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, vectored_writes: bool) -> Arc<Upstreams> {
        Arc::new(Upstreams { idle_h1: Mutex::default(), h2: Mutex::default(), connect_timeout, vectored_writes })
    }

    /// A connection to `addr`: pooled when possible. Errors here are connect errors (retryable).
    /// `dedicated` skips the pool (protocol upgrades take the connection for good).
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        dedicated: bool,
    ) -> Result<Conn, ProxyError> {
        match protocol {
            UpstreamProtocol::Http1 => {
                if !dedicated {
                    loop {
                        let pooled =
                            self.idle_h1.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&addr).and_then(Vec::pop);
                        let Some(mut sender) = pooled else { break };
                        if sender.is_closed() {
                            continue;
                        }
                        if sender.ready().await.is_ok() {
                            return Ok(Conn::H1(sender));
                        }
                    }
                }
                let io = self.connect(addr).await?;
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
                let io = self.connect(addr).await?;
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

    async fn connect(&self, addr: SocketAddr) -> Result<TokioIo<TcpStream>, ProxyError> {
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ProxyError::connect(format!("connect to {addr}: {e}"))),
            Err(_) => return Err(ProxyError::connect(format!("connect to {addr}: timed out"))),
        };
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    /// Sends the request on `conn`; the response body returns an HTTP/1.1 connection to the pool when it ends.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        conn: Conn,
        req: Request<RequestBody>,
        reusable: bool,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        match conn {
            Conn::H1(mut sender) => {
                let resp = sender.send_request(req).await.map_err(|e| ProxyError::upstream(format!("{addr}: {e}")))?;
                let mut release = reusable.then(|| Release { pool: self.clone(), addr, sender });
                if resp.body().is_end_stream()
                    && let Some(r) = release.take()
                {
                    r.run();
                }
                Ok(resp.map(|inner| UpstreamBody { inner, release, deadline: None }))
            }
            Conn::H2(mut sender) => {
                let resp = sender.send_request(req).await.map_err(|e| ProxyError::upstream(format!("{addr}: {e}")))?;
                Ok(resp.map(|inner| UpstreamBody { inner, release: None, deadline: None }))
            }
        }
    }

    fn give_back(&self, addr: SocketAddr, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle_h1.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(sender);
        }
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
    inner: Incoming,
    release: Option<Release>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl UpstreamBody {
    /// Ends the body with an error if it is not complete at `deadline`.
    pub fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
        self
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx).map_err(BoxError::from);
        if polled.is_pending()
            && let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            // The connection is mid-response: never pool it.
            this.release = None;
            return Poll::Ready(Some(Err(BoxError::from("request timeout reached while streaming the response"))));
        }
        // The server may stop polling once `is_end_stream` is true, so release on the last frame too.
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if done && let Some(r) = this.release.take() {
            r.run();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
