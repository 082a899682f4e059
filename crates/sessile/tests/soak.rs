//! Soak with faults: sticky clients keep their cookie jars while an endpoint is killed, another is
//! drained then removed, the configuration reloads 20 times, a second replica with the same key
//! ring takes half the clients, and the gateway restarts. Nothing may fail and no session may
//! move, except for clients pinned to the killed or removed endpoint.
//!
//! Short by default (a few seconds, for CI); `SOAK_SECS=300 cargo test --test soak -- --nocapture`
//! adds a longer steady phase at the end.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use sessile::run::{ServeOptions, Source, start};
use sessile_proxy::state::AccessLog;
use sessile_testkit::{CookieJar, TestClient, TestRequest};

const CLIENTS: usize = 24;
const ROUTE: &str = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: app}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {value: /app}}]\n    backendRefs: [{name: svc, port: 80}]\n    sessionPersistence: {sessionName: soak, idleTimeout: 10m}\n";

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    failures: AtomicU64,
    allowed_failures: AtomicU64,
    moves: AtomicU64,
    allowed_moves: AtomicU64,
    retried: AtomicU64,
    notes: std::sync::Mutex<Vec<String>>,
}

/// What the clients need to know about the fault being injected.
struct Phase {
    stop: AtomicBool,
    /// Endpoints whose clients may see a failure or move (killed, or removed from the config).
    doomed: std::sync::Mutex<Vec<String>>,
    /// While a gateway restarts, refused or dropped connections are retried, as clients do.
    restarting: AtomicBool,
    main_port: u16,
    /// The second replica's port once it runs (even-numbered clients switch to it).
    replica_port: AtomicU16,
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

async fn client_loop(id: usize, phase: Arc<Phase>, stats: Arc<Stats>) {
    let client = TestClient::http1().timeout(Duration::from_secs(3));
    let mut jar = CookieJar::new();
    let mut pinned: Option<String> = None;
    while !phase.stop.load(Ordering::Relaxed) {
        let replica = phase.replica_port.load(Ordering::Relaxed);
        let port = if id.is_multiple_of(2) && replica != 0 { replica } else { phase.main_port };
        let doomed = |b: &Option<String>| b.as_ref().is_some_and(|b| phase.doomed.lock().unwrap().contains(b));
        match client.send_with_jar(TestRequest::get(format!("http://127.0.0.1:{port}/app")), &mut jar).await {
            Ok(resp) if resp.status == 200 => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                let now = resp.backend();
                if pinned.is_some() && now != pinned {
                    if doomed(&pinned) {
                        stats.allowed_moves.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.moves.fetch_add(1, Ordering::Relaxed);
                        stats.notes.lock().unwrap().push(format!("client {id} moved {pinned:?} -> {now:?}"));
                    }
                }
                pinned = now;
            }
            other => {
                let what = match &other {
                    Ok(resp) => format!("status {}", resp.status),
                    Err(e) => format!("{e:#}"),
                };
                if phase.restarting.load(Ordering::Relaxed) {
                    stats.retried.fetch_add(1, Ordering::Relaxed);
                } else if doomed(&pinned) {
                    stats.allowed_failures.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    stats.notes.lock().unwrap().push(format!("client {id} (pinned {pinned:?}) failed: {what}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_survive_kills_drains_reloads_replicas_and_restarts() {
    let extra = std::env::var("SOAK_SECS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0).min(3600);
    let bs = backends("s", 6).await;
    let all: Vec<_> = bs.iter().collect();
    let port = free_port();
    let gw = gateway_with(
        port,
        &[
            ("gw.yaml", gateway_yaml(port)),
            ("svc.yaml", service_yaml("default", "svc", &all)),
            ("route.yaml", ROUTE.to_string()),
        ],
    )
    .await;
    let phase = Arc::new(Phase {
        stop: AtomicBool::new(false),
        doomed: Default::default(),
        restarting: AtomicBool::new(false),
        main_port: port,
        replica_port: AtomicU16::new(0),
    });
    let stats = Arc::new(Stats::default());
    let tasks: Vec<_> = (0..CLIENTS).map(|id| tokio::spawn(client_loop(id, phase.clone(), stats.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rss_start = rss_kib();

    // 1. Kill an endpoint.
    phase.doomed.lock().unwrap().push("s0".into());
    bs[0].stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. Drain an endpoint, then remove it from the configuration (it keeps serving: grace).
    let states = |s1: &'static str| -> Vec<(&sessile_testkit::TestBackend, &str)> {
        bs.iter()
            .enumerate()
            .filter(|(i, _)| s1 != "removed" || *i != 1)
            .map(|(i, b)| (b, if i == 1 { s1 } else { "ready" }))
            .collect()
    };
    gw.update("svc.yaml", &service_yaml_states("default", "svc", &states("draining"))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    phase.doomed.lock().unwrap().push("s1".into());
    gw.update("svc.yaml", &service_yaml_states("default", "svc", &states("removed"))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 3. Twenty reloads.
    for i in 0..20 {
        gw.update("route.yaml", &format!("# reload {i}\n{ROUTE}")).await;
    }

    // 4. A second replica with the same key ring (same state directory) takes half the clients.
    let replica_port = free_port();
    let replica_config = TempDir::new("soak-replica");
    replica_config.write(
        "all.yaml",
        &format!("{}{}{ROUTE}", gateway_yaml(replica_port), service_yaml_states("default", "svc", &states("removed"))),
    );
    let replica = start(
        Source::Path(replica_config.path().to_path_buf()),
        &ServeOptions {
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: gw.state.path().to_path_buf(),
            access_log: AccessLog::Off,
            ..ServeOptions::default()
        },
    )
    .await
    .expect("replica starts");
    phase.replica_port.store(replica_port, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 5. Restart the first gateway.
    phase.restarting.store(true, Ordering::Relaxed);
    let TestGateway { gateway, config, state, port } = gw;
    gateway.stop().await;
    let gw = start_gateway(config, state, port).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    phase.restarting.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500) + Duration::from_secs(extra)).await;

    phase.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let rss_end = rss_kib();
    let repins = metric(&gw.metrics().await, "sessile_session_repins_total", &[]);
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "soak: requests={} failures={} allowed_failures={} moves={} allowed_moves={} retried_during_restart={} repins_after_restart={} rss_kib {}->{}",
        get(&stats.requests),
        get(&stats.failures),
        get(&stats.allowed_failures),
        get(&stats.moves),
        get(&stats.allowed_moves),
        get(&stats.retried),
        repins,
        rss_start,
        rss_end
    );
    let notes = stats.notes.lock().unwrap().clone();
    assert_eq!(get(&stats.failures), 0, "unexpected failures: {notes:#?}");
    assert_eq!(get(&stats.moves), 0, "sessions moved without cause: {notes:#?}");
    assert!(get(&stats.requests) > 500, "the load ran: {}", get(&stats.requests));
    assert!(get(&stats.allowed_moves) >= 1, "clients pinned to the killed endpoint moved");
    assert!(rss_end.saturating_sub(rss_start) < 64 * 1024, "memory grew {rss_start} -> {rss_end} KiB");
    let per_backend: HashMap<&str, u64> = bs.iter().map(|b| (b.name(), b.hits())).collect();
    assert!(per_backend.values().filter(|&&h| h > 0).count() >= 5, "{per_backend:?}");
    replica.stop().await;
    gw.gateway.stop().await;
}
