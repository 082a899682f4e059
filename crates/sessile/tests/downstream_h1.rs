//! HTTP/1.1 from clients, over raw sockets, against both downstream servers (direct `h1_server` and hyper's).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sessile_testkit::raw::{RawResponse, parse_responses, status_line};
use sessile_testkit::{TestBackend, TestClient, TestRequest, start_backend, tls, within, ws};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// Bound on every wait in this file that is expected to end (a response, a close, a backend event).
const WAIT: Duration = Duration::from_secs(5);

/// The gateway's two HTTP/1.1 downstream servers: every case runs against both.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Server {
    /// Bodiless HTTP/1.1 requests answered by the connection's own task (the default).
    Direct,
    /// hyper's server for every connection (`--h1-server hyper`).
    Hyper,
}

crate::test_matrix!(Server { direct => Direct, hyper_server => Hyper }: [
    pipelined_gets_are_answered_in_order_and_the_connection_stays_open,
    get_post_get_on_one_connection_loses_and_duplicates_nothing,
    head_keeps_the_backend_length_sends_no_body_and_stays_in_step,
    connection_close_is_answered_with_close_then_a_fin,
    http10_request_without_keep_alive_is_answered_then_closed,
    large_responses_arrive_intact_and_the_connection_is_reused,
    streamed_response_is_chunked_flushed_early_and_the_connection_reused,
    truncated_backend_body_never_looks_complete,
    half_close_mid_request_is_answered_by_the_direct_server_and_aborts_on_hyper,
    client_reset_mid_request_drops_it_and_other_connections_are_served,
    websocket_upgrade_after_a_plain_get_on_the_same_connection,
    tls_http1_connection_is_kept_alive_and_tls_h2_still_works,
    every_response_carries_one_valid_date,
    expect_100_continue_gets_continue_then_the_final_response,
    h2c_prior_knowledge_is_served,
]);

// ---- Gateway setup -----------------------------------------------------------------------------

/// A Service `name` whose one endpoint is 127.0.0.1:`port`.
fn service_on(name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-ep\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  targetRef: {{kind: Pod, name: {name}-pod, uid: uid-{name}}}\n"
    )
}

/// A gateway with an HTTP listener (HTTPS with the `localhost` certificate if `https`) routing each
/// path prefix to the backend on its port, served by `server`.
async fn gateway_on(server: Server, https: bool, routes: &[(&str, u16)]) -> TestGateway {
    let port = free_port();
    let config = TempDir::new("config");
    if https {
        config.write("secret.yaml", &tls_secret_yaml("cert", tls::LOCALHOST_CERT_PEM, tls::LOCALHOST_KEY_PEM));
        config.write("gw.yaml", &https_gateway_yaml(port, "cert"));
    } else {
        config.write("gw.yaml", &gateway_yaml(port));
    }
    let mut services = String::new();
    let mut rules = Vec::new();
    for (i, (prefix, backend_port)) in routes.iter().enumerate() {
        services.push_str(&service_on(&format!("svc{i}"), *backend_port));
        rules.push(rule_yaml(prefix, &format!("[{{name: svc{i}, port: 80}}]"), None));
    }
    config.write("svc.yaml", &services);
    config.write("route.yaml", &route_yaml("r", None, &rules));
    start_gateway_with(config, TempDir::new("state"), port, |o| o.h1_direct_server = server == Server::Direct).await
}

async fn gateway(server: Server, routes: &[(&str, u16)]) -> TestGateway {
    gateway_on(server, false, routes).await
}

/// A testkit echo backend (JSON echo of method, path, headers and body; WebSocket echo).
async fn echo_backend(name: &str) -> TestBackend {
    start_backend(name).await.expect("echo backend starts")
}

/// The JSON echo in `resp`'s body.
fn echo(resp: &RawResponse) -> serde_json::Value {
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!("not a JSON echo ({e}): status {}, body {:?}", resp.status, String::from_utf8_lossy(&resp.body))
    })
}

