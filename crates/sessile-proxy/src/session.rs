//! Endpoint choice for one request: resume the session a valid token names, else balance and mint a token.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use http::header::COOKIE;
use sessile_core::{
    Backend, BackendTarget, EndpointState, PickMode, Rule, SessionCarrier, SessionPolicy, UpstreamProtocol, balance,
};
use sessile_session::{
    CLOCK_SKEW_MS, Claims, Eligibility, Rejection, SessionTimeouts, TokenMemo, cookie_values, header_values,
    resolve_remembering,
};

use crate::state::Shared;

/// What happened to the session of a request, for access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFlag {
    /// The rule has no session persistence.
    None,
    New,
    Resumed,
    Refreshed,
    Repinned,
    Expired,
    Invalid,
}

impl SessionFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionFlag::None => "-",
            SessionFlag::New => "new",
            SessionFlag::Resumed => "resumed",
            SessionFlag::Refreshed => "refreshed",
            SessionFlag::Repinned => "re-pinned",
            SessionFlag::Expired => "expired",
            SessionFlag::Invalid => "invalid",
        }
    }
}

/// The endpoint a request goes to.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub protocol: UpstreamProtocol,
    /// Index of the backendRef in the rule (for its filters).
    pub backend_index: usize,
    pub backend: Arc<Backend>,
    pub identity_hash: u64,
    /// Position in `backend.endpoints` (`None` for a departed endpoint kept for its sessions).
    pub endpoint_index: Option<usize>,
}

impl Target {
    /// A configured endpoint of the rule's backendRef number `index`.
    fn endpoint(backend: &Arc<Backend>, index: usize, e: &sessile_core::Endpoint) -> Target {
        Target {
            addr: e.addr,
            protocol: backend.protocol,
            backend_index: index,
            backend: backend.clone(),
            identity_hash: e.identity_hash,
            endpoint_index: backend.endpoint_index(e),
        }
    }
}

#[derive(Debug)]
pub struct Decision {
    pub target: Target,
    /// Claims to seal into a token on the response (new session, re-pin or refresh).
    pub issue: Option<Claims>,
    pub flag: SessionFlag,
    pub rejection: Option<Rejection>,
}

#[derive(Debug)]
pub enum Choice {
    Endpoint(Decision),
    /// No endpoint can take the request: 503.
    NoEndpoint,
    /// The request fell on an invalid backendRef (or the rule has none): 500.
    InvalidBackend,
}

/// Why no endpoint could be picked.
enum NoTarget {
    NoEndpoint,
    InvalidBackend,
}

impl From<NoTarget> for Choice {
    fn from(n: NoTarget) -> Choice {
        match n {
            NoTarget::NoEndpoint => Choice::NoEndpoint,
            NoTarget::InvalidBackend => Choice::InvalidBackend,
        }
    }
}

/// Decides the endpoint for a request matched to `rule`. `exclude` lists endpoints that just refused a connection.
/// `memo` is the connection's memory of the last token it opened.
pub fn choose(
    shared: &Shared,
    rule: &Rule,
    headers: &HeaderMap,
    now_ms: u64,
    exclude: &[SocketAddr],
    memo: &mut TokenMemo,
) -> Choice {
    choose_with(shared, rule, headers, now_ms, exclude, PickMode::Advance, memo)
}

