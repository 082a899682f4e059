//! Route matching: compiled HTTPRoute/GRPCRoute matches, ordered by Gateway API precedence.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use serde::Serialize;

use crate::hostname::HostPattern;
use crate::model::Rule;

#[derive(Debug, Clone, Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Element-wise prefix, stored without a trailing slash (except `/`).
    Prefix(String),
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

impl PathMatch {
    pub fn prefix(p: &str) -> PathMatch {
        let trimmed = p.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() })
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => {
                p == "/" || (path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatch::Regex(re) => re.is_match(path),
        }
    }

    /// The literal prefix (for `ReplacePrefixMatch`), if this is a prefix match.
    pub fn literal_prefix(&self) -> Option<&str> {
        match self {
            PathMatch::Prefix(p) => Some(p),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub enum StringMatch {
    Exact(String),
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(v) => v == value,
            StringMatch::Regex(re) => re.is_match(value),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "ser_header_name")]
    pub name: HeaderName,
    pub value: StringMatch,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryMatch {
    pub name: String,
    pub value: StringMatch,
}

/// One `matches[]` entry of a rule.
#[derive(Debug, Clone, Serialize)]
pub struct RequestMatch {
    pub path: PathMatch,
    #[serde(serialize_with = "ser_method")]
    pub method: Option<Method>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

impl RequestMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.path.matches(req.path) {
            return false;
        }
        if let Some(m) = &self.method
            && m != req.method
        {
            return false;
        }
        for h in &self.headers {
            // Multiple values of one header are matched as the first value, like most proxies.
            let Some(value) = req.headers.get(&h.name).and_then(|v| v.to_str().ok()) else { return false };
            if !h.value.matches(value) {
                return false;
            }
        }
        for q in &self.query {
            let Some(value) = query_value(req.query, &q.name) else { return false };
            if !q.value.matches(&value) {
                return false;
            }
        }
        true
    }
}

/// The first value of query parameter `name`, percent-decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (form encoding, as in query strings); invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What matching looks at in a request.
pub struct RequestView<'a> {
    /// Lowercase host without port.
    pub host: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The precedence key of a match (Gateway API HTTPRoute rules): the smaller key wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchSummary {
    /// 2 Exact, 1 RegularExpression, 0 PathPrefix.
    pub path_kind: u8,
    /// Path length; for GRPCRoute, the characters of the matched service.
    pub path_len: usize,
    /// GRPCRoute: characters of the matched method (0 for HTTPRoute).
    pub method_chars: usize,
    pub has_method: bool,
    pub headers: usize,
    pub query: usize,
    /// Route `creationTimestamp` as seconds since the epoch (older wins).
    pub route_created: i64,
    /// `namespace/name` (alphabetical wins).
    pub route_key: String,
    pub rule_index: usize,
    pub match_index: usize,
}

impl MatchSummary {
    pub fn new(m: &RequestMatch, route_created: i64, route_key: String, rule_index: usize, match_index: usize) -> Self {
        let (path_kind, path_len) = match &m.path {
            PathMatch::Exact(p) => (2, p.len()),
            PathMatch::Regex(r) => (1, r.as_str().len()),
            PathMatch::Prefix(p) => (0, p.len()),
        };
        MatchSummary {
            path_kind,
            path_len,
            method_chars: 0,
            has_method: m.method.is_some(),
            headers: m.headers.len(),
            query: m.query.len(),
            route_created,
            route_key,
            rule_index,
            match_index,
        }
    }
}

impl MatchSummary {
    /// GRPCRoute precedence: most characters in the matched service, then in the method
    /// (the path form of a gRPC match says nothing about which of the two it names).
    pub fn for_grpc(mut self, service_chars: usize, method_chars: usize) -> Self {
        self.path_kind = 0;
        self.path_len = service_chars;
        self.method_chars = method_chars;
        self
    }
}

impl Ord for MatchSummary {
    fn cmp(&self, other: &Self) -> Ordering {
        // More specific first (reverse), then older, then alphabetical, then declaration order.
        other
            .path_kind
            .cmp(&self.path_kind)
            .then(other.path_len.cmp(&self.path_len))
            .then(other.method_chars.cmp(&self.method_chars))
            .then(other.has_method.cmp(&self.has_method))
            .then(other.headers.cmp(&self.headers))
            .then(other.query.cmp(&self.query))
            .then(self.route_created.cmp(&other.route_created))
            .then(self.route_key.cmp(&other.route_key))
            .then(self.rule_index.cmp(&other.rule_index))
            .then(self.match_index.cmp(&other.match_index))
    }
}

