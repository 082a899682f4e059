//! `pgo-train`: the training run of `bench/pgo-build.sh` (see `sessile_testkit::train`).
//!
//! ```text
//! pgo-train --sessile target/pgo/gen/release/sessile --profile-dir target/pgo/profiles [--seconds 24]
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use sessile_testkit::train::{TrainOptions, train};

fn parse_args() -> anyhow::Result<TrainOptions> {
    let usage = "usage: pgo-train --sessile PATH [--profile-dir DIR] [--seconds N]";
    let mut opts = TrainOptions { sessile: PathBuf::new(), profile_dir: None, seconds: 24.0 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value; {usage}"))?;
        match flag.as_str() {
            "--sessile" => opts.sessile = PathBuf::from(value),
            "--profile-dir" => opts.profile_dir = Some(PathBuf::from(value)),
            "--seconds" => opts.seconds = value.parse().with_context(|| format!("--seconds {value}"))?,
            _ => bail!("unknown argument {flag}; {usage}"),
        }
    }
    if opts.sessile.as_os_str().is_empty() {
        bail!("{usage}");
    }
    Ok(opts)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let opts = parse_args()?;
    for (scenario, requests) in train(&opts).await? {
        eprintln!("pgo-train: {scenario}: {requests} requests");
    }
    Ok(())
}
