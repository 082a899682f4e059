//! Tests of the test kit itself, against its own in-process backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use http::Version;
use sessile_testkit::backend::BackendOptions;
use sessile_testkit::{
    CookieJar, TestClient, TestRequest, eventually, grpc, raw, start_backend, start_backend_with, tls, websocket_echo,
    within,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(3);

#[tokio::test]
async fn http1_echo_json() {
    let b = start_backend("alpha").await.unwrap();
    let c = TestClient::http1();
    let r = c
        .send(TestRequest::post(b.url("/hello?x=1")).header("x-foo", "one").header("x-foo", "two").body("payload"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.backend().as_deref(), Some("alpha"));
    let j = r.json();
    assert_eq!(j["backend"], "alpha");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/hello?x=1");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["body"], "payload");
    assert_eq!(j["headers"]["x-foo"], serde_json::json!(["one", "two"]));
    assert_eq!(j["headers"]["host"][0], b.addr().to_string());
    assert_eq!(b.hits(), 1);
    assert_eq!(b.name(), "alpha");
}

#[tokio::test]
async fn request_controls() {
    let b = start_backend("ctl").await.unwrap();
    let c = TestClient::http1();
    let start = Instant::now();
    let r = c
        .send(
            TestRequest::get(b.url("/"))
                .header("x-echo-status", "503")
                .header("x-delay-ms", "200")
                .header("x-set-cookie", "a=b; Path=/")
                .header("x-set-cookie", "c=d")
                .header("x-cache-control", "public, max-age=60"),
        )
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.status, 503);
    assert_eq!(r.set_cookies(), vec!["a=b; Path=/", "c=d"]);
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(r.backend().as_deref(), Some("ctl"));
}

#[tokio::test]
async fn backend_options_apply() {
    let opts = BackendOptions {
        status: Some(201),
        response_headers: vec![("x-extra".into(), "yes".into())],
        http1_only: true,
        ..Default::default()
    };
    let b = start_backend_with("opt", opts).await.unwrap();
    let r = TestClient::http1().send(TestRequest::get(b.url("/"))).await.unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-extra"), Some("yes"));
    // h2c prior knowledge is refused by an HTTP/1.1-only backend.
    let h2 = TestClient::h2c().timeout(Duration::from_secs(1));
    assert!(h2.send(TestRequest::get(b.url("/"))).await.is_err());
}

#[tokio::test]
async fn http2_only_backend_refuses_http1() {
    let opts = BackendOptions { http2_only: true, ..Default::default() };
    let b = start_backend_with("h2only", opts).await.unwrap();
    let r = TestClient::h2c().send(TestRequest::get(b.url("/"))).await.unwrap();
    assert_eq!(r.version, Version::HTTP_2);
    let h1 = TestClient::http1().timeout(Duration::from_secs(1));
    assert!(h1.send(TestRequest::get(b.url("/"))).await.is_err());
}

#[tokio::test]
async fn h2c_echo_and_authority_override() {
    let b = start_backend("beta").await.unwrap();
    let c = TestClient::h2c();
    let r = c.send(TestRequest::get(b.url("/p?q=2")).host("app.example.com")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_2);
    let j = r.json();
    assert_eq!(j["version"], "HTTP/2");
    assert_eq!(j["path"], "/p?q=2");
    assert_eq!(j["authority"], "app.example.com");
    assert_eq!(r.backend().as_deref(), Some("beta"));
}

#[tokio::test]
async fn http1_host_override() {
    let b = start_backend("h").await.unwrap();
    let r = TestClient::http1().send(TestRequest::get(b.url("/")).host("foo.example.com")).await.unwrap();
    assert_eq!(r.json()["headers"]["host"][0], "foo.example.com");
}

#[tokio::test]
async fn pooled_versus_fresh_connections() {
    let b = start_backend("pool").await.unwrap();
    for client in [TestClient::http1(), TestClient::h2c()] {
        b.reset_counters();
        for _ in 0..3 {
            let r = client.send(TestRequest::get(b.url("/"))).await.unwrap();
            assert_eq!(r.status, 200);
        }
        assert_eq!(b.connections(), 1, "pooled {client:?}");
        let fresh = client.clone().fresh_connections(true);
        for _ in 0..3 {
            fresh.send(TestRequest::get(b.url("/"))).await.unwrap();
        }
        assert_eq!(b.connections(), 4, "fresh {client:?}");
        assert_eq!(b.hits(), 6);
    }
}

#[tokio::test]
async fn concurrent_h2c_requests_share_one_connection() {
    let b = start_backend("mux").await.unwrap();
    let c = TestClient::h2c();
    c.send(TestRequest::get(b.url("/"))).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let c = c.clone();
        let url = b.url("/");
        tasks.push(tokio::spawn(async move { c.send(TestRequest::get(url).header("x-delay-ms", "50")).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status, 200);
    }
    assert_eq!(b.connections(), 1);
}

#[tokio::test]
async fn cookie_jar_round_trip() {
    let b = start_backend("jar").await.unwrap();
    let c = TestClient::http1();
    let mut jar = CookieJar::new();
    c.send_with_jar(TestRequest::get(b.url("/")).header("x-set-cookie", "sess=abc; Path=/; HttpOnly"), &mut jar)
        .await
        .unwrap();
    assert_eq!(jar.cookie_header().as_deref(), Some("sess=abc"));
    let r = c
        .send_with_jar(TestRequest::get(b.url("/")).header("x-set-cookie", "sess=; Max-Age=0"), &mut jar)
        .await
        .unwrap();
    assert_eq!(r.json()["headers"]["cookie"][0], "sess=abc");
    assert!(jar.is_empty());
    let r = c.send_with_jar(TestRequest::get(b.url("/")), &mut jar).await.unwrap();
    assert!(r.json()["headers"].get("cookie").is_none());
}

#[tokio::test]
async fn websocket_echo_through_backend() {
    let b = start_backend("ws").await.unwrap();
    let r = websocket_echo(b.addr(), "ws.example.com", "/chat", &[("x-trace", "1")], "hello").await.unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.echoed, "ws:hello");
    assert_eq!(r.header("x-backend"), Some("ws"));
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn websocket_accept_key_matches_rfc_example() {
    assert_eq!(sessile_testkit::ws::accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[tokio::test]
async fn grpc_trailers_over_h2c() {
    let b = start_backend("grpc").await.unwrap();
    let msg = grpc::frame(b"ping");
    let r = TestClient::h2c()
        .send(
            TestRequest::post(b.url("/pkg.Svc/Call"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(msg.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.body, msg);
    assert_eq!(grpc::unframe(&r.body), vec![b"ping".to_vec()]);
    assert_eq!(r.trailer("grpc-status"), Some("0"));
    assert_eq!(r.trailer("x-backend-trailer"), Some("grpc"));
}

#[tokio::test]
async fn grpc_trailers_over_http1_chunked() {
    let b = start_backend("g1").await.unwrap();
    let r = TestClient::http1()
        .send(
            TestRequest::post(b.url("/s/M"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(grpc::frame(b"x")),
        )
        .await
        .unwrap();
    assert_eq!(r.trailer("grpc-status"), Some("0"));
}

#[test]
fn grpc_framing() {
    let mut body = grpc::frame(b"a").to_vec();
    body.extend_from_slice(&grpc::frame(b""));
    body.extend_from_slice(&grpc::frame(b"hello"));
    body.extend_from_slice(&[0, 0, 0, 0, 9, 1]); // truncated
    assert_eq!(grpc::frame(b"ab").as_ref(), &[0, 0, 0, 0, 2, b'a', b'b']);
    assert_eq!(grpc::unframe(&body), vec![b"a".to_vec(), vec![], b"hello".to_vec()]);
}

#[tokio::test]
async fn streaming_body() {
    let b = start_backend("s").await.unwrap();
    let start = Instant::now();
    let r = TestClient::http1().send(TestRequest::get(b.url("/stream?chunks=5"))).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(80));
    assert_eq!(r.text(), "s:chunk0\ns:chunk1\ns:chunk2\ns:chunk3\ns:chunk4\n");
}

#[tokio::test]
async fn stop_refuses_and_closes_then_restart_serves_again() {
    let b = start_backend("sr").await.unwrap();
    let addr = b.addr();
    let c = TestClient::http1();
    c.send(TestRequest::get(b.url("/"))).await.unwrap();
    let mut open = TcpStream::connect(addr).await.unwrap();
    // Make sure the backend accepted it before stopping.
    eventually(T, || async {
        anyhow::ensure!(b.connections() >= 2);
        Ok(())
    })
    .await
    .unwrap();

    b.stop().await;
    assert!(!b.is_running());
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The already-open connection was closed by the backend.
    let mut buf = [0u8; 16];
    let n = within(T, open.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    // The pooled client connection is gone too: the request fails (no hang).
    assert!(c.send(TestRequest::get(b.url("/"))).await.is_err());

    b.restart().await.unwrap();
    assert_eq!(b.addr(), addr);
    let r = c.send(TestRequest::get(b.url("/"))).await.unwrap();
    assert_eq!(r.backend().as_deref(), Some("sr"));
}

#[tokio::test]
async fn stop_closes_open_websocket() {
    let b = start_backend("wsstop").await.unwrap();
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 1024];
    let n = within(T, s.read(&mut head)).await.unwrap().unwrap();
    assert_eq!(raw::status_line(&head[..n]), Some(101));
    within(T, b.stop()).await.unwrap();
    let n = within(T, s.read(&mut head)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn raw_exchange_and_status_line() {
    let b = start_backend("raw").await.unwrap();
    let out = raw::raw_exchange(b.addr(), b"GET /r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", T).await.unwrap();
    assert_eq!(raw::status_line(&out), Some(200));
    assert!(String::from_utf8_lossy(&out).contains("x-backend: raw"));

    let out = raw::raw_exchange(b.addr(), b"NOT HTTP AT ALL\r\n\r\n", T).await.unwrap();
    assert_eq!(raw::status_line(&out), Some(400));

    // Pipelined: two answers; the timeout bounds the read of a kept-alive connection.
    let out = raw::raw_exchange(
        b.addr(),
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    assert_eq!(raw::all_status_lines(&out), vec![200, 200]);
    let parsed = raw::parse_responses(&out);
    let second: serde_json::Value = serde_json::from_slice(&parsed[1].body).unwrap();
    assert_eq!(second["path"], "/2");
    assert_eq!(parsed[0].header("x-backend"), Some("raw"));

    // Chunked bodies (with trailers) are de-chunked and delimited.
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx: y\r\n\r\n\
        HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno";
    let parsed = raw::parse_responses(chunked);
    assert_eq!(parsed.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200, 204, 404]);
    assert_eq!(parsed[0].body, b"abc");
    assert_eq!(parsed[2].body, b"no");

    assert_eq!(raw::status_line(b"HTTP/1.0 404 Not Found\r\n"), Some(404));
    assert_eq!(raw::status_line(b"garbage"), None);
}

#[tokio::test]
async fn eventually_polls_until_ok_and_times_out() {
    let n = AtomicU32::new(0);
    let v = eventually(T, || async {
        let seen = n.fetch_add(1, Ordering::SeqCst) + 1;
        anyhow::ensure!(seen >= 3, "only {seen}");
        Ok(seen)
    })
    .await
    .unwrap();
    assert_eq!(v, 3);

    let start = Instant::now();
    let err = eventually(Duration::from_millis(100), || async { anyhow::bail!("never") as anyhow::Result<()> })
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(format!("{err:#}").contains("never"));
}

#[test]
fn test_pki_parses() {
    assert_eq!(tls::certs(tls::CA_PEM).unwrap().len(), 1);
    for (cert, key) in [
        (tls::EXAMPLE_COM_CERT_PEM, tls::EXAMPLE_COM_KEY_PEM),
        (tls::OTHER_TEST_CERT_PEM, tls::OTHER_TEST_KEY_PEM),
        (tls::LOCALHOST_CERT_PEM, tls::LOCALHOST_KEY_PEM),
    ] {
        tls::server_config(cert, key, &[b"h2"]).unwrap();
    }
    assert!(std::path::Path::new(tls::TESTDATA_DIR).join("ca.pem").exists());
}

/// TLS terminator in front of a backend: it serves h1 and h2c on one port, so any ALPN works.
async fn tls_front(backend: std::net::SocketAddr, cert: &[u8], key: &[u8]) -> std::net::SocketAddr {
    let config = tls::server_config(cert, key, &[b"h2", b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut up) = TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_alpn_h2_and_http1_with_sni() {
    let b = start_backend("tls").await.unwrap();
    let front = tls_front(b.addr(), tls::EXAMPLE_COM_CERT_PEM, tls::EXAMPLE_COM_KEY_PEM).await;
    let url = format!("https://{front}/secure");

    let h2 = TestClient::https(tls::CA_PEM, true).unwrap();
    let r = h2.send(TestRequest::get(&url).host("www.example.com")).await.unwrap();
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.json()["authority"], "www.example.com");
    assert_eq!(r.backend().as_deref(), Some("tls"));

    let h1 = TestClient::https(tls::CA_PEM, false).unwrap();
    let r = h1.send(TestRequest::get(&url).host("example.com")).await.unwrap();
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.json()["headers"]["host"][0], "example.com");

    // SNI override: the example.com certificate does not match other.test.
    let err = h1.send(TestRequest::get(&url).host("example.com").sni("other.test")).await.unwrap_err();
    assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
}

#[tokio::test]
async fn https_to_ip_uses_ip_san() {
    let b = start_backend("ip").await.unwrap();
    let front = tls_front(b.addr(), tls::LOCALHOST_CERT_PEM, tls::LOCALHOST_KEY_PEM).await;
    let c = TestClient::https(tls::CA_PEM, true).unwrap();
    let r = c.send(TestRequest::get(format!("https://{front}/"))).await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn client_timeout_bounds_a_slow_backend() {
    let b = start_backend("slow").await.unwrap();
    let c = TestClient::http1().timeout(Duration::from_millis(200));
    let start = Instant::now();
    let err = c.send(TestRequest::get(b.url("/")).header("x-delay-ms", "2000")).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(err.to_string().contains("within"), "{err}");
}

#[tokio::test]
async fn backend_is_shareable_across_tasks() {
    let b = Arc::new(start_backend("shared").await.unwrap());
    let b2 = b.clone();
    tokio::spawn(async move {
        TestClient::h2c().send(TestRequest::get(b2.url("/"))).await.unwrap();
    })
    .await
    .unwrap();
    assert_eq!(b.hits(), 1);
}