impl MatchSummary {
    /// Why `self` takes precedence over `other` (the first field of the ordering that differs),
    /// in words, for `explain`. `None` when they are the same match.
    pub fn precedence_reason(&self, other: &MatchSummary) -> Option<String> {
        const PATH_KIND: [&str; 3] = ["PathPrefix", "RegularExpression", "Exact"];
        let kind = |k: u8| PATH_KIND.get(usize::from(k)).copied().unwrap_or("?");
        let (a, b) = (self, other);
        Some(if a.path_kind != b.path_kind {
            format!("{} path match beats {} (path type)", kind(a.path_kind), kind(b.path_kind))
        } else if a.path_len != b.path_len {
            format!("longer path/service match: {} > {} characters", a.path_len, b.path_len)
        } else if a.method_chars != b.method_chars {
            format!("longer gRPC method match: {} > {} characters", a.method_chars, b.method_chars)
        } else if a.has_method != b.has_method {
            "has a method match".to_string()
        } else if a.headers != b.headers {
            format!("more header matches: {} > {}", a.headers, b.headers)
        } else if a.query != b.query {
            format!("more query parameter matches: {} > {}", a.query, b.query)
        } else if a.route_created != b.route_created {
            format!("older route (creationTimestamp {} < {})", a.route_created, b.route_created)
        } else if a.route_key != b.route_key {
            format!("same age; {} sorts before {} alphabetically", a.route_key, b.route_key)
        } else if a.rule_index != b.rule_index {
            format!("same route; rule {} comes before rule {}", a.rule_index, b.rule_index)
        } else if a.match_index != b.match_index {
            format!("same rule; match {} comes before match {}", a.match_index, b.match_index)
        } else {
            return None;
        })
    }
}

impl PartialOrd for MatchSummary {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A compiled match bound to the rule it leads to.
#[derive(Debug, Serialize)]
pub struct MatchEntry {
    pub summary: MatchSummary,
    pub request_match: RequestMatch,
    #[serde(serialize_with = "ser_rule_label")]
    pub rule: Arc<Rule>,
    /// Gateway listener names (sectionName) the route attached through, for logs and 421 checks.
    pub listeners: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct HostRoutes {
    pattern: Option<HostPattern>,
    entries: Vec<MatchEntry>,
    /// `entries[i]`'s path in 16 bytes, scanned before touching the (large, scattered) entry.
    #[serde(skip)]
    keys: Vec<PathKey>,
}

impl HostRoutes {
    /// The first entry that matches, in precedence order.
    fn first_match(&self, req: &RequestView<'_>) -> Option<&MatchEntry> {
        let path = req.path.as_bytes();
        if self.keys.len() != self.entries.len() {
            return self.entries.iter().find(|e| e.request_match.matches(req));
        }
        self.keys
            .iter()
            .zip(&self.entries)
            .find(|(k, e)| k.may_match(path) && e.request_match.matches(req))
            .map(|(_, e)| e)
    }
}

/// A necessary condition for an entry's path match, compact enough that a lookup scans a host's
/// keys sequentially instead of loading every `MatchEntry` and its path string from scattered
/// memory (divan, 5,000 routes visited in turn: the scan was cache misses).
#[derive(Debug, Clone, Copy)]
struct PathKey {
    kind: PathKeyKind,
    len: usize,
    /// The last (up to) 8 bytes of the exact path or prefix: they tell routes apart.
    tail: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKeyKind {
    /// Regex, or the prefix `/`: every path may match.
    Any,
    Exact,
    Prefix,
}

impl PathKey {
    fn new(path: &PathMatch) -> PathKey {
        let (kind, p) = match path {
            PathMatch::Exact(p) => (PathKeyKind::Exact, p.as_bytes()),
            PathMatch::Prefix(p) if p != "/" => (PathKeyKind::Prefix, p.as_bytes()),
            _ => (PathKeyKind::Any, &b""[..]),
        };
        PathKey { kind, len: p.len(), tail: tail8(p) }
    }

