//! Limits and request-smuggling defences, end to end: 431/414/413 answers, the header read and
//! idle timeouts, the connection limit, HTTP/2 stream limits and abuse cases (raw frames), and
//! ambiguous HTTP/1.1 framing rejected with 400 and never forwarded (raw bytes on a socket).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sessile::run::ServeOptions;
use sessile_testkit::raw::{all_status_lines, parse_responses};
use sessile_testkit::{TestBackend, TestClient, TestRequest, raw_exchange, status_line};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTE: &str = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: svc, port: 80}]\n";

/// A gateway with a catch-all route to `backend`, its options adjusted by `adjust`.
async fn gateway(backend: &TestBackend, adjust: impl FnOnce(&mut ServeOptions)) -> TestGateway {
    let port = free_port();
    let config = TempDir::new("limits");
    config.write("gw.yaml", &gateway_yaml(port));
    config.write("svc.yaml", &service_yaml("default", "svc", &[backend]));
    config.write("route.yaml", ROUTE);
    start_gateway_with(config, TempDir::new("limits-state"), port, adjust).await
}

async fn raw(gw: &TestGateway, bytes: &[u8]) -> Vec<u8> {
    raw_exchange(gw.addr(), bytes, Duration::from_secs(3)).await.expect("raw exchange")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---- Sizes -----------------------------------------------------------------------------------

#[tokio::test]
async fn header_block_size_and_count_limits_answer_431() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |o| {
        o.limits.max_request_header_bytes = 8 * 1024;
        o.limits.max_request_headers = 20;
    })
    .await;
    let ok = raw(&gw, b"GET / HTTP/1.1\r\nHost: a\r\nX-Small: 1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_line(&ok), Some(200), "{}", text(&ok));

    // Over the configured block size (checked by the gateway) and far over it (hyper's buffer).
    for size in [9 * 1024, 200 * 1024] {
        let req = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "v".repeat(size));
        let resp = raw(&gw, req.as_bytes()).await;
        assert_eq!(status_line(&resp), Some(431), "{size}-byte header: {}", text(&resp));
    }
    // More fields than allowed.
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw(&gw, format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes()).await;
    assert_eq!(status_line(&resp), Some(431), "{}", text(&resp));

    // HTTP/2: too many fields (the gateway) and a header list over SETTINGS_MAX_HEADER_LIST_SIZE (h2).
    let h2 = TestClient::h2c();
    let mut req = TestRequest::get(gw.url("/"));
    for i in 0..30 {
        req = req.header(&format!("x-h{i}"), "v");
    }
    assert_eq!(h2.send(req).await.unwrap().status, 431);
    let big = TestRequest::get(gw.url("/")).header("x-big", &"v".repeat(9 * 1024));
    assert_eq!(h2.send(big).await.unwrap().status, 431);
    let huge = TestRequest::get(gw.url("/")).header("x-big", &"v".repeat(40 * 1024));
    assert_eq!(TestClient::h2c().send(huge).await.unwrap().status, 431);
    assert_eq!(b.hits(), 1, "only the request within the limits reached the backend");
    gw.gateway.stop().await;
}

#[tokio::test]
async fn long_request_target_answers_414() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |o| o.limits.max_uri_length = 1024).await;
    let long = format!("/{}", "p".repeat(2000));
    let resp = raw(&gw, format!("GET {long} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await;
    assert_eq!(status_line(&resp), Some(414), "{}", text(&resp));
    assert_eq!(TestClient::h2c().send(TestRequest::get(gw.url(&long))).await.unwrap().status, 414);
    let fits = format!("/{}", "p".repeat(900));
    assert_eq!(TestClient::http1().send(TestRequest::get(gw.url(&fits))).await.unwrap().status, 200);
    assert_eq!(b.hits(), 1);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn request_body_limit_answers_413_up_front_and_while_streaming() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |o| o.limits.max_request_body = Some(1024)).await;
    // Content-Length over the limit: refused before anything is forwarded.
    let req = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n{}", "x".repeat(2000));
    let resp = raw(&gw, req.as_bytes()).await;
    assert_eq!(status_line(&resp), Some(413), "{}", text(&resp));
    assert_eq!(parse_responses(&resp)[0].header("connection"), Some("close"));
    let h2 = TestClient::h2c().send(TestRequest::post(gw.url("/")).body(vec![b'x'; 2000])).await.unwrap();
    assert_eq!(h2.status, 413);
    assert_eq!(b.hits(), 0, "bodies announced over the limit are never forwarded");

    // Chunked: the limit is enforced as the body arrives.
    let chunk = format!("320\r\n{}\r\n", "y".repeat(0x320));
    let req = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}{chunk}0\r\n\r\n");
    let resp = raw(&gw, req.as_bytes()).await;
    assert_eq!(status_line(&resp), Some(413), "{}", text(&resp));

    // Within the limit, both ways.
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}0\r\n\r\n"
    );
    assert_eq!(status_line(&raw(&gw, req.as_bytes()).await), Some(200));
    let ok = TestClient::http1().send(TestRequest::post(gw.url("/")).body(vec![b'x'; 1024])).await.unwrap();
    assert_eq!(ok.status, 200);
    gw.gateway.stop().await;
}

