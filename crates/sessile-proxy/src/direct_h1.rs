//! Direct HTTP/1.1 exchanges with backends for bodiless requests: the request's own task writes
//! the head and reads and frames the response (no connection task, no channel, reused buffers).
//!
//! Why: with hyper's client every request crossed a channel to a connection task and back, and
//! that task's dispatcher cost more than a third of the proxy's user-space instructions. Requests
//! with a body, protocol upgrades and h2c keep hyper's client (see `upstream.rs`).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pipeline::HOP_BY_HOP;
use crate::upstream::{Forwarded, Upstreams};

/// The largest response head accepted (hyper's client allows about the same).
const MAX_HEAD_BYTES: usize = 400 * 1024;
/// Header fields per response head or trailer section (hyper's client default).
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILER_BYTES: usize = 64 * 1024;
const READ_RESERVE: usize = 8 * 1024;
/// Body reads grow from `READ_RESERVE` up to this while each read fills its space (large bodies
/// then take a fraction of the system calls), like hyper's adaptive read buffer.
const MAX_BODY_READ: usize = 256 * 1024;

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// The connection closed (or reset) before any byte of a response: on a reused connection
    /// the backend most likely closed it while idle, so an idempotent request may be sent again.
    ClosedBeforeResponse(io::Error),
    Io(io::Error),
    Invalid(&'static str),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::ClosedBeforeResponse(e) => write!(f, "connection closed before a response: {e}"),
            ExchangeError::Io(e) => write!(f, "{e}"),
            ExchangeError::Invalid(what) => write!(f, "invalid response: {what}"),
        }
    }
}

/// One HTTP/1.1 connection to a backend, with the buffers it keeps between requests.
pub struct DirectConn {
    stream: TcpStream,
    /// Bytes read but not yet consumed.
    read_buf: BytesMut,
    write_buf: Vec<u8>,
    /// Requests sent on this connection before the current one.
    served: u32,
    /// How much the next body read asks for.
    body_read: usize,
    names: NameCache,
    fields: Fields,
    idle_since: Instant,
}

impl DirectConn {
    /// Boxed: it is moved from the pool through the request's phases into the response body, and
    /// a box moves as one pointer.
    pub fn new(stream: TcpStream) -> Box<DirectConn> {
        Box::new(DirectConn {
            stream,
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
            served: 0,
            body_read: READ_RESERVE,
            names: NameCache::default(),
            fields: Fields::default(),
            idle_since: Instant::now(),
        })
    }

