//! `explain`: why a request would reach an endpoint, told by the data plane's own matching and session code.
//!
//! Nothing here decides anything on its own: the route comes from [`RouteTable::candidates`]
//! (whose first entry is what the proxy's lookup returns), the endpoint from
//! [`session::choose_with`] in [`PickMode::Peek`] (the same decision, without moving the
//! round-robin or weighted rotations), and each token's verdict from [`sessile_session::judge`]
//! with the proxy's eligibility rule. Tokens are decoded with the key ring and never printed.

use std::fmt::{self, Write as _};
use std::time::Duration;

use http::header::{COOKIE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use serde::Serialize;
use sessile_core::hostname::{HostPattern, normalize_host};
use sessile_core::matching::{MatchEntry, PathMatch, RequestMatch, RequestView, StringMatch};
use sessile_core::{
    BackendTarget, EndpointState, Filter, ListenerProtocol, PickMode, PortConfig, Rule, SessionCarrier, SessionPolicy,
    SessionSource,
};
use sessile_session::{Claims, Freshness, MAX_CANDIDATES, SessionTimeouts, TokenMemo, freshness, judge, open};

use crate::session::{self, Choice, Decision, SessionFlag};
use crate::state::Shared;

/// The request to explain: what a client would send.
#[derive(Debug, Clone)]
pub struct Query {
    pub method: Method,
    /// Absolute URL: scheme, host, optional port, path and query.
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl Query {
    /// Builds a query from command-line style parts: `headers` as `Name: value`, `cookies` as `a=b`
    /// (joined into one `Cookie` header after any given with `-H`).
    pub fn parse(method: &str, url: &str, headers: &[String], cookies: &[String]) -> Result<Query, String> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| format!("invalid method {method:?}"))?;
        let uri: Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => {}
            _ => {
                return Err(format!(
                    "the URL must be absolute with http or https, like http://example.com/path: {url:?}"
                ));
            }
        }
        let mut map = HeaderMap::new();
        for h in headers {
            let (name, value) =
                h.split_once(':').ok_or_else(|| format!("invalid header {h:?}: expected 'Name: value'"))?;
            let name =
                HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| format!("invalid header name in {h:?}"))?;
            let value = HeaderValue::from_str(value.trim()).map_err(|_| format!("invalid header value in {h:?}"))?;
            map.append(name, value);
        }
        if !cookies.is_empty() {
            let line = cookies.join("; ");
            let value = HeaderValue::from_str(&line).map_err(|_| format!("invalid cookie {line:?}"))?;
            map.append(COOKIE, value);
        }
        Ok(Query { method, uri, headers: map })
    }

    fn https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }

    fn port(&self) -> u16 {
        self.uri.port_u16().unwrap_or(if self.https() { 443 } else { 80 })
    }
}

/// Everything `explain` found out, in the order the proxy decides it.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub request: RequestSummary,
    pub listener: Option<ListenerInfo>,
    pub route: Option<RouteInfo>,
    pub session: Option<SessionInfo>,
    pub endpoint: Option<EndpointInfo>,
    /// What the proxy would do, in one line.
    pub outcome: String,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RequestSummary {
    pub method: String,
    pub url: String,
    /// Lowercase host without port, as matched against hostnames.
    pub host: String,
}

