//! State shared by listeners, the admin server and the reloader: the current snapshot, keys, status, health.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use sessile_config::ResourceStatus;
use sessile_core::Snapshot;
use sessile_session::KeyRing;
use tokio::sync::watch;

use crate::access_log::AccessLogger;
use crate::health::Health;
use crate::metrics::Metrics;

pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    keys: ArcSwap<KeyRing>,
    statuses: ArcSwap<Vec<ResourceStatus>>,
    pub health: Health,
    pub metrics: Metrics,
    /// Set once the first configuration is applied and its listeners are bound.
    ready: AtomicBool,
    changed: watch::Sender<u64>,
    pub access_log: AccessLogger,
}

pub use crate::access_log::AccessLog;

impl Shared {
    /// `access_log`: an [`AccessLog`] format (stdout, every request) or a configured [`AccessLogger`].
    pub fn new(keys: KeyRing, access_log: impl Into<AccessLogger>) -> Arc<Shared> {
        let access_log = access_log.into();
        let mut metrics = Metrics::default();
        metrics.registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer could not keep up",
            access_log.dropped.clone(),
        );
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            keys: ArcSwap::from_pointee(keys),
            statuses: ArcSwap::from_pointee(Vec::new()),
            health: Health::default(),
            metrics,
            ready: AtomicBool::new(false),
            changed: watch::channel(0).0,
            access_log,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.load_full()
    }

    pub fn statuses(&self) -> Arc<Vec<ResourceStatus>> {
        self.statuses.load_full()
    }

    /// Swaps in a new configuration atomically; requests in flight finish on the old one.
    pub fn apply(&self, snapshot: Snapshot, statuses: Vec<ResourceStatus>) {
        let old = self.snapshot.load_full();
        self.health.observe(
            Some(&old).filter(|o| o.version > 0).map(|o| o.as_ref()),
            &snapshot,
            sessile_session::now_ms(),
        );
        let version = snapshot.version;
        self.metrics.config_version.set(version as i64);
        self.metrics.config_resources_not_accepted.set(statuses.iter().filter(|s| !s.healthy).count() as i64);
        self.metrics.config_last_reload_success.set((sessile_session::now_ms() / 1000) as i64);
        let old_statuses = self.statuses.swap(Arc::new(statuses));
        self.snapshot.store(Arc::new(snapshot));
        self.changed.send_replace(version);
        // Freeing a large configuration takes tens of milliseconds (5,000 routes: ~20 ms): do it off
        // the reload path. Requests in flight may still hold the old snapshot; the last one frees it.
        let retired = (old, old_statuses);
        if std::thread::Builder::new().name("sessile-retire".into()).spawn(move || drop(retired)).is_err() {
            tracing::debug!("no thread to retire the old configuration; freed inline");
        }
    }

    /// The Prometheus text, with the endpoint gauges brought up to date first.
    pub fn metrics_text(&self) -> String {
        self.metrics.refresh_endpoints(&self.snapshot(), &self.health);
        self.metrics.encode()
    }

    pub fn set_keys(&self, keys: KeyRing) {
        self.keys.store(Arc::new(keys));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