    /// False only when `PathMatch::matches` is false for `path`.
    fn may_match(&self, path: &[u8]) -> bool {
        match self.kind {
            PathKeyKind::Any => true,
            PathKeyKind::Exact => path.len() == self.len && tail8(path) == self.tail,
            PathKeyKind::Prefix => {
                path.len() >= self.len
                    && tail8(&path[..self.len]) == self.tail
                    && matches!(path.get(self.len), None | Some(b'/'))
            }
        }
    }
}

fn tail8(b: &[u8]) -> u64 {
    let n = b.len().min(8);
    let mut t = [0u8; 8];
    t[..n].copy_from_slice(&b[b.len() - n..]);
    u64::from_le_bytes(t)
}

/// All routes of one port, indexed by hostname and sorted by precedence.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, HostRoutes>,
    /// Wildcards, longest suffix first.
    wildcard: Vec<HostRoutes>,
    any: HostRoutes,
}

impl RouteTable {
    /// Builds the table from `(effective hostname, entry)` pairs.
    pub fn build(entries: Vec<(HostPattern, MatchEntry)>) -> RouteTable {
        let mut table = RouteTable::default();
        for (host, entry) in entries {
            match &host {
                HostPattern::Exact(h) => table.exact.entry(h.clone()).or_default().entries.push(entry),
                HostPattern::Wildcard(_) => match table.wildcard.iter_mut().find(|w| w.pattern.as_ref() == Some(&host))
                {
                    Some(w) => w.entries.push(entry),
                    None => table.wildcard.push(HostRoutes {
                        pattern: Some(host.clone()),
                        entries: vec![entry],
                        keys: Vec::new(),
                    }),
                },
                HostPattern::Any => table.any.entries.push(entry),
            }
        }
        for (h, routes) in table.exact.iter_mut() {
            routes.pattern = Some(HostPattern::Exact(h.clone()));
        }
        table.wildcard.sort_by_key(|w| std::cmp::Reverse(w.pattern.as_ref().map_or(0, |p| p.specificity().1)));
        for routes in table.exact.values_mut().chain(table.wildcard.iter_mut()).chain(std::iter::once(&mut table.any)) {
            routes.entries.sort_by(|a, b| a.summary.cmp(&b.summary));
            routes.keys = routes.entries.iter().map(|e| PathKey::new(&e.request_match.path)).collect();
        }
        table
    }

    /// The winning match for a request: most specific hostname first, then match precedence.
    pub fn lookup(&self, req: &RequestView<'_>) -> Option<&MatchEntry> {
        self.host_groups(req.host).find_map(|routes| routes.first_match(req))
    }

    /// Every match that accepts the request, best first, with the hostname it was attached
    /// under (`None`: any hostname). The first is what [`RouteTable::lookup`] returns.
    pub fn candidates<'t>(
        &'t self,
        req: &'t RequestView<'_>,
    ) -> impl Iterator<Item = (Option<&'t HostPattern>, &'t MatchEntry)> + 't {
        self.host_groups(req.host).flat_map(move |routes| {
            routes.entries.iter().filter(|e| e.request_match.matches(req)).map(|e| (routes.pattern.as_ref(), e))
        })
    }

    /// The hostname groups that accept `host`, most specific first.
    fn host_groups<'t, 'h>(&'t self, host: &'h str) -> impl Iterator<Item = &'t HostRoutes> + use<'t, 'h> {
        let exact = self.exact.get(host).into_iter();
        let wild = self.wildcard.iter().filter(move |w| w.pattern.as_ref().is_some_and(|p| p.matches(host)));
        exact.chain(wild).chain(std::iter::once(&self.any))
    }

    /// Whether any route serves this host (for 404 vs. other answers and for `explain`).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.entries.is_empty()
    }

    /// Every distinct rule in the table.
    pub fn rules(&self) -> Vec<Arc<Rule>> {
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<Arc<Rule>> = Vec::new();
        for routes in self.exact.values().chain(self.wildcard.iter()).chain(std::iter::once(&self.any)) {
            for e in &routes.entries {
                if seen.insert(Arc::as_ptr(&e.rule)) {
                    out.push(e.rule.clone());
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.exact.values().chain(self.wildcard.iter()).map(|r| r.entries.len()).sum::<usize>() + self.any.entries.len()
    }
}

/// Match entries name their rule by label; every distinct rule (filters, backends, endpoints,
/// timeouts) is written once under `rules`, so `/config` shows the whole effective configuration.
impl Serialize for RouteTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut rules = self.rules();
        rules.sort_by(|a, b| a.label.cmp(&b.label));
        let mut st = s.serialize_struct("RouteTable", 4)?;
        st.serialize_field("exact", &self.exact)?;
        st.serialize_field("wildcard", &self.wildcard)?;
        st.serialize_field("any", &self.any)?;
        st.serialize_field("rules", &rules)?;
        st.end()
    }
}

fn ser_regex<S: serde::Serializer>(re: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(re.as_str())
}

fn ser_header_name<S: serde::Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

fn ser_method<S: serde::Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(m.as_str()),
        None => s.serialize_none(),
    }
}

