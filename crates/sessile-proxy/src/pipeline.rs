//! The request phases: route, request filters, session and endpoint choice, upstream, response, log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper_util::rt::TokioIo;
use sessile_core::hostname::normalize_host;
use sessile_core::matching::RequestView;
use sessile_core::{Filter, PathModifier, Rule, SessionCarrier};
use sessile_session::{
    CookieAttrs, KeyRing, MAX_TOKEN_LEN, RecentTokens, TokenMemo, max_age_secs, now_ms, seal, seal_into,
    set_cookie_with,
};

use crate::access_log::{self, AccessLog, LoggedBody};
use crate::direct_h1::PassedFields;
use crate::limits::{Limits, Refusal, RequestBody, check_request};
use crate::metrics::EndpointLabels;
use crate::session::{self, Choice, SessionFlag};
use crate::state::Shared;
use crate::upstream::{Exchange, Forwarded, UpstreamBody, Upstreams};

pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Per-connection context shared by the requests of one downstream connection.
pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub upstreams: Arc<Upstreams>,
    /// The configured bind address of the listener (looked up in the snapshot).
    pub bind: SocketAddr,
    pub peer: SocketAddr,
    /// `peer`'s IP address as a header value (X-Forwarded-For), formatted once per connection.
    pub peer_ip: HeaderValue,
    pub https: bool,
    /// The TLS server name the client asked for (lowercase), on HTTPS listeners.
    pub sni: Option<String>,
    /// Request limits (from `ServerOptions`).
    pub limits: Arc<Limits>,
    /// The last session token this connection's client sent, opened (see `TokenMemo`).
    pub token_memo: std::sync::Mutex<TokenMemo>,
}

/// What the log line and metrics need to know about a finished request.
struct RequestLog {
    /// The matched rule, if a rule matched.
    rule: Option<Arc<Rule>>,
    endpoint: Option<SocketAddr>,
    backend: Option<Arc<str>>,
    flag: SessionFlag,
    rejection: Option<sessile_session::Rejection>,
}

/// What the access log needs from the request, taken before the request moves on. Building and
/// keeping entries is out of line: with the log off (the usual case at high rates) its code stays
/// out of the request path's instruction cache lines.
struct LoggedHead {
    method: http::Method,
    version: Version,
    host: String,
    path: String,
}

impl LoggedHead {
    #[inline(never)]
    fn of<B>(req: &Request<B>) -> Self {
        LoggedHead {
            method: req.method().clone(),
            version: req.version(),
            host: authority_str(&request_authority(req)).to_string(),
            path: req.uri().path().to_string(),
        }
    }

    #[inline(never)]
    fn keep(
        self,
        ctx: &ConnContext,
        start: Instant,
        status: u16,
        elapsed: std::time::Duration,
        mut log: RequestLog,
    ) -> Option<(access_log::Entry, Arc<Shared>)> {
        access_log::keep(
            &ctx.shared,
            || access_log::Entry {
                start,
                method: self.method,
                version: self.version,
                host: self.host,
                path: self.path,
                peer: ctx.peer,
                status,
                route: log.rule.as_ref().map(|r| format!("{} {}", r.route.kind, r.route)),
                rule: log.rule.as_ref().map(|r| r.index),
                backend: log.backend.take(),
                endpoint: log.endpoint,
                session: log.flag,
                rejection: log.rejection.map(|r| r.as_str()),
                response_ms: elapsed.as_secs_f64() * 1000.0,
            },
            status,
        )
    }
}

/// The body of every response: the proxied or local body, counted for the access log.
pub type LoggedResponseBody = LoggedBody<ProxyBody>;

/// Handles one request end to end. Never fails: every error becomes a response.
pub async fn handle(
    ctx: Arc<ConnContext>,
    mut req: Request<RequestBody>,
) -> Result<Response<LoggedResponseBody>, std::convert::Infallible> {
    let start = Instant::now();
    let head = (ctx.shared.access_log.format() != AccessLog::Off).then(|| LoggedHead::of(&req));
    let mut log = RequestLog { rule: None, endpoint: None, backend: None, flag: SessionFlag::None, rejection: None };
    let grpc = is_grpc(&req);
    let version = req.version();
    let mut resp = match check_request(&ctx.limits, &req) {
        // The request stays here; the phases borrow it (moving it into each one's state cost a copy).
        Ok(()) => route_and_proxy(&ctx, &mut req, &mut log).await,
        Err(refusal) => refused(refusal, version),
    };
    if grpc && matches!(resp.body(), Either::Right(_)) && resp.status() != StatusCode::OK {
        resp = grpc_error(resp.status());
    }
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    ctx.shared.metrics.record_request(log.rule.as_deref(), status, elapsed);
    let logged = head.and_then(|head| head.keep(&ctx, start, status, elapsed, log));
    Ok(resp.map(|body| LoggedBody::new(body, logged)))
}