/// `resp` is the echo backend's 200 to `method path` with request body `body`.
fn assert_echo(resp: &RawResponse, method: &str, path: &str, body: &str) {
    let j = echo(resp);
    assert_eq!(
        (resp.status, j["method"].as_str(), j["path"].as_str(), j["body"].as_str()),
        (200, Some(method), Some(path), Some(body)),
        "response to {method} {path}"
    );
}

// ---- Raw backend ---------------------------------------------------------------------------------

/// What a [`RawBackend`] does with one request.
enum Reply {
    /// Writes these bytes and waits for the next request.
    Send(Vec<u8>),
    /// Writes these bytes, then closes (FIN).
    SendThenClose(Vec<u8>),
    /// Writes `first`, then `rest` once `gate` is notified, then waits for the next request.
    Gated { first: Vec<u8>, gate: Arc<Notify>, rest: Vec<u8> },
    /// Never answers; notifies `closed` once the gateway closes the connection.
    HoldUntilClosed(Arc<Notify>),
}

/// `200 OK` with `Content-Length` and `body`.
fn ok(body: &str) -> Reply {
    Reply::Send(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}", body.len()).into(),
    )
}

type Responder = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// A backend on a raw socket: reads request heads (and `Content-Length` bodies), reports each
/// request line, and does what `respond(target)` says.
struct RawBackend {
    port: u16,
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(respond: impl Fn(&str) -> Reply + Send + Sync + 'static) -> RawBackend {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind raw backend");
        let port = listener.local_addr().expect("raw backend address").port();
        let (tx, rx) = mpsc::unbounded_channel();
        let respond: Responder = Arc::new(respond);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(raw_backend_connection(stream, respond.clone(), tx.clone()));
            }
        });
        RawBackend { port, arrivals: tokio::sync::Mutex::new(rx), task }
    }

    /// The request line of the next request that reached the backend (bounded by `WAIT`).
    async fn arrived(&self) -> String {
        within(WAIT, async { self.arrivals.lock().await.recv().await })
            .await
            .expect("a request reaches the backend in time")
            .expect("backend running")
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn raw_backend_connection(mut stream: TcpStream, respond: Responder, arrivals: mpsc::UnboundedSender<String>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            buf.reserve(16 * 1024);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            buf.reserve(16 * 1024);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        buf.drain(..head_end + length);
        let line = head.lines().next().unwrap_or_default().to_string();
        let reply = respond(line.split(' ').nth(1).unwrap_or_default());
        let _ = arrivals.send(line);
        match reply {
            Reply::Send(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::SendThenClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                return;
            }
            Reply::Gated { first, gate, rest } => {
                if stream.write_all(&first).await.is_err() {
                    return;
                }
                gate.notified().await;
                if stream.write_all(&rest).await.is_err() {
                    return;
                }
            }
            Reply::HoldUntilClosed(closed) => {
                loop {
                    buf.reserve(1024);
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                closed.notify_one();
                return;
            }
        }
    }
}

// ---- Raw client side -----------------------------------------------------------------------------

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

/// How the gateway ended a connection.
#[derive(Debug, PartialEq)]
enum Ended {
    Fin,
    Reset,
}

/// A client connection to the gateway, with the bytes read and not yet taken.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

async fn connect(gw: &TestGateway) -> Conn<TcpStream> {
    let stream = within(WAIT, TcpStream::connect(gw.addr())).await.expect("connect in time").expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    Conn { stream, buf: Vec::new() }
}

/// Whether `resp` is delimited by its own framing (not by the end of the stream).
fn self_delimited(resp: &RawResponse) -> bool {
    matches!(resp.status, 100..=199 | 204 | 304)
        || resp.header("content-length").is_some()
        || resp.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
}

/// Takes the first `n` responses off `buf` if they are complete (and self-delimited).
fn take_responses(buf: &mut Vec<u8>, n: usize) -> Option<Vec<RawResponse>> {
    let complete = |k: usize| {
        let resps = parse_responses(&buf[..k]);
        resps.len() >= n && resps[..n].iter().all(self_delimited)
    };
    if !complete(buf.len()) {
        return None;
    }
    // The shortest prefix holding all `n`: where they end.
    let (mut lo, mut hi) = (0, buf.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if complete(mid) { hi = mid } else { lo = mid + 1 }
    }
    let resps = parse_responses(&buf[..lo]).into_iter().take(n).collect();
    buf.drain(..lo);
    Some(resps)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf[..self.buf.len().min(2048)]).into_owned()
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        within(WAIT, self.stream.write_all(bytes.as_ref())).await.expect("write in time").expect("write");
    }

    /// Reads more into `buf` (bounded by `deadline`); `Some` if the connection ended instead.
    async fn fill(&mut self, deadline: Instant, waiting_for: &str) -> Option<Ended> {
        self.buf.reserve(64 * 1024);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) => Some(Ended::Fin),
            Ok(Ok(_)) => None,
            Ok(Err(_)) => Some(Ended::Reset),
            Err(_) => panic!("no {waiting_for} within {WAIT:?}; got {:?}", self.text()),
        }
    }

    /// Reads until `n` complete responses arrived and takes them.
    async fn responses(&mut self, n: usize) -> Vec<RawResponse> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(resps) = take_responses(&mut self.buf, n) {
                return resps;
            }
            if let Some(how) = self.fill(deadline, &format!("{n} complete responses")).await {
                panic!("connection ended ({how:?}) before {n} complete responses; got {:?}", self.text());
            }
        }
    }

    async fn response(&mut self) -> RawResponse {
        self.responses(1).await.remove(0)
    }

    /// Reads until a whole response head arrived and takes it (its body, if any, is left unread).
    async fn head(&mut self) -> RawResponse {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((head, len)) = parse_head(&self.buf) {
                self.buf.drain(..len);
                return head;
            }
            if let Some(how) = self.fill(deadline, "response head").await {
                panic!("connection ended ({how:?}) before a response head; got {:?}", self.text());
            }
        }
    }

    /// Reads until the gateway ends the connection (bounded by `WAIT`); what came first stays in `buf`.
    async fn ended(&mut self) -> Ended {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(how) = self.fill(deadline, "end of the connection").await {
                return how;
            }
        }
    }

    /// The gateway sends nothing more and closes the connection with a FIN.
    async fn expect_fin(&mut self) {
        let how = self.ended().await;
        assert_eq!((how, self.text()), (Ended::Fin, String::new()), "a clean close with nothing after the response");
    }
}

