//! The `sessile` command line: serve, check, demo, explain and controller.
#![forbid(unsafe_code)]

use sessile::{demo, run};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "sessile", version, about = "A Gateway API gateway with first-class session persistence")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccessLogFormat {
    Json,
    Logfmt,
    Off,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Admin HTTP address (health, readiness, status, metrics, config).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Directory for state (the generated session key ring).
    #[arg(long, default_value = ".sessile")]
    state_dir: PathBuf,
    /// Session key ring file (see docs/session-persistence.md); generated in --state-dir when absent.
    #[arg(long)]
    session_keys: Option<PathBuf>,
    /// Data-plane worker threads (default: number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// How long endpoints removed from configuration keep their sessions while they still serve.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    drain_grace: Duration,
    /// Access log format.
    #[arg(long, value_enum, default_value = "logfmt")]
    access_log: AccessLogFormat,
    /// Fraction of requests written to the access log, 0.0 to 1.0 (responses >= 500 are always written).
    #[arg(long, default_value_t = 1.0, value_parser = parse_fraction)]
    access_log_sample: f64,
    /// Append access log lines to this file instead of stdout.
    #[arg(long)]
    access_log_file: Option<PathBuf>,
    /// Largest request body (bytes; K, M, G suffixes are powers of 1024); unlimited when absent (413).
    #[arg(long, value_parser = parse_size)]
    max_request_body: Option<u64>,
    /// Largest request header block, name + value + 4 bytes per field (431).
    #[arg(long, default_value = "60K", value_parser = parse_size)]
    max_request_header_bytes: u64,
    /// Most request header fields (431).
    #[arg(long, default_value_t = 100)]
    max_request_headers: usize,
    /// Longest request target in bytes (414).
    #[arg(long, default_value = "16K", value_parser = parse_size)]
    max_uri_length: u64,
    /// Time a client has to send a complete request head (and the TLS handshake) before the connection closes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Open downstream connections across all listeners; more are refused (HTTP: 503 and close).
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// HTTP/2 concurrent streams per connection.
    #[arg(long, default_value_t = 100)]
    h2_max_concurrent_streams: u32,
    /// Write HTTP/1.1 messages with writev straight from their buffers instead of copying each
    /// body into one buffer per send: less CPU for large bodies (~4% at 1 MiB), more for small
    /// ones (~5%; the default suits API and web traffic).
    #[arg(long)]
    h1_vectored_writes: bool,
    /// How requests without a body reach HTTP/1.1 backends: `direct` (the request's own task
    /// writes the head and reads the response: no connection task or channel) or `hyper` (hyper's
    /// client, as requests with a body always use).
    #[arg(long, value_parser = ["direct", "hyper"], default_value = "direct")]
    h1_upstream_client: String,
    /// How HTTP/1.1 requests without a body are served: `direct` (the connection's own task
    /// parses the head in place and writes the response; a request with a body, an upgrade or
    /// HTTP/1.0 hands the connection to hyper) or `hyper` (hyper's server for every connection).
    #[arg(long, value_parser = ["direct", "hyper"], default_value = "direct")]
    h1_server: String,
    /// Time to connect to a backend endpoint before another endpoint is tried.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    upstream_connect_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per backend endpoint (0: a new connection per request).
    #[arg(long, default_value_t = 256)]
    upstream_max_idle: usize,
    /// An idle backend connection older than this is closed instead of reused; keep it below
    /// the backends' own keep-alive timeout when they have a short one.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    upstream_idle_timeout: Duration,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Gateway API resources in PATH (a YAML file or a directory), reloading on change.
    Serve {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Load and translate PATH without binding anything; print every resource's status as YAML.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Start three echo backends and a gateway with a cookie-persistence route on 127.0.0.1:8080;
    /// with --config, echo backends on the config's 127.0.0.1 endpoints and a gateway serving it.
    Demo {
        /// Serve this YAML file or directory (e.g. examples/cookie) with built-in echo backends
        /// on the loopback endpoints its EndpointSlices name.
        #[arg(long)]
        config: Option<PathBuf>,
        /// With --config: start only the echo backends (run `sessile serve` yourself).
        #[arg(long, requires = "config")]
        backends_only: bool,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Explain where a request would go and why: listener, route and precedence, session
    /// persistence and its origin, the tokens and their verdicts, and the endpoint.
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// The gateway's state directory (its session key ring decodes tokens).
        #[arg(long, default_value = ".sessile")]
        state_dir: PathBuf,
        /// The gateway's session key ring file, when it uses --session-keys.
        #[arg(long)]
        session_keys: Option<PathBuf>,
        /// Request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Cookie, `name=value` (repeatable; sent as one Cookie header).
        #[arg(long = "cookie")]
        cookies: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// HTTP method, e.g. GET.
        method: String,
        /// Absolute URL, e.g. http://shop.example.com:8080/cart.
        url: String,
    },
    /// Controller mode: serve a Kubernetes cluster's Gateway API resources and write their status.
    Controller {
        #[command(flatten)]
        controller: Box<sessile::controller::ControllerFlags>,
        #[command(flatten)]
        args: ServeArgs,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    sessile_core::duration::parse(text).ok_or_else(|| format!("{text:?} is not a duration like 30s, 5m or 1h"))
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| format!("{text:?} is not a fraction between 0.0 and 1.0"))
}

/// `1048576`, `512K`, `10M`, `1G` (powers of 1024; a trailing `B`/`iB` is accepted).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{text:?} is not a size like 1048576, 512K or 10M"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => run::check(&config),
        Command::Serve { config, args } => run::serve_blocking(run::Source::Path(config), &args.into()),
        Command::Demo { config, backends_only, args } => {
            demo::run(&args.into(), &demo::DemoOptions { config, backends_only })
        }
        Command::Explain { config, state_dir, session_keys, headers, cookies, json, method, url } => {
            sessile::explain::run(&sessile::explain::ExplainArgs {
                config,
                state_dir,
                session_keys,
                method,
                url,
                headers,
                cookies,
                json,
            })
        }
        Command::Controller { controller, args } => {
            let (kubeconfig, opts) = controller.into_options(args.into());
            sessile::controller::run_blocking(kubeconfig, &opts)
        }
    }
}

