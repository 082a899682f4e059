//! Leader election on a `coordination.k8s.io/v1` Lease: get, create or update with resourceVersion.

use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kinds::LEASE;

/// Which Lease, who we are, and how long a holder keeps it without renewing.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// A holder that has not renewed for this long (as observed locally) may be replaced.
    pub duration: Duration,
    /// How often the holder renews, and others retry.
    pub renew: Duration,
}

impl LeaseOptions {
    /// A leader that could not renew for this long steps down, before anyone else may take over.
    fn renew_deadline(&self) -> Duration {
        self.duration.saturating_sub(self.renew).max(self.renew)
    }
}

/// Runs the election until `shutdown`; the receiver says whether this replica leads now.
/// On shutdown a leader releases the Lease so that another replica takes over at once.
pub fn spawn(
    client: kube::Client,
    opts: LeaseOptions,
    shutdown: CancellationToken,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api: Api<DynamicObject> = Api::namespaced_with(client, &opts.namespace, &LEASE.api_resource());
        let mut elector = Elector { api, opts, observed: None, last_renew: None };
        loop {
            let leading = elector.step().await;
            tx.send_if_modified(|cur| {
                if *cur != leading {
                    tracing::info!(identity = %elector.opts.identity, leading, "leadership changed");
                }
                std::mem::replace(cur, leading) != leading
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(elector.opts.renew) => {}
            }
        }
        if *tx.borrow() {
            tx.send_replace(false);
            elector.release().await;
        }
    });
    (rx, task)
}

struct Elector {
    api: Api<DynamicObject>,
    opts: LeaseOptions,
    /// The other holder's record as last seen, and when we saw it change (local clock: no skew issues).
    observed: Option<(Value, Instant)>,
    /// When we last renewed successfully as the holder.
    last_renew: Option<Instant>,
}

impl Elector {
    /// One round: create, renew or take over the Lease. Returns whether we lead.
    async fn step(&mut self) -> bool {
        match self.try_step().await {
            Ok(leading) => {
                if leading {
                    self.last_renew = Some(Instant::now());
                } else {
                    self.last_renew = None;
                }
                leading
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease update failed");
                // Keep leading only while the last renewal is recent enough.
                let leading = self.last_renew.is_some_and(|t| t.elapsed() < self.opts.renew_deadline());
                if !leading {
                    self.last_renew = None;
                }
                leading
            }
        }
    }

    async fn try_step(&mut self) -> Result<bool, kube::Error> {
        let now = micro_time();
        let me = self.opts.identity.clone();
        let secs = self.opts.duration.as_secs().max(1);
        let Some(lease) = self.api.get_opt(&self.opts.name).await? else {
            let object: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.opts.name, "namespace": self.opts.namespace},
                "spec": {"holderIdentity": me, "leaseDurationSeconds": secs, "acquireTime": now,
                         "renewTime": now, "leaseTransitions": 0}
            }))
            .map_err(kube::Error::SerdeError)?;
            return match self.api.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.data.get("spec").cloned().unwrap_or(json!({}));
        let holder = spec["holderIdentity"].as_str().unwrap_or_default().to_string();
        let mut next = lease.clone();
        if holder == me {
            next.data["spec"]["renewTime"] = json!(now);
            next.data["spec"]["leaseDurationSeconds"] = json!(secs);
        } else {
            let record = json!([spec["holderIdentity"], spec["renewTime"], spec["leaseTransitions"]]);
            if self.observed.as_ref().is_none_or(|(r, _)| *r != record) {
                self.observed = Some((record, Instant::now()));
            }
            let held_for = Duration::from_secs(spec["leaseDurationSeconds"].as_u64().unwrap_or(secs));
            let expired = holder.is_empty() || self.observed.as_ref().is_some_and(|(_, at)| at.elapsed() > held_for);
            if !expired {
                return Ok(false);
            }
            let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0) + 1;
            next.data["spec"] = json!({"holderIdentity": me, "leaseDurationSeconds": secs, "acquireTime": now,
                                      "renewTime": now, "leaseTransitions": transitions});
        }
        // The resourceVersion in `next` makes this a compare-and-swap: a concurrent writer gets 409.
        match self.api.replace(&self.opts.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.opts.name).await else { return };
        if lease.data["spec"]["holderIdentity"].as_str() != Some(self.opts.identity.as_str()) {
            return;
        }
        lease.data["spec"]["holderIdentity"] = Value::Null;
        lease.data["spec"]["leaseDurationSeconds"] = json!(1);
        if let Err(e) = self.api.replace(&self.opts.name, &PostParams::default(), &lease).await {
            tracing::warn!(error = %e, "could not release the lease; another replica takes over when it expires");
        }
    }
}

/// Now as a Kubernetes MicroTime (RFC 3339 with exactly six fractional digits).
fn micro_time() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = sessile_config::resources::format_timestamp(now.as_secs() as i64);
    format!("{}.{:06}Z", secs.trim_end_matches('Z'), now.subsec_micros())
}
