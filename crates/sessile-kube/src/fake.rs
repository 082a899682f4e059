//! An in-process fake Kubernetes API server on 127.0.0.1 for tests: list, watch (with bookmarks), get,
//! create, replace, merge patch (main resource and `/status`), delete, and 404 for kinds not installed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// One kind the fake server knows.
#[derive(Debug, Clone)]
pub struct FakeKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// Has a `/status` subresource: writes to the main resource keep the status, and vice versa.
    pub has_status: bool,
}

impl FakeKind {
    fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
}

/// Every kind Sessile's controller reads or writes.
pub fn all_kinds() -> Vec<FakeKind> {
    let k = |group, version, kind, plural, namespaced, has_status| FakeKind {
        group,
        version,
        kind,
        plural,
        namespaced,
        has_status,
    };
    vec![
        k("", "v1", "Service", "services", true, true),
        k("", "v1", "Secret", "secrets", true, false),
        k("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true, false),
        k("coordination.k8s.io", "v1", "Lease", "leases", true, false),
        k("gateway.networking.k8s.io", "v1", "GatewayClass", "gatewayclasses", false, true),
        k("gateway.networking.k8s.io", "v1", "Gateway", "gateways", true, true),
        k("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes", true, true),
        k("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes", true, true),
        k("gateway.networking.k8s.io", "v1beta1", "ReferenceGrant", "referencegrants", true, false),
        k("gateway.networking.k8s.io", "v1alpha2", "BackendLBPolicy", "backendlbpolicies", true, true),
        k("gateway.networking.x-k8s.io", "v1alpha1", "XBackendTrafficPolicy", "xbackendtrafficpolicies", true, true),
    ]
}

/// A mutating request the server accepted, for assertions (who wrote what).
#[derive(Debug, Clone)]
pub struct Write {
    /// The `x-fake-client` request header, or empty.
    pub client: String,
    pub method: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The request went to the `/status` subresource.
    pub status: bool,
}

#[derive(Clone)]
struct Event {
    rv: u64,
    plural: &'static str,
    group: &'static str,
    kind: &'static str,
    object: Value,
}

struct Inner {
    rv: u64,
    kinds: Vec<FakeKind>,
    /// (group, plural, namespace, name) -> object.
    objects: BTreeMap<(String, String, String, String), Value>,
    /// Every event since start, so that a watch from any resourceVersion can be replayed.
    log: Vec<Event>,
    writes: Vec<Write>,
    /// Watches from a resourceVersion older than this get `410 Gone` (history compacted away).
    compacted: u64,
    /// Cancelled to end every open watch (as an API server restart would); replaced each time.
    watches: CancellationToken,
    /// This many upcoming `/status` writes fail with 409 Conflict (as if someone else wrote first).
    fail_status: usize,
}

struct State {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server; stops when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A failed request in the API's `Status` shape.
struct ApiError(StatusCode, &'static str, String);

type Reply = Response<Body>;

impl FakeApi {
    /// Starts a server with every kind installed.
    pub async fn start() -> anyhow::Result<FakeApi> {
        FakeApi::start_with(all_kinds()).await
    }

    /// Starts a server with every kind installed except the given plurals (404 for those, like a missing CRD).
    pub async fn start_without(plurals: &[&str]) -> anyhow::Result<FakeApi> {
        FakeApi::start_with(all_kinds().into_iter().filter(|k| !plurals.contains(&k.plural)).collect()).await
    }

    pub async fn start_with(kinds: Vec<FakeKind>) -> anyhow::Result<FakeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                rv: 1,
                kinds,
                objects: BTreeMap::new(),
                log: Vec::new(),
                writes: Vec::new(),
                compacted: 0,
                watches: CancellationToken::new(),
                fail_status: 0,
            }),
            events: broadcast::channel(4096).0,
        });
        let stop = CancellationToken::new();
        let (st, token) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = token.cancelled() => break,
                    c = listener.accept() => c,
                };
                let Ok((stream, _)) = conn else { continue };
                let (st, token) = (st.clone(), token.clone());
                tokio::spawn(async move {
                    let stop = token.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let (st, token) = (st.clone(), stop.clone());
                        async move { Ok::<_, Infallible>(handle(&st, req, token).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {},
                        _ = token.cancelled() => {},
                    }
                });
            }
        });
        Ok(FakeApi { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client for this server; `tag` is sent as `x-fake-client` so writes can be attributed.
    pub fn client(&self, tag: &str) -> anyhow::Result<kube::Client> {
        let mut config = kube::Config::new(self.url().parse()?);
        config.headers.push((http::HeaderName::from_static("x-fake-client"), http::HeaderValue::from_str(tag)?));
        config.connect_timeout = Some(Duration::from_secs(2));
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates or replaces an object (apiVersion/kind/metadata/...), as `kubectl apply` would; returns it as stored.
    pub fn apply(&self, object: Value) -> anyhow::Result<Value> {
        let kind = self.kind_of(&object)?;
        let ns = object_namespace(&kind, &object);
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let mut inner = self.state.lock();
        let key = (kind.group.to_string(), kind.plural.to_string(), ns.clone(), name);
        let stored = if inner.objects.contains_key(&key) {
            write_object(&self.state, &mut inner, &kind, &key, object, WriteMode::Replace)
        } else {
            create_object(&self.state, &mut inner, &kind, &ns, object)
        };
        stored.map_err(|ApiError(_, _, m)| anyhow::anyhow!(m))
    }

    /// Applies every document of a multi-document YAML text.
    pub fn apply_yaml(&self, text: &str) -> anyhow::Result<()> {
        for (_, doc) in sessile_config::load::split_documents(text) {
            let value: Value = serde_saphyr::from_str(doc)?;
            if !value.is_null() {
                self.apply(value)?;
            }
        }
        Ok(())
    }

    /// Deletes an object; `kind` is the Kind (`Service`), `namespace` empty for cluster-scoped kinds.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let mut inner = self.state.lock();
        let Some(k) = inner.kinds.iter().find(|k| k.kind == kind).cloned() else { return false };
        let key = (k.group.to_string(), k.plural.to_string(), namespace.to_string(), name.to_string());
        delete_object(&self.state, &mut inner, &k, &key).is_ok()
    }

    /// Merges `status` into an object's status, as another controller writing through `/status` would.
    pub fn patch_status(&self, kind: &str, namespace: &str, name: &str, status: Value) -> anyhow::Result<Value> {
        let mut inner = self.state.lock();
        let k =
            inner.kinds.iter().find(|k| k.kind == kind).cloned().ok_or_else(|| anyhow::anyhow!("no kind {kind}"))?;
        let key = (k.group.to_string(), k.plural.to_string(), namespace.to_string(), name.to_string());
        write_object(&self.state, &mut inner, &k, &key, json!({"status": status}), WriteMode::MergeStatus)
            .map_err(|ApiError(_, _, m)| anyhow::anyhow!(m))
    }

    /// Makes the next `n` writes to `/status` subresources fail with 409 Conflict.
    pub fn fail_status_writes(&self, n: usize) {
        self.state.lock().fail_status = n;
    }

    /// Deletes an object without telling any watcher (an event lost while a client was away).
    pub fn delete_unseen(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let mut inner = self.state.lock();
        let Some(k) = inner.kinds.iter().find(|k| k.kind == kind).cloned() else { return false };
        let key = (k.group.to_string(), k.plural.to_string(), namespace.to_string(), name.to_string());
        inner.rv += 1;
        inner.objects.remove(&key).is_some()
    }

    /// Forgets the event history and ends every open watch: clients resuming from an old resourceVersion
    /// get `410 Gone` and must list again.
    pub fn compact_and_drop_watches(&self) {
        let mut inner = self.state.lock();
        inner.compacted = inner.rv;
        inner.log.clear();
        let old = std::mem::replace(&mut inner.watches, CancellationToken::new());
        old.cancel();
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.state.lock();
        let k = inner.kinds.iter().find(|k| k.kind == kind)?;
        let key = (k.group.to_string(), k.plural.to_string(), namespace.to_string(), name.to_string());
        inner.objects.get(&key).cloned()
    }

    /// Every accepted mutating request so far.
    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().writes.clone()
    }

    /// Accepted writes to `/status` subresources.
    pub fn status_writes(&self) -> Vec<Write> {
        self.writes().into_iter().filter(|w| w.status).collect()
    }

    fn kind_of(&self, object: &Value) -> anyhow::Result<FakeKind> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        self.state
            .lock()
            .kinds
            .iter()
            .find(|k| k.group == group && k.kind == kind)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("kind {kind} in {api_version} is not installed"))
    }
}