async fn route_and_proxy(
    ctx: &ConnContext,
    req: &mut Request<RequestBody>,
    log: &mut RequestLog,
) -> Response<ProxyBody> {
    let snapshot = ctx.shared.snapshot();
    let Some(port) = snapshot.port(ctx.bind) else {
        return local(StatusCode::NOT_FOUND, "no listener configured on this port\n");
    };
    let authority = request_authority(req);
    let host = normalize_host(authority_str(&authority));
    let entry = {
        let view = RequestView {
            host: &host,
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        port.routes.lookup(&view)
    };
    if let Some(sni) = &ctx.sni
        && *sni != host
        && !sni_covers_host(&port.certificates, sni, &host)
    {
        return local(
            StatusCode::MISDIRECTED_REQUEST,
            "the Host header names another listener than the TLS server name\n",
        );
    }
    let Some(entry) = entry else {
        return local(StatusCode::NOT_FOUND, "no route matched\n");
    };
    let rule = entry.rule.clone();
    // Only redirects and rewrites need the matched prefix (kept past the snapshot's release).
    let matched_prefix = rule
        .filters
        .iter()
        .any(|f| matches!(f, Filter::Redirect(_) | Filter::UrlRewrite(_)))
        .then(|| entry.request_match.path.literal_prefix().map(str::to_string))
        .flatten();
    drop(snapshot);
    log.rule = Some(rule.clone());

    // Request filters.
    let mut new_host: Option<String> = None;
    let mut new_path: Option<String> = None;
    for f in &rule.filters {
        match f {
            Filter::Redirect(r) => return redirect(ctx, req, authority_str(&authority), r, matched_prefix.as_deref()),
            Filter::RequestHeaders(m) => m.apply(req.headers_mut()),
            Filter::UrlRewrite(rw) => {
                new_host = rw.hostname.clone().or(new_host);
                if let Some(p) = &rw.path {
                    new_path = Some(p.apply(req.uri().path(), matched_prefix.as_deref()));
                }
            }
            Filter::ResponseHeaders(_) => {}
        }
    }

    // `timeouts.request` covers the whole exchange: until response headers here, then the body.
    // The exchange future is built inside each arm, never held in a local: a future moved out of a
    // local still takes its own space in this function's state (several KiB, copied per request).
    match rule.timeouts.request.map(|limit| tokio::time::Instant::now() + limit) {
        Some(deadline) => {
            match tokio::time::timeout_at(deadline, proxy(ctx, &rule, req, authority, new_host, new_path, log)).await {
                Ok(resp) => resp.map(|body| match body {
                    Either::Left(upstream) => Either::Left(upstream.with_deadline(Some(deadline))),
                    local => local,
                }),
                Err(_) => local(StatusCode::GATEWAY_TIMEOUT, "request timed out\n"),
            }
        }
        None => proxy(ctx, &rule, req, authority, new_host, new_path, log).await,
    }
}

async fn proxy(
    ctx: &ConnContext,
    rule: &Arc<Rule>,
    req: &mut Request<RequestBody>,
    authority: HeaderValue,
    new_host: Option<String>,
    new_path: Option<String>,
    log: &mut RequestLog,
) -> Response<ProxyBody> {
    let shared = &ctx.shared;
    let now = now_ms();
    let upgrade = upgrade_protocol(req);
    let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut *req));
    let exchange = if upgrade.is_some() {
        Exchange::Upgrade
    } else if req.body().is_end_stream() && req.method() != http::Method::CONNECT {
        Exchange::Bodiless
    } else {
        Exchange::WithBody
    };
    let mut exclude: Vec<SocketAddr> = Vec::new();
    let mut repinned = false;
    // Connect, re-choosing on refused connections (the request has not been sent yet).
    let max_attempts = 1 + rule
        .backends
        .iter()
        .map(|b| sessile_core::balance::service(b).map_or(0, |s| s.endpoints.len()))
        .sum::<usize>()
        .min(4);
    let (mut decision, conn) = loop {
        let choice = {
            // h2 streams of one connection may race for the memo: the loser opens its token afresh.
            let mut fresh = TokenMemo::default();
            let mut remembered = ctx.token_memo.try_lock().ok();
            let memo = remembered.as_deref_mut().unwrap_or(&mut fresh);
            session::choose(shared, rule, req.headers(), now, &exclude, memo)
        };
        let decision = match choice {
            Choice::Endpoint(d) => d,
            Choice::NoEndpoint => return unavailable(),
            Choice::InvalidBackend => {
                return local(StatusCode::INTERNAL_SERVER_ERROR, "no valid backend for this request\n");
            }
        };
        match ctx.upstreams.checkout(decision.target.addr, decision.target.protocol, exchange).await {
            Ok(conn) => {
                shared.health.mark_healthy(decision.target.addr);
                break (decision, conn);
            }
            Err(e) => {
                connect_failed(shared, decision.target.addr, &e);
                exclude.push(decision.target.addr);
                if decision.flag == SessionFlag::Resumed || decision.flag == SessionFlag::Refreshed {
                    repinned = true;
                }
                if exclude.len() >= max_attempts {
                    return unavailable();
                }
            }
        }
    };
    if repinned
        && rule.session.is_some()
        && decision.flag != SessionFlag::Resumed
        && decision.flag != SessionFlag::Refreshed
    {
        decision.flag = SessionFlag::Repinned;
        decision.rejection = Some(sessile_session::Rejection::EndpointUnhealthy);
    }
    log.endpoint = Some(decision.target.addr);
    log.backend = Some(decision.target.backend.id.clone());
    log.flag = decision.flag;
    log.rejection = decision.rejection;
    shared.metrics.record_session(rule, &decision);

    let backend_filters = &rule.backends[decision.target.backend_index].filters;
    for f in backend_filters {
        if let Filter::RequestHeaders(m) = f {
            m.apply(req.headers_mut());
        }
    }
    let body_over_limit = req.body().over_limit();
    let version = req.version();
    let forwarded = match upstream_request(
        ctx,
        req,
        authority,
        new_host.as_deref(),
        new_path.as_deref(),
        decision.target.protocol,
        upgrade.as_deref(),
    ) {
        Ok(r) => r,
        Err(message) => return local(StatusCode::BAD_REQUEST, message),
    };
    let (addr, reusable) = (decision.target.addr, upgrade.is_none());
    // As in `route_and_proxy`: the send future is built in its arm, not held in a local.
    let result = match rule.timeouts.backend_request {
        Some(limit) => {
            match tokio::time::timeout(limit, ctx.upstreams.send(addr, conn, req, forwarded, reusable)).await {
                Ok(r) => r,
                Err(_) => return local(StatusCode::GATEWAY_TIMEOUT, "backend request timed out\n"),
            }
        }
        None => ctx.upstreams.send(addr, conn, req, forwarded, reusable).await,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(_) if body_over_limit.is_some_and(|o| o.load(std::sync::atomic::Ordering::Relaxed)) => {
            return refused(Refusal::BodyTooLarge, version);
        }
        Err(e) => return request_failed(decision.target.addr, &e),
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = downstream_upgrade
    {
        splice_upgraded(down, hyper::upgrade::on(&mut resp));
    } else {
        strip_hop_by_hop(resp.headers_mut());
    }
    // Phases that may change any field see them all (the passed fields are the backend's own).
    let filters_change_fields =
        rule.filters.iter().chain(backend_filters).any(|f| matches!(f, Filter::ResponseHeaders(_)));
    let token_replaces_field = match (&decision.issue, rule.session.as_ref().map(|p| &p.carrier)) {
        (Some(_), Some(SessionCarrier::Header { name })) => {
            resp.body().passed_fields().is_some_and(|p| p.contains(name))
        }
        _ => false,
    };
    if filters_change_fields || token_replaces_field {
        restore_passed_fields(&mut resp);
    }
    for f in rule.filters.iter().chain(backend_filters) {
        if let Filter::ResponseHeaders(m) = f {
            m.apply(resp.headers_mut());
        }
    }
    if let (Some(claims), Some(policy)) = (&decision.issue, &rule.session) {
        write_token(ctx, policy, claims, now, resp.headers_mut());
    }
    resp.map(Either::Left)
}

