//! Route lookup cost with many routes: exact hosts, a wildcard, and path prefixes per host.

use std::sync::Arc;

use http::{HeaderMap, Method};
use sessile_core::hostname::HostPattern;
use sessile_core::matching::{MatchEntry, MatchSummary, PathMatch, RequestMatch, RequestView, RouteTable};
use sessile_core::{RouteRef, Rule, Timeouts};

fn main() {
    divan::main();
}

/// `routes` routes spread over 100 hostnames, each with a distinct path prefix.
fn table(routes: usize) -> RouteTable {
    let mut entries = Vec::new();
    for i in 0..routes {
        let route = Arc::new(RouteRef { kind: "HTTPRoute".into(), namespace: "ns".into(), name: format!("r{i}") });
        let rule = Arc::new(Rule::new(route, 0, None, vec![], vec![], Timeouts::default(), None));
        let m = RequestMatch {
            path: PathMatch::prefix(&format!("/api/v{}/svc{i}", i % 7)),
            method: None,
            headers: vec![],
            query: vec![],
        };
        let host = HostPattern::parse(Some(&format!("host{}.example.com", i % 100)));
        let summary = MatchSummary::new(&m, 0, format!("ns/r{i}"), 0, 0);
        entries.push((host, MatchEntry { summary, request_match: m, rule, listeners: vec![] }));
    }
    RouteTable::build(entries)
}

#[divan::bench(args = [1_000, 5_000])]
fn lookup_hit(bencher: divan::Bencher, routes: usize) {
    let t = table(routes);
    let headers = HeaderMap::new();
    let method = Method::GET;
    let last = routes - 1;
    let host = format!("host{}.example.com", last % 100);
    let path = format!("/api/v{}/svc{last}/items/42", last % 7);
    bencher.bench_local(|| {
        let view = RequestView { host: &host, method: &method, path: &path, query: None, headers: &headers };
        divan::black_box(t.lookup(divan::black_box(&view)).is_some())
    });
}

#[divan::bench(args = [1_000, 5_000])]
fn lookup_miss(bencher: divan::Bencher, routes: usize) {
    let t = table(routes);
    let headers = HeaderMap::new();
    let method = Method::GET;
    bencher.bench_local(|| {
        let view = RequestView {
            host: "host3.example.com",
            method: &method,
            path: "/nothing/here",
            query: None,
            headers: &headers,
        };
        divan::black_box(t.lookup(divan::black_box(&view)).is_some())
    });
}

/// Every route in turn (one lookup per iteration, cycling through all of them), so the samples
/// cover the whole distribution of lookup costs rather than one request: with 5,000 routes the
/// slowest sample bounds the p99 (target: under 2 us).
#[divan::bench(args = [5_000])]
fn lookup_every_route(bencher: divan::Bencher, routes: usize) {
    let t = table(routes);
    let headers = HeaderMap::new();
    let method = Method::GET;
    let requests: Vec<(String, String)> = (0..routes)
        .map(|i| (format!("host{}.example.com", i % 100), format!("/api/v{}/svc{i}/items/42", i % 7)))
        .collect();
    let mut next = 0;
    bencher.bench_local(|| {
        let (host, path) = &requests[next];
        next = (next + 1) % requests.len();
        let view = RequestView { host, method: &method, path, query: None, headers: &headers };
        divan::black_box(t.lookup(divan::black_box(&view)).is_some())
    });
}
