//! Load-balancing cost per request: weighted backendRef choice, round-robin endpoint choice
//! (skipping draining and unhealthy endpoints) and the pinned-endpoint lookup a session does.

use std::net::SocketAddr;
use std::sync::Arc;

use sessile_core::balance::pick_endpoint;
use sessile_core::{
    Backend, BackendTarget, Endpoint, EndpointState, RouteRef, Rule, Timeouts, UpstreamProtocol, WeightedBackend,
};

fn main() {
    divan::main();
}

fn backend(endpoints: usize) -> Arc<Backend> {
    let eps = (0..endpoints)
        .map(|i| Endpoint {
            addr: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 8080)),
            identity: format!("pod-{i}"),
            identity_hash: i as u64,
            // Every fifth endpoint is draining: round robin has to skip it.
            state: if i % 5 == 4 { EndpointState::Draining } else { EndpointState::Ready },
        })
        .collect();
    Arc::new(Backend::new(format!("ns/svc{endpoints}:80").into(), 1, UpstreamProtocol::Http1, eps))
}

fn rule(backends: usize) -> Rule {
    let mut cumulative = 0;
    let backends = (0..backends)
        .map(|i| {
            let weight = 1 + (i as u32 % 3);
            cumulative += u64::from(weight);
            WeightedBackend { weight, cumulative, target: BackendTarget::Service(backend(3)), filters: vec![] }
        })
        .collect();
    let route = Arc::new(RouteRef { kind: "HTTPRoute".into(), namespace: "ns".into(), name: "r".into() });
    Rule::new(route, 0, None, vec![], backends, Timeouts::default(), None)
}

/// A weighted pick among a rule's backendRefs (every request without a session).
#[divan::bench(args = [1, 2, 10])]
fn next_weighted(bencher: divan::Bencher, backends: usize) {
    let r = rule(backends);
    bencher.bench_local(|| divan::black_box(r.next_weighted().map(|b| b.weight)));
}

/// Round robin over a Service's endpoints, skipping draining ones and one unhealthy address.
#[divan::bench(args = [3, 100])]
fn round_robin_endpoint(bencher: divan::Bencher, endpoints: usize) {
    let b = backend(endpoints);
    let unhealthy = b.endpoints[0].addr;
    bencher.bench_local(|| divan::black_box(pick_endpoint(&b, |a| a != unhealthy).map(|e| e.addr)));
}

/// The pinned endpoint of a session: its address and identity hash, looked up in the backend.
#[divan::bench(args = [3, 100])]
fn find_pinned_endpoint(bencher: divan::Bencher, endpoints: usize) {
    let b = backend(endpoints);
    let last = b.endpoints[endpoints - 2].clone();
    bencher
        .bench_local(|| divan::black_box(b.find_endpoint(divan::black_box(last.addr), last.identity_hash).is_some()));
}
