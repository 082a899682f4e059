//! Runtime endpoint state that outlives snapshots: passive health, drain start times, departed endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sessile_core::{Backend, EndpointState, Snapshot, UpstreamProtocol};

/// How long an endpoint that refused a connection is skipped before it is tried again.
pub const UNHEALTHY_BACKOFF: Duration = Duration::from_secs(5);

/// An endpoint that vanished from configuration but may still serve its sessions.
#[derive(Debug, Clone)]
pub struct Departed {
    pub addr: SocketAddr,
    pub identity_hash: u64,
    pub protocol: UpstreamProtocol,
    pub until: Instant,
}

#[derive(Debug, Default)]
pub struct Health {
    any_unhealthy: AtomicBool,
    unhealthy: Mutex<HashMap<SocketAddr, Instant>>,
    /// Wall-clock ms when an endpoint was first seen draining (for `endpoint-draining-new`).
    draining_since: Mutex<HashMap<SocketAddr, u64>>,
    /// Backend id hash -> endpoints removed from configuration, within their grace period.
    departed: Mutex<HashMap<u64, Vec<Departed>>>,
}

impl Health {
    pub fn is_healthy(&self, addr: SocketAddr) -> bool {
        if !self.any_unhealthy.load(Ordering::Relaxed) {
            return true;
        }
        let map = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&addr).is_none_or(|until| *until <= Instant::now())
    }

    pub fn mark_unhealthy(&self, addr: SocketAddr) {
        let mut map = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, until| *until > now);
        map.insert(addr, now + UNHEALTHY_BACKOFF);
        self.any_unhealthy.store(true, Ordering::Relaxed);
        // A refused endpoint loses its departed grace at once.
        let mut departed = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        for list in departed.values_mut() {
            list.retain(|d| d.addr != addr);
        }
    }

    pub fn mark_healthy(&self, addr: SocketAddr) {
        if !self.any_unhealthy.load(Ordering::Relaxed) {
            return;
        }
        let mut map = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&addr);
        if map.is_empty() {
            self.any_unhealthy.store(false, Ordering::Relaxed);
        }
    }

    pub fn draining_since(&self, addr: SocketAddr) -> Option<u64> {
        self.draining_since.lock().unwrap_or_else(|e| e.into_inner()).get(&addr).copied()
    }

    pub fn departed(&self, backend: u64, addr: SocketAddr, identity_hash: u64) -> Option<Departed> {
        let map = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.get(&backend)?.iter().find(|d| d.addr == addr && d.identity_hash == identity_hash && d.until > now).cloned()
    }

    /// Records what changed between two snapshots: new drains, and endpoints that left configuration.
    pub fn observe(&self, old: Option<&Snapshot>, new: &Snapshot, now_ms: u64) {
        let new_backends = new.backends();
        {
            let mut since = self.draining_since.lock().unwrap_or_else(|e| e.into_inner());
            let mut draining_now = std::collections::HashSet::new();
            for b in &new_backends {
                for e in b.endpoints.iter().filter(|e| e.state == EndpointState::Draining) {
                    draining_now.insert(e.addr);
                    since.entry(e.addr).or_insert(now_ms);
                }
            }
            since.retain(|addr, _| draining_now.contains(addr));
        }
        let Some(old) = old else { return };
        let until = Instant::now() + new.drain_grace;
        let mut departed = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for list in departed.values_mut() {
            list.retain(|d| d.until > now);
        }
        // By id through an index: a scan per old backend was quadratic (500 Services: 250,000 id comparisons).
        let by_id: HashMap<&str, &Backend> = new_backends.iter().map(|b| (&*b.id, &**b)).collect();
        for ob in old.backends() {
            let nb = by_id.get(&*ob.id).copied();
            for e in &ob.endpoints {
                let still_there = nb.is_some_and(|nb| nb.find_endpoint(e.addr, e.identity_hash).is_some());
                // Its address now belongs to another identity: that endpoint must not get these sessions.
                let address_reused = !still_there && nb.is_some_and(|nb| nb.endpoints.iter().any(|n| n.addr == e.addr));
                let list = departed.entry(ob.id_hash).or_default();
                if still_there || address_reused {
                    list.retain(|d| !(d.addr == e.addr && d.identity_hash == e.identity_hash));
                } else if !list.iter().any(|d| d.addr == e.addr && d.identity_hash == e.identity_hash) {
                    list.push(Departed { addr: e.addr, identity_hash: e.identity_hash, protocol: ob.protocol, until });
                }
            }
        }
        departed.retain(|_, l| !l.is_empty());
    }
}
