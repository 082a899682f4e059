//! The immutable runtime snapshot the data plane reads: ports, routes, rules, backends, endpoints.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::hostname::HostPattern;
use crate::matching::RouteTable;

/// Everything the data plane needs, swapped atomically on reload.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// Increases with every applied configuration.
    pub version: u64,
    /// One entry per socket address to listen on.
    pub ports: Vec<PortConfig>,
    /// How long an endpoint that vanished from configuration keeps its sessions while it still serves.
    #[serde(with = "serde_duration")]
    pub drain_grace: Duration,
}

impl Snapshot {
    /// The port configuration bound at `addr`.
    pub fn port(&self, addr: SocketAddr) -> Option<&PortConfig> {
        self.ports.iter().find(|p| p.bind == addr)
    }

    /// Every backend referenced by any rule (deduplicated by id), for health and draining bookkeeping.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        // Rules share their `Backend`s: deduplicate by pointer first (15,000 backendRefs over 500
        // Services cost 15,000 string-keyed map inserts), then by id in id order, the first seen winning.
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<Arc<Backend>> = Vec::new();
        for port in &self.ports {
            for rule in port.routes.rules() {
                for b in &rule.backends {
                    if let BackendTarget::Service(backend) = &b.target
                        && seen.insert(Arc::as_ptr(backend))
                    {
                        out.push(backend.clone());
                    }
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|later, first| later.id == first.id);
        out
    }
}

/// A bound address and the routes served on it.
#[derive(Debug, Serialize)]
pub struct PortConfig {
    pub bind: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Certificates by SNI hostname (HTTPS only).
    pub certificates: Vec<Arc<Certificate>>,
    pub routes: RouteTable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ListenerProtocol {
    Http,
    Https,
}

/// A certificate chain and key in PEM, served for `hostname`.
#[derive(Debug, Serialize)]
pub struct Certificate {
    pub hostname: HostPattern,
    /// `namespace/name` of the Secret, for logs.
    pub secret: String,
    #[serde(skip)]
    pub cert_pem: Vec<u8>,
    #[serde(skip)]
    pub key_pem: Vec<u8>,
}

/// Identifies a route for logs, metrics and status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RouteRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for RouteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One rule of a route: what to do with a matched request.
#[derive(Debug, Serialize)]
pub struct Rule {
    pub route: Arc<RouteRef>,
    pub index: usize,
    /// The rule's `name` when set, for logs.
    pub name: Option<String>,
    /// `namespace/name/rule-index`, the label used in metrics and logs (shared, never copied per request).
    pub label: Arc<str>,
    pub filters: Vec<Filter>,
    pub backends: Vec<WeightedBackend>,
    /// Sum of all weights (0 when every weight is 0 or there are no backends).
    pub total_weight: u64,
    pub timeouts: Timeouts,
    pub session: Option<Arc<SessionPolicy>>,
    /// Counts weighted picks (see `next_weighted`).
    #[serde(skip)]
    pub picks: AtomicU64,
    /// The data plane's per-rule state (its metric handles).
    #[serde(skip)]
    pub attachment: Attachment,
}

/// State the data plane attaches to a rule or backend on first use (its metric handles): found
/// without a map lookup per request, and dropped with the snapshot that owns the object.
#[derive(Default)]
pub struct Attachment(OnceLock<Box<dyn Any + Send + Sync>>);

impl Attachment {
    /// The attached `T`, made by `init` on first use; `None` if a value of another type is attached.
    pub fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.0.get_or_init(|| Box::new(init())).downcast_ref()
    }
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() { "Attachment(set)" } else { "Attachment(empty)" })
    }
}

/// Whether a pick moves the weighted and round-robin rotations (live traffic) or only looks
/// (`explain`, which must not disturb the traffic it describes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickMode {
    Advance,
    Peek,
}

impl Rule {
    /// Rule number `index` of `route`; its metrics label and total weight follow from the rest.
    pub fn new(
        route: Arc<RouteRef>,
        index: usize,
        name: Option<String>,
        filters: Vec<Filter>,
        backends: Vec<WeightedBackend>,
        timeouts: Timeouts,
        session: Option<Arc<SessionPolicy>>,
    ) -> Rule {
        Rule {
            label: format!("{}/{}/{index}", route.namespace, route.name).into(),
            total_weight: backends.last().map_or(0, |b| b.cumulative),
            route,
            index,
            name,
            filters,
            backends,
            timeouts,
            session,
            picks: AtomicU64::new(0),
            attachment: Attachment::default(),
        }
    }

    /// The next backendRef by weight. Picks follow a golden-ratio (Weyl) sequence over the
    /// cumulative weights: deterministic, and any run of N picks is within a few picks of the
    /// exact split (low discrepancy), unlike independent random rolls.
    pub fn next_weighted(&self) -> Option<&WeightedBackend> {
        self.weighted(PickMode::Advance)
    }