    /// Whether a pooled connection can take a request: not idle too long, and nothing (an EOF, a
    /// reset or stray bytes) arrived while it was idle. Costs no system call unless the reactor saw
    /// the socket become readable.
    pub fn is_reusable(&self, now: Instant, idle_limit: Duration) -> bool {
        if self.idled_out(now, idle_limit) {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Whether this connection was idle for `limit` or more at `now`.
    pub fn idled_out(&self, now: Instant, limit: Duration) -> bool {
        now.saturating_duration_since(self.idle_since) >= limit
    }

    pub fn idle_since(&self) -> Instant {
        self.idle_since
    }

    pub fn served(&self) -> u32 {
        self.served
    }

    /// Takes the encoded head of `other` (a retry on a new connection sends the same bytes).
    pub fn take_request_from(&mut self, other: &mut DirectConn) {
        std::mem::swap(&mut self.write_buf, &mut other.write_buf);
    }

    /// Encodes the request head into this connection's write buffer, the X-Forwarded-* fields last.
    pub fn encode_request<B>(&mut self, req: &Request<B>, forwarded: &Forwarded) {
        let out = &mut self.write_buf;
        out.clear();
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.uri().path_and_query().map_or("/", |pq| pq.as_str()).as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in req.headers() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(forwarded.forwarded_for.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(forwarded.proto().as_bytes());
        out.extend_from_slice(b"\r\n");
        // A method that defines a meaning for content says "no content" explicitly (RFC 9110 8.6).
        if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
            && !req.headers().contains_key(header::CONTENT_LENGTH)
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Sends the encoded request and reads the final response head (interim 1xx heads skipped).
    pub async fn round_trip(
        &mut self,
        method: &Method,
    ) -> Result<(Response<()>, Framing, PassedFields), ExchangeError> {
        let reused = self.served > 0;
        self.served += 1;
        // A connection has no read buffer here: a new one never had one, and a pooled one gave
        // its (empty) buffer back when its last body ended (`DirectBody::finish` pools only
        // connections with nothing left over, so the stream is in step).
        debug_assert!(self.read_buf.is_empty());
        self.read_buf = hot_buffer();
        if let Err(e) = self.stream.write_all(&self.write_buf).await {
            return Err(if reused { ExchangeError::ClosedBeforeResponse(e) } else { ExchangeError::Io(e) });
        }
        let mut received = false;
        loop {
            if !self.read_buf.is_empty() {
                received = true;
                if let Some(head) = parse_response_head(&mut self.read_buf, method, &mut self.names, &mut self.fields)?
                {
                    return Ok(head);
                }
                if self.read_buf.len() > MAX_HEAD_BYTES {
                    return Err(ExchangeError::Invalid("response head too large"));
                }
            }
            self.read_buf.reserve(READ_RESERVE);
            match self.stream.read_buf(&mut self.read_buf).await {
                Ok(0) if !received => {
                    return Err(ExchangeError::ClosedBeforeResponse(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(0) => return Err(ExchangeError::Invalid("connection closed inside the response head")),
                Ok(_) => {}
                Err(e) if !received => return Err(ExchangeError::ClosedBeforeResponse(e)),
                Err(e) => return Err(ExchangeError::Io(e)),
            }
        }
    }
}

/// How the response body is delimited (RFC 9112 6.3), and whether the connection stays usable.
#[derive(Debug)]
pub struct Framing {
    pub body: BodyFraming,
    pub keep_alive: bool,
}

#[derive(Debug, PartialEq)]
pub enum BodyFraming {
    Empty,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

const INLINE_FIELDS: usize = 24;

/// The header names of the connection's last message by position, with their spelling on the
/// wire: a peer sends the same names in the same order, and comparing the bytes costs a tenth
/// of `HeaderName::from_bytes` (which lowercases and classifies every name).
#[derive(Default)]
pub(crate) struct NameCache {
    slots: Vec<(Box<[u8]>, HeaderName)>,
}

impl NameCache {
    fn name(&mut self, position: usize, raw: &[u8]) -> Result<HeaderName, &'static str> {
        if let Some((spelled, name)) = self.slots.get(position)
            && **spelled == *raw
        {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw).map_err(|_| "header name")?;
        if position < INLINE_FIELDS {
            let slot = (Box::from(raw), name.clone());
            if position < self.slots.len() {
                self.slots[position] = slot;
            } else if position == self.slots.len() {
                self.slots.push(slot);
            }
        }
        Ok(name)
    }
}

/// Where one header field's name and value sit in a message head (it is under 4 GiB).
#[derive(Clone, Copy, Default)]
struct FieldAt {
    name: u32,
    name_len: u32,
    value: u32,
    value_len: u32,
}

/// The offsets of a parsed head's fields, so the values can share the head's bytes once it is
/// split off the read buffer. One per connection, refilled for every head: most heads fit the
/// inline array, larger ones spill to the heap (returning it by value cost two copies of the
/// array per message).
pub(crate) struct Fields {
    inline: [FieldAt; INLINE_FIELDS],
    spilled: Vec<FieldAt>,
    count: usize,
}

impl Default for Fields {
    fn default() -> Self {
        Fields { inline: [FieldAt::default(); INLINE_FIELDS], spilled: Vec::new(), count: 0 }
    }
}

impl Fields {
    /// Records `headers`, parsed by httparse out of `buf`, in place of the previous head's.
    pub(crate) fn record(&mut self, buf: &[u8], headers: &[httparse::Header<'_>]) {
        let base = buf.as_ptr() as usize;
        let at = |h: &httparse::Header<'_>| FieldAt {
            name: (h.name.as_ptr() as usize - base) as u32,
            name_len: h.name.len() as u32,
            value: (h.value.as_ptr() as usize - base) as u32,
            value_len: h.value.len() as u32,
        };
        self.count = headers.len();
        self.spilled.clear();
        if headers.len() <= INLINE_FIELDS {
            for (slot, h) in self.inline.iter_mut().zip(headers) {
                *slot = at(h);
            }
        } else {
            self.spilled.extend(headers.iter().map(at));
        }
    }

    /// The header map of `head` (the bytes the fields were recorded from), its values sharing
    /// them; `note` sees every field as it is added. `room` extra fields fit without growing.
    /// With `passed`, the fields it takes (`PassedFields::takes`) go there instead of the map.
    pub(crate) fn header_map(
        &self,
        head: &Bytes,
        names: &mut NameCache,
        room: usize,
        mut note: impl FnMut(&HeaderName, &[u8]) -> Result<(), &'static str>,
        mut passed: Option<&mut PassedFields>,
    ) -> Result<HeaderMap, &'static str> {
        let fields = if self.count <= INLINE_FIELDS { &self.inline[..self.count] } else { &self.spilled[..] };
        // Passing fields by, the map keeps only the few the proxy reads (framing, hop-by-hop...).
        let mut headers = hot_header_map(if passed.is_some() { room + 4 } else { self.count + room });
        for (i, f) in fields.iter().enumerate() {
            let (name, value) = (f.name as usize, f.value as usize);
            let name = names.name(i, &head[name..name + f.name_len as usize])?;
            let range = value..value + f.value_len as usize;
            note(&name, &head[range.clone()])?;
            if let Some(passed) = passed.as_deref_mut() {
                match PassedFields::place(&name, &head[range.clone()]) {
                    Place::Map => {}
                    Place::Passed => {
                        passed.fields.push((name, value as u32, f.value_len));
                        continue;
                    }
                    Place::Dropped => continue,
                }
            }
            let value = HeaderValue::from_maybe_shared(head.slice(range)).map_err(|_| "header value")?;
            headers.append(name, value);
        }
        if let Some(passed) = passed
            && !passed.fields.is_empty()
        {
            passed.head = head.clone();
        }
        Ok(headers)
    }
}

/// Where a response field goes (`PassedFields::place`).
enum Place {
    Map,
    Passed,
    /// Hop-by-hop and naming no other field: the hop-by-hop phase would remove it anyway.
    Dropped,
}

/// Response fields the proxy neither reads nor changes (`Server`, `Content-Type`, an
/// application's own fields...): their names and where their values sit in the response head,
/// instead of entries in the header map.
///
/// Why: each map entry cost a shared `Bytes` (an atomic increment, and a decrement when the map
/// is cleared), a check of every value byte that httparse already made, and a hashed insert;
/// together the largest user-space cost of a proxied response. The direct HTTP/1.1 server
/// writes these fields from here (`write_h1`); every other reader of the response first moves
/// them into the map (`restore_into`). Fields the proxy reads or changes stay in the map:
/// framing and hop-by-hop fields, `Cache-Control` and `Set-Cookie` (the session phase reads or
/// adds them), and everything when the `Connection` field names other fields.
pub struct PassedFields {
    head: Bytes,
    fields: Vec<(HeaderName, u32, u32)>,
}

impl PassedFields {
    /// Where a response field with this name and value goes.
    fn place(name: &HeaderName, value: &[u8]) -> Place {
        // `HeaderName` equality: standard names compare as small integers, not strings.
        if *name == header::CONNECTION {
            return if connection_names_fields(value) { Place::Map } else { Place::Dropped };
        }
        if [header::CONTENT_LENGTH, header::TE, header::TRAILER, header::CACHE_CONTROL, header::SET_COOKIE]
            .contains(name)
        {
            return Place::Map;
        }
        if !HOP_BY_HOP.contains(name) {
            Place::Passed
        } else if matches!(name.as_str(), "keep-alive" | "proxy-connection") {
            // Removed by the hop-by-hop phase in any case, and naming nothing.
            Place::Dropped
        } else {
            Place::Map
        }
    }

    fn new() -> PassedFields {
        PassedFields { head: Bytes::new(), fields: PASSED_LISTS.with(HotPool::take).unwrap_or_default() }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Whether the backend sent a `Date` field (the writer adds one otherwise).
    pub fn has_date(&self) -> bool {
        self.contains(&header::DATE)
    }

    /// Whether a field of this name is here.
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.fields.iter().any(|(n, ..)| n == name)
    }

    /// Writes the fields as HTTP/1.1 lines, names lowercased as the map's are.
    pub fn write_h1(&self, out: &mut Vec<u8>) {
        for (name, value, len) in &self.fields {
            let value = &self.head[*value as usize..(*value + *len) as usize];
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Moves the fields into `headers`, after the fields already there.
    pub fn restore_into(&mut self, headers: &mut HeaderMap) {
        for (name, value, len) in self.fields.drain(..) {
            let (value, len) = (value as usize, len as usize);
            // httparse accepted these bytes, and they are what `HeaderValue` accepts too.
            if let Ok(value) = HeaderValue::from_maybe_shared(self.head.slice(value..value + len)) {
                headers.append(name, value);
            }
        }
        self.head = Bytes::new();
    }
}

impl Drop for PassedFields {
    fn drop(&mut self) {
        let mut list = std::mem::take(&mut self.fields);
        if list.capacity() > 0 && list.capacity() <= HOT_HEADER_MAP_CAPACITY {
            list.clear();
            PASSED_LISTS.with(|pool| pool.put(list));
        }
    }
}

/// Parses one response head from the front of `buf`; `None` when incomplete. Interim (1xx)
/// responses are consumed and skipped; 101 is an error here (these requests never ask to upgrade).
fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
    names: &mut NameCache,
    fields: &mut Fields,
) -> Result<Option<(Response<()>, Framing, PassedFields)>, ExchangeError> {
    loop {
        let (len, code, minor, reason) = {
            let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                buf,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(ExchangeError::Invalid("too many header fields")),
                Err(_) => return Err(ExchangeError::Invalid("malformed response head")),
            };
            let code = resp.code.unwrap_or(0);
            let reason = resp
                .reason
                .filter(|r| StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).is_none_or(|c| c != *r));
            let reason = reason.map(|r| Bytes::copy_from_slice(r.as_bytes()));
            fields.record(buf, resp.headers);
            (len, code, resp.version.unwrap_or(1), reason)
        };
        let status = StatusCode::from_u16(code).map_err(|_| ExchangeError::Invalid("status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::Invalid("101 to a request that did not ask to upgrade"));
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let head = buf.split_to(len).freeze();
        let mut delimiting = Delimiting::default();
        // Room for what the response phase adds (Set-Cookie, Cache-Control, filters) without
        // growing and rehashing the map (~1,500 instructions when it did).
        let mut passed = PassedFields::new();
        let mut headers = fields
            .header_map(&head, names, 4, |name, value| delimiting.note(name, value), Some(&mut passed))
            .map_err(ExchangeError::Invalid)?;
        if delimiting.connection_names_fields {
            // `strip_hop_by_hop` removes the fields it names, so they must be in the map.
            passed.restore_into(&mut headers);
        }
        let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
        let framing = response_framing(method, status, version, delimiting, &mut headers)?;
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        if let Some(reason) = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok()) {
            resp.extensions_mut().insert(reason);
        }
        return Ok(Some((resp, framing, passed)));
    }
}

/// The fields that delimit a response, noted while its head is read (no lookups afterwards).
#[derive(Default)]
struct Delimiting {
    content_length: Option<u64>,
    transfer_encoding: bool,
    connection_close: bool,
    /// `Connection` lists something besides `close` and `keep-alive`: fields to remove.
    connection_names_fields: bool,
}

impl Delimiting {
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), &'static str> {
        if *name == header::CONTENT_LENGTH {
            for part in value.split(|b| *b == b',') {
                let n = parse_decimal(part.trim_ascii()).ok_or("content-length")?;
                if self.content_length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length values");
                }
                self.content_length = Some(n);
            }
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == header::CONNECTION {
            self.connection_close |= has_token(value, b"close");
            self.connection_names_fields |= connection_names_fields(value);
        }
        Ok(())
    }
}

/// RFC 9112 6.3, for a response to `method`. A response with both Transfer-Encoding and
/// Content-Length is framed by Transfer-Encoding, loses its Content-Length and its connection.
fn response_framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    delimiting: Delimiting,
    headers: &mut HeaderMap,
) -> Result<Framing, ExchangeError> {
    let mut keep_alive = version == Version::HTTP_11 && !delimiting.connection_close;
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing { body: BodyFraming::Empty, keep_alive });
    }
    if delimiting.transfer_encoding {
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|t| t.trim_ascii())
            .rfind(|t| !t.is_empty())
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        if !chunked {
            return Ok(Framing { body: BodyFraming::UntilClose, keep_alive: false });
        }
        return Ok(Framing { body: BodyFraming::Chunked(ChunkedDecoder::default()), keep_alive });
    }
    Ok(match delimiting.content_length {
        Some(0) => Framing { body: BodyFraming::Empty, keep_alive },
        Some(n) => Framing { body: BodyFraming::Length(n), keep_alive },
        None => Framing { body: BodyFraming::UntilClose, keep_alive: false },
    })
}