/// A response body that may keep some of the response's fields out of its header map (a direct
/// exchange's `PassedFields`).
pub trait PassesFields {
    fn passed_fields(&self) -> Option<&PassedFields>;
    fn passed_fields_mut(&mut self) -> Option<&mut PassedFields>;
}

impl PassesFields for LoggedResponseBody {
    fn passed_fields(&self) -> Option<&PassedFields> {
        match self.inner() {
            Either::Left(upstream) => upstream.passed_fields(),
            Either::Right(_) => None,
        }
    }

    fn passed_fields_mut(&mut self) -> Option<&mut PassedFields> {
        match self.inner_mut() {
            Either::Left(upstream) => upstream.passed_fields_mut(),
            Either::Right(_) => None,
        }
    }
}

/// Moves the fields `resp`'s body kept out of its header map back into it: for every reader of a
/// response but the direct HTTP/1.1 server, which writes them as they are.
pub fn restore_passed_fields<B: PassesFields>(resp: &mut Response<B>) {
    if resp.body().passed_fields().is_none_or(PassedFields::is_empty) {
        return;
    }
    let mut headers = std::mem::take(resp.headers_mut());
    if let Some(passed) = resp.body_mut().passed_fields_mut() {
        passed.restore_into(&mut headers);
    }
    *resp.headers_mut() = headers;
}

