//! Downstream limits: request head and body sizes, connection timeouts and counts, HTTP/2 stream
//! limits, and the request-smuggling checks hyper does not do itself.
//!
//! Pieces: [`Limits`] (the values, carried by `ServerOptions`), [`check_request`] (per-request
//! checks answering 400/413/414/431), [`RequestBody`] (the request body with the streaming size
//! limit), and per connection a [`ConnTracker`] with a [`TrackedIo`] wrapper that holds the
//! connection's slot, sees every byte read (header read timeout, idle timeout) and scans HTTP/1
//! request heads for bare LF/CR and Content-Length + Transfer-Encoding, which hyper tolerates.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// Every downstream limit, with production defaults (see docs/configuration.md, "Limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request header block: the sum over fields of name + value + 4 bytes (431).
    pub max_request_header_bytes: usize,
    /// Most request header fields (431).
    pub max_request_headers: usize,
    /// Longest request target (path and query, or the absolute URI) in bytes (414).
    pub max_uri_length: usize,
    /// Largest request body in bytes; `None` is unlimited (413).
    pub max_request_body: Option<u64>,
    /// Time a client has, from connecting or from its first byte after an idle period, to send
    /// a complete request head (HTTP/1.1); also bounds the TLS handshake.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Open downstream connections across all listeners; beyond it new ones are refused.
    pub max_connections: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams the client may reset before the server accepts them (rapid reset).
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the server may reset for client errors before GOAWAY (MadeYouReset).
    pub h2_max_local_error_reset_streams: usize,
    /// HTTP/2 bytes buffered per stream for sending.
    pub h2_max_send_buf_size: usize,
    /// HTTP/2 keep-alive PING interval (`None` disables) and how long to wait for the PONG.
    pub h2_keep_alive_interval: Option<Duration>,
    pub h2_keep_alive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_bytes: 60 * 1024,
            max_request_headers: 100,
            max_uri_length: 16 * 1024,
            max_request_body: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
            h2_max_send_buf_size: 400 * 1024,
            h2_keep_alive_interval: Some(Duration::from_secs(30)),
            h2_keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

impl Limits {
    /// hyper's HTTP/1 read buffer: a head that does not fit is answered 431 by hyper itself.
    pub fn h1_max_buf_size(&self) -> usize {
        (self.max_request_header_bytes + self.max_uri_length + 4096).max(16 * 1024)
    }

    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 counts 32 bytes of overhead per field);
    /// a larger header list is answered 431 by h2.
    pub fn h2_max_header_list_size(&self) -> u32 {
        let size = self.max_request_header_bytes + self.max_uri_length + 32 * (self.max_request_headers + 8);
        u32::try_from(size).unwrap_or(u32::MAX)
    }
}

/// Why a request is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest(&'static str),
    UriTooLong,
    HeadersTooLarge,
    BodyTooLarge,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::BadRequest(m) => m,
            Refusal::UriTooLong => "request target too long\n",
            Refusal::HeadersTooLarge => "request header fields too large\n",
            Refusal::BodyTooLarge => "request body too large\n",
        }
    }
}

/// The checks made on every request head before routing.
pub fn check_request<B: Body>(limits: &Limits, req: &Request<B>) -> Result<(), Refusal> {
    if let Some(reason) = req.extensions().get::<HeadVerdict>() {
        return Err(Refusal::BadRequest(reason.0));
    }
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    if uri_len > limits.max_uri_length {
        return Err(Refusal::UriTooLong);
    }
    let headers = req.headers();
    if headers.len() > limits.max_request_headers {
        return Err(Refusal::HeadersTooLarge);
    }
    // One pass sizes the head and reads the fields checked below: a lookup by name hashes it
    // (callgrind: two `get_all`s ~200 instructions per request, the pass's compares ~20).
    let (mut bytes, mut hosts, mut codings, mut other_coding) = (0, 0, 0, false);
    for (name, value) in headers {
        bytes += name.as_str().len() + value.len() + 4;
        if name == header::HOST {
            hosts += 1;
        } else if name == header::TRANSFER_ENCODING {
            for coding in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
                codings += 1;
                other_coding |= !coding.eq_ignore_ascii_case(b"chunked");
            }
        }
    }
    if bytes > limits.max_request_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    if matches!(req.version(), Version::HTTP_10 | Version::HTTP_11) {
        if hosts > 1 {
            return Err(Refusal::BadRequest("more than one Host header\n"));
        }
        // hyper accepts any Transfer-Encoding whose last coding is chunked; only plain `chunked`,
        // once, is unambiguous.
        if other_coding || codings > 1 {
            return Err(Refusal::BadRequest("unsupported Transfer-Encoding\n"));
        }
    }
    if let Some(max) = limits.max_request_body
        && req.body().size_hint().lower() > max
    {
        return Err(Refusal::BodyTooLarge);
    }
    Ok(())
}