fn ser_rule_label<S: serde::Serializer>(rule: &Arc<Rule>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rule.label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_keys_never_reject_a_match() {
        let paths =
            ["/", "/a", "/a/", "/ab", "/a/b", "/api/v1/svc12", "/api/v1/svc12/x", "/api/v1/svc123", "/x/api/v1/svc12"];
        let mut matches: Vec<PathMatch> = vec![PathMatch::Regex(Regex::new("^/a.*$").unwrap())];
        for p in paths {
            matches.push(PathMatch::Exact(p.to_string()));
            matches.push(PathMatch::prefix(p));
        }
        for m in &matches {
            let key = PathKey::new(m);
            for p in paths {
                if m.matches(p) {
                    assert!(key.may_match(p.as_bytes()), "{m:?} matches {p} but its key rejects it");
                }
            }
        }
        assert!(!PathKey::new(&PathMatch::prefix("/api/v1/svc12")).may_match(b"/api/v1/svc123"));
        assert!(!PathKey::new(&PathMatch::Exact("/api/v1/svc12".into())).may_match(b"/api/v1/svc13"));
    }

    #[test]
    fn prefix_is_element_wise() {
        let p = PathMatch::prefix("/foo");
        assert!(p.matches("/foo"));
        assert!(p.matches("/foo/"));
        assert!(p.matches("/foo/bar"));
        assert!(!p.matches("/foobar"));
        let slash = PathMatch::prefix("/foo/");
        assert!(slash.matches("/foo"));
        assert!(slash.matches("/foo/bar"));
        assert!(!slash.matches("/foobar"));
        assert!(PathMatch::prefix("/").matches("/anything"));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query_value(Some("a=1&b=x%20y"), "b").as_deref(), Some("x y"));
        assert_eq!(query_value(Some("a=1&a=2"), "a").as_deref(), Some("1"));
        assert_eq!(query_value(Some("flag"), "flag").as_deref(), Some(""));
        assert_eq!(query_value(Some("bad=%zz%"), "bad").as_deref(), Some("%zz%"));
        assert_eq!(query_value(None, "a"), None);
    }

    fn summary(path: PathMatch, method: bool, headers: usize, created: i64, key: &str, rule: usize) -> MatchSummary {
        let m = RequestMatch {
            path,
            method: method.then_some(Method::GET),
            headers: (0..headers)
                .map(|i| HeaderMatch {
                    name: HeaderName::from_bytes(format!("h{i}").as_bytes()).unwrap(),
                    value: StringMatch::Exact("v".into()),
                })
                .collect(),
            query: vec![],
        };
        MatchSummary::new(&m, created, key.into(), rule, 0)
    }

    #[test]
    fn precedence_reasons_name_the_deciding_field() {
        let exact = summary(PathMatch::Exact("/a".into()), false, 0, 10, "ns/z", 0);
        let prefix = summary(PathMatch::prefix("/a"), false, 0, 10, "ns/z", 0);
        let longer = summary(PathMatch::prefix("/a/b"), false, 0, 10, "ns/z", 0);
        let headers = summary(PathMatch::prefix("/a"), false, 2, 10, "ns/z", 0);
        let older = summary(PathMatch::prefix("/a"), false, 0, 5, "ns/z", 0);
        let alpha = summary(PathMatch::prefix("/a"), false, 0, 10, "ns/a", 0);
        let reason = |a: &MatchSummary, b: &MatchSummary| a.precedence_reason(b).unwrap();
        assert_eq!(reason(&exact, &prefix), "Exact path match beats PathPrefix (path type)");
        assert_eq!(reason(&longer, &prefix), "longer path/service match: 4 > 2 characters");
        assert_eq!(reason(&headers, &prefix), "more header matches: 2 > 0");
        assert_eq!(reason(&older, &prefix), "older route (creationTimestamp 5 < 10)");
        assert_eq!(reason(&alpha, &prefix), "same age; ns/a sorts before ns/z alphabetically");
        assert_eq!(prefix.precedence_reason(&prefix.clone()), None);
        // The reason always agrees with the ordering.
        for (a, b) in [(&exact, &prefix), (&longer, &prefix), (&headers, &prefix), (&older, &prefix)] {
            assert!(a < b);
        }
    }

    #[test]
    fn precedence_order() {
        let exact = summary(PathMatch::Exact("/a".into()), false, 0, 10, "ns/z", 0);
        let long_prefix = summary(PathMatch::prefix("/a/b"), false, 0, 10, "ns/z", 0);
        let short_prefix = summary(PathMatch::prefix("/a"), false, 0, 10, "ns/z", 0);
        let with_method = summary(PathMatch::prefix("/a"), true, 0, 10, "ns/z", 0);
        let with_headers = summary(PathMatch::prefix("/a"), true, 2, 10, "ns/z", 0);
        let older = summary(PathMatch::prefix("/a"), false, 0, 5, "ns/z", 0);
        let alpha = summary(PathMatch::prefix("/a"), false, 0, 10, "ns/a", 0);
        assert!(exact < long_prefix);
        assert!(long_prefix < short_prefix);
        assert!(with_headers < with_method);
        assert!(with_method < short_prefix);
        assert!(older < short_prefix);
        assert!(alpha < short_prefix);
        assert!(
            summary(PathMatch::prefix("/a"), false, 0, 10, "ns/z", 0)
                < summary(PathMatch::prefix("/a"), false, 0, 10, "ns/z", 1)
        );
    }
}
