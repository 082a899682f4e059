//! HTTP test client on hyper: HTTP/1.1, h2c and HTTPS (ALPN h2/http1.1), pooled or fresh connections, cookie jar.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http::{HeaderMap, Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::DEFAULT_TIMEOUT;

/// A request to send with [`TestClient::send`].
#[derive(Debug, Clone)]
pub struct TestRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Absolute URL; its host:port is where the client connects.
    pub url: String,
    /// Extra headers, in order (names case-insensitive, may repeat).
    pub headers: Vec<(String, String)>,
    /// Host header (HTTP/1.1) / `:authority` (HTTP/2) override; defaults to the URL authority.
    pub host: Option<String>,
    /// TLS SNI override; defaults to the host of [`host`](Self::host) or of the URL.
    pub sni: Option<String>,
    /// Request body.
    pub body: Bytes,
}

impl TestRequest {
    /// A request with the given method and absolute URL.
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Self {
            method: method.to_string(),
            url: url.into(),
            headers: Vec::new(),
            host: None,
            sni: None,
            body: Bytes::new(),
        }
    }

    /// `GET url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// `POST url`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// Sets the method.
    pub fn method(mut self, method: &str) -> Self {
        self.method = method.to_string();
        self
    }

    /// Appends a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the Host header (HTTP/1.1) or `:authority` (HTTP/2); the connect address stays the URL's.
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_string());
        self
    }

    /// Sets the TLS SNI explicitly (HTTPS only).
    pub fn sni(mut self, sni: &str) -> Self {
        self.sni = Some(sni.to_string());
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
    }
}

/// A fully received response.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
    /// Trailers, if the response had any.
    pub trailers: Option<HeaderMap>,
    /// Protocol version the response came over.
    pub version: Version,
}

impl TestResponse {
    /// Value of the `x-backend` header (which test backend answered).
    pub fn backend(&self) -> Option<String> {
        self.header("x-backend").map(str::to_string)
    }

    /// First value of header `name`, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
    }

    /// Every `Set-Cookie` value, in order.
    pub fn set_cookies(&self) -> Vec<String> {
        self.header_all("set-cookie")
    }

    /// Value of trailer `name`, if the response had trailers.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref()?.get(name).and_then(|v| v.to_str().ok())
    }

    /// Body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body parsed as JSON. Panics with the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("response body is not JSON ({e}); status {}, body: {:?}", self.status, self.text())
        })
    }
}

/// A minimal cookie jar, like `curl -b/-c`: keeps `name=value` of every `Set-Cookie`, ignoring
/// domain and path; `Max-Age=0` (or negative) removes the cookie.
#[derive(Debug, Clone, Default)]
pub struct CookieJar {
    cookies: BTreeMap<String, String>,
}

impl CookieJar {
    /// An empty jar.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores (or removes) the cookies set by `resp`.
    pub fn update(&mut self, resp: &TestResponse) {
        for sc in resp.set_cookies() {
            self.apply_set_cookie(&sc);
        }
    }

    /// Applies one `Set-Cookie` value.
    pub fn apply_set_cookie(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            return;
        };
        let name = name.trim();
        if name.is_empty() {
            return;
        }
        let expired = parts.any(|attr| {
            attr.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("max-age") && v.trim().parse::<i64>().is_ok_and(|age| age <= 0)
            })
        });
        if expired {
            self.cookies.remove(name);
        } else {
            self.cookies.insert(name.to_string(), value.trim().to_string());
        }
    }

    /// Value of cookie `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// Sets a cookie by hand.
    pub fn set(&mut self, name: &str, value: &str) {
        self.cookies.insert(name.to_string(), value.to_string());
    }

    /// Removes a cookie.
    pub fn remove(&mut self, name: &str) {
        self.cookies.remove(name);
    }

    /// Number of cookies.
    pub fn len(&self) -> usize {
        self.cookies.len()
    }

    /// Whether the jar is empty.
    pub fn is_empty(&self) -> bool {
        self.cookies.is_empty()
    }

    /// `Cookie` header value (`a=1; b=2`, sorted by name), or `None` if empty.
    pub fn cookie_header(&self) -> Option<String> {
        if self.cookies.is_empty() {
            return None;
        }
        Some(self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
    }
}

#[derive(Clone)]
enum Mode {
    Http1,
    H2c,
    Https(Arc<rustls::ClientConfig>),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    target: String,
    sni: Option<String>,
}

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// HTTP client for tests. Cloning shares the connection pool.
///
/// Pooled by default (idle HTTP/1.1 connections and HTTP/2 connections are reused per
/// connect address and SNI); [`fresh_connections(true)`](Self::fresh_connections) opens a new
/// TCP connection for every request. Every request is bounded by a timeout (5 s default).
#[derive(Clone)]
pub struct TestClient {
    mode: Mode,
    fresh: bool,
    timeout: Duration,
    pool: Arc<Mutex<HashMap<PoolKey, Vec<Conn>>>>,
}