/// The response head at the front of `buf` (without its body) and its length, once complete.
fn parse_head(buf: &[u8]) -> Option<(RawResponse, usize)> {
    let len = find(buf, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..len]);
    let status = status_line(&buf[..len]).unwrap_or_else(|| panic!("not a response head: {text:?}"));
    let headers = text
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((RawResponse { status, headers, body: Vec::new() }, len))
}

fn has_close(resp: &RawResponse) -> bool {
    resp.header("connection").is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// `resp` carries exactly one `date` field, an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn assert_date(resp: &RawResponse, what: &str) {
    let dates: Vec<&str> = resp.headers.iter().filter(|(k, _)| k == "date").map(|(_, v)| v.as_str()).collect();
    assert_eq!(dates.len(), 1, "{what}: one date field expected in {:?}", resp.headers);
    let date = dates[0];
    let days = ["Mon, ", "Tue, ", "Wed, ", "Thu, ", "Fri, ", "Sat, ", "Sun, "];
    assert!(
        date.len() == 29 && date.ends_with(" GMT") && days.iter().any(|d| date.starts_with(d)),
        "{what}: date {date:?} is not an IMF-fixdate"
    );
}

// ---- Cases ---------------------------------------------------------------------------------------

async fn pipelined_gets_are_answered_in_order_and_the_connection_stays_open(server: Server) {
    let backend = echo_backend("pipe").await;
    let gw = gateway(server, &[("/", backend.addr().port())]).await;
    let mut conn = connect(&gw).await;

    conn.send(format!("{}{}{}", get("/p/one"), get("/p/two?n=2"), get("/p/three"))).await;
    let resps = conn.responses(3).await;
    assert_echo(&resps[0], "GET", "/p/one", "");
    assert_echo(&resps[1], "GET", "/p/two?n=2", "");
    assert_echo(&resps[2], "GET", "/p/three", "");
    assert!(resps.iter().all(|r| !has_close(r)), "no response closes: {resps:?}");

    conn.send(get("/p/four")).await;
    assert_echo(&conn.response().await, "GET", "/p/four", "");
    assert_eq!(backend.hits(), 4);
    gw.gateway.stop().await;
}