    /// The next backendRef by weight; [`PickMode::Peek`] tells which one without taking it.
    pub fn weighted(&self, mode: PickMode) -> Option<&WeightedBackend> {
        let n = match mode {
            PickMode::Advance => self.picks.fetch_add(1, Ordering::Relaxed),
            PickMode::Peek => self.picks.load(Ordering::Relaxed),
        };
        let fraction = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.pick_weighted(((u128::from(fraction) * u128::from(self.total_weight)) >> 64) as u64)
    }

    /// Picks a backendRef by weight from `roll` in `0..total_weight`. `None` when all weights are 0.
    pub fn pick_weighted(&self, roll: u64) -> Option<&WeightedBackend> {
        if self.total_weight == 0 {
            return None;
        }
        let idx = self.backends.partition_point(|b| b.cumulative <= roll);
        self.backends.get(idx)
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Timeouts {
    /// Whole request, client side (`timeouts.request`); `None` means no limit.
    #[serde(with = "serde_opt_duration")]
    pub request: Option<Duration>,
    /// Each upstream attempt (`timeouts.backendRequest`).
    #[serde(with = "serde_opt_duration")]
    pub backend_request: Option<Duration>,
}

/// A backendRef with its weight and filters.
#[derive(Debug, Serialize)]
pub struct WeightedBackend {
    pub weight: u32,
    /// Running sum of weights up to and including this one.
    pub cumulative: u64,
    pub target: BackendTarget,
    pub filters: Vec<Filter>,
}

#[derive(Debug, Serialize)]
pub enum BackendTarget {
    Service(Arc<Backend>),
    /// An unresolvable backendRef: its share of traffic gets a 500.
    Invalid {
        reason: String,
    },
}

/// A Service port and its endpoints.
#[derive(Debug, Serialize)]
pub struct Backend {
    /// `namespace/service:port` (shared, never copied per request).
    pub id: Arc<str>,
    /// Keyed hash of `id`, carried in session tokens.
    pub id_hash: u64,
    pub protocol: UpstreamProtocol,
    pub endpoints: Vec<Endpoint>,
    #[serde(skip)]
    pub next: AtomicUsize,
    /// The data plane's per-backend state (per-endpoint metric handles).
    #[serde(skip)]
    pub attachment: Attachment,
}

impl Backend {
    pub fn new(id: Arc<str>, id_hash: u64, protocol: UpstreamProtocol, endpoints: Vec<Endpoint>) -> Backend {
        Backend { id, id_hash, protocol, endpoints, next: AtomicUsize::new(0), attachment: Attachment::default() }
    }

    /// Round-robin start index for the next pick.
    pub fn next_start(&self) -> usize {
        self.start(PickMode::Advance)
    }

    /// Round-robin start index; [`PickMode::Peek`] leaves the rotation where it is.
    pub fn start(&self, mode: PickMode) -> usize {
        match mode {
            PickMode::Advance => self.next.fetch_add(1, Ordering::Relaxed),
            PickMode::Peek => self.next.load(Ordering::Relaxed),
        }
    }

    pub fn find_endpoint(&self, addr: SocketAddr, identity_hash: u64) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.addr == addr && e.identity_hash == identity_hash)
    }

