//! Raw TCP exchanges for malformed-request and smuggling tests.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects, writes `bytes`, then reads until EOF or until `timeout` elapses; returns what arrived.
///
/// Hitting the timeout is not an error (the peer may keep the connection open). A connection
/// reset after some bytes arrived returns those bytes; a reset before any byte is an error.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    // The peer may close early (e.g. after rejecting a malformed head): keep what it sent.
    let write_result = tokio::time::timeout_at(deadline, stream.write_all(bytes)).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                if out.is_empty() {
                    return Err(e).context("read from raw connection");
                }
                break;
            }
        }
    }
    if out.is_empty()
        && let Ok(Err(e)) = write_result
    {
        return Err(e).context("write to raw connection");
    }
    Ok(out)
}

/// Status code of the first HTTP/1.x status line in `response` (`HTTP/1.1 400 Bad Request` → 400).
pub fn status_line(response: &[u8]) -> Option<u16> {
    let line_end = response.windows(2).position(|w| w == b"\r\n").unwrap_or(response.len());
    let line = std::str::from_utf8(&response[..line_end]).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// One HTTP/1.x response split out of a raw byte stream by [`parse_responses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes (chunked bodies are de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// Splits a raw byte stream into consecutive HTTP/1.x responses (pipelining, smuggling tests).
///
/// Bodies are delimited by `Content-Length`, chunked encoding, or EOF; 1xx, 204 and 304 have
/// none. Responses to HEAD are not recognised as bodiless. Stops at the first unparsable or
/// incomplete response.
pub fn parse_responses(mut data: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some((resp, rest)) = parse_one(data) {
        out.push(resp);
        data = rest;
    }
    out
}

fn parse_one(data: &[u8]) -> Option<(RawResponse, &[u8])> {
    let head_end = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&data[..head_end]).ok()?;
    let status = status_line(head.as_bytes())?;
    let headers: Vec<(String, String)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut resp = RawResponse { status, headers, body: Vec::new() };
    let rest = &data[head_end..];
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some((resp, rest));
    }
    let chunked = resp.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut rest = rest;
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_str = std::str::from_utf8(&rest[..line_end]).ok()?;
            let size_str = size_str.split(';').next()?.trim();
            let size = usize::from_str_radix(size_str, 16).ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                // Skip trailer fields up to the empty line.
                loop {
                    let end = rest.windows(2).position(|w| w == b"\r\n")?;
                    rest = &rest[end + 2..];
                    if end == 0 {
                        return Some((resp, rest));
                    }
                }
            }
            resp.body.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
    }
    match resp.header("content-length") {
        Some(len) => {
            let len: usize = len.parse().ok()?;
            resp.body = rest.get(..len)?.to_vec();
            Some((resp, &rest[len..]))
        }
        None => {
            resp.body = rest.to_vec();
            Some((resp, &[]))
        }
    }
}

/// Status codes of every response in `response`, in order (see [`parse_responses`]).
pub fn all_status_lines(response: &[u8]) -> Vec<u16> {
    parse_responses(response).iter().map(|r| r.status).collect()
}