fn write_token(
    ctx: &ConnContext,
    policy: &sessile_core::SessionPolicy,
    claims: &sessile_session::Claims,
    now: u64,
    headers: &mut HeaderMap,
) {
    match (&policy.carrier, token_value(&ctx.shared.keys(), policy, claims, now, ctx.https)) {
        (SessionCarrier::Cookie { .. }, Some(v)) => {
            headers.append(header::SET_COOKIE, v);
        }
        (SessionCarrier::Header { name }, Some(v)) => {
            headers.insert(name.clone(), v);
        }
        (_, None) => {}
    }
    // Shared caches must never hand one client's session token to another: keep `private` or
    // `no-store` when the backend sent them, else add `private` (dropping `public`, keeping the rest).
    keep_out_of_shared_caches(headers);
}

/// The `Set-Cookie` value or token header value that carries `claims`: sealed under the current
/// key, or the one this thread issued for identical claims and carrier in the same millisecond.
fn token_value(
    keys: &KeyRing,
    policy: &sessile_core::SessionPolicy,
    claims: &sessile_session::Claims,
    now: u64,
    secure: bool,
) -> Option<HeaderValue> {
    let max_age = match (&policy.carrier, policy.absolute_timeout) {
        (SessionCarrier::Cookie { permanent: true, .. }, Some(abs)) => Some(max_age_secs(claims, now, abs)),
        _ => None,
    };
    let key_id = keys.current_key_id();
    let issued = |k: &IssuedFor| {
        k.claims == *claims
            && k.key_id == key_id
            && k.secure == secure
            && k.max_age_secs == max_age
            && k.carrier == policy.carrier
    };
    let issue = || {
        let text = match &policy.carrier {
            SessionCarrier::Cookie { name, path, .. } => {
                let attrs = CookieAttrs { name, path, secure, max_age_secs: max_age };
                set_cookie_with(&attrs, MAX_TOKEN_LEN, |out| seal_into(keys, claims, out))
            }
            SessionCarrier::Header { .. } => seal(keys, claims),
        };
        let key = IssuedFor { claims: *claims, key_id, secure, max_age_secs: max_age, carrier: policy.carrier.clone() };
        (key, owned_header_value(text).ok())
    };
    RECENT_TOKENS.with_borrow_mut(|recent| recent.get_or_issue(issued, issue))
}

/// A refused or failed connect: logged, counted and the endpoint marked unhealthy (out of line: rare).
#[cold]
#[inline(never)]
fn connect_failed(shared: &Shared, addr: SocketAddr, error: &dyn std::fmt::Display) {
    tracing::warn!(endpoint = %addr, error = %error, "upstream connect failed; trying another endpoint");
    shared.metrics.upstream_connect_errors.get_or_create(&EndpointLabels { endpoint: addr.to_string() }).inc();
    shared.health.mark_unhealthy(addr);
}