async fn get_post_get_on_one_connection_loses_and_duplicates_nothing(server: Server) {
    let backend = echo_backend("mix").await;
    let gw = gateway(server, &[("/", backend.addr().port())]).await;

    // One request at a time on a kept-alive connection.
    let mut conn = connect(&gw).await;
    conn.send(get("/m/1")).await;
    assert_echo(&conn.response().await, "GET", "/m/1", "");
    conn.send(post("/m/2", "hello world")).await;
    let resp = conn.response().await;
    assert_echo(&resp, "POST", "/m/2", "hello world");
    assert_eq!(echo(&resp)["headers"]["content-length"][0], "11");
    conn.send(get("/m/3")).await;
    assert_echo(&conn.response().await, "GET", "/m/3", "");

    // All three in one write: the POST and the GET after it are already read when the first GET is served.
    let mut conn = connect(&gw).await;
    conn.send(format!("{}{}{}", get("/m/4"), post("/m/5", "pipelined body"), get("/m/6"))).await;
    let resps = conn.responses(3).await;
    assert_echo(&resps[0], "GET", "/m/4", "");
    assert_echo(&resps[1], "POST", "/m/5", "pipelined body");
    assert_echo(&resps[2], "GET", "/m/6", "");
    conn.send(get("/m/7")).await;
    assert_echo(&conn.response().await, "GET", "/m/7", "");

    assert_eq!(backend.hits(), 7, "every request reached the backend exactly once");
    gw.gateway.stop().await;
}

async fn head_keeps_the_backend_length_sends_no_body_and_stays_in_step(server: Server) {
    let backend = RawBackend::start(|target| match target {
        "/head" => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n".to_vec()),
        other => ok(&format!("after {other}")),
    })
    .await;
    let gw = gateway(server, &[("/", backend.port)]).await;
    let mut conn = connect(&gw).await;

    conn.send("HEAD /head HTTP/1.1\r\nHost: gw.test\r\n\r\n").await;
    let head = conn.head().await;
    assert_eq!(
        (head.status, head.header("content-length"), head.header("transfer-encoding")),
        (200, Some("1234"), None),
        "{head:?}"
    );
    assert_eq!(backend.arrived().await, "HEAD /head HTTP/1.1");

    // Body bytes after the HEAD response would come before this response's status line.
    conn.send(get("/after")).await;
    let resp = conn.response().await;
    assert_eq!((resp.status, String::from_utf8_lossy(&resp.body).as_ref()), (200, "after /after"));
    assert!(conn.buf.is_empty(), "bytes after the response: {:?}", conn.text());
    gw.gateway.stop().await;
}

