//! Route matching of arbitrary requests against a fixed configuration.
//!
//! Input: `\n`-separated lines: authority, method, path, query (empty line = none), then
//! `name: value` header lines. Invalid methods fall back to GET; invalid header names or
//! values are skipped (hyper would have rejected them).
#![no_main]

use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use sessile_config::{Loader, TranslateOptions, translate};
use sessile_core::hostname::normalize_host;
use sessile_core::matching::RequestView;
use sessile_core::model::{Filter, Snapshot};

static CONFIG: &str = include_str!("route_config.yaml");
static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let loaded = Loader::new().load_str("route_config.yaml", CONFIG);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let t = translate(&loaded.resources, &TranslateOptions::default());
    assert_eq!(t.snapshot.ports.len(), 2, "{:#?}", t.statuses);
    assert!(t.snapshot.ports.iter().all(|p| p.routes.len() >= 2), "{:#?}", t.statuses);
    t.snapshot
});

fuzz_target!(|data: &[u8]| {
    let snapshot = &*SNAPSHOT;
    let mut lines = data.split(|&b| b == b'\n');
    let mut line = || lines.next().map(|l| String::from_utf8_lossy(l).into_owned());
    let authority = line().unwrap_or_default();
    let method = line().and_then(|m| Method::from_bytes(m.as_bytes()).ok()).unwrap_or(Method::GET);
    let path = line().unwrap_or_else(|| "/".into());
    let query = line().filter(|q| !q.is_empty());
    let mut headers = HeaderMap::new();
    for l in lines {
        let Some(colon) = l.iter().position(|&b| b == b':') else { continue };
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&l[..colon]), HeaderValue::from_bytes(l[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        headers.append(n, v);
    }

    let host = normalize_host(&authority);
    let view = RequestView { host: &host, method: &method, path: &path, query: query.as_deref(), headers: &headers };
    for port in &snapshot.ports {
        let Some(entry) = port.routes.lookup(&view) else { continue };
        assert!(entry.request_match.matches(&view));
        let prefix = entry.request_match.path.literal_prefix();
        for f in &entry.rule.filters {
            match f {
                Filter::UrlRewrite(rw) => {
                    if let Some(p) = &rw.path {
                        let out = p.apply(&path, prefix);
                        assert!(out.starts_with('/'), "rewritten path {out:?}");
                    }
                }
                Filter::Redirect(r) => {
                    if let Some(p) = &r.path {
                        let out = p.apply(&path, prefix);
                        assert!(out.starts_with('/'), "redirect path {out:?}");
                    }
                }
                Filter::RequestHeaders(m) | Filter::ResponseHeaders(m) => m.apply(&mut headers.clone()),
            }
        }
    }
});