fn object_namespace(kind: &FakeKind, object: &Value) -> String {
    match kind.namespaced {
        true => object["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default").to_string(),
        false => String::new(),
    }
}

/// Parsed request path.
struct Target {
    kind: FakeKind,
    /// Namespace from the path; `None` for cluster-wide collection requests and cluster-scoped kinds.
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(inner: &Inner, path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found(format!("the server could not find the requested resource ({path})"))),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (*p, None, false),
        [p, n] => (*p, Some(n.to_string()), false),
        [p, n, "status"] => (*p, Some(n.to_string()), true),
        _ => return Err(not_found(format!("the server could not find the requested resource ({path})"))),
    };
    let kind = inner
        .kinds
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
        .cloned()
        .ok_or_else(|| not_found(format!("the server could not find the requested resource ({path})")))?;
    if kind.namespaced && name.is_some() && namespace.is_none() {
        return Err(not_found(format!("{plural} is namespaced: {path}")));
    }
    Ok(Target { kind, namespace, name, status })
}

fn not_found(message: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "NotFound", message)
}

async fn handle(state: &Arc<State>, req: Request<Incoming>, stop: CancellationToken) -> Reply {
    match handle_inner(state, req, stop).await {
        Ok(r) => r,
        Err(ApiError(code, reason, message)) => json_reply(
            code,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": message, "reason": reason, "code": code.as_u16()}),
        ),
    }
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in req.uri().query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(k.to_string(), sessile_core::matching::percent_decode(v));
    }
    out
}