async fn connection_close_is_answered_with_close_then_a_fin(server: Server) {
    let backend = echo_backend("close").await;
    let gw = gateway(server, &[("/", backend.addr().port())]).await;

    let mut conn = connect(&gw).await;
    conn.send("GET /bye HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n").await;
    let resp = conn.response().await;
    assert_echo(&resp, "GET", "/bye", "");
    assert!(has_close(&resp), "connection: close expected in {:?}", resp.headers);
    conn.expect_fin().await;

    // Pipelined: the request after the one asking to close is never served.
    let mut conn = connect(&gw).await;
    let asks_close = "GET /k/2 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    conn.send(format!("{}{asks_close}{}", get("/k/1"), get("/k/3"))).await;
    let resps = conn.responses(2).await;
    assert_echo(&resps[0], "GET", "/k/1", "");
    assert!(!has_close(&resps[0]), "{:?}", resps[0].headers);
    assert_echo(&resps[1], "GET", "/k/2", "");
    assert!(has_close(&resps[1]), "connection: close expected in {:?}", resps[1].headers);
    conn.expect_fin().await;
    assert_eq!(backend.hits(), 3, "/k/3 never reached the backend");
    gw.gateway.stop().await;
}

async fn http10_request_without_keep_alive_is_answered_then_closed(server: Server) {
    let backend = echo_backend("old").await;
    let gw = gateway(server, &[("/", backend.addr().port())]).await;
    let mut conn = connect(&gw).await;

    conn.send("GET /old HTTP/1.0\r\nHost: gw.test\r\n\r\n").await;
    let resp = conn.response().await;
    assert_echo(&resp, "GET", "/old", "");
    assert!(resp.header("transfer-encoding").is_none(), "no chunked framing for HTTP/1.0: {:?}", resp.headers);
    conn.expect_fin().await;
    gw.gateway.stop().await;
}

/// `n` bytes of a pattern that shows any shift, loss or duplication.
fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i + seed) % 251) as u8).collect()
}

async fn large_responses_arrive_intact_and_the_connection_is_reused(server: Server) {
    const LARGE: usize = 2 * 1024 * 1024 + 7;
    const CHUNK: usize = 512 * 1024 + 3;
    let backend = RawBackend::start(|target| match target {
        "/large" => {
            let mut bytes = format!("HTTP/1.1 200 OK\r\nContent-Length: {LARGE}\r\n\r\n").into_bytes();
            bytes.extend_from_slice(&pattern(LARGE, 0));
            Reply::Send(bytes)
        }
        "/large-chunked" => {
            let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for i in 0..3 {
                bytes.extend_from_slice(format!("{CHUNK:x}\r\n").as_bytes());
                bytes.extend_from_slice(&pattern(CHUNK, i));
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
            Reply::Send(bytes)
        }
        other => ok(&format!("small {other}")),
    })
    .await;
    let gw = gateway(server, &[("/", backend.port)]).await;
    let mut conn = connect(&gw).await;

    conn.send(get("/large")).await;
    let resp = conn.response().await;
    let expected_len = LARGE.to_string();
    assert_eq!((resp.status, resp.header("content-length")), (200, Some(expected_len.as_str())));
    assert_eq!(resp.body.len(), LARGE);
    assert!(resp.body == pattern(LARGE, 0), "the large body arrived altered");

    conn.send(get("/large-chunked")).await;
    let resp = conn.response().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), 3 * CHUNK);
    let expected: Vec<u8> = (0..3).flat_map(|i| pattern(CHUNK, i)).collect();
    assert!(resp.body == expected, "the large streamed body arrived altered");

    conn.send(get("/small")).await;
    let resp = conn.response().await;
    assert_eq!((resp.status, String::from_utf8_lossy(&resp.body).as_ref()), (200, "small /small"));
    gw.gateway.stop().await;
}