/// Whether a `Connection` value lists anything besides `close` and `keep-alive`: fields that
/// the hop-by-hop phase must find and remove.
pub(crate) fn connection_names_fields(value: &[u8]) -> bool {
    if value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close") {
        return false;
    }
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
}

/// Whether a comma-separated field value lists `token` (case-insensitively).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A per-thread free list of hot-path allocations, most recently used last: the next request on
/// this thread reuses memory the CPU touched moments ago instead of asking the allocator.
pub(crate) struct HotPool<T> {
    items: std::cell::RefCell<Vec<T>>,
    kept: usize,
}

impl<T> HotPool<T> {
    const fn new(kept: usize) -> HotPool<T> {
        HotPool { items: std::cell::RefCell::new(Vec::new()), kept }
    }

    fn take(&self) -> Option<T> {
        self.items.borrow_mut().pop()
    }

    fn put(&self, item: T) {
        let mut items = self.items.borrow_mut();
        if items.len() < self.kept {
            items.push(item);
        }
    }
}

thread_local! {
    /// Read buffers of idle connections: the next exchange reads into one the CPU touched moments
    /// ago instead of its connection's own, which has gone cold while the connection sat in the pool.
    static HOT_BUFFERS: HotPool<BytesMut> = const { HotPool::new(16) };
    /// Header maps of finished messages (two per proxied request: the request's and the
    /// response's), cleared: a parsed head fills one instead of allocating its two arrays.
    static HOT_HEADER_MAPS: HotPool<HeaderMap> = const { HotPool::new(64) };
    /// The lists of `PassedFields` of finished responses, cleared.
    static PASSED_LISTS: HotPool<Vec<(HeaderName, u32, u32)>> = const { HotPool::new(64) };
}