/// Set on a request whose HTTP/1 head the byte scanner (or `h1_server`'s parser) found
/// ambiguous (the reason).
#[derive(Debug, Clone, Copy)]
pub struct HeadVerdict(pub &'static str);

impl HeadVerdict {
    pub const BARE_LINE_ENDING: HeadVerdict = HeadVerdict(VERDICTS[1]);
    pub const LENGTH_AND_TRANSFER_ENCODING: HeadVerdict = HeadVerdict(VERDICTS[2]);
}

// ---- Request body with a size limit ----------------------------------------------------------

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The downstream request body: enforces the body limit as data arrives and keeps the request
/// counted in flight on its connection until it is dropped. `Default`: no body and no token
/// (what a request handed on to hyper's client leaves behind).
#[derive(Default)]
pub struct RequestBody {
    /// `None`: a request that has no body (served by `h1_server`, which never reads one).
    inner: Option<Incoming>,
    remaining: u64,
    /// Set once the body went over its limit; only bodies with a limit have one (no allocation
    /// per request otherwise).
    over: Option<Arc<AtomicBool>>,
    _token: Option<Arc<RequestToken>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>, token: Option<Arc<RequestToken>>) -> RequestBody {
        let over = limit.map(|_| Arc::default());
        RequestBody { inner: Some(inner), remaining: limit.unwrap_or(u64::MAX), over, _token: token }
    }

    /// Becomes true once more body than allowed arrived (the body then fails); `None` without a limit.
    pub fn over_limit(&self) -> Option<Arc<AtomicBool>> {
        self.over.clone()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.over.as_ref().is_some_and(|o| o.load(Ordering::Relaxed)) {
            return Poll::Ready(Some(Err(BoxError::from("request body too large"))));
        }
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other.map_err(BoxError::from),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > this.remaining {
                if let Some(over) = &this.over {
                    over.store(true, Ordering::Relaxed);
                }
                return Poll::Ready(Some(Err(BoxError::from("request body too large"))));
            }
            this.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or(SizeHint::with_exact(0), Incoming::size_hint)
    }
}

// ---- Per-connection tracking -----------------------------------------------------------------

const NONE: u64 = u64::MAX;

/// What a connection is doing, for the header read and idle timeouts and the head scanner.
pub struct ConnTracker {
    base: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `base` when the last request finished (or the connection opened).
    idle_since: AtomicU64,
    /// Milliseconds since `base` when a request head started arriving, `NONE` when not.
    head_started: AtomicU64,
    /// Requests begun on this connection.
    started: AtomicU64,
    /// A request finished, so the next bytes start a new HTTP/1 head.
    head_expected: AtomicBool,
    /// `(generation << 8) | reason index`; 0 when the scanned head was fine.
    verdict: AtomicU64,
    h2: AtomicBool,
    /// `h1_server` parses the heads and checks them itself: the byte scanner is off.
    direct: AtomicBool,
}

/// Which timeout ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    HeaderRead,
    Idle,
}

const VERDICTS: [&str; 3] =
    ["", "bare LF or CR in the request head\n", "request has both Content-Length and Transfer-Encoding\n"];

impl ConnTracker {
    pub fn new() -> Arc<ConnTracker> {
        Arc::new(ConnTracker {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            started: AtomicU64::new(0),
            head_expected: AtomicBool::new(false),
            verdict: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            direct: AtomicBool::new(false),
        })
    }

