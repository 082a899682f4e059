//! Wiring: configuration source -> load -> translate -> proxy, plus reload, admin and shutdown.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use notify::Watcher;
use sessile_config::{Loaded, Loader, Resources, TranslateOptions, translate};
use sessile_proxy::access_log::{AccessLog, AccessLogOptions, AccessLogger, Sink};
use sessile_proxy::metrics::ResultLabels;
use sessile_proxy::{Server, ServerOptions, Shared};
use sessile_session::KeyRing;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A YAML file or directory, watched for changes.
    Path(PathBuf),
    /// YAML text (the demo), labelled for error messages.
    Inline { label: String, text: String },
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub admin: SocketAddr,
    pub state_dir: PathBuf,
    pub session_keys: Option<PathBuf>,
    pub workers: Option<usize>,
    pub drain_grace: Duration,
    pub access_log: AccessLog,
    /// Fraction of requests logged (0.0-1.0); responses with status >= 500 are always logged.
    pub access_log_sample: f64,
    /// Append access log lines to this file instead of stdout.
    pub access_log_file: Option<PathBuf>,
    /// Downstream limits: sizes, timeouts, connections, HTTP/2 streams (docs/configuration.md, "Limits").
    pub limits: sessile_proxy::Limits,
    /// Write HTTP/1.1 messages with `writev` from their buffers (`--h1-vectored-writes`).
    pub h1_vectored_writes: bool,
    /// Serve HTTP/1.1 requests without a body on the connection's own task (`--h1-server`).
    pub h1_direct_server: bool,
    /// Upstream connections: connect timeout, pools, the HTTP/1.1 client (`--upstream-*`, `--h1-upstream-client`).
    pub upstream: sessile_proxy::upstream::UpstreamOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            state_dir: PathBuf::from(".sessile"),
            session_keys: None,
            workers: None,
            drain_grace: Duration::from_secs(300),
            access_log: AccessLog::Logfmt,
            access_log_sample: 1.0,
            access_log_file: None,
            limits: sessile_proxy::Limits::default(),
            h1_vectored_writes: false,
            h1_direct_server: true,
            upstream: sessile_proxy::upstream::UpstreamOptions::default(),
        }
    }
}

/// A running gateway: its shared state, admin address and a handle to stop it.
pub struct Gateway {
    pub shared: Arc<Shared>,
    pub admin_addr: SocketAddr,
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Re-reads the configuration (and key ring file) now.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.reloader.reload(&self.shared)
    }

    /// Stops accepting, lets in-flight requests finish (bounded), and returns.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Resolves when shutdown was requested by `stop` (used by the CLI).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// The one step both modes share: resources -> translate -> carry transition times -> `Shared::apply`.
pub struct Applier {
    drain_grace: Duration,
    version: AtomicU64,
    /// Controller mode: every listener binds this IP (a Gateway's `spec.addresses` name the load balancer's
    /// address in a cluster, not the pod's). File mode binds what translation says.
    bind_ip: Option<IpAddr>,
}

impl Applier {
    pub fn new(drain_grace: Duration, bind_ip: Option<IpAddr>) -> Applier {
        Applier { drain_grace, version: AtomicU64::new(0), bind_ip }
    }

    /// Translates `resources` with the current key ring's naming salt and swaps the result in atomically.
    /// Returns the applied snapshot version.
    pub fn apply(&self, shared: &Shared, resources: &Resources, errors: usize) -> u64 {
        let keys = shared.keys();
        let opts = TranslateOptions {
            naming_salt: keys.naming_salt().to_vec(),
            drain_grace: self.drain_grace,
            version: self.version.fetch_add(1, Ordering::Relaxed) + 1,
            now: sessile_config::resources::format_timestamp(sessile_config::load::now_secs()),
        };
        let t = translate(resources, &opts);
        let mut snapshot = t.snapshot;
        if let Some(ip) = self.bind_ip {
            for port in &mut snapshot.ports {
                port.bind.set_ip(ip);
            }
            let mut seen = std::collections::HashSet::new();
            snapshot.ports.retain(|p| {
                let first = seen.insert(p.bind);
                if !first {
                    tracing::warn!(addr = %p.bind, "two Gateways use this port on different addresses; serving the first");
                }
                first
            });
        }
        tracing::info!(version = opts.version, ports = snapshot.ports.len(), errors, "configuration applied");
        shared.metrics.config_load_errors.set(errors as i64);
        let mut statuses = t.statuses;
        sessile_config::status::carry_transition_times(&shared.statuses(), &mut statuses);
        shared.apply(snapshot, statuses);
        opts.version
    }
}

struct Reloader {
    source: Source,
    keys_file: Option<PathBuf>,
    loader: Mutex<Loader>,
    applier: Applier,
}

impl Reloader {
    fn load(&self) -> anyhow::Result<Loaded> {
        let mut loader = self.loader.lock().unwrap_or_else(|e| e.into_inner());
        match &self.source {
            Source::Path(p) => loader.load_path(p).map_err(anyhow::Error::from),
            Source::Inline { label, text } => Ok(loader.load_str(label, text)),
        }
    }

    fn reload(&self, shared: &Shared) -> anyhow::Result<()> {
        let result = self.reload_inner(shared);
        let label = if result.is_ok() { "success" } else { "failure" };
        shared.metrics.config_reloads.get_or_create(&ResultLabels { result: label }).inc();
        if let Err(e) = &result {
            tracing::error!(error = %e, "configuration not applied; the previous one stays in use");
        }
        result
    }

    fn reload_inner(&self, shared: &Shared) -> anyhow::Result<()> {
        if let Some(path) = &self.keys_file {
            shared.set_keys(KeyRing::load(path)?);
        }
        let loaded = self.load()?;
        for e in &loaded.errors {
            tracing::error!("{e}");
        }
        self.applier.apply(shared, &loaded.resources, loaded.errors.len());
        Ok(())
    }
}

