//! Control-plane cost end to end: load, translate and swap in 5,000 HTTPRoutes over 500 Services,
//! the way a reload does (`translate`, `carry_transition_times` against the previous statuses,
//! `Shared::apply`), and report each phase's time and the process's peak RSS; then the
//! distribution of route lookup times over every rule of the configuration in use.
//!
//! ```sh
//! cargo run --release -p sessile-proxy --example control_plane            # 5000 routes, 500 Services
//! cargo run --release -p sessile-proxy --example control_plane -- 5000 500 3
//! /usr/bin/time -v target/release/examples/control_plane                    # peak memory
//! ```

use std::time::Instant;

use sessile_config::{Loader, TranslateOptions, translate};
use sessile_proxy::state::{AccessLog, Shared};
use sessile_session::KeyRing;

/// A Gateway, `services` Services with one EndpointSlice each, and `routes` HTTPRoutes with
/// two rules each (one with cookie persistence): the same shape as the `translate` divan bench.
fn config(routes: usize, services: usize) -> String {
    let mut out = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  gatewayClassName: sessile\n  listeners: [{name: http, protocol: HTTP, port: 8080, allowedRoutes: {namespaces: {from: All}}}]\n",
    );
    for s in 0..services {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc{s}-1, labels: {{kubernetes.io/service-name: svc{s}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"10.0.{}.{}\"]}}, {{addresses: [\"10.1.{}.{}\"]}}]\n",
            s / 250, s % 250, s / 250, s % 250
        ));
    }
    for r in 0..routes {
        let s = r % services;
        out.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: route{r}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [host{}.example.com]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /api/r{r}}}}}]\n    backendRefs: [{{name: svc{s}, port: 80}}]\n    sessionPersistence: {{sessionName: s{r}}}\n  - matches: [{{path: {{type: Exact, value: /exact/r{r}}}, method: GET}}]\n    backendRefs: [{{name: svc{s}, port: 80, weight: 3}}, {{name: svc{}, port: 80}}]\n",
            r % 100,
            (s + 1) % services
        ));
    }
    out
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let routes = args.first().copied().unwrap_or(5000);
    let services = args.get(1).copied().unwrap_or(500);
    let rounds = args.get(2).copied().unwrap_or(3);
    let text = config(routes, services);
    let t = Instant::now();
    let loaded = Loader::new().load_str("bench.yaml", &text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let load_ms = ms(t);
    drop(text);
    let rss_loaded = peak_rss_kib();
    let dir = std::env::temp_dir().join(format!("sessile-control-plane-{}", std::process::id()));
    let keys = KeyRing::load_or_create(&dir).expect("key ring");
    let _ = std::fs::remove_dir_all(&dir);
    let shared = Shared::new(keys, AccessLog::Off);
    println!(
        "{routes} HTTPRoutes over {services} Services: load {load_ms:.1} ms, peak RSS after load {rss_loaded} KiB"
    );
    for round in 1..=rounds {
        let opts = TranslateOptions {
            naming_salt: shared.keys().naming_salt().to_vec(),
            version: round as u64,
            ..TranslateOptions::default()
        };
        let t0 = Instant::now();
        let tr = translate(&loaded.resources, &opts);
        let translate_ms = ms(t0);
        let t1 = Instant::now();
        let mut statuses = tr.statuses;
        sessile_config::status::carry_transition_times(&shared.statuses(), &mut statuses);
        let carry_ms = ms(t1);
        let t2 = Instant::now();
        shared.apply(tr.snapshot, statuses);
        let apply_ms = ms(t2);
        println!(
            "round {round}: translate {translate_ms:.1} ms + carry statuses {carry_ms:.1} ms + apply {apply_ms:.1} ms = {:.1} ms; peak RSS {} KiB",
            ms(t0),
            peak_rss_kib()
        );
        // Reloads are at least the watcher's 100 ms debounce apart; the previous configuration is
        // freed in the background meanwhile (back to back, that free would compete with translation).
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    lookup_percentiles(&shared.snapshot(), routes);
}

/// Times single lookups of a request for each rule (both rules of every route, in turn, so
/// entries are as cold as in mixed traffic), 20 passes, and prints percentiles. Each time
/// includes reading the clock twice (tens of ns): the figures are upper bounds.
fn lookup_percentiles(snapshot: &sessile_core::Snapshot, routes: usize) {
    use sessile_core::matching::RequestView;
    let port = &snapshot.ports[0];
    let headers = http::HeaderMap::new();
    let requests: Vec<(String, String)> = (0..routes)
        .flat_map(|r| {
            let host = format!("host{}.example.com", r % 100);
            [(host.clone(), format!("/api/r{r}/items/42")), (host, format!("/exact/r{r}"))]
        })
        .collect();
    let mut times = Vec::with_capacity(requests.len() * 20);
    for _ in 0..20 {
        for (host, path) in &requests {
            let view = RequestView { host, method: &http::Method::GET, path, query: None, headers: &headers };
            let t = Instant::now();
            let found = std::hint::black_box(port.routes.lookup(std::hint::black_box(&view))).is_some();
            times.push(t.elapsed().as_nanos() as u64);
            assert!(found, "no route for {host}{path}");
        }
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "route lookup over {} rules x 20 passes: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        requests.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}