    /// `h1_server` serves the connection (`true`, at its start) or handed it to hyper (`false`,
    /// before hyper reads the handed-over head, which `h1_server` checked): the byte scanner
    /// starts again with the head after that one.
    pub fn set_direct(&self, direct: bool) {
        self.direct.store(direct, Ordering::SeqCst);
        if !direct {
            self.head_expected.store(false, Ordering::SeqCst);
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// A request head was parsed: the request is in flight until the returned token drops (hyper's
    /// server shares it in an `Arc` between the request body and the response body; the direct
    /// server holds it until the answer is written, without an allocation per request).
    /// Also returns the scanner's verdict on this head, if it was bad.
    pub fn begin_request(self: &Arc<Self>, version: Version) -> (RequestToken, Option<HeadVerdict>) {
        if version == Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_started.store(NONE, Ordering::SeqCst);
        self.head_expected.store(false, Ordering::SeqCst);
        let generation = self.started.fetch_add(1, Ordering::SeqCst);
        let v = self.verdict.swap(0, Ordering::SeqCst);
        let verdict = (v != 0 && v >> 8 == generation).then(|| HeadVerdict(VERDICTS[(v & 0xff) as usize]));
        (RequestToken { tracker: self.clone() }, verdict)
    }

    fn end_request(&self) {
        self.idle_since.store(self.now_ms(), Ordering::SeqCst);
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && !self.h2.load(Ordering::Relaxed) {
            self.head_expected.store(true, Ordering::SeqCst);
        }
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0
            && !self.h2.load(Ordering::Relaxed)
            && self.head_started.load(Ordering::SeqCst) == NONE
        {
            // A head starts arriving; the `expired` timer picks the deadline up when it next fires.
            let _ = self.head_started.compare_exchange(NONE, self.now_ms(), Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Resolves when the connection has been waiting for a request head longer than `header`
    /// or has had no request in flight for longer than `idle`.
    ///
    /// Nothing wakes it per request: its one timer is re-armed only when it fires, at the deadline
    /// then known or at the latest `min(header, idle)` later. A deadline that starts after a check
    /// ends at least that long after it, so none is missed. (It used to be woken, and its timer
    /// replaced, when each head started and each response ended: callgrind ~1,900 instructions
    /// and two extra polls of the connection per request.)
    pub async fn expired(&self, header: Duration, idle: Duration) -> Expiry {
        let step = header.min(idle).max(Duration::from_millis(10));
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let now = Instant::now();
            let mut next = now + step;
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                let head = self.head_started.load(Ordering::SeqCst);
                let (start, limit, kind) = if head == NONE {
                    (self.idle_since.load(Ordering::SeqCst), idle, Expiry::Idle)
                } else {
                    (head, header, Expiry::HeaderRead)
                };
                let deadline = self.base + Duration::from_millis(start) + limit;
                if now >= deadline {
                    return kind;
                }
                next = next.min(deadline);
            }
            sleep.as_mut().reset(next);
        }
    }
}

/// Keeps one request counted in flight on its connection.
pub struct RequestToken {
    tracker: Arc<ConnTracker>,
}

impl Drop for RequestToken {
    fn drop(&mut self) {
        self.tracker.end_request();
    }
}

/// A response body that keeps its request counted in flight until it is dropped.
pub struct TrackedBody<B> {
    inner: B,
    _token: Arc<RequestToken>,
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, token: Arc<RequestToken>) -> Self {
        TrackedBody { inner, _token: token }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---- The connection's byte stream ------------------------------------------------------------

/// Scans HTTP/1 request heads as their bytes arrive, for what hyper's parser tolerates: bare LF
/// or CR line endings and Content-Length together with Transfer-Encoding.
#[derive(Default)]
struct HeadScan {
    active: bool,
    generation: u64,
    line_len: usize,
    lines: usize,
    name: [u8; 18],
    name_len: usize,
    in_name: bool,
    saw_cl: bool,
    saw_te: bool,
    bare: bool,
}

impl HeadScan {
    fn start(&mut self, generation: u64) {
        *self = HeadScan { active: true, generation, in_name: true, ..HeadScan::default() };
    }

    /// Scans `bytes`; returns the verdict index when the head ended within them.
    fn scan(&mut self, bytes: &[u8], mut prev: u8) -> Option<u64> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            // Past a field name, and on the request line, only CR and LF matter: skip the run of
            // other bytes at once (what the byte-by-byte arm below does to each: count it, remember
            // it as `prev`). Header values are most of a head (a session cookie alone is ~150 bytes).
            if (!self.in_name || self.lines == 0) && prev != b'\r' && b != b'\r' && b != b'\n' {
                let run = find_cr_or_lf(&bytes[i..]).unwrap_or(bytes.len() - i);
                self.line_len += run;
                i += run;
                prev = bytes[i - 1];
                continue;
            }
            i += 1;
            match b {
                b'\n' => {
                    if prev != b'\r' {
                        self.bare = true;
                    }
                    if self.line_len == 0 {
                        if self.lines > 0 {
                            self.active = false;
                            return Some(if self.bare {
                                1
                            } else if self.saw_cl && self.saw_te {
                                2
                            } else {
                                0
                            });
                        }
                    } else {
                        if self.lines > 0 && !self.in_name {
                            let name = &self.name[..self.name_len];
                            self.saw_cl |= name == b"content-length";
                            self.saw_te |= name == b"transfer-encoding";
                        }
                        self.lines += 1;
                    }
                    self.line_len = 0;
                    self.name_len = 0;
                    self.in_name = true;
                }
                b'\r' => {
                    if prev == b'\r' {
                        self.bare = true;
                    }
                }
                _ => {
                    if prev == b'\r' {
                        self.bare = true;
                    }
                    self.line_len += 1;
                    if self.in_name {
                        if b == b':' {
                            self.in_name = false;
                        } else if self.name_len < self.name.len() {
                            self.name[self.name_len] = b.to_ascii_lowercase();
                            self.name_len += 1;
                        } else {
                            // Longer than any name of interest: remember it is neither.
                            self.name_len = self.name.len();
                            self.name[0] = 0;
                        }
                    }
                }
            }
            prev = b;
        }
        None
    }
}

/// The position of the first CR or LF, eight bytes at a time (header values are most of a head).
fn find_cr_or_lf(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero iff its high bit is set in `(x - ONES) & !x & HIGHS`; a borrow can
    // only mark bytes above the first zero, so the lowest marked byte is exact.
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        let found = zero_bytes(word ^ (ONES * u64::from(b'\r'))) | zero_bytes(word ^ (ONES * u64::from(b'\n')));
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&c| c == b'\r' || c == b'\n').map(|p| offset + p)
}

/// A downstream connection's byte stream: holds its connection slot and reports reads to the tracker.
pub struct TrackedIo<T> {
    inner: T,
    tracker: Arc<ConnTracker>,
    scan: HeadScan,
    prev: u8,
    /// The connection's first bytes, to recognise the HTTP/2 preface.
    first: [u8; 14],
    first_len: usize,
    /// Bytes read, seen, and put back by `h1_server` for hyper's server: read before the stream.
    read_ahead: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, tracker: Arc<ConnTracker>, permit: OwnedSemaphorePermit) -> Self {
        let mut scan = HeadScan::default();
        scan.start(0);
        TrackedIo {
            inner,
            tracker,
            scan,
            prev: 0,
            first: [0; 14],
            first_len: 0,
            read_ahead: Bytes::new(),
            _permit: permit,
        }
    }

