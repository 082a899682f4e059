//! HTTP/1.1 downstream connections served by their own task while requests carry no body: one
//! reused read buffer, heads parsed in place, each response written with one send. A request with
//! a body, an upgrade, HTTP/1.0, the h2c preface or anything malformed hands the connection, with
//! the bytes already read, to hyper's server, which serves it from then on.
//!
//! Why: hyper's HTTP/1 server took a fresh read buffer per request (the kernel then copied each
//! request into cold memory) and its dispatcher, parser and encoder cost about a fifth of the
//! proxy's user-space instructions (docs/performance.md).

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{Method, Request, Response, StatusCode, Uri, Version, request, response};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::direct_h1::{Fields, NameCache, has_token, recycle_header_map};
use crate::limits::{ConnTracker, HeadVerdict, RequestBody};
use crate::pipeline::{ConnContext, LoggedResponseBody, PassesFields, handle};

/// How a connection left this module.
#[derive(Debug)]
pub enum Served {
    /// Closed: by the client, a write error, `Connection: close`, or shutdown.
    Closed,
    /// hyper's server takes over; these bytes were read and not consumed.
    HandOff(Bytes),
}

const READ_RESERVE: usize = 8 * 1024;
/// A read with less spare capacity than this first reserves `READ_RESERVE`.
const MIN_READ: usize = 2 * 1024;
/// Data frames up to this size are copied next to their framing and sent with it; larger ones
/// are written from their own buffer.
const COPY_LIMIT: usize = 64 * 1024;
/// A write buffer grown past this by a large response is not kept for the next one.
const KEEP_WRITE_BUFFER: usize = 32 * 1024;
/// Header fields parsed here; a head with more goes to hyper, which applies the configured limit.
const HEADER_SLOTS: usize = 128;

/// Serves HTTP/1.1 requests on `io` until it closes or needs hyper's server. `graceful` asks it
/// to close once no request is in flight.
pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    ctx: &Arc<ConnContext>,
    tracker: &Arc<ConnTracker>,
    graceful: &CancellationToken,
) -> Served {
    let max_head = ctx.limits.h1_max_buf_size();
    let max_headers = ctx.limits.max_request_headers.min(HEADER_SLOTS);
    let mut buf = BytesMut::with_capacity(READ_RESERVE);
    let mut out = Vec::with_capacity(READ_RESERVE);
    let mut names = NameCache::default();
    let mut fields = Fields::default();
    tracker.set_direct(true);
    // Registered once: the idle wait below polls it on every request.
    let shutdown = graceful.cancelled();
    tokio::pin!(shutdown);
    loop {
        let (parts, client_close, verdict) = loop {
            if !buf.is_empty() {
                match parse_request_head(&mut buf, &mut names, &mut fields, max_headers) {
                    Head::Request { parts, close, verdict } => break (parts, close, verdict),
                    Head::HandOff(head) => {
                        tracker.set_direct(false);
                        let mut prefix = BytesMut::from(head);
                        prefix.extend_from_slice(&buf);
                        return Served::HandOff(prefix.freeze());
                    }
                    // hyper answers a head over its buffer limit with 431.
                    Head::Incomplete if buf.len() >= max_head => {
                        tracker.set_direct(false);
                        return Served::HandOff(buf.freeze());
                    }
                    Head::Incomplete => {}
                }
            }
            make_read_room(&mut buf);
            let read = if buf.is_empty() {
                tokio::select! {
                    biased;
                    read = io.read_buf(&mut buf) => read,
                    _ = &mut shutdown => return Served::Closed,
                }
            } else {
                io.read_buf(&mut buf).await
            };
            match read {
                Ok(0) | Err(_) => return Served::Closed,
                Ok(_) => {}
            }
        };

        // The byte scanner is off here: the verdict is the parser's.
        let (token, _) = tracker.begin_request(Version::HTTP_11);
        // The request has no body; `token` keeps it in flight until its answer is written.
        let mut req = Request::from_parts(parts, RequestBody::default());
        if let Some(v) = verdict {
            req.extensions_mut().insert(v);
        }
        let head_request = req.method() == Method::HEAD;
        let handled = handle(ctx.clone(), req);
        tokio::pin!(handled);
        // While the request is handled, a reset from the client drops it (and its upstream
        // exchange); a half-close does not (the client may still read the answer). Bytes of a
        // pipelined request are kept for the next round.
        let mut watching = true;
        let resp = loop {
            watching &= buf.capacity() - buf.len() >= MIN_READ && buf.len() < max_head;
            tokio::select! {
                biased;
                resp = &mut handled => break resp,
                read = io.read_buf(&mut buf), if watching => match read {
                    Ok(0) => watching = false,
                    Ok(_) => {}
                    Err(_) => return Served::Closed,
                },
            }
        };
        let Ok(resp) = resp;
        let close = client_close || graceful.is_cancelled();
        let written = write_response(io, &mut out, resp, head_request, close).await;
        if out.capacity() > KEEP_WRITE_BUFFER {
            out = Vec::with_capacity(READ_RESERVE);
        }
        drop(token);
        match written {
            Ok(true) => {}
            Ok(false) => {
                // Our FIN follows the answer; closing with unread bytes would reset it instead.
                let _ = io.shutdown().await;
                return Served::Closed;
            }
            Err(_) => return Served::Closed,
        }
    }
}