async fn streamed_response_is_chunked_flushed_early_and_the_connection_reused(server: Server) {
    let gate = Arc::new(Notify::new());
    let backend_gate = gate.clone();
    let backend = RawBackend::start(move |target| match target {
        "/gated" => Reply::Gated {
            first: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n".to_vec(),
            gate: backend_gate.clone(),
            rest: b"6\r\nsecond\r\n0\r\n\r\n".to_vec(),
        },
        other => ok(&format!("after {other}")),
    })
    .await;
    let gw = gateway(server, &[("/", backend.port)]).await;
    let mut conn = connect(&gw).await;

    conn.send(get("/gated")).await;
    // The backend holds the rest until the gate opens: the first chunk must arrive before that.
    let deadline = Instant::now() + WAIT;
    let head = loop {
        if let Some((head, len)) = parse_head(&conn.buf)
            && find(&conn.buf[len..], b"first").is_some()
        {
            break head;
        }
        if let Some(how) = conn.fill(deadline, "head and first chunk before the backend finished").await {
            panic!("connection ended ({how:?}) before the first chunk; got {:?}", conn.text());
        }
    };
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding").map(str::to_ascii_lowercase).as_deref(), Some("chunked"));
    assert_eq!(head.header("content-length"), None);
    assert!(take_responses(&mut conn.buf, 1).is_none(), "complete before the backend finished: {:?}", conn.text());

    gate.notify_one();
    let resp = conn.response().await;
    assert_eq!(String::from_utf8_lossy(&resp.body), "firstsecond");

    conn.send(get("/after")).await;
    let resp = conn.response().await;
    assert_eq!((resp.status, String::from_utf8_lossy(&resp.body).as_ref()), (200, "after /after"));
    gw.gateway.stop().await;
}

async fn truncated_backend_body_never_looks_complete(server: Server) {
    let backend = RawBackend::start(|target| match target {
        "/short" => Reply::SendThenClose(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec()),
        other => ok(&format!("recovered {other}")),
    })
    .await;
    let gw = gateway(server, &[("/", backend.port)]).await;

    let mut conn = connect(&gw).await;
    conn.send(get("/short")).await;
    let how = conn.ended().await;
    let complete: Vec<_> = parse_responses(&conn.buf).into_iter().filter(self_delimited).collect();
    assert!(
        complete.is_empty(),
        "a message cut short by the backend was passed off as complete ({how:?}): {:?}",
        conn.text()
    );
    let body_start = find(&conn.buf, b"\r\n\r\n").map_or(conn.buf.len(), |p| p + 4);
    assert!(conn.buf.len() - body_start < 100, "{:?}", conn.text());

    let mut conn = connect(&gw).await;
    conn.send(get("/next")).await;
    let resp = conn.response().await;
    assert_eq!((resp.status, String::from_utf8_lossy(&resp.body).as_ref()), (200, "recovered /next"));
    gw.gateway.stop().await;
}

/// A client that shuts down its sending side while its request is in flight: the direct server
/// still answers it (as HAProxy does); hyper's server, without half-close support, takes the FIN
/// as an abort (as nginx does) and closes without an answer (docs/configuration.md).
async fn half_close_mid_request_is_answered_by_the_direct_server_and_aborts_on_hyper(server: Server) {
    let gate = Arc::new(Notify::new());
    let backend_gate = gate.clone();
    let backend = RawBackend::start(move |target| Reply::Gated {
        first: Vec::new(),
        gate: backend_gate.clone(),
        rest: match ok(&format!("answer {target}")) {
            Reply::Send(bytes) => bytes,
            _ => unreachable!(),
        },
    })
    .await;
    let gw = gateway(server, &[("/", backend.port)]).await;
    let mut conn = connect(&gw).await;

    conn.send(get("/half")).await;
    assert_eq!(backend.arrived().await, "GET /half HTTP/1.1");
    // The request is in flight at the backend: the client closes its sending side.
    conn.stream.shutdown().await.expect("half-close");
    // Lets the runtime poll its sockets, so the gateway sees the FIN before the backend answers.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    match server {
        Server::Direct => {
            gate.notify_one();
            let resp = conn.response().await;
            assert_eq!((resp.status, String::from_utf8_lossy(&resp.body).as_ref()), (200, "answer /half"));
        }
        // The backend is still holding its answer: nothing can arrive before the close.
        Server::Hyper => {}
    }
    conn.expect_fin().await;
    gw.gateway.stop().await;
}