#[derive(Debug, Serialize)]
pub struct ListenerInfo {
    pub bind: String,
    pub protocol: &'static str,
    /// The Secret whose certificate the TLS server name selects (HTTPS).
    pub certificate: Option<String>,
    /// The Gateway listeners (sectionName) the chosen route attached through.
    pub listeners: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RouteInfo {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub rule: usize,
    pub rule_name: Option<String>,
    /// The rule's label in metrics and logs.
    pub label: String,
    /// The hostname the route is attached under (`*` when any).
    pub hostname: String,
    /// The match that accepted the request.
    #[serde(rename = "match")]
    pub matched: serde_json::Value,
    /// The same, in words (`PathPrefix /cart, header x-canary = "yes"`).
    pub match_text: String,
    /// Why this match beats the next best one.
    pub precedence: String,
    /// The next best match, if any.
    pub runner_up: Option<String>,
    /// How many matches accept the request in all.
    pub candidates: usize,
    pub filters: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SessionInfo {
    /// Where the configuration comes from.
    pub source: String,
    /// Policies this rule's own configuration overrides.
    pub overrides: Vec<String>,
    /// `cookie` or `header`.
    pub carrier: &'static str,
    pub name: String,
    pub cookie_path: Option<String>,
    /// `Session` or `Permanent` (cookies).
    pub lifetime: Option<&'static str>,
    pub absolute_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    /// Other rules sharing this session scope (a token from one is honoured by all).
    pub shared_with: Vec<String>,
    pub tokens: Vec<TokenInfo>,
    /// `new`, `resumed`, `refreshed`, `re-pinned`, `expired` or `invalid` (the access-log flag).
    pub decision: &'static str,
    /// Why no token resumed the session (metric label), if none did.
    pub rejection: Option<&'static str>,
    /// Whether the response would carry a new or refreshed token.
    pub issues_token: bool,
}

#[derive(Debug, Serialize)]
pub struct TokenInfo {
    /// Position among the request's candidate tokens (1-based).
    pub index: usize,
    pub length: usize,
    /// `resumes` or a rejection reason (metric label).
    pub verdict: String,
    pub claims: Option<ClaimsInfo>,
    /// Why the token could not be opened, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ClaimsInfo {
    /// Whether the token belongs to this rule's session scope.
    pub scope_matches: bool,
    /// The backend it pins (`namespace/service:port`), when this rule has it.
    pub backend: Option<String>,
    pub endpoint: String,
    pub age_secs: u64,
    pub idle_secs: u64,
    /// Seconds until the absolute timeout ends the session.
    pub absolute_expires_in_secs: Option<i64>,
    /// Seconds until the session idles out if no request comes (the latest moment, 1.5x idle).
    pub idle_expires_in_secs: Option<i64>,
    /// Whether a response would re-issue the token now (idle refresh).
    pub refresh_due: bool,
}

#[derive(Debug, Serialize)]
pub struct EndpointInfo {
    pub address: String,
    pub backend: String,
    /// `ready`, `draining`, or `departed` (removed from configuration, within its grace).
    pub state: &'static str,
    pub healthy: bool,
    pub why: String,
    /// Endpoints of that backend that new sessions skip, and why.
    pub skipped: Vec<String>,
}

/// Explains `query` against the live (or offline) state: listener, route, session, endpoint.
pub fn explain(shared: &Shared, query: &Query, now_ms: u64) -> Explanation {
    let host = normalize_host(query.uri.authority().map_or("", |a| a.as_str())).into_owned();
    let mut ex = Explanation {
        request: RequestSummary { method: query.method.to_string(), url: query.uri.to_string(), host: host.clone() },
        listener: None,
        route: None,
        session: None,
        endpoint: None,
        outcome: String::new(),
        notes: Vec::new(),
    };
    let snapshot = shared.snapshot();
    let Some(port) = find_port(&snapshot.ports, query) else {
        let bound: Vec<String> = snapshot.ports.iter().map(|p| p.bind.to_string()).collect();
        ex.outcome = format!("connection refused: no listener on port {}", query.port());
        ex.notes.push(format!(
            "listeners are bound on: {}",
            if bound.is_empty() { "none".into() } else { bound.join(", ") }
        ));
        return ex;
    };
    let https = port.protocol == ListenerProtocol::Https;
    ex.listener = Some(ListenerInfo {
        bind: port.bind.to_string(),
        protocol: if https { "HTTPS" } else { "HTTP" },
        certificate: https.then(|| certificate_for(port, &host)).flatten(),
        listeners: Vec::new(),
    });
    if https != query.https() {
        ex.notes.push(format!(
            "port {} is an {} listener but the URL says {}",
            query.port(),
            if https { "HTTPS" } else { "HTTP" },
            query.uri.scheme_str().unwrap_or("?")
        ));
    }
    let view = RequestView {
        host: &host,
        method: &query.method,
        path: query.uri.path(),
        query: query.uri.query(),
        headers: &query.headers,
    };
    let candidates: Vec<(Option<&HostPattern>, &MatchEntry)> = port.routes.candidates(&view).collect();
    let Some(&(pattern, entry)) = candidates.first() else {
        ex.outcome = "404: no route matched".into();
        if port.routes.is_empty() {
            ex.notes.push("no route is attached to this listener".into());
        }
        return ex;
    };
    if let Some(l) = ex.listener.as_mut() {
        l.listeners = entry.listeners.clone();
    }
    let rule = &entry.rule;
    ex.route = Some(route_info(rule, pattern, entry, &candidates));

    if let Some(redirect) = rule.filters.iter().find_map(|f| match f {
        Filter::Redirect(r) => Some(r),
        _ => None,
    }) {
        ex.outcome =
            format!("{} redirect by the rule's RequestRedirect filter; no backend is contacted", redirect.status);
        return ex;
    }

    let choice =
        session::choose_with(shared, rule, &query.headers, now_ms, &[], PickMode::Peek, &mut TokenMemo::default());
    if let Some(policy) = &rule.session {
        ex.session = Some(session_info(shared, port, rule, policy, &query.headers, now_ms, &choice));
    }
    match choice {
        Choice::Endpoint(decision) => {
            let endpoint = endpoint_info(shared, rule, &decision, ex.session.as_ref());
            ex.outcome = format!("proxied to {} ({})", endpoint.address, endpoint.backend);
            if decision.issue.is_some() {
                ex.outcome.push_str(match rule.session.as_ref().map(|p| &p.carrier) {
                    Some(SessionCarrier::Cookie { .. }) => "; the response sets a session cookie",
                    _ => "; the response carries a session header",
                });
            }
            ex.endpoint = Some(endpoint);
        }
        Choice::NoEndpoint => {
            ex.outcome = "503: no endpoint can take the request (none ready and healthy)".into();
        }
        Choice::InvalidBackend => {
            ex.outcome = "500: the request falls on a backendRef that did not resolve".into();
            for wb in &rule.backends {
                if let BackendTarget::Invalid { reason } = &wb.target {
                    ex.notes.push(format!("invalid backendRef (weight {}): {reason}", wb.weight));
                }
            }
        }
    }
    ex
}

/// The port a client connecting to the URL reaches: same port, the URL's IP if it names one bound
/// explicitly, else the wildcard address.
fn find_port<'s>(ports: &'s [PortConfig], query: &Query) -> Option<&'s PortConfig> {
    let port = query.port();
    let ip: Option<std::net::IpAddr> = query.uri.host().and_then(|h| h.trim_matches(['[', ']']).parse().ok());
    let same_port = || ports.iter().filter(|p| p.bind.port() == port);
    same_port()
        .find(|p| Some(p.bind.ip()) == ip)
        .or_else(|| same_port().find(|p| p.bind.ip().is_unspecified()))
        .or_else(|| same_port().next())
}