/// Gives `buf` at least `MIN_READ` bytes of room for the next read. Each head is split off the
/// buffer's front, so reads would walk through the whole allocation, each landing on lines not
/// touched since this connection's earlier requests (the kernel's copy and the parse then pay the
/// cache misses); once the last head is dropped, an empty buffer is read into from its start.
fn make_read_room(buf: &mut BytesMut) {
    if buf.is_empty() {
        let _ = buf.try_reclaim(READ_RESERVE);
    }
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(READ_RESERVE);
    }
}

/// What the front of the read buffer holds.
// Returned once per request and taken apart at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Head {
    Incomplete,
    /// A request consumed from the buffer: a bodiless HTTP/1.1 request, or an ambiguous head
    /// (`verdict`) to be answered 400. `close`: the client asked to close (or it is ambiguous).
    Request {
        parts: request::Parts,
        close: bool,
        verdict: Option<HeadVerdict>,
    },
    /// Anything else, for hyper's server; the head's bytes when they were consumed.
    HandOff(Bytes),
}

/// The fields that decide who serves a request, noted while its header map is built.
#[derive(Default)]
struct Seen {
    content_length: bool,
    /// A Content-Length other than `0`.
    body: bool,
    transfer_encoding: bool,
    upgrade: bool,
    expect: bool,
    close: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        match *name {
            header::CONTENT_LENGTH => {
                self.content_length = true;
                self.body |= value != b"0";
            }
            header::TRANSFER_ENCODING => self.transfer_encoding = true,
            header::UPGRADE => self.upgrade = true,
            header::EXPECT => self.expect = true,
            header::CONNECTION => {
                self.upgrade |= has_token(value, b"upgrade");
                self.close |= has_token(value, b"close");
            }
            _ => {}
        }
    }
}

/// Parses the request head at the front of `buf`. Consumed and served here: HTTP/1.1,
/// origin-form target, no body (no Transfer-Encoding, Content-Length absent or 0), no upgrade,
/// no `Expect`, not CONNECT; and any head with a line not ended by CRLF or with both
/// Content-Length and Transfer-Encoding (answered 400: the checks `HeadScan` makes on heads
/// hyper reads). Anything else goes to hyper untouched.
fn parse_request_head(buf: &mut BytesMut, names: &mut NameCache, fields: &mut Fields, max_headers: usize) -> Head {
    let (len, method, path, minor, strict) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut slots[..max_headers],
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Head::Incomplete,
            Err(_) => return Head::HandOff(Bytes::new()),
        };
        let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
            return Head::HandOff(Bytes::new());
        };
        let Ok(method_value) = Method::from_bytes(method.as_bytes()) else { return Head::HandOff(Bytes::new()) };
        let offset = |s: &str| s.as_ptr() as usize - buf.as_ptr() as usize;
        let path = offset(path)..offset(path) + path.len();
        let strict = strict_line_endings(&buf[..len], offset(method), path.end + " HTTP/1.1".len(), req.headers);
        fields.record(buf, req.headers);
        (len, method_value, path, minor, strict)
    };
    let head = buf.split_to(len).freeze();
    let mut seen = Seen::default();
    let headers = fields.header_map(
        &head,
        names,
        2,
        |name, value| {
            seen.note(name, value);
            Ok(())
        },
        None,
    );
    let origin_form = head[path.start] == b'/';
    let (Ok(headers), Ok(uri)) = (headers, Uri::from_maybe_shared(head.slice(path))) else {
        return Head::HandOff(head);
    };
    let verdict = if !strict {
        Some(HeadVerdict::BARE_LINE_ENDING)
    } else if seen.content_length && seen.transfer_encoding {
        Some(HeadVerdict::LENGTH_AND_TRANSFER_ENCODING)
    } else {
        None
    };
    let for_hyper = minor != 1
        || method == Method::CONNECT
        || !origin_form
        || seen.body
        || seen.transfer_encoding
        || seen.upgrade
        || seen.expect;
    if verdict.is_none() && for_hyper {
        return Head::HandOff(head);
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = if minor == 1 { Version::HTTP_11 } else { Version::HTTP_10 };
    parts.headers = headers;
    Head::Request { parts, close: seen.close || verdict.is_some(), verdict }
}