async fn handle_inner(state: &Arc<State>, req: Request<Incoming>, stop: CancellationToken) -> Result<Reply, ApiError> {
    let q = query(&req);
    let method = req.method().clone();
    let client = req.headers().get("x-fake-client").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let content_type = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let content_type = content_type.to_string();
    let target = parse_path(&state.lock(), req.uri().path())?;
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body_json = || -> Result<Value, ApiError> {
        serde_json::from_slice(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))
    };
    let kind = target.kind.clone();
    let ns = if kind.namespaced { target.namespace.clone() } else { Some(String::new()) };
    match (method, &target.name) {
        (Method::GET, None) if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) => {
            Ok(watch(state, &target, &q, stop))
        }
        (Method::GET, None) => Ok(list(state, &target, &q)),
        (Method::GET, Some(name)) => {
            let inner = state.lock();
            let key = (kind.group.to_string(), kind.plural.to_string(), ns.unwrap_or_default(), name.clone());
            match inner.objects.get(&key) {
                Some(o) => Ok(json_reply(StatusCode::OK, o)),
                None => Err(not_found(format!("{} \"{name}\" not found", kind.plural))),
            }
        }
        (Method::POST, None) => {
            let mut object = body_json()?;
            let ns = ns.unwrap_or_default();
            if kind.namespaced {
                object["metadata"]["namespace"] = json!(ns);
            }
            let mut inner = state.lock();
            let created = create_object(state, &mut inner, &kind, &ns, object)?;
            record(&mut inner, &client, "POST", &kind, &created, false);
            Ok(json_reply(StatusCode::CREATED, &created))
        }
        (method @ (Method::PUT | Method::PATCH | Method::DELETE), Some(name)) => {
            let key = (kind.group.to_string(), kind.plural.to_string(), ns.unwrap_or_default(), name.clone());
            let mut inner = state.lock();
            if !inner.objects.contains_key(&key) {
                return Err(not_found(format!("{} \"{name}\" not found", kind.plural)));
            }
            if target.status && inner.fail_status > 0 {
                inner.fail_status -= 1;
                return Err(ApiError(StatusCode::CONFLICT, "Conflict", format!("{name}: injected conflict")));
            }
            let result = match method {
                Method::DELETE => delete_object(state, &mut inner, &kind, &key)?,
                Method::PATCH if content_type.starts_with("application/merge-patch+json") => {
                    let mode = if target.status { WriteMode::MergeStatus } else { WriteMode::Merge };
                    write_object(state, &mut inner, &kind, &key, body_json()?, mode)?
                }
                Method::PATCH => {
                    return Err(ApiError(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("the fake server speaks merge patch only, not {content_type}"),
                    ));
                }
                _ => {
                    let mode = if target.status { WriteMode::ReplaceStatus } else { WriteMode::Replace };
                    write_object(state, &mut inner, &kind, &key, body_json()?, mode)?
                }
            };
            record(&mut inner, &client, method.as_str(), &kind, &result, target.status);
            Ok(json_reply(StatusCode::OK, &result))
        }
        (m, _) => Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{m} not supported here"))),
    }
}

