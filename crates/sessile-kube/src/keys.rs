//! The session key ring Secret: every replica watches it and uses its key ring; the leader creates it when missing.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use sessile_session::KeyRing;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The Secret data key holding the key ring, in the key ring file format.
pub const KEYRING_KEY: &str = "keyring";

/// What the key Secret holds, as last seen.
#[derive(Clone, Debug, Default)]
pub enum KeyState {
    /// Not listed yet.
    #[default]
    Unknown,
    /// Listed: the Secret does not exist.
    Missing,
    /// The Secret's key ring.
    Present(Arc<KeyRing>),
    /// The Secret exists but holds no usable key ring (the message says why); the last good ring stays in use.
    Invalid(String),
}

/// Watches one Secret; the receiver sees every change.
pub struct KeySecret {
    api: Api<Secret>,
    name: String,
    state: watch::Receiver<KeyState>,
}

impl KeySecret {
    pub fn start(
        client: kube::Client,
        namespace: &str,
        name: &str,
        shutdown: CancellationToken,
    ) -> (KeySecret, JoinHandle<()>) {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let (tx, rx) = watch::channel(KeyState::Unknown);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(api.clone(), config).default_backoff();
        let label = format!("{namespace}/{name}");
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut listed: Option<Secret> = None;
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    e = stream.next() => match e { Some(e) => e, None => break },
                };
                match event {
                    Ok(Event::Init) => listed = None,
                    Ok(Event::InitApply(s)) => listed = Some(s),
                    Ok(Event::InitDone) => {
                        let _ = tx.send(listed.take().map_or(KeyState::Missing, |s| state_of(&label, &s)));
                    }
                    Ok(Event::Apply(s)) => {
                        let _ = tx.send(state_of(&label, &s));
                    }
                    Ok(Event::Delete(_)) => {
                        let _ = tx.send(KeyState::Missing);
                    }
                    Err(e) => {
                        tracing::warn!(secret = %label, error = %e, "watching the session key Secret failed; retrying")
                    }
                }
            }
        });
        (KeySecret { api, name: name.to_string(), state: rx }, task)
    }

    pub fn subscribe(&self) -> watch::Receiver<KeyState> {
        self.state.clone()
    }

    pub fn state(&self) -> KeyState {
        self.state.borrow().clone()
    }

    /// Creates the Secret with a fresh key ring (leader only). Another replica winning the race is fine.
    pub async fn create(&self) -> Result<(), kube::Error> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([("app.kubernetes.io/name".to_string(), "sessile".to_string())])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                KEYRING_KEY.to_string(),
                ByteString(KeyRing::generate().to_file_text().into_bytes()),
            )])),
            ..Secret::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %self.name, "created the session key Secret");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn state_of(label: &str, secret: &Secret) -> KeyState {
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(KEYRING_KEY)) else {
        let msg = format!("Secret {label} has no data key {KEYRING_KEY:?}");
        tracing::error!("{msg}; the previous key ring stays in use");
        return KeyState::Invalid(msg);
    };
    let parsed = std::str::from_utf8(&bytes.0)
        .map_err(|e| e.to_string())
        .and_then(|t| KeyRing::parse(t).map_err(|e| e.to_string()));
    match parsed {
        Ok(ring) => KeyState::Present(Arc::new(ring)),
        Err(e) => {
            let msg = format!("Secret {label} key {KEYRING_KEY:?} is not a key ring: {e}");
            tracing::error!("{msg}; the previous key ring stays in use");
            KeyState::Invalid(msg)
        }
    }
}