/// Whether every line of `head` (accepted by httparse) ends with CRLF: httparse also takes a
/// bare LF, and skips empty lines before the request line, where a backend might not.
fn strict_line_endings(
    head: &[u8],
    method_at: usize,
    request_line_end: usize,
    fields: &[httparse::Header<'_>],
) -> bool {
    let crlf_at = |i: usize| head.get(i..i + 2) == Some(b"\r\n".as_slice());
    if !head[..method_at].chunks(2).all(|pair| pair == b"\r\n") || !crlf_at(request_line_end) {
        return false;
    }
    let base = head.as_ptr() as usize;
    fields.iter().all(|field| {
        // After the value, or after the colon when it is empty; httparse leaves out trailing blanks.
        let mut end = if field.value.is_empty() {
            field.name.as_ptr() as usize - base + field.name.len() + 1
        } else {
            field.value.as_ptr() as usize - base + field.value.len()
        };
        while matches!(head.get(end), Some(b' ' | b'\t')) {
            end += 1;
        }
        crlf_at(end)
    }) && head.ends_with(b"\r\n\r\n")
}

/// How a response body is delimited on the wire.
#[derive(Debug, PartialEq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or an empty body).
    None,
    Length(u64),
    /// Chunked; trailer fields named here (the response's `Trailer` field) are sent.
    Chunked(Vec<HeaderName>),
}

/// Encodes the response head into `out`, choosing the body's framing the way hyper's server does:
/// a Content-Length field or an exactly known size gives a length, otherwise chunked; `close`
/// adds `connection: close`. Returns the framing and whether the connection closes afterwards.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &response::Parts,
    head_request: bool,
    mut close: bool,
    body: &LoggedResponseBody,
) -> (Framing, bool) {
    let status = parts.status;
    let no_length = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let has_body = !no_length && !head_request;
    let empty = body.is_end_stream();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    let mut framing = None;
    let mut trailers = Vec::new();
    let mut wrote_date = false;
    for (name, value) in &parts.headers {
        match *name {
            header::CONTENT_LENGTH => {
                // An empty body is sent as `content-length: 0` below (HEAD keeps the field: it
                // describes the GET's body); a second length, or one not allowed here, is dropped.
                if no_length || framing.is_some() || (empty && !head_request) {
                    continue;
                }
                let Some(n) = crate::direct_h1::parse_decimal(value.as_bytes()) else { continue };
                framing = Some(Framing::Length(n));
            }
            // The framing is chosen here, and the connection's fate too.
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION => close |= has_token(value.as_bytes(), b"close"),
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if !has_body {
                    continue;
                }
                let names = value.as_bytes().split(|b| *b == b',');
                trailers.extend(names.filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok()));
            }
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(passed) = body.passed_fields() {
        passed.write_h1(out);
        wrote_date |= passed.has_date();
    }
    let framing = match framing {
        Some(length) => length,
        None if empty => {
            if !no_length && !head_request {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::None
        }
        None => match body.size_hint().exact() {
            Some(n) if !no_length => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(sessile_session::itoa(n, &mut [0u8; 20]).as_bytes());
                out.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
            _ if has_body => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked(trailers)
            }
            _ => Framing::None,
        },
    };
    if close && !parts.headers.contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        extend_with_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (if has_body { framing } else { Framing::None }, close)
}