fn certificate_for(port: &PortConfig, sni: &str) -> Option<String> {
    port.certificates
        .iter()
        .filter(|c| c.hostname.matches(sni))
        .max_by_key(|c| c.hostname.specificity())
        .map(|c| format!("{} (for {})", c.secret, c.hostname))
}

fn route_info(
    rule: &Rule,
    pattern: Option<&HostPattern>,
    entry: &MatchEntry,
    candidates: &[(Option<&HostPattern>, &MatchEntry)],
) -> RouteInfo {
    let host_label = |p: Option<&HostPattern>| p.map_or_else(|| "*".to_string(), |p| p.to_string());
    let (precedence, runner_up) = match candidates.get(1) {
        None => ("the only match for this request".to_string(), None),
        Some(&(other_pattern, other)) => {
            let why = if other_pattern != pattern {
                format!("hostname {} is more specific than {}", host_label(pattern), host_label(other_pattern))
            } else {
                entry.summary.precedence_reason(&other.summary).unwrap_or_else(|| "declared first".into())
            };
            (why, Some(format!("{} (hostname {})", other.rule.label, host_label(other_pattern))))
        }
    };
    RouteInfo {
        kind: rule.route.kind.clone(),
        namespace: rule.route.namespace.clone(),
        name: rule.route.name.clone(),
        rule: rule.index,
        rule_name: rule.name.clone(),
        label: rule.label.to_string(),
        hostname: host_label(pattern),
        matched: serde_json::to_value(&entry.request_match).unwrap_or_default(),
        match_text: describe_match(&entry.request_match),
        precedence,
        runner_up,
        candidates: candidates.len(),
        filters: rule.filters.iter().map(filter_name).map(String::from).collect(),
    }
}

