//! Reflectors: one list+watch per kind into an in-memory store, first-sync tracking, change notification,
//! and the conversion of the stores into `Resources` through the same loader file mode uses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::{Value, json};
use sessile_config::resources::{Object, Origin, Resources};
use sessile_config::{CONTROLLER_NAME, Loader};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kinds::{Kind, WATCHED};

/// Counters that move when the watched objects change, and whether every kind finished its first list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Versions {
    /// Moves when anything translation reads changed (spec, metadata, data, endpoints).
    pub config: u64,
    /// Moves when only a `status` changed (ours being written back, or a Service's load balancer).
    pub status: u64,
    /// Every kind has completed its first list (missing optional CRDs count as listed and empty).
    pub synced: bool,
}

#[derive(Default)]
struct KindStore {
    objects: BTreeMap<String, Value>,
    synced: bool,
    /// The CRD is not installed (404 on list); logged once.
    missing: bool,
}

struct Stores {
    kinds: Vec<KindStore>,
    versions: Versions,
}

/// The watched cluster state, shared by the translation loop and the status writer.
#[derive(Clone)]
pub struct Cluster {
    stores: Arc<Mutex<Stores>>,
    changes: Arc<watch::Sender<Versions>>,
}

impl Cluster {
    /// Starts one reflector per watched kind; they stop when `shutdown` is cancelled.
    pub fn start(client: kube::Client, shutdown: CancellationToken) -> (Cluster, Vec<JoinHandle<()>>) {
        let cluster = Cluster {
            stores: Arc::new(Mutex::new(Stores {
                kinds: WATCHED.iter().map(|_| KindStore::default()).collect(),
                versions: Versions::default(),
            })),
            changes: Arc::new(watch::channel(Versions::default()).0),
        };
        let tasks = WATCHED
            .iter()
            .enumerate()
            .map(|(index, kind)| {
                let (cluster, client, shutdown) = (cluster.clone(), client.clone(), shutdown.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {},
                        _ = cluster.reflect(client, index, *kind) => {},
                    }
                })
            })
            .collect();
        (cluster, tasks)
    }

    pub fn subscribe(&self) -> watch::Receiver<Versions> {
        self.changes.subscribe()
    }

    pub fn versions(&self) -> Versions {
        self.lock().versions
    }

    fn lock(&self) -> MutexGuard<'_, Stores> {
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One object as last seen, with its status; `namespace` is ignored for cluster-scoped kinds.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let index = WATCHED.iter().position(|k| k.kind == kind)?;
        let key = store_key(&WATCHED[index], namespace, name);
        self.lock().kinds[index].objects.get(&key).cloned()
    }

    /// The typed resources translation reads, built by the same loader as file mode, and the objects
    /// that could not be used (one message each, naming the object).
    pub fn resources(&self, loader: &mut Loader) -> (Resources, Vec<String>) {
        let objects: Vec<Value> = {
            let stores = self.lock();
            stores.kinds.iter().flat_map(|k| k.objects.values().cloned()).collect()
        };
        let now = sessile_config::load::now_secs();
        let mut resources = Resources::default();
        let mut errors = Vec::new();
        for object in objects {
            if let Err((what, message)) = loader.add_value(object, Origin::Cluster, now, &mut resources) {
                errors.push(format!("{}: {message}", what.unwrap_or_else(|| "object".into())));
            }
        }
        disown_classless_gateways(&mut resources);
        (resources, errors)
    }

    /// Applies one store change and moves the right counter.
    fn update(&self, index: usize, change: impl FnOnce(&mut KindStore) -> Change) {
        let mut stores = self.lock();
        let change = change(&mut stores.kinds[index]);
        let synced = stores.kinds.iter().all(|k| k.synced);
        let v = &mut stores.versions;
        match change {
            Change::Config => v.config += 1,
            Change::Status => v.status += 1,
            Change::None => {}
        }
        v.synced = synced;
        let versions = *v;
        // Sent with the lock still held: reflectors update concurrently, and a send made after the lock
        // is released can land after a newer one, leaving a stale value (say, not yet synced) for good.
        self.changes.send_if_modified(|cur| {
            let moved = *cur != versions;
            *cur = versions;
            moved
        });
    }

    async fn reflect(&self, client: kube::Client, index: usize, kind: Kind) {
        let api: Api<DynamicObject> = Api::all_with(client, &kind.api_resource());
        let mut config = watcher::Config::default();
        if let Some(fields) = kind.fields {
            config = config.fields(fields);
        }
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
        let mut buffer: BTreeMap<String, Value> = BTreeMap::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => buffer.clear(),
                Ok(Event::InitApply(o)) => {
                    let (key, value) = to_value(&kind, o);
                    buffer.insert(key, value);
                }
                Ok(Event::InitDone) => {
                    let objects = std::mem::take(&mut buffer);
                    self.update(index, |store| {
                        if store.missing {
                            tracing::info!(kind = kind.kind, "resource is now served; reading it");
                        }
                        store.missing = false;
                        store.synced = true;
                        let changed = relevant_map(&store.objects) != relevant_map(&objects);
                        store.objects = objects;
                        if changed { Change::Config } else { Change::Status }
                    });
                }
                Ok(Event::Apply(o)) => {
                    let (key, value) = to_value(&kind, o);
                    self.update(index, |store| {
                        let change = match store.objects.get(&key) {
                            Some(old) if relevant(old) == relevant(&value) => Change::Status,
                            _ => Change::Config,
                        };
                        store.objects.insert(key, value);
                        change
                    });
                }
                Ok(Event::Delete(o)) => {
                    let (key, _) = to_value(&kind, o);
                    self.update(index, |store| match store.objects.remove(&key) {
                        Some(_) => Change::Config,
                        None => Change::None,
                    });
                }
                Err(e) if kind.optional && is_not_found(&e) => self.update(index, |store| {
                    if !store.missing {
                        tracing::warn!(
                            kind = kind.kind,
                            api_version = %kind.api_version(),
                            "resource is not served by this cluster (CRD not installed?); treating it as empty"
                        );
                    }
                    store.missing = true;
                    store.synced = true;
                    match std::mem::take(&mut store.objects).is_empty() {
                        true => Change::None,
                        false => Change::Config,
                    }
                }),
                Err(e) => tracing::warn!(kind = kind.kind, error = %e, "watch failed; retrying"),
            }
        }
    }
}