/// Starts a gateway: keys, first configuration, admin server, listeners and the file watcher.
pub async fn start(source: Source, opts: &ServeOptions) -> anyhow::Result<Gateway> {
    let keys = match &opts.session_keys {
        Some(path) => KeyRing::load(path)?,
        None => KeyRing::load_or_create(&opts.state_dir)?,
    };
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating state directory {}", opts.state_dir.display()))?;
    let shared = new_shared(keys, opts)?;
    let reloader = Arc::new(Reloader {
        source: source.clone(),
        keys_file: opts.session_keys.clone(),
        loader: Mutex::new(Loader::with_memory(opts.state_dir.join("first-seen.json"))),
        applier: Applier::new(opts.drain_grace, None),
    });
    reloader.reload(&shared)?;
    let shutdown = CancellationToken::new();
    let (admin_addr, admin_task) = spawn_admin(opts.admin, &shared, &shutdown).await?;
    let mut tasks = vec![admin_task, spawn_server(&shared, opts, &shutdown)];
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Source::Path(p) = &source {
        watched.push(p.clone());
    }
    if let Some(k) = &opts.session_keys {
        watched.push(k.clone());
    }
    if !watched.is_empty() {
        tasks.push(spawn_watcher(watched, reloader.clone(), shared.clone(), shutdown.clone())?);
    }
    // Ready once listeners are bound (bounded wait).
    for _ in 0..200 {
        if shared.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Gateway { shared, admin_addr, reloader, shutdown, tasks })
}

/// The state listeners, admin server and reloader share, with the access log `opts` asks for.
pub fn new_shared(keys: KeyRing, opts: &ServeOptions) -> anyhow::Result<Arc<Shared>> {
    let logger = AccessLogger::new(AccessLogOptions {
        format: opts.access_log,
        sample: opts.access_log_sample,
        sink: opts.access_log_file.clone().map_or(Sink::Stdout, Sink::File),
    })?;
    Ok(Shared::new(keys, logger))
}

/// Binds the admin address and serves health, readiness, status, metrics and config until shutdown.
pub async fn spawn_admin(
    addr: SocketAddr,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let admin = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding admin address {addr}"))?;
    let admin_addr = admin.local_addr()?;
    let (shared, token) = (shared.clone(), shutdown.clone());
    let task = tokio::spawn(async move { sessile_proxy::admin::serve(admin, shared, token.cancelled_owned()).await });
    Ok((admin_addr, task))
}

/// Runs the data plane: binds and unbinds listeners as snapshots change, until shutdown.
pub fn spawn_server(shared: &Arc<Shared>, opts: &ServeOptions, shutdown: &CancellationToken) -> JoinHandle<()> {
    let server = Server::new(
        shared.clone(),
        ServerOptions {
            limits: opts.limits.clone(),
            h1_vectored_writes: opts.h1_vectored_writes,
            h1_direct_server: opts.h1_direct_server,
            upstream: opts.upstream.clone(),
            ..ServerOptions::default()
        },
    );
    let token = shutdown.clone();
    tokio::spawn(async move { server.run(token.cancelled_owned()).await })
}

/// Watches files and reloads after changes settle (debounced), until shutdown.
fn spawn_watcher(
    paths: Vec<PathBuf>,
    reloader: Arc<Reloader>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !matches!(e.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    })?;
    for p in &paths {
        // Watch the parent of a file so editors that replace files (rename) are seen too.
        let target =
            if p.is_dir() { p.clone() } else { p.parent().map(Path::to_path_buf).unwrap_or_else(|| p.clone()) };
        let target = if target.as_os_str().is_empty() { PathBuf::from(".") } else { target };
        watcher
            .watch(&target, notify::RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", target.display()))?;
    }
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                got = rx.recv() => if got.is_none() { break },
            }
            // Debounce: wait until no event for 100 ms.
            while let Ok(Some(())) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {}
            let _ = reloader.reload(&shared);
        }
    }))
}

/// `sessile serve`: runs until SIGTERM/SIGINT, then drains and exits 0.
pub fn serve_blocking(source: Source, opts: &ServeOptions) -> ExitCode {
    init_tracing();
    let runtime = match runtime(opts.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sessile: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let gateway = match start(source, opts).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("sessile: {e:#}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(admin = %gateway.admin_addr, "sessile is running");
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        gateway.stop().await;
        ExitCode::SUCCESS
    })
}

/// The data-plane runtime: one thread per core by default; `--workers 1` uses a single-threaded
/// scheduler, which avoids work-stealing overhead when the proxy is pinned to one core.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all();
    if let Some(n) = workers.filter(|&n| n > 1) {
        b.worker_threads(n);
    }
    b.build()
}

pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}

/// `sessile check`: prints statuses as YAML; 0 all healthy, 1 something is not, 2 unreadable input.
pub fn check(path: &Path) -> ExitCode {
    let mut loader = Loader::new();
    let loaded = match loader.load_path(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sessile check: {e}");
            return ExitCode::from(2);
        }
    };
    let t = translate(
        &loaded.resources,
        &TranslateOptions {
            now: sessile_config::resources::format_timestamp(sessile_config::load::now_secs()),
            ..TranslateOptions::default()
        },
    );
    for e in &loaded.errors {
        eprintln!("error: {e}");
    }
    let yaml = serde_saphyr::to_string(&t.statuses).unwrap_or_else(|e| format!("# cannot render status: {e}\n"));
    print!("{yaml}");
    if loaded.errors.is_empty() && t.statuses.iter().all(|s| s.healthy) { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