fn describe_match(m: &RequestMatch) -> String {
    let text = |v: &StringMatch| match v {
        StringMatch::Exact(x) => format!("= {x:?}"),
        StringMatch::Regex(r) => format!("~ /{}/", r.as_str()),
    };
    let mut parts = vec![match &m.path {
        PathMatch::Exact(p) => format!("Exact {p}"),
        PathMatch::Prefix(p) => format!("PathPrefix {p}"),
        PathMatch::Regex(r) => format!("RegularExpression {}", r.as_str()),
    }];
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    parts.extend(m.headers.iter().map(|h| format!("header {} {}", h.name, text(&h.value))));
    parts.extend(m.query.iter().map(|q| format!("query {} {}", q.name, text(&q.value))));
    parts.join(", ")
}

fn filter_name(f: &Filter) -> &'static str {
    match f {
        Filter::RequestHeaders(_) => "RequestHeaderModifier",
        Filter::ResponseHeaders(_) => "ResponseHeaderModifier",
        Filter::Redirect(_) => "RequestRedirect",
        Filter::UrlRewrite(_) => "URLRewrite",
    }
}

fn session_info(
    shared: &Shared,
    port: &PortConfig,
    rule: &Rule,
    policy: &SessionPolicy,
    headers: &HeaderMap,
    now_ms: u64,
    choice: &Choice,
) -> SessionInfo {
    let (source, overrides) = match &policy.source {
        SessionSource::RouteRule { route, rule: index } => {
            let note = format!("overridden by {} {} rule {index}", route.kind, route);
            let overrides = shared
                .statuses()
                .iter()
                .filter(|s| s.status.to_string().contains(&note))
                .map(|s| format!("{} {}/{}", s.kind, s.metadata.namespace, s.metadata.name))
                .collect();
            (format!("{} {} rule {index} (sessionPersistence on the rule)", route.kind, route), overrides)
        }
        SessionSource::Policy { kind, namespace, name } => {
            (format!("{kind} {namespace}/{name} (targets the rule's Service)"), Vec::new())
        }
    };
    let shared_with = port
        .routes
        .rules()
        .iter()
        .filter(|r| !std::ptr::eq(r.as_ref(), rule))
        .filter(|r| r.session.as_ref().is_some_and(|p| p.scope == policy.scope))
        .map(|r| r.label.to_string())
        .collect();
    let (carrier, name, cookie_path, lifetime) = match &policy.carrier {
        SessionCarrier::Cookie { name, path, permanent } => {
            ("cookie", name.clone(), Some(path.clone()), Some(if *permanent { "Permanent" } else { "Session" }))
        }
        SessionCarrier::Header { name } => ("header", name.to_string(), None, None),
    };
    let keys = shared.keys();
    let timeouts = SessionTimeouts { absolute: policy.absolute_timeout, idle: policy.idle_timeout };
    let tokens: Vec<&str> = crate::session::carried_tokens(headers, &policy.carrier).collect();
    let tokens = tokens
        .into_iter()
        .filter(|t| !t.is_empty())
        .take(MAX_CANDIDATES)
        .enumerate()
        .map(|(i, token)| {
            let verdict =
                judge(&mut TokenMemo::default(), &keys, policy.scope, token, now_ms, &timeouts, &mut |c: &Claims| {
                    session::eligibility(shared, rule, c, &[]).0
                });
            let opened = open(&keys, token);
            TokenInfo {
                index: i + 1,
                length: token.len(),
                verdict: match verdict {
                    Ok(_) => "resumes".to_string(),
                    Err(r) => r.as_str().to_string(),
                },
                claims: opened.as_ref().ok().map(|c| claims_info(rule, policy, c, &timeouts, now_ms)),
                error: opened.err().map(|e| e.to_string()),
            }
        })
        .collect();
    let (decision, rejection, issues_token) = match choice {
        Choice::Endpoint(d) => (d.flag.as_str(), d.rejection.map(|r| r.as_str()), d.issue.is_some()),
        _ => ("-", None, false),
    };
    SessionInfo {
        source,
        overrides,
        carrier,
        name,
        cookie_path,
        lifetime,
        absolute_timeout: policy.absolute_timeout.map(format_duration),
        idle_timeout: policy.idle_timeout.map(format_duration),
        shared_with,
        tokens,
        decision,
        rejection,
        issues_token,
    }
}