/// A failed upstream exchange: logged, answered with 502 (out of line: rare).
#[cold]
#[inline(never)]
fn request_failed(addr: SocketAddr, error: &dyn std::fmt::Display) -> Response<ProxyBody> {
    tracing::warn!(endpoint = %addr, error = %error, "upstream request failed");
    local(StatusCode::BAD_GATEWAY, "upstream request failed\n")
}

/// Copies bytes both ways between the client and the backend once both sides have upgraded.
#[cold]
#[inline(never)]
fn splice_upgraded(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        if let (Ok(down), Ok(up)) = (down.await, up.await) {
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(down), &mut TokioIo::new(up)).await;
        }
    });
}

/// What a `Set-Cookie` or token header value was issued for: equal keys make byte-identical values.
struct IssuedFor {
    claims: sessile_session::Claims,
    key_id: u32,
    secure: bool,
    max_age_secs: Option<u64>,
    carrier: SessionCarrier,
}

thread_local! {
    /// New sessions pinned to one endpoint within the same millisecond share one sealed token
    /// (see `sessile_session::recent`); a few entries cover a thread's endpoints per millisecond.
    static RECENT_TOKENS: std::cell::RefCell<RecentTokens<IssuedFor, Option<HeaderValue>>> =
        std::cell::RefCell::new(RecentTokens::new(8));
}

/// HTTP/2 may split `cookie` into several fields; HTTP/1.1 needs one, joined with "; " (RFC 9113 8.2.3).
fn join_cookie_fields(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined = headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes()).collect::<Vec<_>>().join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// A header value that takes `text`'s allocation instead of copying it.
fn owned_header_value(text: String) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(text.into_bytes()))
}

fn keep_out_of_shared_caches(headers: &mut HeaderMap) {
    // The usual case: the backend sent no Cache-Control.
    if let http::header::Entry::Vacant(slot) = headers.entry(header::CACHE_CONTROL) {
        slot.insert(HeaderValue::from_static("private"));
        return;
    }
    let directives: Vec<String> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    let name = |d: &str| d.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
    if directives.iter().any(|d| matches!(name(d).as_str(), "private" | "no-store")) {
        return;
    }
    let mut value = String::from("private");
    for d in directives.iter().filter(|d| !matches!(name(d).as_str(), "public" | "s-maxage")) {
        value.push_str(", ");
        value.push_str(d);
    }
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(header::CACHE_CONTROL, v);
    }
}

/// The request's authority: `:authority` (h2, absolute-form) or the Host header, which is shared
/// with the request rather than copied.
fn request_authority<B>(req: &Request<B>) -> HeaderValue {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).unwrap_or(HeaderValue::from_static("")),
        None => req.headers().get(header::HOST).cloned().unwrap_or(HeaderValue::from_static("")),
    }
}

/// An authority as text ("" when it holds bytes other than visible ASCII).
fn authority_str(authority: &HeaderValue) -> &str {
    authority.to_str().unwrap_or("")
}