/// A map grown past this by an unusual head goes back to the allocator, not to the pool.
const HOT_HEADER_MAP_CAPACITY: usize = 128;

fn hot_buffer() -> BytesMut {
    HOT_BUFFERS.with(HotPool::take).unwrap_or_default()
}

fn recycle(mut buf: BytesMut) {
    buf.clear();
    HOT_BUFFERS.with(|pool| pool.put(buf));
}

/// An empty header map with room for `fields`, from the pool when it has one.
fn hot_header_map(fields: usize) -> HeaderMap {
    let mut map = HOT_HEADER_MAPS.with(HotPool::take).unwrap_or_default();
    map.reserve(fields);
    map
}

/// Returns a finished message's header map to the pool (its values, which share read buffers,
/// are dropped now).
pub(crate) fn recycle_header_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > HOT_HEADER_MAP_CAPACITY {
        return;
    }
    map.clear();
    HOT_HEADER_MAPS.with(|pool| pool.put(map));
}

/// What the chunked decoder produced from the buffered bytes.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    NeedMore,
}

/// An incremental decoder of the chunked transfer coding (RFC 9112 7.1), strict about CRLF.
#[derive(Debug, Default, PartialEq)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Decodes from the front of `buf`, consuming what it uses.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line_end) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE || buf.contains(&b'\n') {
                            return Err("malformed chunk-size line");
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&buf[..line_end])?;
                    buf.advance(line_end + 2);
                    self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                }
                ChunkState::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = remaining.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    self.state =
                        if take == remaining { ChunkState::DataEnd } else { ChunkState::Data(remaining - take) };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return if buf.first().is_some_and(|b| *b != b'\r') {
                            Err("chunk data not followed by CRLF")
                        } else {
                            Ok(Decoded::NeedMore)
                        };
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                        return Ok(Decoded::End);
                    }
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if buf.len() > MAX_TRAILER_BYTES || (buf.len() >= 2 && buf[0] == b'\r' && buf[1] != b'\n') {
                            return Err("malformed trailer section");
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let section = buf.split_to(end + 4);
                    self.state = ChunkState::Done;
                    return Ok(Decoded::Trailers(parse_trailers(&section)?));
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    let lf = buf.iter().position(|b| *b == b'\n')?;
    (lf > 0 && buf[lf - 1] == b'\r').then_some(lf - 1)
}

