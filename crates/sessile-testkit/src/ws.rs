//! Minimal WebSocket (RFC 6455) client and frame codec for upgrade tests through the proxy.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::DEFAULT_TIMEOUT;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest frame payload the codec accepts.
const MAX_PAYLOAD: u64 = 16 * 1024 * 1024;

/// Opcode of a continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// Outcome of [`websocket_echo`].
#[derive(Debug, Clone)]
pub struct WsResult {
    /// Status code of the upgrade response (101 on success).
    pub status: u16,
    /// Response head headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Payload of the first text frame received back (empty if the upgrade was refused).
    pub echoed: String,
}

impl WsResult {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// One decoded WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (see the `OP_*` constants).
    pub opcode: u8,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

/// `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (base64 of SHA-1 of key + GUID).
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(WS_GUID.as_bytes());
    BASE64.encode(ctx.finish().as_ref())
}

/// A fresh random `Sec-WebSocket-Key` (16 random bytes, base64).
pub fn random_key() -> String {
    BASE64.encode(random_bytes::<16>())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut out).expect("system random source");
    out
}

/// Reads one frame, unmasking it if it is masked.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<WsFrame> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await.context("read frame header")?;
    let fin = head[0] & 0x80 != 0;
    let opcode = head[0] & 0x0F;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7F {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_PAYLOAD {
        bail!("frame payload too large: {len}");
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.context("read frame payload")?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(WsFrame { fin, opcode, payload })
}

/// Writes one final (FIN) frame; `masked` is required for client-to-server frames.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
    masked: bool,
) -> anyhow::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | (opcode & 0x0F));
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask = random_bytes::<4>();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// Performs a WebSocket upgrade to `addr` (Host: `host`, target `path`), sends `message` as one
/// masked text frame, reads one frame back, then sends a close frame.
///
/// A non-101 answer is not an error: the result carries its status and headers, `echoed` empty.
/// A 101 with a wrong `Sec-WebSocket-Accept` is an error. Bounded by 5 s overall.
pub async fn websocket_echo(
    addr: SocketAddr,
    host: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    message: &str,
) -> anyhow::Result<WsResult> {
    crate::wait::within(DEFAULT_TIMEOUT, websocket_echo_inner(addr, host, path, extra_headers, message))
        .await
        .context("websocket_echo")?
}

async fn websocket_echo_inner(
    addr: SocketAddr,
    host: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    message: &str,
) -> anyhow::Result<WsResult> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
    let key = random_key();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;

    // Read the response head; keep whatever follows it (the start of a frame, or a body).
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("response head too large");
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!(
                "connection closed before a full response head ({} bytes: {:?})",
                buf.len(),
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status =
        crate::raw::status_line(lines.next().unwrap_or_default().as_bytes()).context("malformed status line")?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut result = WsResult { status, headers, echoed: String::new() };
    if status != 101 {
        return Ok(result);
    }
    let expected = accept_key(&key);
    match result.header("sec-websocket-accept") {
        Some(got) if got == expected => {}
        other => bail!("bad Sec-WebSocket-Accept: got {other:?}, expected {expected}"),
    }

    let leftover = buf[head_end..].to_vec();
    let (read_half, mut write_half) = stream.split();
    let mut reader = (&leftover[..]).chain(read_half);
    write_frame(&mut write_half, OP_TEXT, message.as_bytes(), true).await?;
    let frame = loop {
        let f = read_frame(&mut reader).await?;
        match f.opcode {
            OP_PING => write_frame(&mut write_half, OP_PONG, &f.payload, true).await?,
            OP_PONG => {}
            _ => break f,
        }
    };
    if frame.opcode == OP_CLOSE {
        bail!("server closed the WebSocket instead of echoing");
    }
    result.echoed = String::from_utf8(frame.payload).context("echoed frame is not UTF-8")?;
    // Close handshake: best effort, the answer is not awaited beyond a short grace.
    let _ = write_frame(&mut write_half, OP_CLOSE, &1000u16.to_be_bytes(), true).await;
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), read_frame(&mut reader)).await;
    Ok(result)
}