/// Writes the response; returns whether the connection can serve another request. A body that
/// fails or does not match its length is an error (the connection closes, the client sees the
/// message cut short, as with hyper).
async fn write_response<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut Vec<u8>,
    resp: Response<LoggedResponseBody>,
    head_request: bool,
    close: bool,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    out.clear();
    let (framing, close) = encode_head(out, &parts, head_request, close, &body);
    recycle_header_map(parts.headers);
    // `out[..sent]` is on the wire; the rest waits for more of the body or its end, and goes out
    // as soon as the body has nothing ready (a streamed response is not held back).
    let mut sent = 0;
    let mut body_bytes: u64 = 0;
    let mut ended = false;
    loop {
        if framing == Framing::None {
            break;
        }
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            n = io.write(&out[sent..]), if sent < out.len() => {
                match n? {
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    n => sent += n,
                }
                if sent == out.len() {
                    out.clear();
                    sent = 0;
                }
                continue;
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(io::Error::other)?;
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Framing::Chunked(allowed), Ok(fields)) = (&framing, frame.into_trailers()) {
                    out.extend_from_slice(b"0\r\n");
                    for (name, value) in fields.iter().filter(|(n, _)| allowed.contains(n)) {
                        out.extend_from_slice(name.as_str().as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    ended = true;
                }
                break;
            }
        };
        if data.is_empty() {
            continue;
        }
        body_bytes += data.len() as u64;
        match &framing {
            Framing::Length(n) if body_bytes > *n => return Err(io::Error::other("body longer than its length")),
            Framing::Chunked(_) => {
                extend_with_hex(out, data.len());
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        if data.len() <= COPY_LIMIT {
            out.extend_from_slice(&data);
        } else {
            io.write_all(&out[sent..]).await?;
            out.clear();
            sent = 0;
            io.write_all(&data).await?;
        }
        if matches!(framing, Framing::Chunked(_)) {
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Length(n) if body_bytes != n => return Err(io::Error::other("body shorter than its length")),
        Framing::Chunked(_) if !ended => out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    io.write_all(&out[sent..]).await?;
    out.clear();
    Ok(!close)
}

/// Appends `n` in lowercase hexadecimal (a chunk size).
fn extend_with_hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (shift * 4)) & 0xf]);
    }
}