impl std::fmt::Debug for TestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Http1 => "http1",
            Mode::H2c => "h2c",
            Mode::Https(_) => "https",
        };
        f.debug_struct("TestClient")
            .field("mode", &mode)
            .field("fresh", &self.fresh)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TestClient {
    fn with_mode(mode: Mode) -> Self {
        Self { mode, fresh: false, timeout: DEFAULT_TIMEOUT, pool: Arc::default() }
    }

    /// Plain-text HTTP/1.1.
    pub fn http1() -> Self {
        Self::with_mode(Mode::Http1)
    }

    /// Plain-text HTTP/2 with prior knowledge (h2c).
    pub fn h2c() -> Self {
        Self::with_mode(Mode::H2c)
    }

    /// HTTPS trusting `root_ca_pem`; offers ALPN `h2, http/1.1` if `alpn_h2`, else `http/1.1`,
    /// and speaks whatever was negotiated (HTTP/1.1 if none).
    pub fn https(root_ca_pem: &[u8], alpn_h2: bool) -> anyhow::Result<Self> {
        let alpn: &[&[u8]] = if alpn_h2 { &[b"h2", b"http/1.1"] } else { &[b"http/1.1"] };
        Ok(Self::https_with_config(crate::tls::client_config(root_ca_pem, alpn)?))
    }

    /// HTTPS with a caller-built rustls config (ALPN taken from it).
    pub fn https_with_config(config: Arc<rustls::ClientConfig>) -> Self {
        Self::with_mode(Mode::Https(config))
    }

    /// `true`: a new TCP connection per request; `false` (default): reuse pooled connections.
    pub fn fresh_connections(mut self, fresh: bool) -> Self {
        self.fresh = fresh;
        self
    }

    /// Per-request time limit (connect + TLS + request + whole body); default 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Drops every pooled connection, so the next request connects anew.
    pub fn close_idle(&self) {
        self.pool.lock().expect("pool lock").clear();
    }

    /// Sends `req` and reads the whole response (body and trailers), bounded by the timeout.
    pub async fn send(&self, req: TestRequest) -> anyhow::Result<TestResponse> {
        let what = format!("{} {}", req.method, req.url);
        tokio::time::timeout(self.timeout, self.send_inner(&req))
            .await
            .map_err(|_| anyhow!("{what}: no complete response within {:?}", self.timeout))?
            .with_context(|| what)
    }

    /// Like [`send`](Self::send), adding the jar's `Cookie` header and storing the response's cookies.
    pub async fn send_with_jar(&self, mut req: TestRequest, jar: &mut CookieJar) -> anyhow::Result<TestResponse> {
        if let Some(cookies) = jar.cookie_header() {
            match req.headers.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case("cookie")) {
                Some((_, v)) => *v = format!("{v}; {cookies}"),
                None => req.headers.push(("cookie".to_string(), cookies)),
            }
        }
        let resp = self.send(req).await?;
        jar.update(&resp);
        Ok(resp)
    }

    async fn send_inner(&self, req: &TestRequest) -> anyhow::Result<TestResponse> {
        let uri: Uri = req.url.parse().context("parse URL")?;
        let tls = matches!(self.mode, Mode::Https(_));
        let host = uri.host().context("URL has no host")?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let target = format!("{host}:{port}");
        let url_authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_else(|| target.clone());
        let authority = req.host.clone().unwrap_or(url_authority);
        let path = uri.path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_else(|| "/".to_string());
        let sni = req.sni.clone().unwrap_or_else(|| authority_host(&authority).to_string());
        let key = PoolKey { target, sni: tls.then_some(sni) };

        let mut pooled = if self.fresh { None } else { self.checkout(&key).await };
        loop {
            let reused = pooled.is_some();
            let conn = match pooled.take() {
                Some(c) => c,
                None => self.connect(&key).await?,
            };
            let scheme = if tls { "https" } else { "http" };
            let result = match conn {
                Conn::H1(mut sender) => {
                    let request = build_request(req, false, scheme, &authority, &path)?;
                    let res = sender.send_request(request).await;
                    match res {
                        Ok(resp) => {
                            let out = collect(resp).await;
                            if !self.fresh && out.is_ok() && !sender.is_closed() {
                                self.checkin(&key, Conn::H1(sender));
                            }
                            out
                        }
                        Err(e) => Err(e),
                    }
                }
                Conn::H2(mut sender) => {
                    let request = build_request(req, true, scheme, &authority, &path)?;
                    let res = sender.send_request(request).await;
                    match res {
                        Ok(resp) => collect(resp).await,
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok(resp) => return Ok(resp),
                // A pooled connection the peer closed while idle: retry once on a new one.
                Err(e) if reused && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn checkout(&self, key: &PoolKey) -> Option<Conn> {
        loop {
            let candidate = {
                let mut pool = self.pool.lock().expect("pool lock");
                let conns = pool.get_mut(key)?;
                match conns.pop()? {
                    Conn::H2(s) if !s.is_closed() => {
                        let clone = s.clone();
                        conns.push(Conn::H2(s));
                        Conn::H2(clone)
                    }
                    other => other,
                }
            };
            let ready = match candidate {
                Conn::H1(mut s) => {
                    let ok = matches!(tokio::time::timeout(Duration::from_millis(500), s.ready()).await, Ok(Ok(())));
                    ok.then_some(Conn::H1(s))
                }
                Conn::H2(mut s) => {
                    let ok = matches!(tokio::time::timeout(Duration::from_millis(500), s.ready()).await, Ok(Ok(())));
                    if !ok {
                        // Closed or stuck: forget every copy of this HTTP/2 connection.
                        if let Some(conns) = self.pool.lock().expect("pool lock").get_mut(key) {
                            conns.retain(|c| !matches!(c, Conn::H2(_)));
                        }
                    }
                    ok.then_some(Conn::H2(s))
                }
            };
            if ready.is_some() {
                return ready;
            }
        }
    }

    fn checkin(&self, key: &PoolKey, conn: Conn) {
        self.pool.lock().expect("pool lock").entry(key.clone()).or_default().push(conn);
    }

    async fn connect(&self, key: &PoolKey) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(&key.target).await.with_context(|| format!("connect to {}", key.target))?;
        let _ = tcp.set_nodelay(true);
        let conn = match &self.mode {
            Mode::Http1 => handshake(tcp, false).await?,
            Mode::H2c => handshake(tcp, true).await?,
            Mode::Https(config) => {
                let sni = key.sni.clone().unwrap_or_default();
                let server_name = ServerName::try_from(sni.clone()).with_context(|| format!("invalid SNI {sni:?}"))?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(server_name, tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {} (SNI {sni})", key.target))?;
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                handshake(stream, h2).await?
            }
        };
        if let Conn::H2(s) = &conn
            && !self.fresh
        {
            self.checkin(key, Conn::H2(s.clone()));
        }
        Ok(conn)
    }
}

async fn handshake<IO>(io: IO, h2: bool) -> anyhow::Result<Conn>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.context("HTTP/2 handshake")?;
        tokio::spawn(conn);
        Ok(Conn::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await.context("HTTP/1.1 handshake")?;
        tokio::spawn(conn.with_upgrades());
        Ok(Conn::H1(sender))
    }
}

fn build_request(
    req: &TestRequest,
    h2: bool,
    scheme: &str,
    authority: &str,
    path: &str,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let uri = if h2 { format!("{scheme}://{authority}{path}") } else { path.to_string() };
    let mut builder = Request::builder().method(req.method.as_str()).uri(uri).version(if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    });
    if !h2 && !req.has_header("host") {
        builder = builder.header(http::header::HOST, authority);
    }
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    builder.body(Full::new(req.body.clone())).context("build request")
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> hyper::Result<TestResponse> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(TestResponse {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
        version: parts.version,
    })
}

/// Host part of an authority (`example.com:8443` → `example.com`, `[::1]:80` → `::1`).
fn authority_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_host_strips_port() {
        assert_eq!(authority_host("example.com:8443"), "example.com");
        assert_eq!(authority_host("example.com"), "example.com");
        assert_eq!(authority_host("[::1]:80"), "::1");
        assert_eq!(authority_host("127.0.0.1:1"), "127.0.0.1");
    }

    #[test]
    fn jar_sets_and_expires() {
        let mut jar = CookieJar::new();
        jar.apply_set_cookie("a=1; Path=/");
        jar.apply_set_cookie("b=2");
        assert_eq!(jar.cookie_header().as_deref(), Some("a=1; b=2"));
        jar.apply_set_cookie("a=; Max-Age=0; Path=/");
        assert_eq!(jar.cookie_header().as_deref(), Some("b=2"));
        jar.apply_set_cookie("b=3; max-age=60");
        assert_eq!(jar.get("b"), Some("3"));
    }
}
