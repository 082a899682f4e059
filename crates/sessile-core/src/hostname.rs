//! Hostname patterns (`foo.example.com`, `*.example.com`) and their intersection rules.

use std::borrow::Cow;

use serde::Serialize;

/// A hostname a listener or route accepts. Stored lowercase.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum HostPattern {
    /// Matches every host.
    Any,
    /// `foo.example.com`.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`; matches one or more labels.
    Wildcard(String),
}

impl HostPattern {
    /// Parses `*.example.com` or `example.com`; `None` means any host.
    pub fn parse(text: Option<&str>) -> HostPattern {
        match text {
            None | Some("") => HostPattern::Any,
            Some(t) => {
                let t = t.to_ascii_lowercase();
                match t.strip_prefix('*') {
                    Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
                    None => HostPattern::Exact(t),
                }
            }
        }
    }

    /// Whether a request host (lowercase, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }

    /// Specificity for precedence: exact beats wildcard, longer wildcard beats shorter, any is last.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(h) => (2, h.len()),
            HostPattern::Wildcard(s) => (1, s.len()),
            HostPattern::Any => (0, 0),
        }
    }

    /// The intersection of a listener hostname and a route hostname, per the Gateway API:
    /// the more specific of the two when one includes the other, `None` when disjoint.
    pub fn intersect(&self, other: &HostPattern) -> Option<HostPattern> {
        use HostPattern::*;
        match (self, other) {
            (Any, x) | (x, Any) => Some(x.clone()),
            (Exact(a), Exact(b)) => (a == b).then(|| self.clone()),
            (Exact(a), w @ Wildcard(_)) | (w @ Wildcard(_), Exact(a)) => w.matches(a).then(|| Exact(a.clone())),
            (Wildcard(a), Wildcard(b)) => {
                if a.ends_with(b.as_str()) {
                    Some(self.clone())
                } else if b.ends_with(a.as_str()) {
                    Some(other.clone())
                } else {
                    None
                }
            }
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// Strips the port and lowercases a Host header / :authority value.
pub fn normalize_host(authority: &str) -> Cow<'_, str> {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.trim_end_matches('.');
    // Hosts usually arrive in lowercase: borrow them rather than copy.
    match host.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(host.to_ascii_lowercase()),
        false => Cow::Borrowed(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(Some(s))
    }

    #[test]
    fn wildcard_matches_one_or_more_labels() {
        assert!(p("*.example.com").matches("foo.example.com"));
        assert!(p("*.example.com").matches("a.b.example.com"));
        assert!(!p("*.example.com").matches("example.com"));
        assert!(!p("*.example.com").matches("fooexample.com"));
    }

    #[test]
    fn intersections() {
        assert_eq!(p("*.example.com").intersect(&p("foo.example.com")), Some(p("foo.example.com")));
        assert_eq!(p("*.example.com").intersect(&p("*.foo.example.com")), Some(p("*.foo.example.com")));
        assert_eq!(p("foo.example.com").intersect(&p("bar.example.com")), None);
        assert_eq!(HostPattern::Any.intersect(&p("a.com")), Some(p("a.com")));
        assert_eq!(p("*.example.com").intersect(&p("example.com")), None);
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Foo.Example.com:8080"), "foo.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
    }
}