/// `Some(protocol)` for an HTTP/1.1 upgrade request (e.g. WebSocket).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<String> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// At most 8 (`strip_hop_by_hop` keeps one bit per name); its match lists the same names.
pub(crate) static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// What `strip_hop_by_hop` saw on its pass besides hop-by-hop names, so that callers skip
/// lookups of their own (each hashes the name).
#[derive(Clone, Copy, Default)]
struct Noted {
    /// An `X-Forwarded-For` field was present (it may have been removed as one the Connection header named).
    forwarded_for: bool,
    /// An `X-Forwarded-Proto` field was present.
    forwarded_proto: bool,
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) -> Noted {
    // One pass over the few names present, noting which hop-by-hop names are there: removing (or
    // looking up) a name hashes it, and most messages carry none of them or only `Connection`
    // (callgrind: ~2,500 instructions per response with `Connection: keep-alive` before).
    let mut present = 0u8;
    let mut te = false;
    let mut noted = Noted::default();
    // Whether a Connection field names other fields; the usual lone `keep-alive` or `close`
    // names none (read on this pass: a later `get_all` would hash the name again).
    let mut connection_lists_names = false;
    for (name, value) in headers.iter() {
        // A string match compares lengths first: one comparison for most names.
        match name.as_str() {
            "connection" => {
                present |= 1; // bit 0: `HOP_BY_HOP[0]`
                connection_lists_names |= crate::direct_h1::connection_names_fields(value.as_bytes());
            }
            "te" => te = true,
            "x-forwarded-for" => noted.forwarded_for = true,
            "x-forwarded-proto" => noted.forwarded_proto = true,
            "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "transfer-encoding"
            | "upgrade" => {
                present |= HOP_BY_HOP.iter().position(|h| h == name).map_or(0, |i| 1 << i);
            }
            _ => {}
        }
    }
    if present == 0 && !te {
        return noted;
    }
    // Names the Connection header (bit 0: `HOP_BY_HOP[0]`) lists besides the fixed ones.
    let named: Vec<HeaderName> = if connection_lists_names {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(t)))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    // Transfer-Encoding (bit 5) framed the message, so a Content-Length beside it is wrong and an
    // intermediary must drop it (RFC 9112 6.3); the next hop frames the message afresh.
    if present & (1 << 5) != 0 {
        headers.remove(header::CONTENT_LENGTH);
    }
    for name in &named {
        headers.remove(name);
    }
    // TE is hop-by-hop except for "trailers", which gRPC needs end to end.
    if te {
        let te_trailers = headers.get(header::TE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("trailers"));
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    noted
}

fn upstream_request(
    ctx: &ConnContext,
    req: &mut Request<RequestBody>,
    authority: HeaderValue,
    new_host: Option<&str>,
    new_path: Option<&str>,
    protocol: sessile_core::UpstreamProtocol,
    upgrade: Option<&str>,
) -> Result<Forwarded, &'static str> {
    let noted = strip_hop_by_hop(req.headers_mut());
    let bad = |_| "invalid request target\n";
    let path_and_query = |uri: &Uri| match (new_path, uri.query()) {
        (Some(p), Some(q)) => format!("{p}?{q}"),
        (Some(p), None) => p.to_string(),
        (None, _) => uri.path_and_query().map_or("/".to_string(), |pq| pq.as_str().to_string()),
    };
    match protocol {
        sessile_core::UpstreamProtocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            // An HTTP/1.1 origin-form target passes through as is (no re-parse) unless rewritten.
            if new_path.is_some() || req.uri().authority().is_some() {
                *req.uri_mut() = Uri::try_from(path_and_query(req.uri())).map_err(bad)?;
            }
            let headers = req.headers_mut();
            join_cookie_fields(headers);
            match new_host {
                Some(host) => {
                    let v = HeaderValue::from_str(host).map_err(|_| "invalid host\n")?;
                    headers.insert(header::HOST, v);
                }
                None if headers.get(header::HOST) != Some(&authority) => {
                    headers.insert(header::HOST, authority);
                }
                None => {}
            }
        }
        sessile_core::UpstreamProtocol::H2c => {
            *req.version_mut() = Version::HTTP_2;
            let host = new_host.unwrap_or(authority_str(&authority));
            *req.uri_mut() = Uri::try_from(format!("http://{host}{}", path_and_query(req.uri()))).map_err(bad)?;
            req.headers_mut().remove(header::HOST);
        }
    }
    let headers = req.headers_mut();
    if let Some(proto) = upgrade
        && let Ok(v) = HeaderValue::from_str(proto)
    {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, v);
    }
    // Every X-Forwarded-For field line counts, in order (a list header may be split across lines).
    let prev: Vec<&str> = if noted.forwarded_for {
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect()
    } else {
        Vec::new()
    };
    let forwarded_for = if prev.is_empty() {
        // The common case: the connection's peer address, formatted once per connection.
        ctx.peer_ip.clone()
    } else {
        let joined = HeaderValue::from_str(&format!("{}, {}", prev.join(", "), ctx.peer.ip()));
        headers.remove("x-forwarded-for");
        joined.unwrap_or_else(|_| ctx.peer_ip.clone())
    };
    if noted.forwarded_proto {
        // The client's claim is replaced by what this hop saw.
        headers.remove("x-forwarded-proto");
    }
    Ok(Forwarded { forwarded_for, https: ctx.https })
}