// ---- Timeouts --------------------------------------------------------------------------------

/// Sends `warmup` requests (if any) and reads their responses, then writes `first`, then `drip`
/// every 50 ms; returns how long (from `first`) until the gateway closed the connection.
async fn time_until_closed(addr: SocketAddr, warmup: usize, first: &[u8], drip: &[u8]) -> Duration {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for _ in 0..warmup {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(status_line(&buf[..n]), Some(200));
    }
    let start = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    let first = first.to_vec();
    let drip = drip.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&first).await;
        while !drip.is_empty() && wr.write_all(&drip).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::future::pending::<()>().await;
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    writer.abort();
    assert!(closed.is_ok(), "the connection was not closed within 5 s");
    start.elapsed()
}

#[tokio::test]
async fn slow_request_heads_are_cut_off_by_the_header_read_timeout() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |o| o.limits.header_read_timeout = Duration::from_millis(300)).await;
    // A client that trickles header lines (slowloris), and one that sends nothing.
    let slow = time_until_closed(gw.addr(), 0, b"GET / HTTP/1.1\r\nHost: a\r\n", b"X-A: b\r\n").await;
    assert!(slow >= Duration::from_millis(250) && slow < Duration::from_secs(2), "closed after {slow:?}");
    let silent = time_until_closed(gw.addr(), 0, b"", b"").await;
    assert!(silent >= Duration::from_millis(250) && silent < Duration::from_secs(2), "closed after {silent:?}");
    assert_eq!(b.hits(), 0);
    // On a keep-alive connection the timeout starts again at the next request's first byte.
    let second = time_until_closed(gw.addr(), 2, b"GET / HTTP/1.1\r\nHost: a\r\n", b"X-A: b\r\n").await;
    assert!(second >= Duration::from_millis(250) && second < Duration::from_secs(2), "closed after {second:?}");
    assert_eq!(b.hits(), 2);
    // A prompt client is unaffected.
    assert_eq!(TestClient::http1().send(TestRequest::get(gw.url("/"))).await.unwrap().status, 200);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_and_busy_ones_are_not() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |o| {
        o.limits.idle_timeout = Duration::from_millis(400);
        o.limits.header_read_timeout = Duration::from_secs(5);
    })
    .await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    // Requests 150 ms apart keep the connection open well past the idle timeout.
    let start = Instant::now();
    let mut last_response = Instant::now();
    while start.elapsed() < Duration::from_millis(1200) {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(status_line(&buf[..n]), Some(200), "{}", text(&buf[..n]));
        last_response = Instant::now();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Then idle: closed after about the idle timeout.
    let idle_from = last_response;
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "expected EOF, got {n:?}");
    let waited = idle_from.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "closed after {waited:?}");
    // h2c: an idle connection gets GOAWAY and closes too.
    let io = TokioIo::new(TcpStream::connect(gw.addr()).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(gw.url("/")).body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), conn).await.expect("idle h2 connection closed").unwrap().unwrap();
    let waited = idle_from.elapsed();
    assert!(waited >= Duration::from_millis(300), "h2 closed after {waited:?}");
    gw.gateway.stop().await;
}

// ---- Connections -----------------------------------------------------------------------------

#[tokio::test]
async fn connections_over_the_limit_are_refused_without_harming_open_ones() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |o| o.limits.max_connections = 2).await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(status_line(&buf[..n]), Some(200));
        open.push(s);
    }
    let refused = raw(&gw, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(status_line(&refused), Some(503), "{}", text(&refused));
    let r = &parse_responses(&refused)[0];
    assert_eq!(r.header("connection"), Some("close"));
    // The open connections keep working.
    for s in &mut open {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(status_line(&buf[..n]), Some(200));
    }
    assert_eq!(b.hits(), 4, "the refused request never reached the backend");
    // A freed slot is usable again.
    drop(open.pop());
    sessile_testkit::eventually(Duration::from_secs(3), || async {
        let resp =
            raw_exchange(gw.addr(), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Duration::from_secs(2))
                .await?;
        anyhow::ensure!(status_line(&resp) == Some(200), "{}", text(&resp));
        Ok(())
    })
    .await
    .unwrap();
    gw.gateway.stop().await;
}

