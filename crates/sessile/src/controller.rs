//! `sessile controller`: the cluster as configuration source. Reflectors feed the apply step file mode uses;
//! every replica serves; the Lease holder writes status and creates the session key Secret.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sessile_config::Loader;
use sessile_kube::{Cluster, KeySecret, KeyState, LeaseOptions, StatusWriter};
use sessile_proxy::Shared;
use sessile_session::KeyRing;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::run::{self, Applier, ServeOptions};

/// Controller mode options; `serve` carries what the data plane shares with file mode.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub serve: ServeOptions,
    /// Every listener binds this IP; a Gateway's `spec.addresses` belong to the load balancer.
    pub bind_address: IpAddr,
    /// `namespace/name` of the Service whose load balancer addresses go to Gateway `status.addresses`.
    pub publish_service: Option<(String, String)>,
    /// `namespace/name` of the session key Secret shared by all replicas.
    pub keys_secret: Option<(String, String)>,
    /// `namespace/name` of the leader election Lease; without it this replica always leads.
    pub lease: Option<(String, String)>,
    pub identity: String,
    pub lease_duration: Duration,
    pub lease_renew: Duration,
    /// Changes closer together than this are applied together.
    pub debounce: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            serve: ServeOptions::default(),
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            publish_service: None,
            keys_secret: None,
            lease: None,
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            lease_renew: Duration::from_secs(5),
            debounce: Duration::from_millis(100),
        }
    }
}

/// The `sessile controller` flags beyond those it shares with `sessile serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerFlags {
    /// Kubeconfig file (default: the in-cluster service account, else $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Service (namespace/name) whose load balancer addresses go to every Gateway's status.addresses.
    #[arg(long, value_parser = parse_ref)]
    pub publish_service: Option<(String, String)>,
    /// Secret (namespace/name) holding the session key ring shared by all replicas; the leader creates it.
    #[arg(long, value_parser = parse_ref)]
    pub keys_secret: Option<(String, String)>,
    /// Lease (namespace/name) for leader election; without it this replica always writes status.
    #[arg(long, value_parser = parse_ref)]
    pub lease: Option<(String, String)>,
    /// This replica's name in the Lease (default: $POD_NAME, else the host name).
    #[arg(long)]
    pub identity: Option<String>,
    /// A leader that has not renewed for this long is replaced.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews the Lease (and others check it).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub lease_renew: Duration,
    /// IP every listener binds (a Gateway's spec.addresses belong to the load balancer in a cluster).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
}

impl ControllerFlags {
    /// The kubeconfig to use and the controller options, with `serve` for the data plane.
    pub fn into_options(self, serve: ServeOptions) -> (Option<PathBuf>, ControllerOptions) {
        let opts = ControllerOptions {
            serve,
            bind_address: self.bind_address,
            publish_service: self.publish_service,
            keys_secret: self.keys_secret,
            lease: self.lease,
            identity: self.identity.unwrap_or_else(default_identity),
            lease_duration: self.lease_duration,
            lease_renew: self.lease_renew,
            ..ControllerOptions::default()
        };
        (self.kubeconfig, opts)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    sessile_core::duration::parse(text).ok_or_else(|| format!("{text:?} is not a duration like 5s or 1m"))
}

/// `namespace/name` -> (namespace, name), for `--publish-service`, `--keys-secret` and `--lease`.
pub fn parse_ref(text: &str) -> Result<(String, String), String> {
    sessile_kube::parse_ref(text)
}

/// `POD_NAME` (set from the downward API in deploy/), else the host name, else `sessile-<pid>`.
pub fn default_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| format!("sessile-{}", std::process::id()))
}

/// A running controller replica.
pub struct Controller {
    pub shared: Arc<Shared>,
    pub admin_addr: SocketAddr,
    leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Controller {
    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Stops watching, releases the Lease, drains listeners.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts a replica against the cluster `client` talks to. Not ready (`/readyz`) until every reflector
/// has listed once and the key ring is loaded.
pub async fn start(client: sessile_kube::Client, opts: &ControllerOptions) -> anyhow::Result<Controller> {
    // Listeners are bound only once the first configuration is applied, which waits for the real key
    // ring when it comes from a Secret: this local ring serves nothing in that case.
    let local_keys = match (&opts.keys_secret, &opts.serve.session_keys) {
        (Some(_), _) => KeyRing::generate(),
        (None, Some(path)) => KeyRing::load(path)?,
        (None, None) => {
            tracing::warn!(
                "no --keys-secret: this replica uses its own key ring, so sessions do not survive a hop between replicas"
            );
            KeyRing::load_or_create(&opts.serve.state_dir)?
        }
    };
    let shared = run::new_shared(local_keys, &opts.serve)?;
    let shutdown = CancellationToken::new();
    let (admin_addr, admin_task) = run::spawn_admin(opts.serve.admin, &shared, &shutdown).await?;
    let mut tasks = vec![admin_task, run::spawn_server(&shared, &opts.serve, &shutdown)];

    let (cluster, reflectors) = Cluster::start(client.clone(), shutdown.clone());
    tasks.extend(reflectors);
    let keys = match &opts.keys_secret {
        Some((ns, name)) => {
            let (secret, task) = KeySecret::start(client.clone(), ns, name, shutdown.clone());
            tasks.push(task);
            Some(secret)
        }
        None => None,
    };
    let leader = match &opts.lease {
        Some((namespace, name)) => {
            let lease = LeaseOptions {
                namespace: namespace.clone(),
                name: name.clone(),
                identity: opts.identity.clone(),
                duration: opts.lease_duration,
                renew: opts.lease_renew,
            };
            let (rx, task) = sessile_kube::leader::spawn(client.clone(), lease, shutdown.clone());
            tasks.push(task);
            rx
        }
        None => {
            // No Lease: this replica always leads. The sender lives as long as the controller.
            let (tx, rx) = watch::channel(true);
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                token.cancelled().await;
                drop(tx);
            }));
            rx
        }
    };
    let reconciler = Reconciler {
        shared: shared.clone(),
        cluster,
        keys,
        leader: leader.clone(),
        writer: StatusWriter::new(client),
        applier: Applier::new(opts.serve.drain_grace, Some(opts.bind_address)),
        publish_service: opts.publish_service.clone(),
        debounce: opts.debounce,
    };
    let token = shutdown.clone();
    tasks.push(tokio::spawn(async move { reconciler.run(token).await }));
    Ok(Controller { shared, admin_addr, leader, shutdown, tasks })
}