impl From<ServeArgs> for run::ServeOptions {
    fn from(a: ServeArgs) -> Self {
        run::ServeOptions {
            admin: a.admin,
            state_dir: a.state_dir,
            session_keys: a.session_keys,
            workers: a.workers,
            drain_grace: a.drain_grace,
            access_log: match a.access_log {
                AccessLogFormat::Json => sessile_proxy::state::AccessLog::Json,
                AccessLogFormat::Logfmt => sessile_proxy::state::AccessLog::Logfmt,
                AccessLogFormat::Off => sessile_proxy::state::AccessLog::Off,
            },
            access_log_sample: a.access_log_sample,
            access_log_file: a.access_log_file,
            limits: sessile_proxy::Limits {
                max_request_body: a.max_request_body,
                max_request_header_bytes: usize::try_from(a.max_request_header_bytes).unwrap_or(usize::MAX),
                max_request_headers: a.max_request_headers,
                max_uri_length: usize::try_from(a.max_uri_length).unwrap_or(usize::MAX),
                header_read_timeout: a.header_read_timeout,
                idle_timeout: a.idle_timeout,
                max_connections: a.max_connections.max(1),
                h2_max_concurrent_streams: a.h2_max_concurrent_streams.max(1),
                ..sessile_proxy::Limits::default()
            },
            h1_vectored_writes: a.h1_vectored_writes,
            h1_direct_server: a.h1_server == "direct",
            upstream: sessile_proxy::upstream::UpstreamOptions {
                connect_timeout: a.upstream_connect_timeout,
                max_idle_per_endpoint: a.upstream_max_idle,
                idle_timeout: a.upstream_idle_timeout,
                direct_h1: a.h1_upstream_client == "direct",
            },
        }
    }
}