/// [`choose`]; with [`PickMode::Peek`] (for `explain`) the decision is the same but the
/// weighted and round-robin rotations do not move.
pub fn choose_with(
    shared: &Shared,
    rule: &Rule,
    headers: &HeaderMap,
    now_ms: u64,
    exclude: &[SocketAddr],
    mode: PickMode,
    memo: &mut TokenMemo,
) -> Choice {
    let Some(policy) = &rule.session else {
        return match pick_new(shared, rule, exclude, mode) {
            Ok(target) => Choice::Endpoint(Decision { target, issue: None, flag: SessionFlag::None, rejection: None }),
            Err(e) => e.into(),
        };
    };
    let keys = shared.keys();
    let timeouts = SessionTimeouts { absolute: policy.absolute_timeout, idle: policy.idle_timeout };
    let mut resumed_target: Option<Target> = None;
    let eligible = |c: &Claims| -> Eligibility {
        let (eligibility, target) = eligibility(shared, rule, c, exclude);
        if eligibility == Eligibility::Eligible {
            resumed_target = target;
        }
        eligibility
    };
    let tokens = carried_tokens(headers, &policy.carrier);
    let outcome = resolve_remembering(memo, &keys, policy.scope, tokens, now_ms, &timeouts, eligible);
    match (outcome, resumed_target) {
        (Ok(resumed), Some(target)) => {
            let issue = resumed.refresh.then_some(Claims { refreshed_ms: now_ms, ..resumed.claims });
            let flag = if issue.is_some() { SessionFlag::Refreshed } else { SessionFlag::Resumed };
            Choice::Endpoint(Decision { target, issue, flag, rejection: None })
        }
        (outcome, _) => {
            let rejection = outcome.err().unwrap_or(Rejection::Invalid);
            match pick_new(shared, rule, exclude, mode) {
                Ok(target) => {
                    let flag = match rejection {
                        Rejection::Absent => SessionFlag::New,
                        Rejection::ExpiredIdle | Rejection::ExpiredAbsolute => SessionFlag::Expired,
                        Rejection::Invalid | Rejection::OtherScope => SessionFlag::Invalid,
                        Rejection::EndpointGone | Rejection::EndpointUnhealthy | Rejection::EndpointDrainingNew => {
                            SessionFlag::Repinned
                        }
                    };
                    let issue = Some(new_claims(policy, &target, now_ms));
                    Choice::Endpoint(Decision { target, issue, flag, rejection: Some(rejection) })
                }
                Err(e) => e.into(),
            }
        }
    }
}

/// Claims for a fresh session on `target`.
/// The session tokens a request carries, in order: the values of the named cookie, or the
/// comma-separated values of the named header, across all their field lines.
///
/// Field values are read as UTF-8, not with `HeaderValue::to_str`: its visible-ASCII check
/// walks the value a byte at a time (~4 instructions a byte, most of the cost of finding a
/// 100-byte token), and a token is base64url, so any other character fails when it is opened.
pub(crate) fn carried_tokens<'a>(headers: &'a HeaderMap, carrier: &'a SessionCarrier) -> impl Iterator<Item = &'a str> {
    let text = |values: http::header::GetAll<'a, http::HeaderValue>| {
        values.into_iter().filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
    };
    let (cookie, header) = match carrier {
        SessionCarrier::Cookie { name, .. } => (Some(name.as_str()), None),
        SessionCarrier::Header { name } => (None, Some(name)),
    };
    let cookies = cookie.into_iter().flat_map(move |name| cookie_values(text(headers.get_all(COOKIE)), name));
    let header = header.into_iter().flat_map(move |name| header_values(text(headers.get_all(name))));
    cookies.chain(header)
}

pub fn new_claims(policy: &SessionPolicy, target: &Target, now_ms: u64) -> Claims {
    Claims {
        scope: policy.scope,
        backend: target.backend.id_hash,
        endpoint: target.addr,
        endpoint_identity: target.identity_hash,
        created_ms: now_ms,
        refreshed_ms: now_ms,
    }
}

pub(crate) fn eligibility(
    shared: &Shared,
    rule: &Rule,
    c: &Claims,
    exclude: &[SocketAddr],
) -> (Eligibility, Option<Target>) {
    let usable = |addr: SocketAddr| shared.health.is_healthy(addr) && !exclude.contains(&addr);
    for (index, wb) in rule.backends.iter().enumerate() {
        let BackendTarget::Service(backend) = &wb.target else { continue };
        if backend.id_hash != c.backend {
            continue;
        }
        if let Some(e) = backend.find_endpoint(c.endpoint, c.endpoint_identity) {
            if !usable(e.addr) {
                return (Eligibility::Unhealthy, None);
            }
            if e.state == EndpointState::Draining
                && let Some(since) = shared.health.draining_since(e.addr)
                && c.created_ms > since.saturating_add(CLOCK_SKEW_MS)
            {
                return (Eligibility::DrainingNew, None);
            }
            return (Eligibility::Eligible, Some(Target::endpoint(backend, index, e)));
        }
        // An address that now belongs to another endpoint identity (a new pod reusing the IP) does
        // not inherit the departed endpoint's sessions.
        if backend.endpoints.iter().any(|e| e.addr == c.endpoint) {
            continue;
        }
        if let Some(d) = shared.health.departed(c.backend, c.endpoint, c.endpoint_identity) {
            if !usable(d.addr) {
                return (Eligibility::Unhealthy, None);
            }
            let target = Target {
                addr: d.addr,
                protocol: d.protocol,
                backend_index: index,
                backend: backend.clone(),
                identity_hash: d.identity_hash,
                endpoint_index: None,
            };
            return (Eligibility::Eligible, Some(target));
        }
    }
    (Eligibility::Gone, None)
}