fn record(inner: &mut Inner, client: &str, method: &str, kind: &FakeKind, object: &Value, status: bool) {
    inner.writes.push(Write {
        client: client.to_string(),
        method: method.to_string(),
        kind: kind.kind.to_string(),
        namespace: object["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
        name: object["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        status,
    });
}

fn create_object(
    state: &State,
    inner: &mut Inner,
    kind: &FakeKind,
    ns: &str,
    mut object: Value,
) -> Result<Value, ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if name.is_empty() {
        return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name is required".into()));
    }
    let key = (kind.group.to_string(), kind.plural.to_string(), ns.to_string(), name.clone());
    if inner.objects.contains_key(&key) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{}.{} \"{name}\" already exists", kind.plural, kind.group),
        ));
    }
    inner.rv += 1;
    let rv = inner.rv;
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.kind);
    let meta = &mut object["metadata"];
    if kind.namespaced {
        meta["namespace"] = json!(ns);
    }
    meta["resourceVersion"] = json!(rv.to_string());
    meta["uid"] = json!(format!("uid-{rv}"));
    meta["generation"] = json!(1);
    if meta.get("creationTimestamp").is_none_or(Value::is_null) {
        meta["creationTimestamp"] =
            json!(sessile_config::resources::format_timestamp(sessile_config::load::now_secs()));
    }
    inner.objects.insert(key, object.clone());
    publish(state, inner, kind, rv, "ADDED", &object);
    Ok(object)
}

#[derive(Clone, Copy, PartialEq)]
enum WriteMode {
    Replace,
    ReplaceStatus,
    Merge,
    MergeStatus,
}

