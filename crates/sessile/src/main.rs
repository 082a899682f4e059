//! The `sessile` command line: serve, check, demo and controller.
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
    /// Start three echo backends and a gateway with a cookie-persistence route on 127.0.0.1:8080.
    Demo {
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Controller mode: watch a Kubernetes cluster (not part of this build).
    Controller,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    sessile_core::duration::parse(text).ok_or_else(|| format!("{text:?} is not a duration like 30s, 5m or 1h"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => run::check(&config),
        Command::Serve { config, args } => run::serve_blocking(run::Source::Path(config), &args.into()),
        Command::Demo { args } => demo::run(&args.into()),
        Command::Controller => {
            eprintln!(
                "sessile controller: controller mode is not part of this build yet; use `sessile serve --config PATH`"
            );
            ExitCode::from(2)
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
        }
    }
}