async fn client_reset_mid_request_drops_it_and_other_connections_are_served(server: Server) {
    let closed = Arc::new(Notify::new());
    let backend_closed = closed.clone();
    let backend = RawBackend::start(move |target| match target {
        "/hold" => Reply::HoldUntilClosed(backend_closed.clone()),
        other => ok(&format!("ok {other}")),
    })
    .await;
    let gw = gateway(server, &[("/", backend.port)]).await;

    let mut other = connect(&gw).await;
    other.send(get("/before")).await;
    assert_eq!(String::from_utf8_lossy(&other.response().await.body), "ok /before");
    assert_eq!(backend.arrived().await, "GET /before HTTP/1.1");

    let mut conn = connect(&gw).await;
    conn.send(get("/hold")).await;
    assert_eq!(backend.arrived().await, "GET /hold HTTP/1.1");
    conn.stream.set_zero_linger().expect("SO_LINGER 0");
    drop(conn);
    within(WAIT, closed.notified()).await.expect("the reset request's upstream exchange is dropped");

    other.send(get("/after")).await;
    let resp = other.response().await;
    assert_eq!((resp.status, String::from_utf8_lossy(&resp.body).as_ref()), (200, "ok /after"));
    let resp = TestClient::http1().send(TestRequest::get(gw.url("/fresh"))).await.unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok /fresh"));
    gw.gateway.stop().await;
}