thread_local! {
    /// The IMF-fixdate of the current second, formatted once per second per thread.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn extend_with_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != secs {
            *date = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(date.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Either, Full};

    fn parse(text: &str) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(text);
        let head = parse_request_head(&mut buf, &mut NameCache::default(), &mut Fields::default(), 100);
        (head, buf)
    }

    #[test]
    fn an_emptied_read_buffer_is_read_into_from_its_start_once_the_heads_are_dropped() {
        let mut buf = BytesMut::with_capacity(READ_RESERVE);
        make_read_room(&mut buf);
        let start = buf.as_ptr();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        let head = buf.split_to(buf.len()).freeze();
        make_read_room(&mut buf);
        assert_ne!(buf.as_ptr(), start, "the head still holds the front");
        buf.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        make_read_room(&mut buf);
        assert_eq!(&buf[..], b"GET /next HTTP/1.1\r\n", "buffered bytes are kept where they are");
        let partial = buf.split();
        drop((head, partial));
        make_read_room(&mut buf);
        assert_eq!(buf.as_ptr(), start);
        assert!(buf.capacity() >= READ_RESERVE);
    }

    #[test]
    fn bodiless_http11_requests_are_parsed_in_place() {
        let (head, rest) = parse("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nCookie: s=1\r\nContent-Length: 0\r\n\r\nGET /next");
        let Head::Request { parts, close, verdict: None } = head else { panic!("{head:?}") };
        assert_eq!(
            (parts.method, parts.uri.to_string(), parts.version),
            (Method::GET, "/a?b=1".into(), Version::HTTP_11)
        );
        assert_eq!(parts.headers.get("cookie").unwrap(), "s=1");
        assert_eq!(parts.headers.len(), 3);
        assert!(!close);
        assert_eq!(&rest[..], b"GET /next", "a pipelined request stays buffered");

        let (head, _) = parse("HEAD / HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, Close\r\n\r\n");
        assert!(matches!(head, Head::Request { close: true, verdict: None, .. }), "{head:?}");
        assert!(matches!(parse("GET / HTTP/1.1\r\nhost: x\r\n").0, Head::Incomplete));
        let (head, _) = parse("\r\nGET / HTTP/1.1\r\nhost: x\r\nx-empty:\r\nx-blank: a \r\n\r\n");
        assert!(matches!(head, Head::Request { verdict: None, .. }), "CRLF before the request line: {head:?}");
    }

    #[test]
    fn ambiguous_heads_are_taken_and_judged_whatever_they_ask_for() {
        let bare = HeadVerdict::BARE_LINE_ENDING.0;
        let both = HeadVerdict::LENGTH_AND_TRANSFER_ENCODING.0;
        for (text, reason) in [
            ("GET / HTTP/1.1\nhost: x\r\n\r\n", bare),
            ("GET / HTTP/1.1\r\nhost: x\n\r\n", bare),
            ("GET / HTTP/1.1\r\nhost: x\r\nx-empty:\n\r\n", bare),
            ("GET / HTTP/1.1\r\nhost: x\r\n\n", bare),
            ("\nGET / HTTP/1.1\r\nhost: x\r\n\r\n", bare),
            ("POST / HTTP/1.1\r\nhost: x\ncontent-length: 5\r\n\r\nhello", bare),
            ("CONNECT x:443 HTTP/1.1\nhost: x\r\n\r\n", bare),
            ("GET / HTTP/1.0\r\nhost: x\n\r\n", bare),
            ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n", both),
            ("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n", both),
        ] {
            let (head, _) = parse(text);
            let Head::Request { close: true, verdict: Some(v), .. } = head else { panic!("{text:?}: {head:?}") };
            assert_eq!(v.0, reason, "{text:?}");
        }
    }

    #[test]
    fn everything_else_is_handed_to_hyper_with_its_bytes() {
        for text in [
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 00\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(text);
            let head = parse_request_head(&mut buf, &mut NameCache::default(), &mut Fields::default(), 100);
            let Head::HandOff(consumed) = head else { panic!("{text:?}: {head:?}") };
            let mut replay = consumed.to_vec();
            replay.extend_from_slice(&buf);
            assert_eq!(replay, text.as_bytes(), "{text:?}: hyper sees every byte");
        }
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "x-a: 1\r\n".repeat(5));
        let head = parse_request_head(
            &mut BytesMut::from(many.as_str()),
            &mut NameCache::default(),
            &mut Fields::default(),
            4,
        );
        assert!(matches!(head, Head::HandOff(_)), "too many fields: hyper answers 431");
    }

    fn head_of(resp: Response<LoggedResponseBody>, head_request: bool, close: bool) -> (String, Framing, bool) {
        let (parts, body) = resp.into_parts();
        let mut out = Vec::new();
        let (framing, close) = encode_head(&mut out, &parts, head_request, close, &body);
        let text = String::from_utf8(out).unwrap();
        let without_date = text.lines().filter(|l| !l.starts_with("date: ")).collect::<Vec<_>>().join("\n");
        assert!(text.contains("\r\ndate: ") || parts.headers.contains_key("date"), "{text}");
        (without_date, framing, close)
    }

    fn response(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<LoggedResponseBody> {
        let mut resp =
            Response::new(crate::access_log::LoggedBody::new(Either::Right(Full::new(Bytes::from(body))), None));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in headers {
            resp.headers_mut().append(HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
        }
        resp
    }

    #[test]
    fn response_heads_are_framed_like_hyper_frames_them() {
        let (text, framing, close) = head_of(response(200, &[("x-a", "1")], "hello"), false, false);
        assert_eq!(text, "HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 5\n");
        assert_eq!((framing, close), (Framing::Length(5), false));

        let (text, framing, _) = head_of(response(200, &[("content-length", "5")], ""), true, false);
        assert_eq!(text, "HTTP/1.1 200 OK\ncontent-length: 5\n", "HEAD keeps the GET's length");
        assert_eq!(framing, Framing::None);

        let (text, framing, _) = head_of(response(404, &[("content-length", "7")], ""), false, false);
        assert_eq!(text, "HTTP/1.1 404 Not Found\ncontent-length: 0\n", "an empty body is sent as empty");
        assert_eq!(framing, Framing::None);

        let (text, framing, close) =
            head_of(response(304, &[("etag", "\"a\""), ("transfer-encoding", "chunked")], ""), false, true);
        assert_eq!(text, "HTTP/1.1 304 Not Modified\netag: \"a\"\nconnection: close\n");
        assert_eq!((framing, close), (Framing::None, true));

        let (_, _, close) = head_of(response(200, &[("connection", "close")], "x"), false, false);
        assert!(close, "a Connection: close from the response phase closes");
    }

    #[test]
    fn chunk_sizes_are_written_like_format_writes_them() {
        for n in [0u64, 1, 9, 10, 15, 16, 255, 4096, 65535, 1 << 40, u64::MAX] {
            let mut out = Vec::new();
            extend_with_hex(&mut out, n as usize);
            assert_eq!(out, format!("{n:x}").as_bytes());
        }
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut out = Vec::new();
        extend_with_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
        assert!(text.ends_with(" GMT") && text.len() == 29, "{text}");
    }
}
