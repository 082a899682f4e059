//! Controller mode: reads Gateway API resources from a Kubernetes API server; the only crate that links `kube`.
#![forbid(unsafe_code)]

pub mod cluster;
#[cfg(feature = "fake")]
pub mod fake;
pub mod keys;
pub mod kinds;
pub mod leader;
pub mod status;

use std::path::Path;

pub use cluster::{Cluster, Versions};
pub use keys::{KEYRING_KEY, KeySecret, KeyState};
/// The `kube` crate itself, for tests that talk to the API directly (the opt-in real-cluster test).
pub use kube;
pub use kube::Client;
pub use leader::LeaseOptions;
pub use status::StatusWriter;

/// A client from `kubeconfig` when given, else the in-cluster service account or the default kubeconfig.
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    // TLS to the API server uses rustls with ring: make it the process default before any client exists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// `namespace/name` -> (namespace, name).
pub fn parse_ref(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{text:?} is not namespace/name")),
    }
}