fn claims_info(rule: &Rule, policy: &SessionPolicy, c: &Claims, t: &SessionTimeouts, now_ms: u64) -> ClaimsInfo {
    let secs = |ms: u64| ms / 1000;
    let signed_secs = |at_ms: u64| (at_ms as i64 - now_ms as i64) / 1000;
    let last = c.created_ms.max(c.refreshed_ms);
    let backend = rule.backends.iter().find_map(|wb| match &wb.target {
        BackendTarget::Service(b) if b.id_hash == c.backend => Some(b.id.to_string()),
        _ => None,
    });
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ClaimsInfo {
        scope_matches: c.scope == policy.scope,
        backend,
        endpoint: c.endpoint.to_string(),
        age_secs: secs(now_ms.saturating_sub(c.created_ms)),
        idle_secs: secs(now_ms.saturating_sub(last)),
        absolute_expires_in_secs: t
            .absolute
            .filter(|d| !d.is_zero())
            .map(|d| signed_secs(c.created_ms.saturating_add(ms(d)))),
        idle_expires_in_secs: t
            .idle
            .filter(|d| !d.is_zero())
            .map(|d| signed_secs(last.saturating_add(ms(d)).saturating_add(ms(d) / 2))),
        refresh_due: freshness(c, now_ms, t) == Freshness::Refresh,
    }
}

