//! Control-plane cost: load and translate 5,000 HTTPRoutes over 500 Services.

use sessile_config::{Loader, TranslateOptions, translate};

fn main() {
    divan::main();
}

/// A Gateway, `services` Services with one EndpointSlice each, and `routes` HTTPRoutes with
/// two rules each (one with cookie persistence).
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

#[divan::bench(sample_count = 10)]
fn load_and_translate_5000_routes(bencher: divan::Bencher) {
    let text = config(5000, 500);
    bencher.bench_local(|| {
        let loaded = Loader::new().load_str("bench.yaml", &text);
        assert!(loaded.errors.is_empty());
        divan::black_box(translate(&loaded.resources, &TranslateOptions::default()))
    });
}

#[divan::bench(sample_count = 10)]
fn translate_only_5000_routes(bencher: divan::Bencher) {
    let loaded = Loader::new().load_str("bench.yaml", &config(5000, 500));
    bencher.bench_local(|| divan::black_box(translate(&loaded.resources, &TranslateOptions::default())));
}
