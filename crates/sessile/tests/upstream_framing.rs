//! HTTP/1.1 framing towards and from backends, against scripted raw backends: what arrives, what comes back, reuse.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use sessile_testkit::raw::{RawResponse, parse_responses};
use sessile_testkit::{TestClient, TestRequest, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every wait in this file that is expected to end (a response, a close).
const WAIT: Duration = Duration::from_secs(3);

/// Pause between the pieces of a response written in several writes.
const GAP: Duration = Duration::from_millis(15);

// ---- Scripted raw backend ----------------------------------------------------------------------

/// What the backend does after a request: writes `pieces` (pausing `gap` between them), then `after`.
#[derive(Debug, Clone)]
struct Script {
    pieces: Vec<Vec<u8>>,
    gap: Duration,
    after: After,
}

#[derive(Debug, Clone, Copy)]
enum After {
    /// Waits for the next request on the connection.
    KeepOpen,
    /// Closes the connection (FIN) right away.
    Close,
    /// Keeps the connection idle for this long without reading, then closes it.
    IdleThenClose(Duration),
}

impl Script {
    /// `bytes` in one write, connection kept open.
    fn send(bytes: impl AsRef<[u8]>) -> Script {
        Script { pieces: vec![bytes.as_ref().to_vec()], gap: Duration::ZERO, after: After::KeepOpen }
    }

    /// Each piece in its own write, `GAP` apart, connection kept open.
    fn pieces(pieces: &[&[u8]]) -> Script {
        Script { pieces: pieces.iter().map(|p| p.to_vec()).collect(), gap: GAP, after: After::KeepOpen }
    }

    fn then(mut self, after: After) -> Script {
        self.after = after;
        self
    }
}

/// `200 OK` with `Content-Length` and `body`.
fn ok(body: &str) -> Script {
    Script::send(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}", body.len()))
}

/// One request as the backend received it.
#[derive(Debug, Clone)]
struct Seen {
    /// Accept counter of the connection it came on (0 for the first connection).
    conn: usize,
    /// The request line, e.g. `GET /x HTTP/1.1`.
    line: String,
    /// Header fields in order, names lowercased, values trimmed.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

type Responder = Arc<dyn Fn(&Seen) -> Script + Send + Sync>;

/// A backend that reads request heads (and `Content-Length` bodies) off raw sockets, records them
/// with the connection they came on, and answers each with the bytes its responder scripts.
struct ScriptedBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedBackend {
    async fn start(respond: impl Fn(&Seen) -> Script + Send + Sync + 'static) -> ScriptedBackend {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind scripted backend");
        let addr = listener.local_addr().expect("backend address");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let accepts = Arc::new(AtomicUsize::new(0));
        let respond: Responder = Arc::new(respond);
        let (seen2, accepts2) = (seen.clone(), accepts.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = accepts2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(stream, conn, seen2.clone(), respond.clone()));
            }
        });
        ScriptedBackend { addr, seen, accepts, task }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far, in arrival order.
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// Connection index of each request received so far.
    fn conns(&self) -> Vec<usize> {
        self.seen().iter().map(|s| s.conn).collect()
    }

    /// Connections accepted so far.
    fn connections(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve_connection(mut stream: TcpStream, conn: usize, seen: Arc<Mutex<Vec<Seen>>>, respond: Responder) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length =
            headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok()).unwrap_or(0);
        while buf.len() < head_end + length {
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let request = Seen { conn, line, headers, body: buf[head_end..head_end + length].to_vec() };
        buf.drain(..head_end + length);
        let script = respond(&request);
        // Recorded before answering, so whoever sees the response also sees the request here.
        seen.lock().expect("seen lock").push(request);
        for (i, piece) in script.pieces.iter().enumerate() {
            if i > 0 && !script.gap.is_zero() {
                tokio::time::sleep(script.gap).await;
            }
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        match script.after {
            After::KeepOpen => {}
            After::Close => {
                let _ = stream.shutdown().await;
                return;
            }
            After::IdleThenClose(idle) => {
                tokio::time::sleep(idle).await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

// ---- Gateway setup -----------------------------------------------------------------------------

/// A Service `name` whose one endpoint is 127.0.0.1:`port`.
fn raw_service_yaml(name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-raw\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  targetRef: {{kind: Pod, name: {name}-pod, uid: uid-{name}}}\n"
    )
}

/// A gateway routing each path prefix to its own Service over the given backend.
async fn gateway_to(upstream: Client, routes: &[(&str, &ScriptedBackend)]) -> TestGateway {
    gateway_to_with(upstream, routes, |_| {}).await
}

/// [`gateway_to`], with the upstream options adjusted.
async fn gateway_to_with(
    upstream: Client,
    routes: &[(&str, &ScriptedBackend)],
    adjust: impl FnOnce(&mut sessile_proxy::upstream::UpstreamOptions),
) -> TestGateway {
    let port = free_port();
    let mut services = String::new();
    let mut rules = Vec::new();
    for (i, (prefix, backend)) in routes.iter().enumerate() {
        services.push_str(&raw_service_yaml(&format!("svc{i}"), backend.port()));
        rules.push(rule_yaml(prefix, &format!("[{{name: svc{i}, port: 80}}]"), None));
    }
    let config = TempDir::new("config");
    config.write("gw.yaml", &gateway_yaml(port));
    config.write("svc.yaml", &services);
    config.write("route.yaml", &route_yaml("r", None, &rules));
    start_gateway_with(config, TempDir::new("state"), port, |o| {
        o.upstream.direct_h1 = upstream == Client::Direct;
        adjust(&mut o.upstream);
    })
    .await
}

/// The gateway's two HTTP/1.1 upstream clients: every case runs against both.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Client {
    /// Bodiless requests over direct connections (the default).
    Direct,
    /// hyper's client for every request (`--h1-upstream-client hyper`).
    Hyper,
}

crate::test_matrix!(Client { direct => Direct, hyper_client => Hyper }: [
    pool_size_and_idle_timeout_are_honoured,
    large_bodies_in_large_writes_arrive_whole_and_the_connection_is_reused,
    chunked_with_content_length_gives_502_or_the_chunked_body,
    backend_connection_is_reused_after_a_chunked_response_with_trailers,
    chunked_response_with_extensions_in_split_writes_is_decoded_and_the_connection_reused,
    chunked_response_with_trailers_is_intact_and_the_next_request_succeeds,
    close_delimited_response_is_read_to_the_end_and_the_next_request_connects_anew,
    head_response_with_content_length_has_no_body_and_the_connection_is_reused,
    no_content_and_not_modified_have_no_body_and_the_connection_is_reused,
    interim_responses_are_skipped_and_the_final_response_arrives,
    connection_close_response_is_delivered_and_the_connection_not_reused,
    invalid_responses_give_502_and_break_nothing,
    chunked_with_content_length_keeps_the_client_connection_in_step,
    premature_close_mid_body_never_looks_complete,
    bytes_beyond_content_length_never_answer_the_next_request,
    stale_pooled_connection_closed_by_the_backend_is_not_used,
    large_head_and_body_in_small_writes_arrive_whole,
    backend_receives_an_origin_form_request_without_hop_by_hop_headers,
    h2_request_reaches_the_backend_as_http1_with_one_joined_cookie,
]);

/// Sends `GET path` and checks the answer is `200` with exactly `body`.
async fn expect_ok(client: &TestClient, gw: &TestGateway, path: &str, body: &str) {
    let resp = client.send(TestRequest::get(gw.url(path))).await.unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, body), "GET {path}");
}

// ---- Raw client side ---------------------------------------------------------------------------

/// Whether `resp` is delimited by its own framing (not by the end of the stream).
fn self_delimited(resp: &RawResponse) -> bool {
    matches!(resp.status, 100..=199 | 204 | 304)
        || resp.header("content-length").is_some()
        || resp.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
}

/// Reads from `stream` into `buf` until it holds `n` complete responses (bounded by `WAIT`).
/// Returns the parsed responses and whether the peer closed the connection.
async fn read_responses(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> (Vec<RawResponse>, bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tmp = [0u8; 8192];
    loop {
        let resps = parse_responses(buf);
        if resps.len() >= n && resps.iter().all(self_delimited) {
            return (resps, false);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (parse_responses(buf), true),
            Ok(Ok(k)) => buf.extend_from_slice(&tmp[..k]),
            Err(_) => panic!("no {n} complete responses within {WAIT:?}: {:?}", String::from_utf8_lossy(buf)),
        }
    }
}

// ---- Responses: framing from backends ----------------------------------------------------------

async fn chunked_response_with_extensions_in_split_writes_is_decoded_and_the_connection_reused(upstream: Client) {
    let backend = ScriptedBackend::start(|req| match req.target() {
        "/chunked" => Script::pieces(&[
            b"HTTP/1.1 200 OK\r\nTransfer-En",
            b"coding: chunked\r\n\r\n5",
            b";ext=1\r",
            b"\nhel",
            b"lo\r",
            b"\n6;name=\"quoted; value\";flag\r\n wo",
            b"rld\r\nA\r\n0123456789\r",
            b"\n0;last=yes\r",
            b"\n\r",
            b"\n",
        ]),
        _ => ok("second"),
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();

    let resp = client.send(TestRequest::get(gw.url("/chunked"))).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello world0123456789", "chunk extensions and split size lines are decoded");
    expect_ok(&client, &gw, "/next", "second").await;

    assert_eq!(backend.conns(), vec![0, 0], "both requests on one backend connection");
    assert_eq!(backend.connections(), 1);
    gw.gateway.stop().await;
}

/// A backend answering `/trailers` with a chunked body and a trailer section split over several
/// writes, and anything else with `200 after-trailers`.
async fn trailers_backend() -> ScriptedBackend {
    ScriptedBackend::start(|req| match req.target() {
        "/trailers" => Script::pieces(&[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum, x-other\r\n\r\n",
            b"4\r\nbody\r\n7\r\n-intact\r\n0\r\nx-check",
            b"sum: abc123\r\nx-oth",
            b"er: 1\r\n",
            b"\r\n",
        ]),
        _ => ok("after-trailers"),
    })
    .await
}

async fn chunked_response_with_trailers_is_intact_and_the_next_request_succeeds(upstream: Client) {
    let backend = trailers_backend().await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();

    expect_ok(&client, &gw, "/trailers", "body-intact").await;
    expect_ok(&client, &gw, "/next", "after-trailers").await;
    assert_eq!(backend.seen().len(), 2);
    gw.gateway.stop().await;
}

async fn backend_connection_is_reused_after_a_chunked_response_with_trailers(upstream: Client) {
    let backend = trailers_backend().await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();

    expect_ok(&client, &gw, "/trailers", "body-intact").await;
    expect_ok(&client, &gw, "/next", "after-trailers").await;
    assert_eq!(backend.conns(), vec![0, 0], "the trailer section was consumed and the connection reused");
    gw.gateway.stop().await;
}

async fn close_delimited_response_is_read_to_the_end_and_the_next_request_connects_anew(upstream: Client) {
    let body = "close-delimited body ".repeat(50);
    let expected = body.clone();
    let backend = ScriptedBackend::start(move |req| match req.target() {
        "/eof" => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
            let (a, b) = body.split_at(400);
            Script::pieces(&[head.as_bytes(), a.as_bytes(), b.as_bytes()]).then(After::Close)
        }
        _ => ok("fresh"),
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();

    let resp = client.send(TestRequest::get(gw.url("/eof"))).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), expected, "the whole body up to the backend's close");
    expect_ok(&client, &gw, "/next", "fresh").await;

    assert_eq!(backend.conns(), vec![0, 1], "a close-delimited connection is never reused");
    gw.gateway.stop().await;
}

async fn head_response_with_content_length_has_no_body_and_the_connection_is_reused(upstream: Client) {
    let backend = ScriptedBackend::start(|req| match req.line.split(' ').next() {
        Some("HEAD") => Script::send("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\n"),
        _ => ok("after-head"),
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1().timeout(WAIT);

    let started = Instant::now();
    let resp = client.send(TestRequest::new("HEAD", gw.url("/head"))).await.expect("HEAD answered promptly");
    assert!(started.elapsed() < Duration::from_secs(1), "HEAD took {:?}", started.elapsed());
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("100"));
    assert!(resp.body.is_empty());

    // Had the gateway waited for 100 body bytes, this GET would not be answered on connection 0.
    expect_ok(&client, &gw, "/next", "after-head").await;
    assert_eq!(backend.conns(), vec![0, 0]);
    gw.gateway.stop().await;
}

async fn no_content_and_not_modified_have_no_body_and_the_connection_is_reused(upstream: Client) {
    let backend = ScriptedBackend::start(|req| match req.target() {
        "/204" => Script::send("HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n"),
        // A 304 may carry the Content-Length of the representation; it still has no body.
        "/304" => Script::send("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 100\r\n\r\n"),
        other => ok(&format!("after {other}")),
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();

    let resp = client.send(TestRequest::get(gw.url("/204"))).await.unwrap();
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("x-kind"), Some("none"));
    assert!(resp.body.is_empty());
    expect_ok(&client, &gw, "/a", "after /a").await;

    let resp = client.send(TestRequest::get(gw.url("/304")).header("if-none-match", "\"v1\"")).await.unwrap();
    assert_eq!(resp.status, 304);
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    assert!(resp.body.is_empty());
    expect_ok(&client, &gw, "/b", "after /b").await;

    assert_eq!(backend.conns(), vec![0, 0, 0, 0], "four exchanges on one backend connection");
    gw.gateway.stop().await;
}

async fn interim_responses_are_skipped_and_the_final_response_arrives(upstream: Client) {
    let backend = ScriptedBackend::start(|req| match req.target() {
        "/interim" => Script::pieces(&[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal",
        ]),
        _ => ok("after-interim"),
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();

    let resp = client.send(TestRequest::get(gw.url("/interim"))).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-final"), Some("yes"));
    assert_eq!(resp.text(), "final");
    expect_ok(&client, &gw, "/next", "after-interim").await;
    assert_eq!(backend.conns(), vec![0, 0]);
    gw.gateway.stop().await;
}

async fn connection_close_response_is_delivered_and_the_connection_not_reused(upstream: Client) {
    // The backend keeps its side open: the gateway must honour the header, not wait for an EOF.
    let backend = ScriptedBackend::start(|req| match req.target() {
        "/close" => Script::send("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nclosing"),
        _ => ok("reopened"),
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();

    expect_ok(&client, &gw, "/close", "closing").await;
    expect_ok(&client, &gw, "/next", "reopened").await;
    assert_eq!(backend.conns(), vec![0, 1], "no request follows `Connection: close` on that connection");
    gw.gateway.stop().await;
}

async fn invalid_responses_give_502_and_break_nothing(upstream: Client) {
    // Each broken answer leaves the backend connection open: only the gateway can decide not to reuse it.
    let broken = ScriptedBackend::start(|req| match req.target() {
        "/b/garbage" => Script::send("HTTQ/1.1 two hundred OK\r\nContent-Length: 2\r\n\r\nno"),
        "/b/cl-word" => Script::send("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nabc"),
        "/b/cl-twice" => Script::send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        other => ok(&format!("ok {other}")),
    })
    .await;
    let healthy = ScriptedBackend::start(|_| ok("other route")).await;
    let gw = gateway_to(upstream, &[("/b", &broken), ("/", &healthy)]).await;
    let client = TestClient::http1();

    for (i, bad) in ["/b/garbage", "/b/cl-word", "/b/cl-twice"].into_iter().enumerate() {
        let resp = client.send(TestRequest::get(gw.url(bad))).await.unwrap();
        assert_eq!(resp.status, 502, "{bad}: {}", resp.text());
        let next = format!("/b/after{i}");
        let resp = client.send(TestRequest::get(gw.url(&next))).await.unwrap();
        assert_eq!((resp.status, resp.text()), (200, format!("ok {next}")), "after {bad}");
        let other = client.send(TestRequest::get(gw.url("/elsewhere"))).await.unwrap();
        assert_eq!((other.status, other.text().as_str()), (200, "other route"), "after {bad}");
    }
    // After every unparsable response the next request needed a new connection.
    assert_eq!(broken.conns(), vec![0, 1, 1, 2, 2, 3], "{:#?}", broken.seen());
    assert_eq!(healthy.conns(), vec![0, 0, 0]);
    gw.gateway.stop().await;
}

/// A backend answering `/te-cl` with both `Transfer-Encoding: chunked` and a `Content-Length: 3`
/// that, if believed, would cut the chunked framing after "5\r\n"; anything else gets `200 second`.
async fn te_and_cl_backend() -> ScriptedBackend {
    ScriptedBackend::start(|req| match req.target() {
        "/te-cl" => Script::send(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        _ => ok("second"),
    })
    .await
}

/// Sends `GET /te-cl` then `GET /second` on one client connection, each after the previous
/// response is complete; returns the first response and everything the connection carried.
async fn te_and_cl_exchange(gw: &TestGateway) -> (RawResponse, Vec<u8>) {
    let mut stream = within(WAIT, TcpStream::connect(gw.addr())).await.unwrap().unwrap();
    let mut buf = Vec::new();
    stream.write_all(b"GET /te-cl HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (resps, closed) = read_responses(&mut stream, &mut buf, 1).await;
    assert!(!closed, "the client connection stays usable: {:?}", String::from_utf8_lossy(&buf));
    let first = resps[0].clone();
    stream.write_all(b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (resps, _) = read_responses(&mut stream, &mut buf, 2).await;
    assert_eq!(resps.len(), 2, "{:?}", String::from_utf8_lossy(&buf));
    assert_eq!(
        (resps[1].status, resps[1].body.as_slice()),
        (200, &b"second"[..]),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(buf.ends_with(b"\r\n\r\nsecond"), "bytes after the second response: {:?}", String::from_utf8_lossy(&buf));
    (first, buf)
}

async fn chunked_with_content_length_keeps_the_client_connection_in_step(upstream: Client) {
    let backend = te_and_cl_backend().await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let (first, raw) = te_and_cl_exchange(&gw).await;
    // Whatever the first response is, it is self-delimited, and the second request on the same
    // client connection got its own response with nothing stray before or after it (the body
    // itself is checked by the next test).
    assert!(matches!(first.status, 200 | 502), "{:?}", String::from_utf8_lossy(&raw));
    gw.gateway.stop().await;
}

async fn chunked_with_content_length_gives_502_or_the_chunked_body(upstream: Client) {
    let backend = te_and_cl_backend().await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let (first, raw) = te_and_cl_exchange(&gw).await;
    let text = String::from_utf8_lossy(&raw);
    match first.status {
        502 => {}
        200 => {
            assert_eq!(String::from_utf8_lossy(&first.body), "hello", "the chunked-decoded body: {text:?}");
            assert!(first.header("content-length").is_none_or(|cl| cl == "5"), "stale Content-Length: {text:?}");
        }
        other => panic!("status {other}: {text:?}"),
    }
    gw.gateway.stop().await;
}

async fn premature_close_mid_body_never_looks_complete(upstream: Client) {
    let backend = ScriptedBackend::start(|req| match req.target() {
        "/short" => Script::send("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").then(After::Close),
        _ => ok("recovered"),
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;

    let mut stream = within(WAIT, TcpStream::connect(gw.addr())).await.unwrap().unwrap();
    stream.write_all(b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    let mut tmp = [0u8; 4096];
    let closed = within(WAIT, async {
        loop {
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&tmp[..n]),
            }
        }
    })
    .await
    .is_ok();
    let text = String::from_utf8_lossy(&raw);
    let complete_200 = parse_responses(&raw).iter().any(|r| r.status == 200 && r.body.len() == 100);
    assert!(!complete_200, "a truncated body was passed off as complete: {text:?}");
    assert!(closed, "the client connection was left hanging after the backend cut the body short: {text:?}");

    let resp = TestClient::http1().send(TestRequest::get(gw.url("/next"))).await.unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "recovered"));
    gw.gateway.stop().await;
}

async fn bytes_beyond_content_length_never_answer_the_next_request(upstream: Client) {
    // The backend sends more than it announced, shaped like a second response: a client that kept
    // the connection would take it as the answer to whatever request it sends next.
    let backend = ScriptedBackend::start(|req| match req.target() {
        "/overlong" => Script::send(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
        ),
        other => ok(&format!("honest {other}")),
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();

    expect_ok(&client, &gw, "/overlong", "hello").await;
    for path in ["/next", "/after"] {
        let resp = client.send(TestRequest::get(gw.url(path))).await.unwrap();
        assert_eq!((resp.status, resp.text()), (200, format!("honest {path}")));
    }
    assert_eq!(backend.seen().len(), 3, "every request reached the backend: {:#?}", backend.seen());
    assert_eq!(backend.conns(), vec![0, 1, 1], "the connection with stray bytes is not reused");
    gw.gateway.stop().await;
}

async fn stale_pooled_connection_closed_by_the_backend_is_not_used(upstream: Client) {
    let backend = ScriptedBackend::start(|req| match req.conn {
        // The first connection answers once, then the backend closes it while it sits idle in the pool.
        0 => ok(&format!("first {}", req.target())).then(After::IdleThenClose(Duration::from_millis(100))),
        _ => ok(&format!("new {}", req.target())),
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();

    expect_ok(&client, &gw, "/one", "first /one").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    expect_ok(&client, &gw, "/two", "new /two").await;
    assert_eq!(backend.conns(), vec![0, 1]);
    gw.gateway.stop().await;
}

async fn large_head_and_body_in_small_writes_arrive_whole(upstream: Client) {
    let header_value = |i: usize| format!("{i:02}-{}", "v".repeat(90));
    let body: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let expected = body.clone();
    let backend = ScriptedBackend::start(move |_| {
        let mut head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", body.len());
        for i in 0..60 {
            head.push_str(&format!("x-large-{i:02}: {}\r\n", header_value(i)));
        }
        head.push_str("\r\n");
        let mut pieces: Vec<Vec<u8>> = head.as_bytes().chunks(700).map(<[u8]>::to_vec).collect();
        pieces.extend(body.chunks(1500).map(<[u8]>::to_vec));
        // About 140 separate writes on a no-delay socket, 1 ms apart, so the gateway reads partial data.
        Script { pieces, gap: Duration::from_millis(1), after: After::KeepOpen }
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;

    let resp = TestClient::http1().send(TestRequest::get(gw.url("/large"))).await.unwrap();
    assert_eq!(resp.status, 200);
    for i in 0..60 {
        assert_eq!(resp.header(&format!("x-large-{i:02}")), Some(header_value(i).as_str()), "header {i}");
    }
    assert_eq!(resp.body.len(), expected.len());
    assert!(resp.body == expected, "the body bytes differ");
    gw.gateway.stop().await;
}

/// Bodies that arrive faster than they are read fill every read (the direct client then reads in
/// larger steps): 3 MiB with Content-Length and 3 MiB chunked, in one write each, twice over one
/// backend connection.
async fn large_bodies_in_large_writes_arrive_whole_and_the_connection_is_reused(upstream: Client) {
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let expected = body.clone();
    let backend = ScriptedBackend::start(move |req| {
        let mut bytes = if req.target() == "/chunked" {
            let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for chunk in body.chunks(100_000) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            out
        } else {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes()
        };
        if req.target() != "/chunked" {
            bytes.extend_from_slice(&body);
        }
        Script::send(bytes)
    })
    .await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();
    for path in ["/length", "/chunked", "/length"] {
        let resp = client.send(TestRequest::get(gw.url(path))).await.unwrap();
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.body.len(), expected.len(), "{path}");
        assert!(resp.body == expected, "{path}: the body bytes differ");
    }
    assert_eq!(backend.conns(), vec![0, 0, 0], "each body ended cleanly, so the connection was reused");
    gw.gateway.stop().await;
}

/// `--upstream-max-idle 0` pools nothing; `--upstream-idle-timeout` retires a pooled connection
/// that waited longer, and only that one.
async fn pool_size_and_idle_timeout_are_honoured(upstream: Client) {
    let backend = ScriptedBackend::start(|req| ok(req.target())).await;
    let gw = gateway_to_with(upstream, &[("/", &backend)], |o| o.max_idle_per_endpoint = 0).await;
    let client = TestClient::http1();
    for path in ["/a", "/b", "/c"] {
        expect_ok(&client, &gw, path, path).await;
    }
    assert_eq!(backend.conns(), vec![0, 1, 2], "no connection was kept");
    gw.gateway.stop().await;

    let backend = ScriptedBackend::start(|req| ok(req.target())).await;
    let gw = gateway_to_with(upstream, &[("/", &backend)], |o| o.idle_timeout = Duration::from_millis(150)).await;
    for (path, pause) in [("/a", 0), ("/b", 0), ("/c", 400), ("/d", 0)] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        expect_ok(&client, &gw, path, path).await;
    }
    assert_eq!(backend.conns(), vec![0, 0, 1, 1], "reused while fresh, replaced after the idle timeout");
    gw.gateway.stop().await;
}

// ---- Requests: what backends receive -----------------------------------------------------------

async fn backend_receives_an_origin_form_request_without_hop_by_hop_headers(upstream: Client) {
    let backend = ScriptedBackend::start(|req| ok(&format!("got {}", req.target()))).await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;
    let client = TestClient::http1();

    let resp = client
        .send(
            TestRequest::get(gw.url("/inspect?q=1&r=two"))
                .header("connection", "x-drop")
                .header("x-drop", "1")
                .header("keep-alive", "timeout=5")
                .header("x-keep", "1"),
        )
        .await
        .unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "got /inspect?q=1&r=two"));

    let resp = client.send(TestRequest::post(gw.url("/submit")).header("content-length", "0")).await.unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "got /submit"));
    let resp = client.send(TestRequest::post(gw.url("/upload")).body("hello")).await.unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "got /upload"));

    let seen = backend.seen();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    let get = &seen[0];
    assert_eq!(get.line, "GET /inspect?q=1&r=two HTTP/1.1");
    assert_eq!(get.header_all("host"), vec![format!("127.0.0.1:{}", gw.port)]);
    assert_eq!(get.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(get.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(get.header("x-keep"), Some("1"));
    for name in ["x-drop", "keep-alive"] {
        assert!(get.header(name).is_none(), "{name} reached the backend: {:?}", get.headers);
    }
    for value in get.header_all("connection") {
        assert!(!value.to_ascii_lowercase().contains("x-drop"), "the client's Connection header was forwarded");
    }

    // Requests the backend can delimit: by Content-Length, never chunked.
    let empty = &seen[1];
    assert_eq!(empty.line, "POST /submit HTTP/1.1");
    assert_eq!(empty.header_all("content-length"), vec!["0"], "{:?}", empty.headers);
    assert!(empty.header("transfer-encoding").is_none(), "{:?}", empty.headers);
    assert!(empty.body.is_empty());
    let upload = &seen[2];
    assert_eq!(upload.header_all("content-length"), vec!["5"], "{:?}", upload.headers);
    assert!(upload.header("transfer-encoding").is_none(), "{:?}", upload.headers);
    assert_eq!(upload.body, b"hello");
    // The bodiless requests share one connection; a request with a body goes through the pool of
    // hyper's client (docs/performance.md, "direct HTTP/1.1 upstream exchanges"), which reuses its own.
    assert_eq!(backend.conns()[..2], [0, 0], "each request was delimited, so the connection was reused");
    gw.gateway.stop().await;
}

async fn h2_request_reaches_the_backend_as_http1_with_one_joined_cookie(upstream: Client) {
    let backend = ScriptedBackend::start(|req| ok(&format!("got {}", req.target()))).await;
    let gw = gateway_to(upstream, &[("/", &backend)]).await;

    let resp = TestClient::h2c()
        .send(TestRequest::get(gw.url("/from-h2?x=1")).header("cookie", "a=1").header("cookie", "b=2"))
        .await
        .unwrap();
    assert_eq!(resp.version, http::Version::HTTP_2);
    assert_eq!((resp.status, resp.text().as_str()), (200, "got /from-h2?x=1"));

    let seen = backend.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let req = &seen[0];
    assert_eq!(req.line, "GET /from-h2?x=1 HTTP/1.1");
    assert_eq!(req.header_all("host"), vec![format!("127.0.0.1:{}", gw.port)]);
    assert_eq!(req.header_all("cookie"), vec!["a=1; b=2"], "{:?}", req.headers);
    assert_eq!(req.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(req.header_all("x-forwarded-proto"), vec!["http"]);
    gw.gateway.stop().await;
}

/// The race `stale_pooled_connection_closed_by_the_backend_is_not_used` cannot catch: the backend
/// closes a pooled connection just as the next request reaches it, without answering. The direct
/// client sends an idempotent request again on a new connection (the request cannot have been
/// processed: not one byte of a response came back); a POST is never sent twice. hyper's client
/// answers both with 502, so this runs against the direct client only.
#[tokio::test]
async fn a_pooled_connection_closed_unanswered_resends_idempotent_requests_only() {
    let backend = ScriptedBackend::start(|req| match (req.conn, req.target()) {
        (0, "/warm") => ok("warm"),
        // The backend's keep-alive ended as the request arrived: close without a byte.
        (0, _) => Script { pieces: Vec::new(), gap: Duration::ZERO, after: After::Close },
        _ => ok(&format!("new {}", req.target())),
    })
    .await;
    let gw = gateway_to(Client::Direct, &[("/", &backend)]).await;
    let client = TestClient::http1();

    expect_ok(&client, &gw, "/warm", "warm").await;
    let resp = client.send(TestRequest::get(gw.url("/again"))).await.unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "new /again"), "the GET went out again on a new connection");
    assert_eq!(backend.conns(), vec![0, 0, 1]);

    // The same race for a POST, on a second gateway whose only pooled connection is the one that closes.
    let backend = ScriptedBackend::start(|req| match (req.conn, req.target()) {
        (0, "/warm") => ok("warm"),
        (0, _) => Script { pieces: Vec::new(), gap: Duration::ZERO, after: After::Close },
        _ => ok("must not be reached"),
    })
    .await;
    let gw2 = gateway_to(Client::Direct, &[("/", &backend)]).await;
    let resp = client.send(TestRequest::get(gw2.url("/warm"))).await.unwrap();
    assert_eq!(resp.status, 200);
    let resp = client.send(TestRequest::post(gw2.url("/order")).header("content-length", "0")).await.unwrap();
    assert_eq!(resp.status, 502, "a POST is not sent twice: {}", resp.text());
    assert_eq!(backend.conns(), vec![0, 0], "the POST reached the backend once");
    gw.gateway.stop().await;
    gw2.gateway.stop().await;
}