async fn websocket_upgrade_after_a_plain_get_on_the_same_connection(server: Server) {
    let backend = echo_backend("wsb").await;
    let gw = gateway(server, &[("/", backend.addr().port())]).await;
    let mut conn = connect(&gw).await;

    let key = ws::random_key();
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    // One write: the upgrade request is read ahead while the GET is served.
    conn.send(format!("{}{upgrade}", get("/plain"))).await;
    let resps = conn.responses(2).await;
    assert_echo(&resps[0], "GET", "/plain", "");
    let switched = &resps[1];
    assert_eq!(switched.status, 101, "{switched:?}");
    assert!(switched.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")), "{switched:?}");
    assert_eq!(switched.header("sec-websocket-accept"), Some(ws::accept_key(&key).as_str()));

    ws::write_frame(&mut conn.stream, ws::OP_TEXT, b"one", true).await.unwrap();
    ws::write_frame(&mut conn.stream, ws::OP_TEXT, b"two", true).await.unwrap();
    let leftover = std::mem::take(&mut conn.buf);
    let mut reader = (&leftover[..]).chain(&mut conn.stream);
    for expected in ["wsb:one", "wsb:two"] {
        let frame = within(WAIT, ws::read_frame(&mut reader)).await.expect("frame in time").unwrap();
        assert_eq!((frame.opcode, String::from_utf8_lossy(&frame.payload).as_ref()), (ws::OP_TEXT, expected));
    }
    gw.gateway.stop().await;
}

async fn tls_http1_connection_is_kept_alive_and_tls_h2_still_works(server: Server) {
    let backend = echo_backend("tls").await;
    let gw = gateway_on(server, true, &[("/", backend.addr().port())]).await;

    let config = tls::client_config(tls::CA_PEM, &[b"http/1.1"]).unwrap();
    let tcp = within(WAIT, TcpStream::connect(gw.addr())).await.unwrap().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = within(WAIT, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .unwrap()
        .expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut conn = Conn { stream, buf: Vec::new() };

    conn.send(get("/t/1")).await;
    let resp = conn.response().await;
    assert_echo(&resp, "GET", "/t/1", "");
    assert_eq!(echo(&resp)["headers"]["x-forwarded-proto"][0], "https");
    conn.send(get("/t/2")).await;
    assert_echo(&conn.response().await, "GET", "/t/2", "");
    conn.send(format!("{}{}", get("/t/3"), get("/t/4"))).await;
    let resps = conn.responses(2).await;
    assert_echo(&resps[0], "GET", "/t/3", "");
    assert_echo(&resps[1], "GET", "/t/4", "");
    conn.send(post("/t/5", "over tls")).await;
    assert_echo(&conn.response().await, "POST", "/t/5", "over tls");
    conn.send(get("/t/6")).await;
    assert_echo(&conn.response().await, "GET", "/t/6", "");
    assert_eq!(backend.hits(), 6);

    let h2 = TestClient::https(tls::CA_PEM, true).unwrap();
    let resp = h2.send(TestRequest::get(format!("https://127.0.0.1:{}/t/h2", gw.port))).await.unwrap();
    assert_eq!((resp.status, resp.version), (200, http::Version::HTTP_2));
    assert_eq!(resp.json()["path"], "/t/h2");
    gw.gateway.stop().await;
}

async fn every_response_carries_one_valid_date(server: Server) {
    let echo_b = echo_backend("date").await;
    let raw = RawBackend::start(|target| match target {
        "/raw/head" => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec()),
        "/raw/chunked" => {
            Reply::Send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec())
        }
        "/raw/empty" => Reply::Send(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        other => ok(other),
    })
    .await;
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = gateway(server, &[("/raw", raw.port), ("/down", dead_port), ("/", echo_b.addr().port())]).await;

    let mut conn = connect(&gw).await;
    conn.send(get("/a")).await;
    let resp = conn.response().await;
    assert_echo(&resp, "GET", "/a", "");
    assert_date(&resp, "GET from the echo backend");

    conn.send("HEAD /raw/head HTTP/1.1\r\nHost: gw.test\r\n\r\n").await;
    let head = conn.head().await;
    assert_eq!((head.status, head.header("content-length")), (200, Some("10")));
    assert_date(&head, "HEAD");

    for (path, status, body) in
        [("/raw/chunked", 200, "abc"), ("/raw/empty", 204, ""), ("/raw/plain", 200, "/raw/plain")]
    {
        conn.send(get(path)).await;
        let resp = conn.response().await;
        assert_eq!((resp.status, String::from_utf8_lossy(&resp.body).as_ref()), (status, body), "GET {path}");
        assert_date(&resp, path);
    }

    conn.send(get("/down")).await;
    let resp = conn.response().await;
    assert!(matches!(resp.status, 502 | 503), "an unreachable backend: {resp:?}");
    assert_date(&resp, "gateway error");

    // From here on hyper's server serves the connection in both modes.
    conn.send(post("/p", "x")).await;
    let resp = conn.response().await;
    assert_echo(&resp, "POST", "/p", "x");
    assert_date(&resp, "POST");
    conn.send(get("/raw/after-post")).await;
    let resp = conn.response().await;
    assert_eq!(resp.status, 200);
    assert_date(&resp, "GET after a POST");
    gw.gateway.stop().await;
}

async fn expect_100_continue_gets_continue_then_the_final_response(server: Server) {
    let backend = echo_backend("expect").await;
    let gw = gateway(server, &[("/", backend.addr().port())]).await;
    let mut conn = connect(&gw).await;

    conn.send(get("/e/first")).await;
    assert_echo(&conn.response().await, "GET", "/e/first", "");

    conn.send("POST /e/upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n").await;
    let interim = conn.response().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    conn.send("hello world").await;
    let resp = conn.response().await;
    assert_echo(&resp, "POST", "/e/upload", "hello world");

    conn.send(get("/e/after")).await;
    assert_echo(&conn.response().await, "GET", "/e/after", "");
    assert_eq!(backend.hits(), 3);
    gw.gateway.stop().await;
}

async fn h2c_prior_knowledge_is_served(server: Server) {
    let backend = echo_backend("h2c").await;
    let gw = gateway(server, &[("/", backend.addr().port())]).await;
    let client = TestClient::h2c();
    for path in ["/h2/one", "/h2/two"] {
        let resp = client.send(TestRequest::get(gw.url(path))).await.unwrap();
        assert_eq!((resp.status, resp.version), (200, http::Version::HTTP_2));
        assert_eq!(resp.json()["path"], path);
    }
    gw.gateway.stop().await;
}
