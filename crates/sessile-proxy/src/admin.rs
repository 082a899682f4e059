//! The admin HTTP server: health, readiness, status, metrics, the effective configuration and `explain`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use sessile_core::matching::percent_decode;

use crate::explain::Query;
use crate::state::Shared;

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, &req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// `GET /explain?url=URL[&method=GET][&header=Name:%20value]...[&cookie=a%3Db]...[&format=json]`.
fn explain(shared: &Shared, query: &str) -> (StatusCode, &'static str, String) {
    let (mut method, mut url, mut headers, mut cookies, mut json) = ("GET".to_string(), None, vec![], vec![], false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match percent_decode(k).as_str() {
            "method" => method = v,
            "url" => url = Some(v),
            "header" => headers.push(v),
            "cookie" => cookies.push(v),
            "format" => json = v == "json",
            other => {
                return (StatusCode::BAD_REQUEST, "text/plain", format!("unknown parameter {other:?}\n"));
            }
        }
    }
    let Some(url) = url else {
        let usage = "usage: /explain?url=http://host:port/path[&method=GET][&header=Name:%20value][&cookie=a%3Db][&format=json]\n";
        return (StatusCode::BAD_REQUEST, "text/plain", usage.to_string());
    };
    match Query::parse(&method, &url, &headers, &cookies) {
        Ok(q) => {
            let ex = crate::explain::explain(shared, &q, sessile_session::now_ms());
            match json {
                true => (StatusCode::OK, "application/json", serde_json::to_string_pretty(&ex).unwrap_or_default()),
                false => (StatusCode::OK, "text/plain; charset=utf-8", ex.to_string()),
            }
        }
        Err(e) => (StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if shared.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".to_string()),
        "/status" => {
            (StatusCode::OK, "application/json", serde_json::to_string_pretty(&*shared.statuses()).unwrap_or_default())
        }
        "/config" => {
            (StatusCode::OK, "application/json", serde_json::to_string_pretty(&*shared.snapshot()).unwrap_or_default())
        }
        "/explain" => explain(shared, req.uri().query().unwrap_or("")),
        "/metrics" => {
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", shared.metrics_text())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}