// ---- HTTP/2 ----------------------------------------------------------------------------------

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
struct H2Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

struct Frames {
    frames: Vec<H2Frame>,
    eof: bool,
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn h2_preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// HPACK integer with an `n`-bit prefix; `flags` fills the high bits of the first byte.
fn hpack_int(out: &mut Vec<u8>, n: u32, flags: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 7, 0, s.len());
    out.extend_from_slice(s);
}

/// A GET request header block (no Huffman, no indexing).
fn request_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![0x82, 0x86]; // :method GET, :scheme http
    hpack_int(&mut out, 4, 0, 4); // :path
    hpack_str(&mut out, path.as_bytes());
    hpack_int(&mut out, 4, 0, 1); // :authority
    hpack_str(&mut out, b"a");
    for (k, v) in extra {
        out.push(0);
        hpack_str(&mut out, k.as_bytes());
        hpack_str(&mut out, v.as_bytes());
    }
    out
}

/// Reads frames until EOF, `done(frames)` or `limit`.
async fn read_frames(
    s: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
    done: impl Fn(&[H2Frame]) -> bool,
) -> Frames {
    let deadline = tokio::time::Instant::now() + limit;
    let mut data = Vec::new();
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                eof = true;
                break;
            }
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
        }
        while data.len() >= 9 {
            let len = (usize::from(data[0]) << 16) | (usize::from(data[1]) << 8) | usize::from(data[2]);
            if data.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) & 0x7fff_ffff;
            frames.push(H2Frame { ty: data[3], flags: data[4], stream, payload: data[9..9 + len].to_vec() });
            data.drain(..9 + len);
        }
        if done(&frames) {
            break;
        }
    }
    Frames { frames, eof }
}

/// Writes `bytes` (concurrently, ignoring write errors) and reads the server's frames.
async fn h2_exchange(addr: SocketAddr, bytes: Vec<u8>, limit: Duration, done: impl Fn(&[H2Frame]) -> bool) -> Frames {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        std::future::pending::<()>().await;
    });
    let frames = read_frames(&mut rd, limit, done).await;
    writer.abort();
    frames
}

fn goaway_code(frames: &Frames) -> Option<u32> {
    frames
        .frames
        .iter()
        .find(|f| f.ty == GOAWAY)
        .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
}

#[tokio::test]
async fn h2_concurrent_streams_are_limited_and_extra_requests_wait() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |o| o.limits.h2_max_concurrent_streams = 4).await;
    // The server announces the limit.
    let frames =
        h2_exchange(gw.addr(), h2_preface(), Duration::from_secs(2), |f| f.iter().any(|f| f.ty == SETTINGS)).await;
    let settings = frames.frames.iter().find(|f| f.ty == SETTINGS && f.flags & 1 == 0).expect("server SETTINGS");
    let announced = settings
        .payload
        .chunks(6)
        .find(|c| u16::from_be_bytes([c[0], c[1]]) == 3)
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    assert_eq!(announced, Some(4));

    // A client that honours it: 12 slow requests on one connection all succeed, at most 4 at a time.
    let io = TokioIo::new(TcpStream::connect(gw.addr()).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    // One request first, so the client has the server's SETTINGS before it opens many streams.
    let warm = http::Request::get(gw.url("/")).body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(sender.send_request(warm).await.unwrap().status(), 200);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let mut sender = sender.clone();
        let url = gw.url("/");
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(url).header("x-delay-ms", "300").body(Empty::<Bytes>::new()).unwrap();
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(850), "12 requests of 300 ms, 4 at a time, took only {took:?}");

    // A client that ignores it: streams beyond the limit are refused (RST_STREAM REFUSED_STREAM).
    let mut bytes = h2_preface();
    for i in 0..6u32 {
        bytes.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &request_block("/", &[("x-delay-ms", "500")]),
        ));
    }
    let frames =
        h2_exchange(gw.addr(), bytes, Duration::from_secs(3), |f| f.iter().filter(|f| f.ty == RST_STREAM).count() >= 2)
            .await;
    let refused: Vec<u32> =
        frames.frames.iter().filter(|f| f.ty == RST_STREAM && f.payload == [0, 0, 0, 7]).map(|f| f.stream).collect();
    assert_eq!(refused, vec![9, 11], "{:?}", frames.frames);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn h2_rapid_reset_is_cut_off() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |_| {}).await;
    let mut bytes = h2_preface();
    for i in 0..1000u32 {
        bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &request_block("/", &[])));
        bytes.extend(frame(RST_STREAM, 0, 2 * i + 1, &8u32.to_be_bytes()));
    }
    let frames = h2_exchange(gw.addr(), bytes, Duration::from_secs(5), |_| false).await;
    assert_eq!(goaway_code(&frames), Some(ENHANCE_YOUR_CALM), "{:?}", frames.frames);
    assert!(frames.eof, "the connection is closed");
    assert!(b.hits() < 100, "{} of 1000 reset streams reached the backend", b.hits());
    // The gateway still serves others.
    assert_eq!(TestClient::h2c().send(TestRequest::get(gw.url("/"))).await.unwrap().status, 200);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |_| {}).await;
    let mut bytes = h2_preface();
    bytes.extend(frame(HEADERS, END_STREAM, 1, &request_block("/", &[])));
    let mut fragment = Vec::new();
    for i in 0..12 {
        fragment.push(0);
        hpack_str(&mut fragment, format!("x-flood-{i}").as_bytes());
        hpack_str(&mut fragment, &[b'v'; 1200]);
    }
    for _ in 0..5000 {
        bytes.extend(frame(CONTINUATION, 0, 1, &fragment));
    }
    let start = Instant::now();
    let frames = h2_exchange(gw.addr(), bytes, Duration::from_secs(5), |_| false).await;
    assert!(goaway_code(&frames).is_some(), "GOAWAY expected: {:?}", frames.frames);
    assert!(frames.eof && start.elapsed() < Duration::from_secs(4), "closed promptly");
    assert_eq!(b.hits(), 0);
    gw.gateway.stop().await;
}