fn endpoint_info(shared: &Shared, rule: &Rule, d: &Decision, session: Option<&SessionInfo>) -> EndpointInfo {
    let target = &d.target;
    let backend = &target.backend;
    let configured =
        backend.endpoints.iter().find(|e| e.addr == target.addr && e.identity_hash == target.identity_hash);
    let state = match configured.map(|e| e.state) {
        Some(EndpointState::Ready) => "ready",
        Some(EndpointState::Draining) => "draining",
        None => "departed",
    };
    let weighted = || {
        let wb = &rule.backends[target.backend_index];
        let share = if rule.backends.len() > 1 {
            format!(
                "backendRef {} ({}, weight {} of {})",
                target.backend_index, backend.id, wb.weight, rule.total_weight
            )
        } else {
            format!("the rule's only backendRef ({})", backend.id)
        };
        let peeked =
            rule.weighted(PickMode::Peek).and_then(|first| rule.backends.iter().position(|b| std::ptr::eq(b, first)));
        let fell_back = match peeked {
            Some(i) if i != target.backend_index => {
                format!(" (the weighted pick was backendRef {i}, which has no usable endpoint)")
            }
            _ => String::new(),
        };
        let ready = backend.endpoints.iter().filter(|e| e.state == EndpointState::Ready).count();
        format!("weighted pick: {share}{fell_back}; round robin among its {ready} ready endpoint(s)")
    };
    let why = match d.flag {
        SessionFlag::Resumed | SessionFlag::Refreshed => {
            let token = session.and_then(|s| s.tokens.iter().find(|t| t.verdict == "resumes")).map(|t| t.index);
            let mut why = format!("pinned by the session token{}", token.map(|i| format!(" #{i}")).unwrap_or_default());
            if d.flag == SessionFlag::Refreshed {
                why.push_str("; idle refresh due, so the token is re-issued");
            }
            if state == "draining" {
                why.push_str("; the endpoint is draining but keeps its existing sessions");
            }
            if state == "departed" {
                why.push_str("; the endpoint left the configuration but keeps its sessions during the drain grace");
            }
            why
        }
        SessionFlag::None => weighted(),
        flag => {
            let cause = match d.rejection {
                Some(r) => format!("no usable session ({r}); "),
                None => String::new(),
            };
            let what = if flag == SessionFlag::Repinned { "re-pinned" } else { "new session" };
            format!("{what}: {cause}{}", weighted())
        }
    };
    let skipped = backend
        .endpoints
        .iter()
        .filter_map(|e| {
            if e.state == EndpointState::Draining {
                Some(format!("{} draining (existing sessions only)", e.addr))
            } else if !shared.health.is_healthy(e.addr) {
                Some(format!("{} unhealthy (refused a connection recently)", e.addr))
            } else {
                None
            }
        })
        .collect();
    EndpointInfo {
        address: target.addr.to_string(),
        backend: backend.id.to_string(),
        state,
        healthy: shared.health.is_healthy(target.addr),
        why,
        skipped,
    }
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The human-readable form (`sessile explain` without `--json`).
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(out, "request:  {} {} (host {})", self.request.method, self.request.url, self.request.host);
        if let Some(l) = &self.listener {
            let _ = write!(out, "listener: {} {}", l.protocol, l.bind);
            if !l.listeners.is_empty() {
                let _ = write!(out, " (Gateway listener {})", l.listeners.join(", "));
            }
            let _ = writeln!(out);
            if let Some(c) = &l.certificate {
                let _ = writeln!(out, "          certificate {c}");
            }
        }
        if let Some(r) = &self.route {
            let rule_name = r.rule_name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
            let _ = writeln!(out, "route:    {} {}/{} rule {}{rule_name}", r.kind, r.namespace, r.name, r.rule);
            let _ = writeln!(out, "          hostname {}, match {}", r.hostname, r.match_text);
            let _ = writeln!(out, "          why: {}", r.precedence);
            if let Some(other) = &r.runner_up {
                let _ = writeln!(out, "          next best: {other} ({} matches in all)", r.candidates);
            }
            if !r.filters.is_empty() {
                let _ = writeln!(out, "          filters: {}", r.filters.join(", "));
            }
        }
        if let Some(s) = &self.session {
            let _ = writeln!(out, "session:  {} {:?} from {}", s.carrier, s.name, s.source);
            for o in &s.overrides {
                let _ = writeln!(out, "          overrides {o}");
            }
            let mut limits = Vec::new();
            if let Some(l) = s.lifetime {
                limits.push(format!("lifetime {l}"));
            }
            if let Some(p) = &s.cookie_path {
                limits.push(format!("path {p}"));
            }
            limits.push(format!("absolute timeout {}", s.absolute_timeout.as_deref().unwrap_or("none")));
            limits.push(format!("idle timeout {}", s.idle_timeout.as_deref().unwrap_or("none")));
            let _ = writeln!(out, "          {}", limits.join(", "));
            if !s.shared_with.is_empty() {
                let _ = writeln!(out, "          shared with {}", s.shared_with.join(", "));
            }
            if s.tokens.is_empty() {
                let _ = writeln!(out, "          no token in the request");
            }
            for t in &s.tokens {
                let _ = write!(out, "          token #{} ({} chars): {}", t.index, t.length, t.verdict);
                if let Some(e) = &t.error {
                    let _ = write!(out, " ({e})");
                }
                if let Some(c) = &t.claims {
                    let _ = write!(
                        out,
                        "; endpoint {} of {}, age {}s, idle {}s",
                        c.endpoint,
                        c.backend.as_deref().unwrap_or("a backend this rule does not have"),
                        c.age_secs,
                        c.idle_secs
                    );
                    if let Some(x) = c.absolute_expires_in_secs {
                        let _ = write!(out, ", absolute expiry in {x}s");
                    }
                    if let Some(x) = c.idle_expires_in_secs {
                        let _ = write!(out, ", idles out in {x}s");
                    }
                    if !c.scope_matches {
                        let _ = write!(out, ", scope of another rule or session");
                    }
                }
                let _ = writeln!(out);
            }
            let _ = write!(out, "          decision: {}", s.decision);
            if let Some(r) = s.rejection {
                let _ = write!(out, " (rejected: {r})");
            }
            if s.issues_token {
                let _ = write!(out, "; a new token is issued");
            }
            let _ = writeln!(out);
        }
        if let Some(e) = &self.endpoint {
            let health = if e.healthy { "healthy" } else { "unhealthy" };
            let _ = writeln!(out, "endpoint: {} of {} ({}, {health})", e.address, e.backend, e.state);
            let _ = writeln!(out, "          why: {}", e.why);
            for s in &e.skipped {
                let _ = writeln!(out, "          skipped for new sessions: {s}");
            }
        }
        let _ = writeln!(out, "outcome:  {}", self.outcome);
        for n in &self.notes {
            let _ = writeln!(out, "note:     {n}");
        }
        f.write_str(&out)
    }
}
