//! Load balancing: weighted backend choice and round-robin endpoint choice that skips the ineligible.

use std::net::SocketAddr;

use crate::model::{Backend, BackendTarget, Endpoint, EndpointState, PickMode, WeightedBackend};

/// Picks a ready endpoint of `backend` round-robin, skipping those `usable` rejects.
/// Draining endpoints never receive new sessions or new unpinned traffic.
pub fn pick_endpoint(backend: &Backend, usable: impl FnMut(SocketAddr) -> bool) -> Option<&Endpoint> {
    pick_endpoint_with(backend, PickMode::Advance, usable)
}

/// [`pick_endpoint`], or with [`PickMode::Peek`] the endpoint it would pick, leaving the rotation alone.
pub fn pick_endpoint_with(
    backend: &Backend,
    mode: PickMode,
    mut usable: impl FnMut(SocketAddr) -> bool,
) -> Option<&Endpoint> {
    let n = backend.endpoints.len();
    if n == 0 {
        return None;
    }
    let start = backend.start(mode);
    (0..n).map(|i| &backend.endpoints[(start + i) % n]).find(|e| e.state == EndpointState::Ready && usable(e.addr))
}

/// Convenience: the `Backend` of a weighted backendRef, if it resolved.
pub fn service(b: &WeightedBackend) -> Option<&Backend> {
    match &b.target {
        BackendTarget::Service(s) => Some(s),
        BackendTarget::Invalid { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UpstreamProtocol;

    fn ep(port: u16, state: EndpointState) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            identity: String::new(),
            identity_hash: port as u64,
            state,
        }
    }

    #[test]
    fn round_robin_skips_draining_and_unusable() {
        let b = Backend::new(
            "ns/s:80".into(),
            1,
            UpstreamProtocol::Http1,
            vec![ep(1, EndpointState::Ready), ep(2, EndpointState::Draining), ep(3, EndpointState::Ready)],
        );
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(pick_endpoint(&b, |_| true).unwrap().addr.port());
        }
        assert!(!seen.contains(&2));
        assert!(seen.contains(&1) && seen.contains(&3));
        for _ in 0..6 {
            assert_eq!(pick_endpoint(&b, |a| a.port() != 1).unwrap().addr.port(), 3);
        }
        assert!(pick_endpoint(&b, |_| false).is_none());
    }

    #[test]
    fn peeking_names_the_next_pick_without_taking_it() {
        let b = Backend::new(
            "ns/s:80".into(),
            1,
            UpstreamProtocol::Http1,
            vec![ep(1, EndpointState::Ready), ep(2, EndpointState::Ready), ep(3, EndpointState::Ready)],
        );
        for _ in 0..5 {
            let peeked = pick_endpoint_with(&b, PickMode::Peek, |_| true).unwrap().addr;
            assert_eq!(pick_endpoint_with(&b, PickMode::Peek, |_| true).unwrap().addr, peeked);
            assert_eq!(pick_endpoint(&b, |_| true).unwrap().addr, peeked);
        }
    }
}