fn redirect<B>(
    ctx: &ConnContext,
    req: &Request<B>,
    authority: &str,
    r: &sessile_core::Redirect,
    prefix: Option<&str>,
) -> Response<ProxyBody> {
    let request_scheme = if ctx.https { "https" } else { "http" };
    let scheme = r.scheme.as_deref().unwrap_or(request_scheme);
    let host = r.hostname.clone().unwrap_or_else(|| normalize_host(authority).into_owned());
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => Some(ctx.bind.port()),
    };
    let port = port.filter(|p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let path = match &r.path {
        Some(m @ PathModifier::ReplaceFullPath(_)) | Some(m @ PathModifier::ReplacePrefixMatch(_)) => {
            m.apply(req.uri().path(), prefix)
        }
        None => req.uri().path().to_string(),
    };
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let location = match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}{query}"),
        None => format!("{scheme}://{host}{path}{query}"),
    };
    let mut resp = local(StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND), "");
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Whether the certificate (listener) chosen for `sni` also serves `host`; otherwise the request is misdirected.
fn sni_covers_host(certs: &[Arc<sessile_core::Certificate>], sni: &str, host: &str) -> bool {
    let chosen = certs.iter().filter(|c| c.hostname.matches(sni)).max_by_key(|c| c.hostname.specificity());
    chosen.is_none_or(|c| c.hostname.matches(host))
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A gateway error for a gRPC client: HTTP 200 with the status in `grpc-status` (a trailers-only response).
fn grpc_error(status: StatusCode) -> Response<ProxyBody> {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("12", "no route matched"),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => ("14", "no healthy endpoint available"),
        StatusCode::GATEWAY_TIMEOUT => ("4", "deadline exceeded"),
        StatusCode::MISDIRECTED_REQUEST => ("14", "misdirected request"),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::URI_TOO_LONG | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            ("8", "request over the gateway's limits")
        }
        _ => ("13", "gateway error"),
    };
    let mut resp = local(StatusCode::OK, "");
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(HeaderName::from_static("grpc-status"), HeaderValue::from_static(code));
    h.insert(HeaderName::from_static("grpc-message"), HeaderValue::from_static(message));
    resp
}

/// A response generated by the gateway itself.
pub fn local(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    resp
}