#[tokio::test]
async fn h2_ping_and_settings_floods_are_answered_with_backpressure_and_the_connection_serves() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |_| {}).await;
    let mut bytes = h2_preface();
    for i in 0..5000u64 {
        bytes.extend(frame(PING, 0, 0, &i.to_be_bytes()));
        if i % 2 == 0 {
            bytes.extend(frame(SETTINGS, 0, 0, &[]));
        }
    }
    bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &request_block("/after-flood", &[])));
    let frames = h2_exchange(gw.addr(), bytes, Duration::from_secs(10), |f| {
        f.iter().any(|f| f.stream == 1 && f.flags & END_STREAM != 0 && (f.ty == DATA || f.ty == HEADERS))
    })
    .await;
    let pongs = frames.frames.iter().filter(|f| f.ty == PING && f.flags & 1 != 0).count();
    assert!(pongs > 0, "pings are answered");
    assert!(frames.frames.iter().any(|f| f.ty == HEADERS && f.stream == 1), "the request after the flood is served");
    assert_eq!(b.hits(), 1);
    gw.gateway.stop().await;
}

// ---- Request smuggling -----------------------------------------------------------------------

#[tokio::test]
async fn ambiguous_http1_framing_is_rejected_with_400_and_never_forwarded() {
    let b = sessile_testkit::start_backend("b").await.unwrap();
    let gw = gateway(&b, |_| {}).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "CL then TE",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE then CL",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "differing CLs",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!{smuggled}"),
        ),
        ("CL list", format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!{smuggled}")),
        ("CL sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello".to_string()),
        (
            "TE chunked, identity",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".to_string(),
        ),
        (
            "TE identity, chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n".to_string(),
        ),
        (
            "TE chunked twice",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_string(),
        ),
        ("TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".to_string()),
        ("TE on HTTP/1.0", "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string()),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n".to_string()),
        ("obs-fold TE", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n".to_string()),
        ("space in name", "GET / HTTP/1.1\r\nHost: a\r\nX Bad: v\r\n\r\n".to_string()),
        (
            "space before colon",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".to_string(),
        ),
        ("non-token name", "GET / HTTP/1.1\r\nHost: a\r\nX-B@d: v\r\n\r\n".to_string()),
        ("control in name", "GET / HTTP/1.1\r\nHost: a\r\nX-\x01: v\r\n\r\n".to_string()),
        ("bare LF line ends", "GET / HTTP/1.1\nHost: a\n\n".to_string()),
        ("bare LF in a header", "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n".to_string()),
        ("bare CR in a header", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rTransfer-Encoding: chunked\r\n\r\n".to_string()),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_string()),
    ];
    for (what, req) in &cases {
        let resp = raw(&gw, req.as_bytes()).await;
        assert_eq!(all_status_lines(&resp), vec![400], "{what}: {}", text(&resp));
        assert_eq!(b.hits(), 0, "{what}: forwarded to the backend");
    }
    // Well-formed requests still pass, including chunked ones and keep-alive after them.
    let ok = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let resp = raw(&gw, ok.as_bytes()).await;
    assert_eq!(all_status_lines(&resp), vec![200, 200], "{}", text(&resp));
    assert_eq!(b.hits(), 2);
    gw.gateway.stop().await;
}