enum Change {
    Config,
    Status,
    None,
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

fn store_key(kind: &Kind, namespace: &str, name: &str) -> String {
    if kind.namespaced { format!("{namespace}/{name}") } else { name.to_string() }
}

/// The object as JSON with its apiVersion and kind (list items come without them), minus managedFields.
fn to_value(kind: &Kind, object: DynamicObject) -> (String, Value) {
    let key = store_key(
        kind,
        object.metadata.namespace.as_deref().unwrap_or_default(),
        object.metadata.name.as_deref().unwrap_or_default(),
    );
    let mut value = serde_json::to_value(&object).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("apiVersion".into(), json!(kind.api_version()));
        map.insert("kind".into(), json!(kind.kind));
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.remove("managedFields");
        }
    }
    (key, value)
}

/// What translation reads of an object: all but its status and bookkeeping metadata.
fn relevant(object: &Value) -> Value {
    let mut v = object.clone();
    if let Value::Object(map) = &mut v {
        map.remove("status");
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
    }
    v
}

fn relevant_map(objects: &BTreeMap<String, Value>) -> BTreeMap<&String, Value> {
    objects.iter().map(|(k, v)| (k, relevant(v))).collect()
}

/// In a cluster a Gateway whose GatewayClass does not exist belongs to no controller (in file mode it is
/// Sessile's, as GatewayClass is optional there): a stand-in class owned by nobody makes translation skip it,
/// and routes attached to it get no status entry from us.
fn disown_classless_gateways(resources: &mut Resources) {
    let mut missing: Vec<String> = resources
        .gateways
        .iter()
        .map(|g| g.spec.gateway_class_name.clone())
        .filter(|name| !resources.gateway_classes.iter().any(|c| &c.meta.name == name))
        .collect();
    missing.sort();
    missing.dedup();
    for name in missing {
        let spec = serde_json::from_value(json!({"controllerName": format!("{CONTROLLER_NAME}/absent-class")}));
        let Ok(spec) = spec else { continue };
        resources.gateway_classes.push(Object {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "GatewayClass".into(),
            meta: serde_json::from_value(json!({"name": name})).unwrap_or_default(),
            namespace: "default".into(),
            created: 0,
            spec,
            origin: Origin::Cluster,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_without_a_class_is_nobodys_in_a_cluster() {
        let mut loader = Loader::new();
        let mut res = Resources::default();
        let gateway = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "default"},
            "spec": {"gatewayClassName": "unknown", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}});
        let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}});
        for v in [gateway, route] {
            loader.add_value(v, Origin::Cluster, 0, &mut res).unwrap();
        }
        // File mode serves it (GatewayClass is optional there) ...
        let t = sessile_config::translate(&res, &sessile_config::TranslateOptions::default());
        assert!(t.statuses.iter().any(|s| s.kind == "Gateway"));
        // ... the cluster view does not, and the route gets no entry of ours.
        disown_classless_gateways(&mut res);
        let t = sessile_config::translate(&res, &sessile_config::TranslateOptions::default());
        assert!(!t.statuses.iter().any(|s| s.kind == "Gateway" || s.kind == "GatewayClass"), "{:?}", t.statuses);
        assert!(t.snapshot.ports.is_empty());
        let route = t.statuses.iter().find(|s| s.kind == "HTTPRoute").expect("route status");
        assert_eq!(route.status.to_value()["parents"], json!([]));
    }
}