/// Load-balances a request without a usable session: backend by weight, endpoint round-robin.
///
/// Endpoints in their refused-connection back-off are skipped, unless every ready endpoint is
/// (panic mode): then they are tried anyway, so an endpoint that is back serves at once instead
/// of after the back-off. Endpoints that refused this very request (`exclude`) are never retried.
fn pick_new(shared: &Shared, rule: &Rule, exclude: &[SocketAddr], mode: PickMode) -> Result<Target, NoTarget> {
    match pick_new_with(shared, rule, exclude, true, mode) {
        Err(NoTarget::NoEndpoint) => pick_new_with(shared, rule, exclude, false, mode),
        picked => picked,
    }
}

fn pick_new_with(
    shared: &Shared,
    rule: &Rule,
    exclude: &[SocketAddr],
    skip_unhealthy: bool,
    mode: PickMode,
) -> Result<Target, NoTarget> {
    let usable = |addr: SocketAddr| (!skip_unhealthy || shared.health.is_healthy(addr)) && !exclude.contains(&addr);
    let Some(first) = rule.weighted(mode) else {
        return Err(NoTarget::InvalidBackend);
    };
    let BackendTarget::Service(_) = &first.target else { return Err(NoTarget::InvalidBackend) };
    // The weighted pick first; if its backend has nothing usable, any other weighted backend.
    let first_index = rule.backends.iter().position(|b| std::ptr::eq(b, first)).unwrap_or(0);
    let order = std::iter::once(first_index).chain((0..rule.backends.len()).filter(|&i| i != first_index));
    for index in order {
        let wb = &rule.backends[index];
        if wb.weight == 0 {
            continue;
        }
        let BackendTarget::Service(backend) = &wb.target else { continue };
        if let Some(e) = balance::pick_endpoint_with(backend, mode, usable) {
            return Ok(Target::endpoint(backend, index, e));
        }
    }
    Err(NoTarget::NoEndpoint)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn carried_tokens_read_every_field_line_and_skip_only_what_is_not_text() {
        let cookie = SessionCarrier::Cookie { name: "sid".into(), path: "/".into(), permanent: false };
        let mut headers = HeaderMap::new();
        // Another application's cookie with UTF-8 in it does not hide the session cookie beside it.
        headers.append(COOKIE, HeaderValue::from_bytes("pref=café; sid=tok1".as_bytes()).unwrap());
        headers.append(COOKIE, HeaderValue::from_bytes(b"sid=\xff\xfe").unwrap());
        headers.append(COOKIE, HeaderValue::from_static("a=1;sid=\"tok2\""));
        assert_eq!(carried_tokens(&headers, &cookie).collect::<Vec<_>>(), ["tok1", "tok2"]);

        let header = SessionCarrier::Header { name: http::HeaderName::from_static("x-session") };
        headers.append("x-session", HeaderValue::from_static("tok3, tok4"));
        headers.append("x-session", HeaderValue::from_bytes(b"\xc3(").unwrap());
        headers.append("x-session", HeaderValue::from_static(" tok5 "));
        assert_eq!(carried_tokens(&headers, &header).collect::<Vec<_>>(), ["tok3", "tok4", "tok5"]);
        assert_eq!(carried_tokens(&HeaderMap::new(), &cookie).count(), 0);
    }
}