fn write_object(
    state: &State,
    inner: &mut Inner,
    kind: &FakeKind,
    key: &(String, String, String, String),
    body: Value,
    mode: WriteMode,
) -> Result<Value, ApiError> {
    let old = inner.objects.get(key).cloned().ok_or_else(|| not_found(format!("{} not found", key.3)))?;
    let current_rv = old["metadata"]["resourceVersion"].clone();
    // Optimistic concurrency: a given resourceVersion must match the stored one.
    if let Some(rv) = body["metadata"].get("resourceVersion").filter(|v| !v.is_null())
        && *rv != current_rv
    {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}.{} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                kind.plural, kind.group, key.3
            ),
        ));
    }
    let mut new = match mode {
        WriteMode::Replace | WriteMode::ReplaceStatus => body.clone(),
        WriteMode::Merge | WriteMode::MergeStatus => {
            let mut merged = old.clone();
            merge_patch(&mut merged, &body);
            merged
        }
    };
    let status_only = matches!(mode, WriteMode::ReplaceStatus | WriteMode::MergeStatus);
    if kind.has_status {
        if status_only {
            // Only the status changes through the subresource.
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        } else {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
    }
    // Identity fields are the server's.
    new["apiVersion"] = json!(kind.api_version());
    new["kind"] = json!(kind.kind);
    for field in ["namespace", "name", "uid", "creationTimestamp", "generation"] {
        match old["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    new["metadata"]["resourceVersion"] = current_rv;
    if new == old {
        // A no-op write changes nothing, not even the resourceVersion (as the real server does).
        return Ok(old);
    }
    let spec_changed = {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("status");
                o.remove("metadata");
            }
            v
        };
        strip(&new) != strip(&old)
    };
    if spec_changed {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(g + 1);
    }
    inner.rv += 1;
    let rv = inner.rv;
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    inner.objects.insert(key.clone(), new.clone());
    publish(state, inner, kind, rv, "MODIFIED", &new);
    Ok(new)
}

fn delete_object(
    state: &State,
    inner: &mut Inner,
    kind: &FakeKind,
    key: &(String, String, String, String),
) -> Result<Value, ApiError> {
    let mut old = inner.objects.remove(key).ok_or_else(|| not_found(format!("{} not found", key.3)))?;
    inner.rv += 1;
    let rv = inner.rv;
    old["metadata"]["resourceVersion"] = json!(rv.to_string());
    publish(state, inner, kind, rv, "DELETED", &old);
    Ok(old)
}

/// Records and broadcasts an event; called with the lock held so the log and the broadcast agree.
fn publish(state: &State, inner: &mut Inner, kind: &FakeKind, rv: u64, kind_of_event: &'static str, object: &Value) {
    let event = Event { rv, plural: kind.plural, group: kind.group, kind: kind_of_event, object: object.clone() };
    inner.log.push(event.clone());
    let _ = state.events.send(event);
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Whether an object matches the request's namespace and `fieldSelector` (`a.b=c,d!=e`).
fn matches(target: &Target, q: &BTreeMap<String, String>, object: &Value) -> bool {
    if let Some(ns) = &target.namespace
        && target.kind.namespaced
        && object["metadata"]["namespace"].as_str() != Some(ns.as_str())
    {
        return false;
    }
    let Some(selector) = q.get("fieldSelector").filter(|s| !s.is_empty()) else { return true };
    selector.split(',').all(|term| {
        let (path, want, negate) = match term.split_once("!=") {
            Some((p, w)) => (p, w, true),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((p, w)) => (p, w, false),
                None => return true,
            },
        };
        let mut v = object;
        for part in path.split('.') {
            v = &v[part];
        }
        (v.as_str().unwrap_or_default() == want) != negate
    })
}

fn list(state: &State, target: &Target, q: &BTreeMap<String, String>) -> Reply {
    let inner = state.lock();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((g, p, _, _), _)| g == target.kind.group && p == target.kind.plural)
        .map(|(_, o)| o)
        .filter(|o| matches(target, q, o))
        .cloned()
        .collect();
    let body = json!({
        "apiVersion": target.kind.api_version(),
        "kind": format!("{}List", target.kind.kind),
        "metadata": {"resourceVersion": inner.rv.to_string()},
        "items": items,
    });
    json_reply(StatusCode::OK, &body)
}