    /// Puts back bytes already read (and seen), to be read again before the stream's next ones.
    pub fn put_back(&mut self, bytes: Bytes) {
        self.read_ahead = bytes;
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else { return };
        let t = &self.tracker;
        if self.first_len < self.first.len() {
            let n = bytes.len().min(self.first.len() - self.first_len);
            self.first[self.first_len..self.first_len + n].copy_from_slice(&bytes[..n]);
            self.first_len += n;
            if self.first_len == self.first.len() && &self.first == b"PRI * HTTP/2.0" {
                // HTTP/2 with prior knowledge (or ALPN): no HTTP/1 heads; idle until a stream opens.
                t.h2.store(true, Ordering::SeqCst);
                t.head_started.store(NONE, Ordering::SeqCst);
                self.scan.active = false;
            }
        }
        t.on_read();
        if t.direct.load(Ordering::Relaxed) {
            // Until a hand-off, after which scanning starts with the head after the handed-over one.
            self.scan.active = false;
            return;
        }
        if self.scan.active && t.started.load(Ordering::SeqCst) != self.scan.generation {
            // A request began while we thought its head was still arriving: out of step, stop.
            self.scan.active = false;
        }
        if !self.scan.active && t.head_expected.swap(false, Ordering::SeqCst) && !t.h2.load(Ordering::Relaxed) {
            self.scan.start(t.started.load(Ordering::SeqCst));
        }
        if self.scan.active
            && let Some(v) = self.scan.scan(bytes, self.prev)
            && v != 0
        {
            t.verdict.store((self.scan.generation << 8) | v, Ordering::SeqCst);
        }
        self.prev = last;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.read_ahead.is_empty() {
            let n = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            this.on_bytes(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn find_cr_or_lf_agrees_with_a_byte_scan() {
        let mut bytes = vec![b'a'; 40];
        bytes.extend_from_slice(&[0x8d, 0x0c, 0x0e, 0x8a, 0xff, 0x00]);
        for len in 0..bytes.len() {
            for at in 0..=len {
                for mark in [b'\r', b'\n'] {
                    let mut b = bytes[..len].to_vec();
                    if at < len {
                        b[at] = mark;
                    }
                    let expected = b.iter().position(|&c| c == b'\r' || c == b'\n');
                    assert_eq!(find_cr_or_lf(&b), expected, "{b:?}");
                }
            }
        }
    }
    use super::*;

    fn verdict(head: &[u8]) -> Option<u64> {
        let mut s = HeadScan::default();
        s.start(0);
        s.scan(head, 0)
    }

    /// The scanner as it was before the value skip, one byte at a time: the reference.
    fn bytewise_verdict(head: &[u8]) -> Option<u64> {
        let (mut line_len, mut lines, mut name, mut in_name) = (0usize, 0usize, Vec::new(), true);
        let (mut saw_cl, mut saw_te, mut bare, mut prev) = (false, false, false, 0u8);
        for &b in head {
            match b {
                b'\n' => {
                    bare |= prev != b'\r';
                    if line_len == 0 {
                        if lines > 0 {
                            return Some(if bare {
                                1
                            } else if saw_cl && saw_te {
                                2
                            } else {
                                0
                            });
                        }
                    } else {
                        if lines > 0 && !in_name {
                            saw_cl |= name == b"content-length";
                            saw_te |= name == b"transfer-encoding";
                        }
                        lines += 1;
                    }
                    (line_len, in_name) = (0, true);
                    name.clear();
                }
                b'\r' => bare |= prev == b'\r',
                _ => {
                    bare |= prev == b'\r';
                    line_len += 1;
                    if in_name {
                        if b == b':' {
                            in_name = false;
                        } else if name.len() < 18 {
                            name.push(b.to_ascii_lowercase());
                        } else {
                            name = vec![0; 18];
                        }
                    }
                }
            }
            prev = b;
        }
        None
    }

    #[test]
    fn scanner_agrees_with_the_bytewise_reference_at_every_split() {
        let heads: [&[u8]; 9] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: sticky=abcdefghijklmnopqrstuvwxyz0123456789\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: ab\r\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Long-Header-Name-Here: 1\r\ncontent-length: 3\r\ntransfer-encoding: x\r\n\r\n",
            b"GET http://a:80/ HTTP/1.1\r\nHost: a:80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
        ];
        for head in heads {
            let expected = bytewise_verdict(head);
            for split in 0..=head.len() {
                for step in [1, 3, head.len().max(1)] {
                    let mut s = HeadScan::default();
                    s.start(0);
                    let (mut prev, mut out) = (0u8, None);
                    let (a, b) = head.split_at(split);
                    for chunk in a.chunks(step).chain(b.chunks(step)) {
                        out = out.or_else(|| s.scan(chunk, prev));
                        prev = *chunk.last().unwrap();
                    }
                    assert_eq!(out, expected, "{:?} split at {split}, step {step}", String::from_utf8_lossy(head));
                }
            }
        }
    }

    #[test]
    fn scanner_flags_ambiguous_heads() {
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\n"), Some(0));
        assert_eq!(verdict(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), Some(1));
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nHost: a\n\n"), Some(1));
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"), Some(1));
        assert_eq!(verdict(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(2));
        assert_eq!(verdict(b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\ncontent-length: 3\r\n\r\n"), Some(2));
        assert_eq!(verdict(b"POST / HTTP/1.1\r\nX-Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(0));
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn scanner_works_across_reads() {
        let mut s = HeadScan::default();
        s.start(0);
        let head = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut prev = 0;
        let mut out = None;
        for chunk in head.chunks(3) {
            out = out.or(s.scan(chunk, prev));
            prev = *chunk.last().unwrap();
        }
        assert_eq!(out, Some(2));
    }
}