/// The loop that turns cluster changes into snapshots and statuses.
struct Reconciler {
    shared: Arc<Shared>,
    cluster: Cluster,
    keys: Option<KeySecret>,
    leader: watch::Receiver<bool>,
    writer: StatusWriter,
    applier: Applier,
    publish_service: Option<(String, String)>,
    debounce: Duration,
}

impl Reconciler {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut versions = self.cluster.subscribe();
        // No Secret: the local key ring is loaded already (the sender stays alive so `changed` just waits).
        let local = watch::channel(KeyState::Present(Arc::new((*self.shared.keys()).clone())));
        let mut keys_rx = match &self.keys {
            Some(k) => k.subscribe(),
            None => local.1.clone(),
        };
        let mut loader = Loader::new();
        let mut applied_config: Option<u64> = None;
        let mut applied_keys: Option<String> = None;
        let mut retry: Option<Duration> = None;
        // The first round does not wait: the reflectors may have finished listing before we subscribed.
        let mut first = true;
        loop {
            // Wait for something to do; then let a burst of changes settle.
            if !std::mem::take(&mut first) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = versions.changed() => {},
                    _ = keys_rx.changed() => {},
                    _ = self.leader.changed() => {},
                    _ = tokio::time::sleep(retry.unwrap_or(Duration::from_secs(3600))), if retry.is_some() => {},
                }
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.debounce) => break,
                    _ = versions.changed() => {},
                    _ = keys_rx.changed() => {},
                }
            }
            let leading = *self.leader.borrow_and_update();
            let key_state = keys_rx.borrow_and_update().clone();
            let mut failed = false;
            match key_state {
                KeyState::Present(ring) => {
                    let text = ring.to_file_text();
                    if applied_keys.as_deref() != Some(text.as_str()) {
                        self.shared.set_keys((*ring).clone());
                        if applied_keys.is_some() {
                            tracing::info!(current_key = ring.current_key_id(), "session key ring changed");
                        }
                        applied_keys = Some(text);
                        // The naming salt feeds translation: translate again.
                        applied_config = None;
                    }
                }
                KeyState::Missing if leading => {
                    if let Some(k) = &self.keys
                        && let Err(e) = k.create().await
                    {
                        tracing::warn!(error = %e, "cannot create the session key Secret; will retry");
                        failed = true;
                    }
                }
                _ => {}
            }
            let v = *versions.borrow_and_update();
            if v.synced && applied_keys.is_some() && applied_config != Some(v.config) {
                let (resources, errors) = self.cluster.resources(&mut loader);
                for e in &errors {
                    tracing::error!("{e}");
                }
                self.applier.apply(&self.shared, &resources, errors.len());
                applied_config = Some(v.config);
            }
            if leading && applied_config.is_some() {
                let addresses = self.publish_service.as_ref().and_then(|(ns, name)| {
                    self.cluster.object("Service", ns, name).map(|s| sessile_kube::status::service_addresses(&s))
                });
                let report = self.writer.sync(&self.cluster, &self.shared.statuses(), addresses.as_ref()).await;
                failed |= report.failed > 0;
            }
            // Failed writes are retried with a growing pause; success clears it.
            retry = failed.then(|| retry.map_or(Duration::from_millis(500), |d| (d * 2).min(Duration::from_secs(30))));
        }
    }
}

/// `sessile controller`: runs until SIGTERM/SIGINT.
pub fn run_blocking(kubeconfig: Option<PathBuf>, opts: &ControllerOptions) -> ExitCode {
    run::init_tracing();
    let runtime = match run::runtime(opts.serve.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sessile: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let client = match sessile_kube::connect(kubeconfig.as_deref()).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sessile controller: cannot reach the cluster: {e:#}");
                return ExitCode::from(1);
            }
        };
        let controller = match start(client, opts).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sessile controller: {e:#}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(admin = %controller.admin_addr, identity = %opts.identity, "sessile controller is running");
        run::wait_for_signal().await;
        tracing::info!("shutting down: releasing the lease, finishing requests in flight");
        controller.stop().await;
        ExitCode::SUCCESS
    })
}