fn watch(state: &Arc<State>, target: &Target, q: &BTreeMap<String, String>, stop: CancellationToken) -> Reply {
    let since: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q.get("timeoutSeconds").and_then(|v| v.parse::<u64>().ok()).unwrap_or(290);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let (mut events, replay, start_rv, dropped) = {
        let inner = state.lock();
        if since != 0 && since < inner.compacted {
            // As the real server does: a 200 stream carrying one ERROR event with a 410 Status.
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {since} ({})", inner.compacted)}});
            return Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::Full(Full::new(Bytes::from(format!("{gone}\n")))))
                .unwrap_or_else(|_| Response::new(Body::Full(Full::new(Bytes::new()))));
        }
        let events = state.events.subscribe();
        let replay: Vec<Event> = if since == 0 {
            // resourceVersion 0 or absent: start with the current objects as ADDED.
            inner
                .objects
                .iter()
                .filter(|((g, p, _, _), _)| g == target.kind.group && p == target.kind.plural)
                .map(|(_, o)| Event {
                    rv: inner.rv,
                    plural: target.kind.plural,
                    group: target.kind.group,
                    kind: "ADDED",
                    object: o.clone(),
                })
                .collect()
        } else {
            inner.log.iter().filter(|e| e.rv > since).cloned().collect()
        };
        (events, replay, inner.rv, inner.watches.clone())
    };
    let target = Target { kind: target.kind.clone(), namespace: target.namespace.clone(), name: None, status: false };
    let q = q.clone();
    let state = state.clone();
    tokio::spawn(async move {
        let wanted = |e: &Event| e.group == target.kind.group && e.plural == target.kind.plural;
        let line = |e: &Event| {
            let mut text = json!({"type": e.kind, "object": e.object}).to_string();
            text.push('\n');
            Bytes::from(text)
        };
        let mut last = since;
        for e in replay.iter().filter(|e| wanted(e) && matches(&target, &q, &e.object)) {
            last = last.max(e.rv);
            if tx.send(line(e)).await.is_err() {
                return;
            }
        }
        last = last.max(start_rv);
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = stop.cancelled() => break,
                _ = dropped.cancelled() => break,
                _ = tx.closed() => break,
                got = events.recv() => match got {
                    Ok(e) if e.rv <= start_rv => {}
                    Ok(e) => {
                        last = last.max(e.rv);
                        if wanted(&e) && matches(&target, &q, &e.object) && tx.send(line(&e)).await.is_err() {
                            break;
                        }
                    }
                    // Lagged or closed: end the stream; the client resumes from its last resourceVersion.
                    Err(_) => break,
                },
                _ = tick.tick(), if bookmarks => {
                    let now = state.lock().rv;
                    // Deliver everything up to `now` before telling the client it has seen `now`.
                    while let Ok(e) = events.try_recv() {
                        if e.rv <= start_rv {
                            continue;
                        }
                        last = last.max(e.rv);
                        if wanted(&e) && matches(&target, &q, &e.object) && tx.send(line(&e)).await.is_err() {
                            return;
                        }
                    }
                    let rv = last.max(now);
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "apiVersion": target.kind.api_version(), "kind": target.kind.kind,
                        "metadata": {"resourceVersion": rv.to_string()}}});
                    if tx.send(Bytes::from(format!("{bookmark}\n"))).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::Stream(rx))
        .unwrap_or_else(|_| Response::new(Body::Full(Full::new(Bytes::new()))))
}

fn json_reply(code: StatusCode, value: &Value) -> Reply {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::Full(Full::new(Bytes::from(value.to_string()))))
        .unwrap_or_else(|_| Response::new(Body::Full(Full::new(Bytes::new()))))
}

/// A whole response, or a watch stream fed by a channel.
enum Body {
    Full(Full<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(f) => Pin::new(f).poll_frame(cx),
            Body::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut v = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut v, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(v, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn percent_decoding() {
        use sessile_core::matching::percent_decode;
        assert_eq!(percent_decode("metadata.name%3Dkeys%2Cx"), "metadata.name=keys,x");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