/// A request refused before it reached a backend; HTTP/1 connections close after it (the rest
/// of the request may be unread or ambiguous).
fn refused(refusal: Refusal, version: Version) -> Response<ProxyBody> {
    let mut resp = local(refusal.status(), refusal.message());
    if matches!(version, Version::HTTP_10 | Version::HTTP_11) {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn unavailable() -> Response<ProxyBody> {
    let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, "no healthy endpoint available\n");
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = map.keys().map(|n| n.as_str().to_string()).collect();
        names.sort();
        names
    }

    /// Request or response header fields, the names kept, and the TE value kept.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], Option<&'a str>);

    #[test]
    fn hop_by_hop_headers_and_the_names_connection_lists_are_removed() {
        let cases: &[Case] = &[
            (&[("content-type", "text/plain"), ("x-a", "1")], &["content-type", "x-a"], None),
            (&[("connection", "keep-alive"), ("x-a", "1")], &["x-a"], None),
            // A name listed on a later Connection line than a lone `keep-alive` still goes.
            (&[("connection", "keep-alive"), ("connection", "x-b"), ("x-b", "1"), ("x-a", "1")], &["x-a"], None),
            (
                &[
                    ("connection", "close, X-Foo"),
                    ("connection", "x-bar"),
                    ("x-foo", "1"),
                    ("x-bar", "2"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "h2c"),
                    ("proxy-authorization", "Basic x"),
                    ("proxy-authenticate", "Basic"),
                    ("x-kept", "3"),
                ],
                &["x-kept"],
                None,
            ),
            (&[("te", "trailers, deflate"), ("x-a", "1")], &["te", "x-a"], Some("trailers")),
            (&[("te", "deflate")], &[], None),
            // Connection listing TE makes it hop-by-hop even when it says trailers.
            (&[("connection", "te"), ("te", "trailers")], &[], None),
        ];
        for (input, kept, te) in cases {
            let mut map = headers(input);
            strip_hop_by_hop(&mut map);
            assert_eq!(names(&map), kept.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "input {input:?}");
            assert_eq!(map.get(header::TE).map(|v| v.to_str().unwrap()), *te, "input {input:?}");
            if let Some(x_a) = map.get("x-a") {
                assert_eq!(x_a, "1");
            }
        }
    }

    fn policy(carrier: SessionCarrier, absolute: Option<u64>) -> sessile_core::SessionPolicy {
        sessile_core::SessionPolicy {
            scope: 7,
            source: sessile_core::SessionSource::Policy {
                kind: "test".into(),
                namespace: "ns".into(),
                name: "p".into(),
            },
            carrier,
            absolute_timeout: absolute.map(std::time::Duration::from_secs),
            idle_timeout: None,
        }
    }

    fn cookie(path: &str, permanent: bool) -> SessionCarrier {
        SessionCarrier::Cookie { name: "sticky".into(), path: path.into(), permanent }
    }

    fn claims(endpoint: &str, at_ms: u64) -> sessile_session::Claims {
        sessile_session::Claims {
            scope: 7,
            backend: 9,
            endpoint: endpoint.parse().unwrap(),
            endpoint_identity: 3,
            created_ms: at_ms,
            refreshed_ms: at_ms,
        }
    }

    /// The token inside a `Set-Cookie` value or a bare token header value.
    fn token_of(value: &HeaderValue) -> &str {
        let text = value.to_str().unwrap();
        let pair = text.split(';').next().unwrap();
        pair.strip_prefix("sticky=").unwrap_or(pair)
    }

    #[test]
    fn identical_claims_in_one_millisecond_share_a_token_and_nothing_else_does() {
        let keys = KeyRing::generate();
        let at = 1_790_000_000_000;
        let session = policy(cookie("/", false), None);
        let issue = |policy: &sessile_core::SessionPolicy, claims, secure| {
            token_value(&keys, policy, &claims, at, secure).expect("a valid header value")
        };
        let first = issue(&session, claims("10.0.0.1:80", at), false);
        assert_eq!(first, issue(&session, claims("10.0.0.1:80", at), false), "same claims, same millisecond");
        assert_eq!(sessile_session::open(&keys, token_of(&first)).unwrap(), claims("10.0.0.1:80", at));

        let others = [
            ("another endpoint", issue(&session, claims("10.0.0.2:80", at), false)),
            ("the next millisecond", issue(&session, claims("10.0.0.1:80", at + 1), false)),
            ("an HTTPS listener", issue(&session, claims("10.0.0.1:80", at), true)),
            ("another cookie path", issue(&policy(cookie("/app", false), None), claims("10.0.0.1:80", at), false)),
            ("a permanent cookie", issue(&policy(cookie("/", true), Some(60)), claims("10.0.0.1:80", at), false)),
        ];
        for (what, value) in &others {
            assert_ne!(token_of(value), token_of(&first), "{what} must get its own token");
        }
        let text = |i: usize| others[i].1.to_str().unwrap();
        assert!(text(2).contains("; Secure"), "{}", text(2));
        assert!(!first.to_str().unwrap().contains("Secure"));
        assert!(text(3).contains("Path=/app"), "{}", text(3));
        assert!(text(4).contains("Max-Age=60"), "{}", text(4));

        // After a key rotation, new tokens are sealed under the new key, even within the millisecond.
        let rotated = keys.with_new_current_key();
        let after = token_value(&rotated, &session, &claims("10.0.0.1:80", at), at, false).unwrap();
        assert_ne!(token_of(&after), token_of(&first));
        assert!(sessile_session::open(&rotated, token_of(&after)).is_ok());
    }

    #[test]
    fn header_tokens_are_bare_and_shared_the_same_way() {
        let keys = KeyRing::generate();
        let at = 1_790_000_000_000;
        let session = policy(SessionCarrier::Header { name: HeaderName::from_static("x-sticky") }, None);
        let a = token_value(&keys, &session, &claims("[2001:db8::1]:80", at), at, false).unwrap();
        let b = token_value(&keys, &session, &claims("[2001:db8::1]:80", at), at, false).unwrap();
        assert_eq!(a, b);
        assert!(!a.to_str().unwrap().contains(';'));
        assert_eq!(sessile_session::open(&keys, a.to_str().unwrap()).unwrap(), claims("[2001:db8::1]:80", at));
    }
}