    /// The position of `e` in `endpoints` when it is one of them (from its address in memory: no scan).
    pub fn endpoint_index(&self, e: &Endpoint) -> Option<usize> {
        let size = std::mem::size_of::<Endpoint>();
        let offset = (std::ptr::from_ref(e) as usize).wrapping_sub(self.endpoints.as_ptr() as usize);
        (offset.is_multiple_of(size) && offset / size < self.endpoints.len()).then_some(offset / size)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 with prior knowledge (`appProtocol: kubernetes.io/h2c`).
    H2c,
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `targetRef` uid, else name, else empty: distinguishes a new pod reusing an old address.
    pub identity: String,
    pub identity_hash: u64,
    pub state: EndpointState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EndpointState {
    /// Ready: takes new and existing sessions.
    Ready,
    /// Serving but terminating: existing sessions only.
    Draining,
}

/// A request or response filter.
#[derive(Debug, Clone, Serialize)]
pub enum Filter {
    RequestHeaders(HeaderMods),
    ResponseHeaders(HeaderMods),
    Redirect(Redirect),
    UrlRewrite(UrlRewrite),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderMods {
    #[serde(serialize_with = "ser_header_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_header_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_header_names")]
    pub remove: Vec<HeaderName>,
}

impl HeaderMods {
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    pub status: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, Serialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    ReplacePrefixMatch(String),
}

impl PathModifier {
    /// Applies to `path` given the prefix the request matched (for `ReplacePrefixMatch`).
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            PathModifier::ReplaceFullPath(p) => p.clone(),
            PathModifier::ReplacePrefixMatch(replacement) => {
                let prefix = matched_prefix.unwrap_or("/").trim_end_matches('/');
                let rest = path.get(prefix.len()..).unwrap_or("");
                let replacement = replacement.trim_end_matches('/');
                let joined = match (replacement.is_empty(), rest.is_empty()) {
                    (_, true) if replacement.is_empty() => "/".to_string(),
                    (_, true) => replacement.to_string(),
                    (true, false) => rest.to_string(),
                    (false, false) => format!("{replacement}{rest}"),
                };
                if joined.starts_with('/') { joined } else { format!("/{joined}") }
            }
        }
    }
}

/// The effective session persistence of a rule, after defaults, validation and scoping.
#[derive(Debug, Serialize)]
pub struct SessionPolicy {
    /// Keyed hash of the scope; a token is honoured only by rules with the same scope.
    pub scope: u64,
    /// Where this config came from and what it covers, for status, logs and `explain`.
    pub source: SessionSource,
    pub carrier: SessionCarrier,
    #[serde(with = "serde_opt_duration")]
    pub absolute_timeout: Option<Duration>,
    #[serde(with = "serde_opt_duration")]
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SessionSource {
    /// Inline on a route rule: the scope is that rule.
    RouteRule { route: RouteRef, rule: usize },
    /// From a BackendLBPolicy / XBackendTrafficPolicy.
    Policy { kind: String, namespace: String, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SessionCarrier {
    Cookie {
        name: String,
        path: String,
        /// `Permanent` lifetime: `Max-Age` is the time left of the absolute timeout.
        permanent: bool,
    },
    Header {
        #[serde(serialize_with = "ser_header_name")]
        name: HeaderName,
    },
}

/// The HTTP methods a match may name.
pub fn parse_method(text: &str) -> Option<Method> {
    Method::from_bytes(text.as_bytes()).ok()
}

fn ser_header_pairs<S: serde::Serializer>(pairs: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(pairs.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("<binary>"))))
}

fn ser_header_names<S: serde::Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(|n| n.as_str()))
}

fn ser_header_name<S: serde::Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

mod serde_duration {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::duration::format(*d))
    }
}

mod serde_opt_duration {
    pub fn serialize<S: serde::Serializer>(d: &Option<std::time::Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&crate::duration::format(*d)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn endpoint_index_finds_only_the_backends_own_endpoints() {
        let endpoint = |port: u16| Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            identity: format!("pod-{port}"),
            identity_hash: u64::from(port),
            state: EndpointState::Ready,
        };
        let backend = Backend::new("ns/a:80".into(), 1, UpstreamProtocol::Http1, (1..=5).map(endpoint).collect());
        let other = Backend::new("ns/b:80".into(), 2, UpstreamProtocol::Http1, vec![endpoint(1)]);
        for (i, e) in backend.endpoints.iter().enumerate() {
            assert_eq!(backend.endpoint_index(e), Some(i));
        }
        let found = backend.find_endpoint(SocketAddr::from(([127, 0, 0, 1], 4)), 4).unwrap();
        assert_eq!(backend.endpoint_index(found), Some(3));
        assert_eq!(backend.endpoint_index(&other.endpoints[0]), None);
        assert_eq!(backend.endpoint_index(&endpoint(1)), None);
    }
    use super::*;

    #[test]
    fn weighted_picks_follow_the_weights_closely() {
        let backend = |weight: u32, cumulative: u64| WeightedBackend {
            weight,
            cumulative,
            target: BackendTarget::Invalid { reason: String::new() },
            filters: vec![],
        };
        let route = Arc::new(RouteRef { kind: "HTTPRoute".into(), namespace: "ns".into(), name: "r".into() });
        let backends = vec![backend(70, 70), backend(0, 70), backend(30, 100)];
        let rule = Rule::new(route, 0, None, vec![], backends, Timeouts::default(), None);
        assert_eq!((rule.total_weight, &*rule.label), (100, "ns/r/0"));
        for window in [100, 500, 1000] {
            let mut counts = [0usize; 3];
            for _ in 0..window {
                let b = rule.next_weighted().unwrap();
                counts[rule.backends.iter().position(|x| std::ptr::eq(x, b)).unwrap()] += 1;
            }
            assert_eq!(counts[1], 0, "weight 0 never picked");
            let share = counts[0] as f64 / window as f64;
            assert!((share - 0.7).abs() < 0.02, "{counts:?} over {window}");
        }
    }

    #[test]
    fn replace_prefix_match() {
        let m = PathModifier::ReplacePrefixMatch("/new".into());
        assert_eq!(m.apply("/old/page", Some("/old")), "/new/page");
        assert_eq!(m.apply("/old", Some("/old")), "/new");
        assert_eq!(m.apply("/old/", Some("/old/")), "/new/");
        let root = PathModifier::ReplacePrefixMatch("/".into());
        assert_eq!(root.apply("/old/page", Some("/old")), "/page");
        assert_eq!(root.apply("/old", Some("/old")), "/");
        let full = PathModifier::ReplaceFullPath("/x".into());
        assert_eq!(full.apply("/anything", None), "/x");
    }
}