/// `chunk-size [ chunk-ext ]`: 1-16 hex digits, then optional whitespace and extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("chunk size");
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') || line.contains(&b'\r') {
        return Err("chunk size");
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| "chunk size")?;
    u64::from_str_radix(text, 16).map_err(|_| "chunk size")
}

fn parse_trailers(section: &[u8]) -> Result<HeaderMap, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err("malformed trailer section"),
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for f in parsed {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "trailer name")?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| "trailer value")?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

/// The body of a direct response: frames read from the connection, which goes back to the pool
/// when the body ended cleanly on a connection that stays usable.
pub struct DirectBody {
    conn: Option<Box<DirectConn>>,
    framing: BodyFraming,
    keep_alive: bool,
    /// Where the connection goes back when the body ends cleanly.
    pool: Option<(Arc<Upstreams>, SocketAddr)>,
    /// The response's fields kept out of its header map.
    passed: PassedFields,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl DirectBody {
    pub fn new(
        conn: Box<DirectConn>,
        framing: Framing,
        passed: PassedFields,
        pool: Arc<Upstreams>,
        addr: SocketAddr,
    ) -> DirectBody {
        let mut body = DirectBody {
            conn: Some(conn),
            framing: framing.body,
            keep_alive: framing.keep_alive,
            pool: Some((pool, addr)),
            passed,
        };
        if body.framing == BodyFraming::Empty {
            body.finish();
        }
        body
    }

    /// The body ended: a usable connection with nothing extra buffered goes back to the pool.
    fn finish(&mut self) {
        self.framing = BodyFraming::Empty;
        if let (Some(mut conn), Some((pool, addr))) = (self.conn.take(), self.pool.take())
            && self.keep_alive
            && conn.read_buf.is_empty()
        {
            conn.idle_since = Instant::now();
            conn.body_read = READ_RESERVE;
            recycle(std::mem::take(&mut conn.read_buf));
            pool.give_back_direct(addr, conn);
        }
    }

    pub fn passed_fields(&self) -> &PassedFields {
        &self.passed
    }

    pub fn passed_fields_mut(&mut self) -> &mut PassedFields {
        &mut self.passed
    }

    /// Stops using the connection (a deadline passed mid-body): it is closed, never pooled.
    pub fn abandon(&mut self) {
        self.conn = None;
        self.framing = BodyFraming::Empty;
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            let buf = &mut conn.read_buf;
            match &mut self.framing {
                BodyFraming::Empty => {
                    self.finish();
                    return Poll::Ready(None);
                }
                BodyFraming::Length(remaining) if !buf.is_empty() => {
                    let take = (*remaining).min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    *remaining -= take;
                    if *remaining == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyFraming::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyFraming::Chunked(decoder) if !buf.is_empty() => match decoder.decode(buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        self.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => {
                        self.abandon();
                        return Poll::Ready(Some(Err(BoxError::from(e))));
                    }
                },
                _ => {}
            }
            let conn = self.conn.as_mut().expect("checked above");
            conn.read_buf.reserve(conn.body_read);
            let asked = conn.read_buf.capacity() - conn.read_buf.len();
            match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.read_buf)) {
                Ok(0) if matches!(self.framing, BodyFraming::UntilClose) => {
                    self.abandon();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.abandon();
                    return Poll::Ready(Some(Err(BoxError::from("backend closed the connection inside the body"))));
                }
                Ok(n) if n == asked => conn.body_read = (conn.body_read * 2).min(MAX_BODY_READ),
                Ok(_) => {}
                Err(e) => {
                    self.abandon();
                    return Poll::Ready(Some(Err(BoxError::from(e))));
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none() && self.framing == BodyFraming::Empty
    }

    pub fn size_hint(&self) -> http_body::SizeHint {
        match (&self.framing, &self.conn) {
            (BodyFraming::Length(n), Some(_)) => http_body::SizeHint::with_exact(*n),
            (BodyFraming::Empty, _) => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((body, trailers)),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Err("input ended");
                    }
                    let next = (fed + split).min(input.len());
                    buf.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_the_same_at_every_split() {
        let input = b"5;ext=1\r\nhello\r\n7 ; a=\"b\"\r\n, world\r\n0\r\nx-checksum: abc\r\nx-other: 1\r\n\r\n";
        for split in 1..=input.len() {
            let (body, trailers) = decode_all(input, split).unwrap();
            assert_eq!(body, b"hello, world", "split {split}");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers.get("x-checksum").unwrap(), "abc", "split {split}");
            assert_eq!(trailers.get("x-other").unwrap(), "1");
        }
        for split in 1..=12 {
            let (body, trailers) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n", split).unwrap();
            assert_eq!(body, b"0123456789");
            assert!(trailers.is_none());
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"zz\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
        ] {
            assert!(decode_all(bad, bad.len()).is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert!(decode_all(bad, 1).is_err(), "byte by byte: {:?}", String::from_utf8_lossy(bad));
        }
    }

    /// A parsed response head with its passed fields moved back into the map.
    fn head(text: &str, method: Method) -> Result<Option<(Response<()>, Framing)>, ExchangeError> {
        parse(&mut BytesMut::from(text), method, &mut NameCache::default(), &mut Fields::default())
    }

    fn parse(
        buf: &mut BytesMut,
        method: Method,
        names: &mut NameCache,
        fields: &mut Fields,
    ) -> Result<Option<(Response<()>, Framing)>, ExchangeError> {
        Ok(parse_response_head(buf, &method, names, fields)?.map(|(mut resp, framing, mut passed)| {
            passed.restore_into(resp.headers_mut());
            (resp, framing)
        }))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |text: &str, method: Method| head(text, method).unwrap().unwrap().1;
        let f = framing("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", Method::GET);
        assert_eq!((f.body, f.keep_alive), (BodyFraming::Length(12), true));
        let f = framing("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", Method::HEAD);
        assert_eq!(f.body, BodyFraming::Empty, "HEAD has no body whatever its length");
        for status in ["204 No Content", "304 Not Modified"] {
            let f = framing(&format!("HTTP/1.1 {status}\r\ncontent-length: 5\r\n\r\n"), Method::GET);
            assert_eq!(f.body, BodyFraming::Empty, "{status}");
        }
        let f = framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", Method::GET);
        assert_eq!((f.body, f.keep_alive), (BodyFraming::Chunked(ChunkedDecoder::default()), true));
        let f = framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", Method::GET);
        assert_eq!((f.body, f.keep_alive), (BodyFraming::UntilClose, false));
        let f = framing("HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert_eq!((f.body, f.keep_alive), (BodyFraming::UntilClose, false));
        let f = framing("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: Close\r\n\r\n", Method::GET);
        assert_eq!((f.body, f.keep_alive), (BodyFraming::Length(3), false));
        let f = framing("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n", Method::GET);
        assert!(!f.keep_alive, "HTTP/1.0 responses close");
        let f = framing("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n", Method::GET);
        assert_eq!(f.body, BodyFraming::Length(3), "repeated equal lengths are one length");

        let (resp, f) = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(matches!(f.body, BodyFraming::Chunked(_)) && !f.keep_alive, "Transfer-Encoding wins and closes");
        assert!(resp.headers().get(header::CONTENT_LENGTH).is_none(), "the losing Content-Length is dropped");

        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTTP/1.1 200 OK\r\n\r\n",
        ] {
            assert!(head(bad, Method::GET).is_err(), "{bad:?}");
        }
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le", Method::GET).unwrap().is_none(), "incomplete");
    }

    #[test]
    fn cached_names_follow_the_bytes_on_the_wire() {
        // As on one connection: the name cache and the field offsets are reused by every head.
        let (mut names, mut fields) = (NameCache::default(), Fields::default());
        let mut parse = |text: &str| {
            let (resp, _) = parse(&mut BytesMut::from(text), Method::GET, &mut names, &mut fields).unwrap().unwrap();
            resp.headers().iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap())).collect::<Vec<_>>()
        };
        let first = parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Custom: a\r\n\r\n");
        assert_eq!(first, ["content-length=0", "x-custom=a"]);
        let same = parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Custom: b\r\n\r\n");
        assert_eq!(same, ["content-length=0", "x-custom=b"]);
        // (Passed fields follow the map's: fields of different names keep no order in HTTP.)
        let moved = parse("HTTP/1.1 200 OK\r\nX-Custom: c\r\nContent-Length: 0\r\nX-Other: d\r\n\r\n");
        assert_eq!(
            moved,
            ["content-length=0", "x-custom=c", "x-other=d"],
            "a name in another position is not taken from the cache"
        );
        let respelled = parse("HTTP/1.1 200 OK\r\nx-custom: e\r\nCONTENT-LENGTH: 0\r\nX-Othe: f\r\n\r\n");
        assert_eq!(respelled, ["content-length=0", "x-custom=e", "x-othe=f"]);
        // Past the inline offsets and back: each head's fields are its own.
        let many: String = (0..INLINE_FIELDS + 6).map(|i| format!("X-F{i}: {i}\r\n")).collect();
        let big = parse(&format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 0\r\n\r\n"));
        assert_eq!(big.len(), INLINE_FIELDS + 7);
        assert_eq!((big[1].as_str(), big[INLINE_FIELDS + 6].as_str()), ("x-f0=0", "x-f29=29"));
        assert_eq!(parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), ["content-length=0"]);
        assert_eq!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).len(), INLINE_FIELDS + 6);
    }

    #[test]
    fn fields_the_proxy_never_reads_skip_the_map_and_are_written_as_they_came() {
        let text = "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 06 Dec 2026 21:00:00 GMT\r\nContent-Length: 2\r\n\
                    Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nSet-Cookie: app=1\r\nCache-Control: max-age=5\r\n\
                    Proxy-Authenticate: Basic\r\nX-App: a\r\nx-app: b\r\n\r\nok";
        let parse_raw = |text: &str| {
            parse_response_head(
                &mut BytesMut::from(text),
                &Method::GET,
                &mut NameCache::default(),
                &mut Fields::default(),
            )
            .unwrap()
            .unwrap()
        };
        let (resp, f, passed) = parse_raw(text);
        assert!(f.keep_alive);
        // Hop-by-hop fields that name nothing else are dropped here (the hop-by-hop phase removes
        // them anyway); the others stay in the map for the phases that read or remove them.
        let kept: Vec<_> = resp.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(kept, ["content-length", "set-cookie", "cache-control", "proxy-authenticate"]);
        assert!(passed.has_date() && passed.contains(&HeaderName::from_static("x-app")));
        let mut out = Vec::new();
        passed.write_h1(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "server: nginx\r\ndate: Sun, 06 Dec 2026 21:00:00 GMT\r\nx-app: a\r\nx-app: b\r\n"
        );

        // A Connection field that names other fields: all stay in the map, for the hop-by-hop phase.
        let text = "HTTP/1.1 200 OK\r\nX-Hop: 1\r\nServer: nginx\r\nConnection: keep-alive, X-Hop\r\nContent-Length: 0\r\n\r\n";
        let (resp, _, passed) = parse_raw(text);
        assert!(passed.is_empty() && !passed.has_date());
        assert_eq!(resp.headers().len(), 4);
        assert_eq!(resp.headers()["x-hop"], "1");
    }

    #[test]
    fn interim_responses_are_skipped_and_values_keep_their_bytes() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 299 Custom\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nok",
        );
        let (resp, f) =
            parse(&mut buf, Method::GET, &mut NameCache::default(), &mut Fields::default()).unwrap().unwrap();
        assert_eq!(resp.status().as_u16(), 299);
        assert_eq!(resp.headers().get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(resp.headers().get("link").is_none(), "the 103's fields are not the final response's");
        assert_eq!(f.body, BodyFraming::Length(2));
        assert_eq!(&buf[..], b"ok", "the body stays buffered");
        let reason = resp.extensions().get::<hyper::ext::ReasonPhrase>().expect("a non-canonical reason is kept");
        assert_eq!(reason.as_bytes(), b"Custom");
    }
}
