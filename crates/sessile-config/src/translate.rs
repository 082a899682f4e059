//! The one pure step shared by file and Kubernetes modes: `translate(resources) -> (snapshot, statuses)`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gateway_api::experimental::gateways::{GatewayListeners, GatewaySpec};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde_json::Value;
use sessile_core::hostname::HostPattern;
use sessile_core::matching::{
    HeaderMatch, MatchEntry, MatchSummary, PathMatch, QueryMatch, RequestMatch, RouteTable, StringMatch,
};
use sessile_core::{
    Backend, BackendTarget, Certificate, Endpoint, EndpointState, Filter, HeaderMods, ListenerProtocol, PathModifier,
    PortConfig, Redirect, RouteRef, Rule, SessionCarrier, SessionPolicy, SessionSource, Snapshot, Timeouts,
    UpstreamProtocol, UrlRewrite, WeightedBackend, duration,
};
use sessile_session::naming::generated_session_name;

use crate::persistence::{self, CarrierKind, PersistenceSpec};
use crate::raw::{self, BackendRef, RouteFilter, RouteSpec};
use crate::resources::{Object, Resources};
use crate::status::{
    Conditions, ListenerStatus, ParentRef, ParentStatus, ResourceStatus, RouteGroupKind, Status, StatusMeta, parent_ref,
};

/// The controller name Sessile answers to.
pub const CONTROLLER_NAME: &str = "sessile.dev/gateway-controller";
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const MAX_WEIGHT: i64 = 1_000_000;

/// Inputs to translation that do not come from resources.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// Secret salt for generated session names and token hashes (from the key ring).
    pub naming_salt: Vec<u8>,
    /// Grace period for endpoints that vanish from configuration.
    pub drain_grace: Duration,
    /// Snapshot version.
    pub version: u64,
    /// RFC 3339 time written as `lastTransitionTime`.
    pub now: String,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            naming_salt: Vec::new(),
            drain_grace: Duration::from_secs(300),
            version: 1,
            now: "1970-01-01T00:00:00Z".into(),
        }
    }
}

/// The result of translation.
#[derive(Debug)]
pub struct Translation {
    pub snapshot: Snapshot,
    pub statuses: Vec<ResourceStatus>,
}

/// Translates resources into a runtime snapshot and the status of every resource.
pub fn translate(res: &Resources, opts: &TranslateOptions) -> Translation {
    Translator::new(res, opts).run()
}

/// A backendRef that did not resolve: (status reason, message).
type Unresolved = (String, String);
/// A route's rules after compilation: valid rules, "Dropped Rule" messages, unresolved backendRefs.
type CompiledRoute = (Vec<CompiledRule>, Vec<String>, Vec<Unresolved>);
type BackendResult = Result<Arc<Backend>, Unresolved>;
/// (namespace, name, port, gRPC) of a Service port a backendRef names.
type BackendKey<'a> = (&'a str, &'a str, i32, bool);
/// (listener index, effective hostname) pairs of an attachment.
type ListenerHosts = Vec<(usize, HostPattern)>;
/// (route index, rule index).
type RuleKey = (usize, usize);
/// Per rule: its session policy, none, or `Err` when the rule lost a name conflict and is dropped.
type ScopedSessions = HashMap<RuleKey, Result<Option<Arc<SessionPolicy>>, String>>;
/// A scope: its config, source, name claim and the rules that use it.
type ScopeEntry = (PersistenceSpec, SessionSource, Claim, Vec<RuleKey>);

/// A listener after validation.
struct ListenerCtx {
    gateway: usize,
    name: String,
    port: i32,
    protocol: ListenerProtocol,
    hostname: HostPattern,
    bind: SocketAddr,
    allowed_ns: AllowedNamespaces,
    allowed_kinds: Vec<String>,
    certificates: Vec<Arc<Certificate>>,
    programmed: bool,
    attached: i32,
    conditions: Conditions,
}

enum AllowedNamespaces {
    Same,
    All,
    /// `Selector` needs Namespace objects, which Sessile does not read: nothing matches.
    Selector,
}

/// A route rule that compiled, before per-gateway session scoping.
struct CompiledRule {
    index: usize,
    name: Option<String>,
    matches: Vec<RequestMatch>,
    /// GRPCRoute only: (service, method) characters of each match, for precedence.
    grpc_chars: Vec<(usize, usize)>,
    filters: Vec<Filter>,
    backends: Vec<PendingBackend>,
    timeouts: Timeouts,
    persistence: Option<PersistenceSpec>,
}

struct PendingBackend {
    weight: u32,
    target: PendingTarget,
    filters: Vec<Filter>,
}

#[derive(Clone)]
enum PendingTarget {
    /// `service_key`: `namespace/name`, shared by every backendRef to the Service.
    Service {
        backend: Arc<Backend>,
        service_key: Arc<str>,
    },
    Invalid(String),
}

/// One (route, gateway) attachment with the listeners it got.
struct Attachment {
    route: usize,
    /// Index of the parentRef status entry of this attachment.
    parent: usize,
    gateway: usize,
    hostnames: ListenerHosts,
}

/// A session scope claiming a cookie/header name on one gateway.
struct Claim {
    scope_identity: String,
    name_key: String,
    hostnames: Vec<HostPattern>,
    priority: (bool, i64, String, usize),
    owner: ClaimOwner,
}

#[derive(Clone, PartialEq, Eq)]
enum ClaimOwner {
    Rule { route: usize, rule: usize },
    Policy { policy: usize },
}

struct Translator<'a> {
    res: &'a Resources,
    opts: &'a TranslateOptions,
    gateway_ours: Vec<bool>,
    listeners: Vec<ListenerCtx>,
    gateway_conditions: Vec<Conditions>,
    /// (namespace, name, port, gRPC) -> the backend and its `namespace/name` key.
    backends: HashMap<BackendKey<'a>, (BackendResult, Arc<str>)>,
    /// Policies: validated spec or the invalid message; and the winning policy per Service.
    policy_specs: Vec<Result<PersistenceSpec, String>>,
    policy_for_service: HashMap<String, usize>,
    policy_conditions: Vec<BTreeMap<usize, Conditions>>,
    policy_notes: Vec<Vec<String>>,
    statuses: Vec<ResourceStatus>,
    /// `opts.now`, shared by every condition.
    now: Arc<str>,
    hasher: KeyedHasher,
    /// Services by (namespace, name) and EndpointSlices by (namespace, service name), in input
    /// order: looked up once per backend instead of scanned (500 Services: 500 x 1,000 scans).
    service_index: HashMap<(&'a str, &'a str), usize>,
    slice_index: HashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> Translator<'a> {
    fn new(res: &'a Resources, opts: &'a TranslateOptions) -> Self {
        Translator {
            res,
            opts,
            gateway_ours: Vec::new(),
            listeners: Vec::new(),
            gateway_conditions: Vec::new(),
            backends: HashMap::new(),
            policy_specs: Vec::new(),
            policy_for_service: HashMap::new(),
            policy_conditions: vec![BTreeMap::new(); res.policies.len()],
            policy_notes: vec![Vec::new(); res.policies.len()],
            statuses: Vec::with_capacity(res.len()),
            now: opts.now.as_str().into(),
            hasher: KeyedHasher::new(&opts.naming_salt),
            service_index: index_services(res),
            slice_index: index_slices(res),
        }
    }

    fn run(mut self) -> Translation {
        self.gateway_classes();
        self.gateways();
        self.policies();
        let mut entries: BTreeMap<SocketAddr, Vec<(HostPattern, MatchEntry)>> = BTreeMap::new();
        self.routes(&mut entries);
        self.policy_statuses();
        self.gateway_statuses();
        let snapshot = self.snapshot(entries);
        self.statuses.sort_by(|a, b| {
            (kind_order(&a.kind), &a.metadata.namespace, &a.metadata.name).cmp(&(
                kind_order(&b.kind),
                &b.metadata.namespace,
                &b.metadata.name,
            ))
        });
        Translation { snapshot, statuses: self.statuses }
    }

    fn push_status<T>(&mut self, obj: &Object<T>, status: Status, healthy: bool) {
        self.statuses.push(ResourceStatus {
            api_version: obj.api_version.clone(),
            kind: obj.kind.clone(),
            metadata: StatusMeta {
                namespace: obj.namespace.clone(),
                name: obj.meta.name.clone(),
                generation: obj.generation(),
            },
            status,
            healthy,
        });
    }

    // ---- GatewayClasses and Gateways ------------------------------------------------------------

    fn gateway_classes(&mut self) {
        for class in &self.res.gateway_classes {
            if class.spec.controller_name != CONTROLLER_NAME {
                continue;
            }
            let mut c = Conditions::new(class.generation(), &self.now);
            c.set("Accepted", true, "Accepted", "Sessile accepts this GatewayClass");
            let status = Status { conditions: Some(c.into_list()), ..Status::default() };
            self.push_status(class, status, true);
        }
        self.gateway_ours = self
            .res
            .gateways
            .iter()
            .map(|gw| {
                // A class owned by another controller hands the Gateway to it; an unknown class is ours
                // (GatewayClass is optional in file mode).
                !self
                    .res
                    .gateway_classes
                    .iter()
                    .any(|c| c.meta.name == gw.spec.gateway_class_name && c.spec.controller_name != CONTROLLER_NAME)
            })
            .collect();
    }

    fn gateways(&mut self) {
        for (gi, gw) in self.res.gateways.iter().enumerate() {
            let mut gc = Conditions::new(gw.generation(), &self.now);
            if !self.gateway_ours[gi] {
                self.gateway_conditions.push(gc);
                continue;
            }
            let mut address_error = None;
            let mut bind_ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            for (ai, a) in gw.spec.addresses.iter().flatten().enumerate() {
                let kind = a.r#type.as_deref().unwrap_or("IPAddress");
                match (kind, a.value.as_deref().map(str::parse::<IpAddr>)) {
                    ("IPAddress", Some(Ok(ip))) => bind_ip = ip,
                    ("IPAddress", _) => {
                        address_error = Some(format!("spec.addresses[{ai}].value is not an IP address"));
                    }
                    (other, _) => {
                        address_error =
                            Some(format!("spec.addresses[{ai}].type {other:?} is not supported; use IPAddress"))
                    }
                }
            }
            let first = self.listeners.len();
            for l in &gw.spec.listeners {
                let ctx = self.listener(gi, gw, l, bind_ip);
                self.listeners.push(ctx);
            }
            self.detect_listener_conflicts(first);
            match address_error {
                Some(msg) => {
                    gc.set("Accepted", false, "UnsupportedAddress", msg.clone());
                    gc.set("Programmed", false, "AddressNotUsable", msg);
                    for l in &mut self.listeners[first..] {
                        l.programmed = false;
                    }
                }
                None => {
                    let valid = self.listeners[first..].iter().filter(|l| l.programmed).count();
                    let total = self.listeners.len() - first;
                    if valid == total {
                        gc.set("Accepted", true, "Accepted", "Gateway accepted");
                    } else {
                        gc.set(
                            "Accepted",
                            true,
                            "ListenersNotValid",
                            format!("{} of {total} listeners are invalid", total - valid),
                        );
                    }
                    if valid > 0 {
                        gc.set("Programmed", true, "Programmed", "Gateway is programmed");
                    } else {
                        gc.set("Programmed", false, "Invalid", "no listener is valid");
                    }
                }
            }
            self.gateway_conditions.push(gc);
        }
    }

    fn listener(&self, gi: usize, gw: &Object<GatewaySpec>, l: &GatewayListeners, bind_ip: IpAddr) -> ListenerCtx {
        let mut c = Conditions::new(gw.generation(), &self.now);
        let mut programmed = true;
        let protocol = match l.protocol.as_str() {
            "HTTP" => Some(ListenerProtocol::Http),
            "HTTPS" => Some(ListenerProtocol::Https),
            _ => None,
        };
        let hostname = HostPattern::parse(l.hostname.as_deref());
        let allowed = l.allowed_routes.as_ref();
        let allowed_ns = match allowed.and_then(|a| a.namespaces.as_ref()).and_then(|n| n.from.as_ref()) {
            Some(f) => match format!("{f:?}").as_str() {
                "All" => AllowedNamespaces::All,
                "Selector" => AllowedNamespaces::Selector,
                _ => AllowedNamespaces::Same,
            },
            None => AllowedNamespaces::Same,
        };
        let supported = ["HTTPRoute", "GRPCRoute"];
        let mut allowed_kinds = Vec::new();
        let mut invalid_kinds = Vec::new();
        match allowed.and_then(|a| a.kinds.as_ref()) {
            Some(kinds) if !kinds.is_empty() => {
                for k in kinds {
                    let group_ok = k.group.as_deref().is_none_or(|g| g == GATEWAY_GROUP);
                    if group_ok && supported.contains(&k.kind.as_str()) {
                        allowed_kinds.push(k.kind.clone());
                    } else {
                        invalid_kinds.push(k.kind.clone());
                    }
                }
            }
            _ => allowed_kinds = supported.iter().map(|s| s.to_string()).collect(),
        }
        let mut certificates = Vec::new();
        c.set("Accepted", true, "Accepted", "listener accepted");
        c.set("Conflicted", false, "NoConflicts", "no conflicts");
        c.set("ResolvedRefs", true, "ResolvedRefs", "all references resolved");
        if protocol.is_none() {
            c.set(
                "Accepted",
                false,
                "UnsupportedProtocol",
                format!("protocol {} is not supported; use HTTP or HTTPS", l.protocol),
            );
            // No route kind this gateway serves fits the protocol: nothing attaches here.
            allowed_kinds.clear();
            programmed = false;
        }
        if !(1..=65535).contains(&l.port) {
            c.set("Accepted", false, "PortUnavailable", format!("port {} is out of range", l.port));
            programmed = false;
        }
        if !invalid_kinds.is_empty() {
            c.set(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                format!("unsupported route kinds: {}", invalid_kinds.join(", ")),
            );
            if allowed_kinds.is_empty() {
                programmed = false;
            }
        }
        if protocol == Some(ListenerProtocol::Https) {
            match self.listener_certificates(gw, l, &hostname) {
                Ok(certs) => certificates = certs,
                Err(msg) => {
                    c.set("ResolvedRefs", false, "InvalidCertificateRef", msg);
                    programmed = false;
                }
            }
        }
        ListenerCtx {
            gateway: gi,
            name: l.name.clone(),
            port: l.port,
            protocol: protocol.unwrap_or(ListenerProtocol::Http),
            hostname,
            bind: SocketAddr::new(bind_ip, u16::try_from(l.port).unwrap_or(0)),
            allowed_ns,
            allowed_kinds,
            certificates,
            programmed,
            attached: 0,
            conditions: c,
        }
    }

    fn listener_certificates(
        &self,
        gw: &Object<GatewaySpec>,
        l: &GatewayListeners,
        hostname: &HostPattern,
    ) -> Result<Vec<Arc<Certificate>>, String> {
        let tls = l.tls.as_ref().ok_or("HTTPS listener needs tls.certificateRefs")?;
        if let Some(mode) = &tls.mode
            && format!("{mode:?}") != "Terminate"
        {
            return Err("only tls.mode Terminate is supported on HTTPS listeners".into());
        }
        let refs = tls.certificate_refs.as_deref().unwrap_or_default();
        if refs.is_empty() {
            return Err("HTTPS listener needs at least one tls.certificateRefs entry".into());
        }
        let mut out = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            let field = format!("tls.certificateRefs[{i}]");
            let kind = r.kind.as_deref().unwrap_or("Secret");
            let group = r.group.as_deref().unwrap_or("");
            if kind != "Secret" || !group.is_empty() {
                return Err(format!("{field}: only core Secrets are supported, got {group}/{kind}"));
            }
            let ns = r.namespace.clone().unwrap_or_else(|| gw.namespace.clone());
            if ns != gw.namespace && !self.reference_granted("Gateway", &gw.namespace, "", "Secret", &ns, &r.name) {
                return Err(format!(
                    "{field}: Secret {ns}/{} is in another namespace and no ReferenceGrant allows it",
                    r.name
                ));
            }
            let secret = self
                .res
                .secrets
                .iter()
                .find(|s| s.namespace == ns && s.meta.name == r.name)
                .ok_or_else(|| format!("{field}: Secret {ns}/{} not found", r.name))?;
            let get = |key: &str| -> Option<Vec<u8>> {
                secret.spec.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone()).or_else(|| {
                    secret.spec.string_data.as_ref().and_then(|d| d.get(key)).map(|s| s.as_bytes().to_vec())
                })
            };
            let (Some(cert_pem), Some(key_pem)) = (get("tls.crt"), get("tls.key")) else {
                return Err(format!("{field}: Secret {ns}/{} must hold tls.crt and tls.key", r.name));
            };
            check_tls_pem(&cert_pem, &key_pem).map_err(|e| format!("{field}: Secret {ns}/{}: {e}", r.name))?;
            out.push(Arc::new(Certificate {
                hostname: hostname.clone(),
                secret: format!("{ns}/{}", r.name),
                cert_pem,
                key_pem,
            }));
        }
        Ok(out)
    }

    fn detect_listener_conflicts(&mut self, first: usize) {
        let n = self.listeners.len();
        for i in first..n {
            for j in first..n {
                if i == j || self.listeners[i].port != self.listeners[j].port {
                    continue;
                }
                let (a, b) = (&self.listeners[i], &self.listeners[j]);
                let conflict = if a.protocol != b.protocol {
                    Some(("ProtocolConflict", format!("listener {} uses the same port with another protocol", b.name)))
                } else if a.hostname == b.hostname {
                    Some(("HostnameConflict", format!("listener {} uses the same port and hostname", b.name)))
                } else {
                    None
                };
                if let Some((reason, msg)) = conflict {
                    let l = &mut self.listeners[i];
                    l.conditions.set("Conflicted", true, reason, msg);
                    l.programmed = false;
                }
            }
        }
    }

    fn gateway_statuses(&mut self) {
        for (gi, gw) in self.res.gateways.iter().enumerate() {
            if !self.gateway_ours[gi] {
                continue;
            }
            let mut listeners = Vec::new();
            let mut healthy = self.gateway_conditions[gi].healthy();
            for l in self.listeners.iter_mut().filter(|l| l.gateway == gi) {
                if l.programmed {
                    l.conditions.set("Programmed", true, "Programmed", "listener is programmed");
                } else {
                    l.conditions.set(
                        "Programmed",
                        false,
                        "Invalid",
                        "listener is not programmed; see the other conditions",
                    );
                }
                healthy &= l.conditions.healthy();
                let supported_kinds = l
                    .allowed_kinds
                    .iter()
                    .map(|k| RouteGroupKind { group: GATEWAY_GROUP.into(), kind: k.clone() })
                    .collect();
                listeners.push(ListenerStatus {
                    attached_routes: l.attached,
                    conditions: l.conditions.list.clone(),
                    name: l.name.clone(),
                    supported_kinds,
                });
            }
            let status = Status {
                conditions: Some(self.gateway_conditions[gi].list.clone()),
                listeners: Some(listeners),
                ..Status::default()
            };
            self.push_status(gw, status, healthy);
        }
    }

    // ---- References, Services and endpoints -----------------------------------------------------

    fn reference_granted(
        &self,
        from_kind: &str,
        from_ns: &str,
        to_group: &str,
        to_kind: &str,
        to_ns: &str,
        to_name: &str,
    ) -> bool {
        self.res.reference_grants.iter().filter(|g| g.namespace == to_ns).any(|g| {
            g.spec.from.iter().any(|f| f.group == GATEWAY_GROUP && f.kind == from_kind && f.namespace == from_ns)
                && g.spec
                    .to
                    .iter()
                    .any(|t| t.group == to_group && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name))
        })
    }

    /// Resolves a Service port to a backend (cached, so every rule shares one `Backend`).
    fn service_backend(
        &mut self,
        ns: &'a str,
        name: &'a str,
        port: i32,
        grpc: bool,
    ) -> Result<(Arc<Backend>, Arc<str>), (String, String)> {
        if let Some((b, service_key)) = self.backends.get(&(ns, name, port, grpc)) {
            return b.clone().map(|b| (b, service_key.clone()));
        }
        let built = self.build_backend(ns, name, port, grpc);
        let service_key: Arc<str> = format!("{ns}/{name}").into();
        self.backends.insert((ns, name, port, grpc), (built.clone(), service_key.clone()));
        built.map(|b| (b, service_key))
    }

    fn build_backend(&self, ns: &str, name: &str, port: i32, grpc: bool) -> Result<Arc<Backend>, (String, String)> {
        let not_found = |m: String| ("BackendNotFound".to_string(), m);
        let svc = self
            .service_index
            .get(&(ns, name))
            .map(|&i| &self.res.services[i])
            .ok_or_else(|| not_found(format!("Service {ns}/{name} not found")))?;
        let svc_port = svc
            .spec
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == port))
            .ok_or_else(|| not_found(format!("Service {ns}/{name} has no port {port}")))?;
        let port_name = svc_port.name.clone().unwrap_or_default();
        let app_protocol = svc_port.app_protocol.as_deref();
        let protocol = match app_protocol {
            Some("kubernetes.io/h2c" | "h2c" | "grpc") => UpstreamProtocol::H2c,
            _ if grpc => UpstreamProtocol::H2c,
            _ => UpstreamProtocol::Http1,
        };
        let id = format!("{ns}/{name}:{port}");
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let slices = self.slice_index.get(&(ns, name)).map(Vec::as_slice).unwrap_or_default();
        for slice in slices.iter().map(|&i| &self.res.endpoint_slices[i]) {
            let Some(target_port) = slice
                .spec
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.clone().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for ep in &slice.spec.endpoints {
                let cond = ep.conditions.clone().unwrap_or_default();
                let ready = cond.ready.unwrap_or(true);
                let serving = cond.serving.unwrap_or(ready);
                let terminating = cond.terminating.unwrap_or(false);
                let state = if ready && !terminating {
                    EndpointState::Ready
                } else if serving {
                    EndpointState::Draining
                } else {
                    continue;
                };
                let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
                let identity =
                    ep.target_ref.as_ref().and_then(|t| t.uid.clone().or_else(|| t.name.clone())).unwrap_or_default();
                let addr = SocketAddr::new(ip, target_port);
                if endpoints.iter().any(|e| e.addr == addr) {
                    continue;
                }
                endpoints.push(Endpoint {
                    addr,
                    identity_hash: self.hasher.hash(identity.as_bytes()),
                    identity,
                    state,
                });
            }
        }
        Ok(Arc::new(Backend::new(id.as_str().into(), self.hasher.hash(id.as_bytes()), protocol, endpoints)))
    }

    // ---- Policies -----------------------------------------------------------------------------

    fn policies(&mut self) {
        let mut order: Vec<usize> = (0..self.res.policies.len()).collect();
        order.sort_by_key(|&i| (self.res.policies[i].created, self.res.policies[i].key()));
        self.policy_specs = self
            .res
            .policies
            .iter()
            .map(|p| match &p.spec.session_persistence {
                Some(v) => persistence::parse(v, "spec.sessionPersistence"),
                None => Err("spec.sessionPersistence is required".to_string()),
            })
            .collect();
        for i in order {
            if self.policy_specs[i].is_err() {
                continue;
            }
            let p = &self.res.policies[i];
            for t in p.spec.targets() {
                if t.kind != "Service" || !t.group.is_empty() {
                    continue;
                }
                let key = format!("{}/{}", p.namespace, t.name);
                if let Some(&winner) = self.policy_for_service.get(&key) {
                    if winner == i {
                        // The same Service listed twice in one policy.
                        continue;
                    }
                    let w = &self.res.policies[winner];
                    self.policy_notes[i].push(format!(
                        "Conflicted: {} {} already targets Service {key} and is older",
                        w.kind,
                        w.key()
                    ));
                } else {
                    self.policy_for_service.insert(key, i);
                }
            }
        }
    }

    fn policy_statuses(&mut self) {
        for (pi, p) in self.res.policies.iter().enumerate() {
            let mut ancestors = Vec::new();
            let mut healthy = true;
            let mut per_gateway = std::mem::take(&mut self.policy_conditions[pi]);
            let targets_found: Vec<String> = p
                .spec
                .targets()
                .filter(|t| t.kind == "Service" && t.group.is_empty())
                .filter(|t| self.service_index.contains_key(&(p.namespace.as_str(), t.name.as_str())))
                .map(|t| t.name.clone())
                .collect();
            if per_gateway.is_empty() {
                // Not used by any route yet: report against every Gateway we own.
                for (gi, _) in self.res.gateways.iter().enumerate().filter(|(gi, _)| self.gateway_ours[*gi]) {
                    per_gateway.insert(gi, Conditions::new(p.generation(), &self.now));
                }
            }
            for (gi, mut c) in per_gateway {
                if c.get("Accepted").is_none() {
                    let notes = &self.policy_notes[pi];
                    if let Err(msg) = &self.policy_specs[pi] {
                        c.set("Accepted", false, "Invalid", msg.clone());
                    } else if targets_found.is_empty() {
                        c.set(
                            "Accepted",
                            false,
                            "TargetNotFound",
                            "none of spec.targetRefs names an existing Service in this namespace",
                        );
                    } else if let Some(conflict) = notes.iter().find(|n| n.starts_with("Conflicted: ")) {
                        c.set("Accepted", false, "Conflicted", conflict.trim_start_matches("Conflicted: ").to_string());
                    } else {
                        let mut msg = "Policy accepted".to_string();
                        for n in notes {
                            msg.push_str("; ");
                            msg.push_str(n);
                        }
                        c.set("Accepted", true, "Accepted", msg);
                    }
                }
                healthy &= c.healthy();
                let gw = &self.res.gateways[gi];
                ancestors.push(ParentStatus {
                    ancestor_ref: Some(parent_ref(GATEWAY_GROUP, "Gateway", &gw.namespace, &gw.meta.name, None, None)),
                    conditions: c.into_list(),
                    controller_name: CONTROLLER_NAME.into(),
                    parent_ref: None,
                });
            }
            let status = Status { ancestors: Some(ancestors), ..Status::default() };
            self.push_status(p, status, healthy);
        }
    }

    // ---- Routes -------------------------------------------------------------------------------

    fn routes(&mut self, entries: &mut BTreeMap<SocketAddr, Vec<(HostPattern, MatchEntry)>>) {
        let res = self.res;
        // Compile every route's rules once; collect attachments per gateway.
        let mut compiled: Vec<CompiledRoute> = Vec::new();
        let mut route_parents: Vec<Vec<(ParentRef, Conditions)>> = Vec::new();
        let mut attachments: Vec<Attachment> = Vec::new();
        for (ri, route) in res.routes.iter().enumerate() {
            let (rules, dropped, unresolved) = self.compile_rules(route);
            compiled.push((rules, dropped, unresolved));
            let mut parents = Vec::new();
            for pref in &route.spec.parent_refs {
                if let Some((status_ref, c, attachment)) = self.attach(ri, route, pref) {
                    if let Some(a) = attachment {
                        attachments.push(Attachment { parent: parents.len(), ..a });
                    }
                    parents.push((status_ref, c));
                }
            }
            route_parents.push(parents);
        }
        self.resolve_kind_conflicts(&mut attachments, &mut route_parents);

        // Per gateway: session scoping and name conflicts, then rules and match entries.
        let mut dropped_on_gateway: HashMap<(usize, usize), Vec<String>> = HashMap::new();
        for gi in 0..res.gateways.len() {
            let gw_attachments: Vec<&Attachment> = attachments.iter().filter(|a| a.gateway == gi).collect();
            if gw_attachments.is_empty() {
                continue;
            }
            let scoped = self.scope_sessions(gi, &gw_attachments, &compiled);
            for a in &gw_attachments {
                let route = &res.routes[a.route];
                let route_key = route.key();
                let route_ref = Arc::new(RouteRef {
                    kind: route.kind.clone(),
                    namespace: route.namespace.clone(),
                    name: route.meta.name.clone(),
                });
                for rule in &compiled[a.route].0 {
                    let session = match scoped.get(&(a.route, rule.index)) {
                        Some(Ok(policy)) => policy.clone(),
                        Some(Err(msg)) => {
                            dropped_on_gateway.entry((a.route, gi)).or_default().push(msg.clone());
                            continue;
                        }
                        None => None,
                    };
                    let built = Arc::new(build_rule(route_ref.clone(), rule, session));
                    for (mi, m) in rule.matches.iter().enumerate() {
                        for (li, host) in &a.hostnames {
                            let l = &self.listeners[*li];
                            let mut summary = MatchSummary::new(m, route.created, route_key.clone(), rule.index, mi);
                            if let Some(&(service, method)) = rule.grpc_chars.get(mi) {
                                summary = summary.for_grpc(service, method);
                            }
                            entries.entry(l.bind).or_default().push((
                                host.clone(),
                                MatchEntry {
                                    summary,
                                    request_match: m.clone(),
                                    rule: built.clone(),
                                    listeners: vec![l.name.clone()],
                                },
                            ));
                        }
                    }
                }
            }
        }

        // Route statuses.
        for (ri, route) in res.routes.iter().enumerate() {
            let (rules, dropped, unresolved) = &compiled[ri];
            let mut parents_json = Vec::with_capacity(route_parents[ri].len());
            let mut healthy = true;
            for (pi, (parent_ref, mut c)) in std::mem::take(&mut route_parents[ri]).into_iter().enumerate() {
                if c.is_true("Accepted") {
                    let gi = self.parent_gateway(route, &route.spec.parent_refs[pi]);
                    let mut all_dropped: Vec<String> = dropped.clone();
                    let mut lost_here = 0;
                    if let Some(gi) = gi
                        && let Some(more) = dropped_on_gateway.get(&(ri, gi))
                    {
                        lost_here = more.len();
                        all_dropped.extend(more.iter().cloned());
                    }
                    if !all_dropped.is_empty() {
                        let msg = all_dropped.join("; ");
                        c.set("PartiallyInvalid", true, "UnsupportedValue", msg.clone());
                        if rules.len() <= lost_here {
                            c.set("Accepted", false, "UnsupportedValue", format!("every rule is invalid: {msg}"));
                        }
                    }
                }
                match unresolved.first() {
                    Some((reason, _)) => {
                        let all: Vec<&str> = unresolved.iter().map(|(_, m)| m.as_str()).collect();
                        c.set("ResolvedRefs", false, reason.clone(), all.join("; "));
                    }
                    None => {
                        c.set("ResolvedRefs", true, "ResolvedRefs", "all references resolved");
                    }
                }
                healthy &= c.healthy();
                parents_json.push(ParentStatus {
                    ancestor_ref: None,
                    conditions: c.into_list(),
                    controller_name: CONTROLLER_NAME.into(),
                    parent_ref: Some(parent_ref),
                });
            }
            let status = Status { parents: Some(parents_json), ..Status::default() };
            self.push_status(route, status, healthy);
        }
    }

    /// An HTTPRoute and a GRPCRoute may not serve the same hostname on one listener: the older route
    /// (then namespace/name) keeps it; a route left with no hostname there is not accepted.
    fn resolve_kind_conflicts(&self, attachments: &mut [Attachment], parents: &mut [Vec<(ParentRef, Conditions)>]) {
        let res = self.res;
        let mut losses: Vec<(usize, ListenerHosts, String)> = Vec::new();
        let grpc: Vec<&Attachment> = attachments.iter().filter(|a| res.routes[a.route].kind == "GRPCRoute").collect();
        if grpc.is_empty() {
            return;
        }
        let http: Vec<&Attachment> = attachments.iter().filter(|a| res.routes[a.route].kind != "GRPCRoute").collect();
        for (i, a) in attachments.iter().enumerate() {
            let others = if res.routes[a.route].kind == "GRPCRoute" { &http } else { &grpc };
            for b in others.iter().filter(|b| b.gateway == a.gateway) {
                let (ra, rb) = (&res.routes[a.route], &res.routes[b.route]);
                if ra.kind == rb.kind || (rb.created, rb.key()) >= (ra.created, ra.key()) {
                    continue;
                }
                let lost: Vec<(usize, HostPattern)> =
                    a.hostnames.iter().filter(|h| b.hostnames.contains(h)).cloned().collect();
                if !lost.is_empty() {
                    let msg = format!(
                        "{} {} is older and already serves the same hostnames on this listener",
                        rb.kind,
                        rb.key()
                    );
                    losses.push((i, lost, msg));
                }
            }
        }
        for (i, lost, msg) in losses {
            let a = &mut attachments[i];
            a.hostnames.retain(|h| !lost.contains(h));
            if a.hostnames.is_empty() {
                parents[a.route][a.parent].1.set("Accepted", false, "Conflicted", msg);
            }
        }
    }

    fn parent_gateway(&self, route: &Object<RouteSpec>, pref: &raw::ParentRef) -> Option<usize> {
        let ns = pref.namespace.clone().unwrap_or_else(|| route.namespace.clone());
        self.res.gateways.iter().position(|g| g.namespace == ns && g.meta.name == pref.name)
    }

    /// Attaches a route to one parentRef. `None` when the parent is not ours (no status entry).
    fn attach(
        &mut self,
        ri: usize,
        route: &Object<RouteSpec>,
        pref: &raw::ParentRef,
    ) -> Option<(ParentRef, Conditions, Option<Attachment>)> {
        let group = pref.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = pref.kind.as_deref().unwrap_or("Gateway");
        let ns = pref.namespace.clone().unwrap_or_else(|| route.namespace.clone());
        let status_ref = parent_ref(group, kind, &ns, &pref.name, pref.section_name.as_deref(), pref.port);
        let mut c = Conditions::new(route.generation(), &self.now);
        if group != GATEWAY_GROUP || kind != "Gateway" {
            c.set(
                "Accepted",
                false,
                "NoMatchingParent",
                format!("parentRef kind {group}/{kind} is not supported; use a Gateway"),
            );
            return Some((status_ref, c, None));
        }
        let Some(gi) = self.parent_gateway(route, pref) else {
            c.set("Accepted", false, "NoMatchingParent", format!("Gateway {ns}/{} not found", pref.name));
            return Some((status_ref, c, None));
        };
        if !self.gateway_ours[gi] {
            return None;
        }
        let candidates: Vec<usize> = (0..self.listeners.len())
            .filter(|&li| {
                let l = &self.listeners[li];
                l.gateway == gi
                    && pref.section_name.as_deref().is_none_or(|s| s == l.name)
                    && pref.port.is_none_or(|p| p == l.port)
            })
            .collect();
        if candidates.is_empty() {
            let what = match (&pref.section_name, pref.port) {
                (Some(s), _) => format!("no listener named {s:?}"),
                (None, Some(p)) => format!("no listener on port {p}"),
                _ => "no listeners".to_string(),
            };
            c.set("Accepted", false, "NoMatchingParent", format!("Gateway {ns}/{} has {what}", pref.name));
            return Some((status_ref, c, None));
        }
        let allowed: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&li| {
                let l = &self.listeners[li];
                let gw_ns = &self.res.gateways[gi].namespace;
                let ns_ok = match l.allowed_ns {
                    AllowedNamespaces::All => true,
                    AllowedNamespaces::Same => &route.namespace == gw_ns,
                    AllowedNamespaces::Selector => false,
                };
                ns_ok && l.allowed_kinds.iter().any(|k| k == &route.kind)
            })
            .collect();
        if allowed.is_empty() {
            c.set(
                "Accepted",
                false,
                "NotAllowedByListeners",
                format!(
                    "no listener of Gateway {ns}/{} allows {} from namespace {}",
                    pref.name, route.kind, route.namespace
                ),
            );
            return Some((status_ref, c, None));
        }
        let route_hosts: Vec<HostPattern> = if route.spec.hostnames.is_empty() {
            vec![HostPattern::Any]
        } else {
            route.spec.hostnames.iter().map(|h| HostPattern::parse(Some(h))).collect()
        };
        let mut hostnames = Vec::new();
        let mut listeners = Vec::new();
        for &li in &allowed {
            let lh = self.listeners[li].hostname.clone();
            let mut any = false;
            for rh in &route_hosts {
                if let Some(h) = lh.intersect(rh) {
                    if !hostnames.contains(&(li, h.clone())) {
                        hostnames.push((li, h));
                    }
                    any = true;
                }
            }
            if any {
                listeners.push(li);
            }
        }
        if listeners.is_empty() {
            c.set(
                "Accepted",
                false,
                "NoMatchingListenerHostname",
                "no listener hostname intersects the route's hostnames",
            );
            return Some((status_ref, c, None));
        }
        for &li in &listeners {
            self.listeners[li].attached += 1;
        }
        // Only programmed listeners carry traffic.
        hostnames.retain(|(li, _)| self.listeners[*li].programmed);
        c.set("Accepted", true, "Accepted", format!("attached to Gateway {ns}/{}", pref.name));
        Some((status_ref, c, Some(Attachment { route: ri, parent: 0, gateway: gi, hostnames })))
    }

    /// Compiles a route's rules: (valid rules, "Dropped Rule" messages, unresolved backendRefs).
    fn compile_rules(&mut self, route: &'a Object<RouteSpec>) -> CompiledRoute {
        let grpc = route.kind == "GRPCRoute";
        let mut rules = Vec::new();
        let mut dropped = Vec::new();
        let mut unresolved = Vec::new();
        for (idx, rule) in route.spec.rules.iter().enumerate() {
            let field = At::new(&"spec", ".rules", Some(idx));
            match self.compile_rule(route, idx, rule, grpc, &field, &mut unresolved) {
                Ok(r) => rules.push(r),
                Err(msg) => {
                    dropped.push(format!("Dropped Rule {idx}{}: {msg}", rule_name_suffix(rule.name.as_deref())))
                }
            }
        }
        (rules, dropped, unresolved)
    }

    fn compile_rule(
        &mut self,
        route: &'a Object<RouteSpec>,
        idx: usize,
        rule: &'a raw::RouteRule,
        grpc: bool,
        field: &dyn fmt::Display,
        unresolved: &mut Vec<(String, String)>,
    ) -> Result<CompiledRule, String> {
        let matches = if rule.matches.is_empty() {
            vec![RequestMatch { path: PathMatch::prefix("/"), method: None, headers: vec![], query: vec![] }]
        } else {
            rule.matches
                .iter()
                .enumerate()
                .map(|(mi, m)| compile_match(m, grpc, &At::new(field, ".matches", Some(mi))))
                .collect::<Result<Vec<_>, _>>()?
        };
        let filters = compile_filters(&rule.filters, &At::new(field, ".filters", None), &matches)?;
        let timeouts = match &rule.timeouts {
            None => Timeouts::default(),
            Some(t) => {
                let parse = |name: &str, v: &Option<String>| -> Result<Option<Duration>, String> {
                    match v {
                        None => Ok(None),
                        Some(text) => match duration::parse(text) {
                            Some(d) if d.is_zero() => Ok(None),
                            Some(d) => Ok(Some(d)),
                            None => Err(format!("{field}.timeouts.{name}: {text:?} is not a valid duration")),
                        },
                    }
                };
                let request = parse("request", &t.request)?;
                let backend_request = parse("backendRequest", &t.backend_request)?;
                if let (Some(r), Some(b)) = (request, backend_request)
                    && b > r
                {
                    return Err(format!("{field}.timeouts.backendRequest must not be greater than timeouts.request"));
                }
                Timeouts { request, backend_request }
            }
        };
        let persistence = match &rule.session_persistence {
            Some(v) => Some(persistence::parse(v, At::new(field, ".sessionPersistence", None))?),
            None => None,
        };
        let mut backends = Vec::new();
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let bfield = At::new(field, ".backendRefs", Some(bi));
            let weight = b.weight.unwrap_or(1);
            if !(0..=MAX_WEIGHT).contains(&weight) {
                return Err(format!("{bfield}.weight: {weight} is out of range 0-{MAX_WEIGHT}"));
            }
            let bfilters = compile_filters(&b.filters, &At::new(&bfield, ".filters", None), &matches)?;
            let target = match self.resolve_backend_ref(route, b, grpc) {
                Ok(t) => t,
                Err((reason, msg)) => {
                    let msg = format!("{bfield}: {msg}");
                    unresolved.push((reason, msg.clone()));
                    PendingTarget::Invalid(msg)
                }
            };
            backends.push(PendingBackend { weight: weight as u32, target, filters: bfilters });
        }
        let grpc_chars = match (grpc, rule.matches.is_empty()) {
            (false, _) => Vec::new(),
            (true, true) => vec![(0, 0)],
            (true, false) => rule.matches.iter().map(grpc_chars).collect(),
        };
        Ok(CompiledRule {
            index: idx,
            name: rule.name.clone(),
            matches,
            grpc_chars,
            filters,
            backends,
            timeouts,
            persistence,
        })
    }

    fn resolve_backend_ref(
        &mut self,
        route: &'a Object<RouteSpec>,
        b: &'a BackendRef,
        grpc: bool,
    ) -> Result<PendingTarget, (String, String)> {
        let group = b.group.as_deref().unwrap_or("");
        let kind = b.kind.as_deref().unwrap_or("Service");
        if !group.is_empty() || kind != "Service" {
            return Err((
                "InvalidKind".into(),
                format!("backend kind {group}/{kind} is not supported; use a core Service"),
            ));
        }
        let ns: &'a str = b.namespace.as_deref().unwrap_or(&route.namespace);
        if ns != route.namespace && !self.reference_granted(&route.kind, &route.namespace, "", "Service", ns, &b.name) {
            return Err((
                "RefNotPermitted".into(),
                format!("Service {ns}/{} is in another namespace and no ReferenceGrant allows it", b.name),
            ));
        }
        let Some(port) = b.port else {
            return Err(("UnsupportedValue".into(), format!("port is required for Service {ns}/{}", b.name)));
        };
        let (backend, service_key) = self.service_backend(ns, &b.name, port, grpc)?;
        Ok(PendingTarget::Service { backend, service_key })
    }

    // ---- Session scoping and conflicts --------------------------------------------------------

    /// Decides every attached rule's effective session persistence on gateway `gi` (spec sections 2, 3).
    /// `Ok(None)`: no persistence; `Err`: the rule is dropped (it lost a name conflict).
    fn scope_sessions(&mut self, gi: usize, attachments: &[&Attachment], compiled: &[CompiledRoute]) -> ScopedSessions {
        let res = self.res;
        let gw = &res.gateways[gi];
        let gw_key = gw.key();
        // scope identity -> (spec, source, claim, rules using it)
        let mut scopes: BTreeMap<String, ScopeEntry> = BTreeMap::new();
        let mut plain: Vec<(usize, usize)> = Vec::new();
        for a in attachments {
            let route = &res.routes[a.route];
            let route_key = route.key();
            let hosts: Vec<HostPattern> = a.hostnames.iter().map(|(_, h)| h.clone()).collect();
            let rules = &compiled[a.route].0;
            // A rule's identity within its route, stable when rules are inserted or reordered (a
            // reload must not end its sessions): its explicit session name, else its rule name, else
            // its position. A name shared by several rules of the route identifies only the first;
            // the others fall back to their position (and then lose the name conflict).
            let rule_key = |rule: &CompiledRule, by_session_name: bool| -> String {
                if by_session_name && let Some(spec) = rule.persistence.as_ref().filter(|p| p.name.is_some()) {
                    let first =
                        rules.iter().find(|r| r.persistence.as_ref().is_some_and(|p| same_session_name(p, spec)));
                    if first.is_some_and(|r| r.index == rule.index) {
                        return format!("session:{}", session_name_key(spec, &[], ""));
                    }
                }
                if let Some(name) = &rule.name
                    && rules.iter().find(|r| r.name.as_ref() == Some(name)).is_some_and(|r| r.index == rule.index)
                {
                    return format!("name:{name}");
                }
                rule.index.to_string()
            };
            for rule in rules {
                let key = (a.route, rule.index);
                let (spec, source, identity, priority, owner) = if let Some(spec) = &rule.persistence {
                    if let Some(pi) = self.rule_policy(rule) {
                        let p = &res.policies[pi];
                        let note = format!(
                            "overridden by {} {} rule {} for that rule's traffic",
                            route.kind, route_key, rule.index
                        );
                        if !self.policy_notes[pi].contains(&note) {
                            self.policy_notes[pi].push(note);
                        }
                        let _ = p;
                    }
                    (
                        spec.clone(),
                        SessionSource::RouteRule {
                            route: RouteRef {
                                kind: route.kind.clone(),
                                namespace: route.namespace.clone(),
                                name: route.meta.name.clone(),
                            },
                            rule: rule.index,
                        },
                        format!("rule|{gw_key}|{}|{route_key}|{}", route.kind, rule_key(rule, true)),
                        (false, route.created, route_key.clone(), rule.index),
                        ClaimOwner::Rule { route: a.route, rule: rule.index },
                    )
                } else if let Some(pi) = self.rule_policy(rule) {
                    let p = &res.policies[pi];
                    let Ok(spec) = self.policy_specs[pi].clone() else {
                        plain.push(key);
                        continue;
                    };
                    self.policy_conditions[pi].entry(gi).or_insert_with(|| Conditions::new(p.generation(), &self.now));
                    if rule.backends.len() > 1 {
                        let note = "rules that split traffic between a targeted Service and other backends apply this persistence to all their backends".to_string();
                        if !self.policy_notes[pi].contains(&note) {
                            self.policy_notes[pi].push(note);
                        }
                    }
                    let identity = match &spec.name {
                        Some(_) => format!("policy|{gw_key}|{}|{}", p.kind, p.key()),
                        None => format!(
                            "policy-rule|{gw_key}|{}|{}|{}|{}|{}",
                            p.kind,
                            p.key(),
                            route.kind,
                            route_key,
                            rule_key(rule, false)
                        ),
                    };
                    (
                        spec,
                        SessionSource::Policy {
                            kind: p.kind.clone(),
                            namespace: p.namespace.clone(),
                            name: p.meta.name.clone(),
                        },
                        identity,
                        (true, p.created, p.key(), 0),
                        ClaimOwner::Policy { policy: pi },
                    )
                } else {
                    plain.push(key);
                    continue;
                };
                let name_key = session_name_key(&spec, &self.opts.naming_salt, &identity);
                let entry = scopes.entry(identity.clone()).or_insert_with(|| {
                    (
                        spec,
                        source,
                        Claim { scope_identity: identity, name_key, hostnames: Vec::new(), priority, owner },
                        Vec::new(),
                    )
                });
                for h in &hosts {
                    if !entry.2.hostnames.contains(h) {
                        entry.2.hostnames.push(h.clone());
                    }
                }
                entry.3.push(key);
            }
        }

        // Resolve name conflicts: route rules before policies, then oldest, then namespace/name, then rule order.
        // (Sorted by the claims themselves, not by looking each one up in `scopes` per comparison; the
        // stable sort over identity order breaks priority ties as before.)
        let mut order: Vec<(&String, &Claim)> = scopes.iter().map(|(id, s)| (id, &s.2)).collect();
        order.sort_by(|a, b| a.1.priority.cmp(&b.1.priority));
        // Winners by name, so each claim is compared only with claims of the same name.
        let mut winners: HashMap<&str, Vec<&Claim>> = HashMap::new();
        let mut losers: HashMap<String, String> = HashMap::new();
        for (id, claim) in order {
            let same_name = winners.entry(claim.name_key.as_str()).or_default();
            let conflict = same_name.iter().find(|w| {
                w.scope_identity != claim.scope_identity
                    && w.hostnames.iter().any(|a| claim.hostnames.iter().any(|b| a.intersect(b).is_some()))
            });
            match conflict {
                Some(w) => {
                    let name = claim.name_key.split_once(':').map_or("", |(_, n)| n);
                    losers.insert(
                        id.clone(),
                        format!(
                            "session name {name:?} is already used by {} on Gateway {gw_key}",
                            self.describe_owner(&w.owner)
                        ),
                    );
                }
                None => same_name.push(claim),
            }
        }

        let mut out = HashMap::new();
        for key in plain {
            out.insert(key, Ok(None));
        }
        for (id, (spec, source, claim, rules)) in scopes {
            if let Some(msg) = losers.get(&id) {
                match claim.owner {
                    ClaimOwner::Rule { rule, .. } => {
                        for key in rules {
                            out.insert(key, Err(format!("Dropped Rule {rule}: {msg}")));
                        }
                    }
                    ClaimOwner::Policy { policy } => {
                        let p = &res.policies[policy];
                        self.policy_conditions[policy]
                            .entry(gi)
                            .or_insert_with(|| Conditions::new(p.generation(), &self.now))
                            .set("Accepted", false, "Conflicted", msg.clone());
                        for key in rules {
                            out.insert(key, Ok(None));
                        }
                    }
                }
                continue;
            }
            let policy = Arc::new(session_policy(&spec, source, &id, &self.opts.naming_salt, &self.hasher));
            for key in rules {
                out.insert(key, Ok(Some(policy.clone())));
            }
        }
        out
    }

    /// The winning policy that covers a rule: the first backendRef whose Service has one.
    fn rule_policy(&self, rule: &CompiledRule) -> Option<usize> {
        rule.backends.iter().find_map(|b| match &b.target {
            PendingTarget::Service { service_key, .. } => self.policy_for_service.get(&**service_key).copied(),
            PendingTarget::Invalid(_) => None,
        })
    }

    fn describe_owner(&self, owner: &ClaimOwner) -> String {
        match owner {
            ClaimOwner::Rule { route, rule } => {
                let r = &self.res.routes[*route];
                format!("{} {} rule {rule}", r.kind, r.key())
            }
            ClaimOwner::Policy { policy } => {
                let p = &self.res.policies[*policy];
                format!("{} {}", p.kind, p.key())
            }
        }
    }

    // ---- Snapshot -----------------------------------------------------------------------------

    fn snapshot(&self, mut entries: BTreeMap<SocketAddr, Vec<(HostPattern, MatchEntry)>>) -> Snapshot {
        let mut ports: Vec<PortConfig> = Vec::new();
        let mut seen: HashSet<SocketAddr> = HashSet::new();
        for l in self.listeners.iter().filter(|l| l.programmed && self.gateway_ours[l.gateway]) {
            if let Some(existing) = ports.iter_mut().find(|p| p.bind == l.bind) {
                if existing.protocol == l.protocol {
                    existing.certificates.extend(l.certificates.iter().cloned());
                }
                continue;
            }
            if !seen.insert(l.bind) {
                continue;
            }
            ports.push(PortConfig {
                bind: l.bind,
                protocol: l.protocol,
                certificates: l.certificates.clone(),
                routes: RouteTable::default(),
            });
        }
        for p in &mut ports {
            p.routes = RouteTable::build(entries.remove(&p.bind).unwrap_or_default());
        }
        Snapshot { version: self.opts.version, ports, drain_grace: self.opts.drain_grace }
    }
}

/// The first Service of each (namespace, name), as a scan in input order would find it.
fn index_services(res: &Resources) -> HashMap<(&str, &str), usize> {
    let mut index = HashMap::with_capacity(res.services.len());
    for (i, s) in res.services.iter().enumerate() {
        index.entry((s.namespace.as_str(), s.meta.name.as_str())).or_insert(i);
    }
    index
}

/// EndpointSlices by (namespace, `kubernetes.io/service-name`), in input order.
fn index_slices(res: &Resources) -> HashMap<(&str, &str), Vec<usize>> {
    let mut index: HashMap<(&str, &str), Vec<usize>> = HashMap::with_capacity(res.endpoint_slices.len());
    for (i, s) in res.endpoint_slices.iter().enumerate() {
        if let Some(service) = s.meta.labels.get("kubernetes.io/service-name") {
            index.entry((s.namespace.as_str(), service.as_str())).or_default().push(i);
        }
    }
    index
}

/// [`sessile_session::naming::keyed_hash`] with the HMAC key set up once per translation rather
/// than once per value (key setup was half the cost of the ~6,500 hashes of 5,000 routes).
struct KeyedHasher(ring::hmac::Key);

impl KeyedHasher {
    fn new(salt: &[u8]) -> Self {
        KeyedHasher(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salt))
    }

    /// HMAC-SHA256 of `data`, first 8 bytes big-endian: exactly `keyed_hash(salt, data)`.
    fn hash(&self, data: &[u8]) -> u64 {
        let tag = ring::hmac::sign(&self.0, data);
        let mut out = [0u8; 8];
        out.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_be_bytes(out)
    }
}

/// A field path for error messages (`spec.rules[0].matches[1]`), written out only when a message
/// needs it: translating 5,000 routes used to format ~55,000 such paths and throw every one away.
#[derive(Clone, Copy)]
struct At<'a> {
    parent: &'a dyn fmt::Display,
    name: &'a str,
    index: Option<usize>,
}

impl<'a> At<'a> {
    fn new(parent: &'a dyn fmt::Display, name: &'a str, index: Option<usize>) -> Self {
        At { parent, name, index }
    }
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.parent, self.name)?;
        match self.index {
            Some(i) => write!(f, "[{i}]"),
            None => Ok(()),
        }
    }
}

fn rule_name_suffix(name: Option<&str>) -> String {
    name.map(|n| format!(" ({n})")).unwrap_or_default()
}

fn kind_order(kind: &str) -> u8 {
    match kind {
        "GatewayClass" => 0,
        "Gateway" => 1,
        "HTTPRoute" => 2,
        "GRPCRoute" => 3,
        _ => 4,
    }
}

/// Checks that a Secret holds a PEM certificate chain and a PEM private key that parse.
fn check_tls_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| format!("tls.crt: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no PEM certificate".into());
    }
    PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls.key: {e}"))?;
    Ok(())
}

/// Whether two named specs have the same [`session_name_key`], without building the keys.
fn same_session_name(a: &PersistenceSpec, b: &PersistenceSpec) -> bool {
    match (a.name.as_deref(), b.name.as_deref()) {
        (Some(x), Some(y)) if a.kind == b.kind => match a.kind {
            CarrierKind::Cookie => x == y,
            CarrierKind::Header => x.eq_ignore_ascii_case(y),
        },
        _ => false,
    }
}

/// The conflict key of a scope's carrier name: cookies are case-sensitive, headers are not.
fn session_name_key(spec: &PersistenceSpec, salt: &[u8], identity: &str) -> String {
    let name = spec.name.clone().unwrap_or_else(|| generated_session_name(salt, identity));
    match spec.kind {
        CarrierKind::Cookie => format!("cookie:{name}"),
        CarrierKind::Header => format!("header:{}", name.to_ascii_lowercase()),
    }
}

fn session_policy(
    spec: &PersistenceSpec,
    source: SessionSource,
    identity: &str,
    salt: &[u8],
    hasher: &KeyedHasher,
) -> SessionPolicy {
    let name = spec.name.clone().unwrap_or_else(|| generated_session_name(salt, identity));
    let carrier = match spec.kind {
        CarrierKind::Cookie => SessionCarrier::Cookie {
            name,
            path: spec.cookie_path.clone().unwrap_or_else(|| "/".into()),
            permanent: spec.permanent,
        },
        CarrierKind::Header => SessionCarrier::Header {
            // Validated as a token, so this parse cannot fail; fall back to a fixed name defensively.
            name: HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .unwrap_or(HeaderName::from_static("x-sessile-session")),
        },
    };
    SessionPolicy {
        scope: hasher.hash(identity.as_bytes()),
        source,
        carrier,
        absolute_timeout: spec.absolute_timeout,
        idle_timeout: spec.idle_timeout,
    }
}

fn build_rule(route: Arc<RouteRef>, rule: &CompiledRule, session: Option<Arc<SessionPolicy>>) -> Rule {
    let mut cumulative = 0u64;
    let backends = rule
        .backends
        .iter()
        .map(|b| {
            cumulative += u64::from(b.weight);
            WeightedBackend {
                weight: b.weight,
                cumulative,
                target: match &b.target {
                    PendingTarget::Service { backend, .. } => BackendTarget::Service(backend.clone()),
                    PendingTarget::Invalid(reason) => BackendTarget::Invalid { reason: reason.clone() },
                },
                filters: b.filters.clone(),
            }
        })
        .collect();
    Rule::new(route, rule.index, rule.name.clone(), rule.filters.clone(), backends, rule.timeouts, session)
}

fn compile_regex(pattern: &str, field: &dyn fmt::Display) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("{field}: invalid regular expression: {e}"))
}

fn compile_string_match(kind: Option<&str>, value: &str, field: &dyn fmt::Display) -> Result<StringMatch, String> {
    match kind.unwrap_or("Exact") {
        "Exact" => Ok(StringMatch::Exact(value.to_string())),
        "RegularExpression" => Ok(StringMatch::Regex(compile_regex(value, field)?)),
        other => Err(format!("{field}.type: unsupported value {other:?}")),
    }
}

/// Characters of the service and method a GRPCRoute match names (precedence inputs).
fn grpc_chars(m: &raw::RouteMatch) -> (usize, usize) {
    let method: raw::GrpcMethod = m.method.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    (method.service.map_or(0, |s| s.len()), method.method.map_or(0, |s| s.len()))
}

fn compile_match(m: &raw::RouteMatch, grpc: bool, field: &dyn fmt::Display) -> Result<RequestMatch, String> {
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let hf = At::new(field, ".headers", Some(i));
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("{hf}.name: {:?} is not a valid header name", h.name))?;
        if headers.iter().any(|x: &HeaderMatch| x.name == name) {
            continue; // The API says later duplicates of a header name are ignored.
        }
        headers.push(HeaderMatch { name, value: compile_string_match(h.kind.as_deref(), &h.value, &hf)? });
    }
    let mut query = Vec::new();
    for (i, q) in m.query_params.iter().enumerate() {
        let qf = At::new(field, ".queryParams", Some(i));
        if query.iter().any(|x: &QueryMatch| x.name == q.name) {
            continue;
        }
        query.push(QueryMatch { name: q.name.clone(), value: compile_string_match(q.kind.as_deref(), &q.value, &qf)? });
    }
    let (path, method) = if grpc {
        let method: raw::GrpcMethod = match &m.method {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("{field}.method: {e}"))?,
            None => raw::GrpcMethod::default(),
        };
        (grpc_path(&method, field)?, None)
    } else {
        let path = match &m.path {
            None => PathMatch::prefix("/"),
            Some(p) => {
                let value = p.value.clone().unwrap_or_else(|| "/".into());
                match p.kind.as_deref().unwrap_or("PathPrefix") {
                    "Exact" | "PathPrefix" if !value.starts_with('/') => {
                        return Err(format!("{field}.path.value: {value:?} must start with /"));
                    }
                    "Exact" => PathMatch::Exact(value),
                    "PathPrefix" => {
                        if value.contains("//")
                            || value.contains("/./")
                            || value.contains("/../")
                            || value.ends_with("/..")
                        {
                            return Err(format!("{field}.path.value: {value:?} must not contain //, /./ or /../"));
                        }
                        PathMatch::prefix(&value)
                    }
                    "RegularExpression" => {
                        PathMatch::Regex(compile_regex(&value, &At::new(field, ".path.value", None))?)
                    }
                    other => return Err(format!("{field}.path.type: unsupported value {other:?}")),
                }
            }
        };
        let method = match &m.method {
            None => None,
            Some(Value::String(s)) => {
                Some(Method::from_bytes(s.as_bytes()).map_err(|_| format!("{field}.method: {s:?} is not a method"))?)
            }
            Some(_) => return Err(format!("{field}.method: must be a string")),
        };
        (path, method)
    };
    Ok(RequestMatch { path, method, headers, query })
}

/// GRPCRoute method matches become path matches on `/service/method`.
fn grpc_path(m: &raw::GrpcMethod, field: &dyn fmt::Display) -> Result<PathMatch, String> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            for (name, v) in [("service", service), ("method", method)] {
                if let Some(v) = v
                    && v.contains('/')
                {
                    return Err(format!("{field}.method.{name}: {v:?} must not contain /"));
                }
            }
            Ok(match (service, method) {
                (Some(s), Some(me)) => PathMatch::Exact(format!("/{s}/{me}")),
                (Some(s), None) => PathMatch::prefix(&format!("/{s}")),
                (None, Some(me)) => PathMatch::Regex(compile_regex(&format!("/[^/]+/{}", regex::escape(me)), field)?),
                (None, None) => PathMatch::prefix("/"),
            })
        }
        "RegularExpression" => {
            let s = service.unwrap_or("[^/]+");
            let me = method.unwrap_or("[^/]+");
            Ok(PathMatch::Regex(compile_regex(&format!("/(?:{s})/(?:{me})"), &At::new(field, ".method", None))?))
        }
        other => Err(format!("{field}.method.type: unsupported value {other:?}")),
    }
}

fn compile_header_mods(m: &raw::HeaderModifier, field: &dyn fmt::Display) -> Result<HeaderMods, String> {
    let pair = |p: &raw::HeaderPair, f: &dyn fmt::Display| -> Result<(HeaderName, HeaderValue), String> {
        let name = HeaderName::from_bytes(p.name.as_bytes())
            .map_err(|_| format!("{f}.name: {:?} is not a valid header name", p.name))?;
        let value = HeaderValue::from_str(&p.value).map_err(|_| format!("{f}.value: not a valid header value"))?;
        Ok((name, value))
    };
    Ok(HeaderMods {
        set: m
            .set
            .iter()
            .enumerate()
            .map(|(i, p)| pair(p, &At::new(field, ".set", Some(i))))
            .collect::<Result<_, _>>()?,
        add: m
            .add
            .iter()
            .enumerate()
            .map(|(i, p)| pair(p, &At::new(field, ".add", Some(i))))
            .collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| {
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("{field}.remove[{i}]: {n:?} is not a valid header name"))
            })
            .collect::<Result<_, _>>()?,
    })
}

fn compile_path_modifier(
    p: &raw::PathModifierSpec,
    field: &dyn fmt::Display,
    matches: &[RequestMatch],
) -> Result<PathModifier, String> {
    match p.kind.as_str() {
        "ReplaceFullPath" => Ok(PathModifier::ReplaceFullPath(
            p.replace_full_path.clone().ok_or_else(|| format!("{field}.replaceFullPath is required"))?,
        )),
        "ReplacePrefixMatch" => {
            // CEL on HTTPRouteRule: exactly one match, and it is a PathPrefix match.
            if matches.len() != 1 || !matches.iter().all(|m| matches!(m.path, PathMatch::Prefix(_))) {
                return Err(format!(
                    "{field}: ReplacePrefixMatch needs exactly one match in the rule, a PathPrefix match"
                ));
            }
            Ok(PathModifier::ReplacePrefixMatch(
                p.replace_prefix_match.clone().ok_or_else(|| format!("{field}.replacePrefixMatch is required"))?,
            ))
        }
        other => Err(format!("{field}.type: unsupported value {other:?}")),
    }
}

fn compile_filters(
    filters: &[RouteFilter],
    field: &dyn fmt::Display,
    matches: &[RequestMatch],
) -> Result<Vec<Filter>, String> {
    let mut out = Vec::new();
    let (mut redirect, mut rewrite) = (false, false);
    for (i, f) in filters.iter().enumerate() {
        let ff = At::new(field, "", Some(i));
        // CEL on the filters list: only ExtensionRef and RequestMirror may repeat.
        if f.kind != "ExtensionRef" && f.kind != "RequestMirror" && filters[..i].iter().any(|g| g.kind == f.kind) {
            return Err(format!("{ff}.type: {} filter cannot be repeated", f.kind));
        }
        let missing = |name: &str| format!("{ff}.{name} is required for type {}", f.kind);
        out.push(match f.kind.as_str() {
            "RequestHeaderModifier" => Filter::RequestHeaders(compile_header_mods(
                f.request_header_modifier.as_ref().ok_or_else(|| missing("requestHeaderModifier"))?,
                &At::new(&ff, ".requestHeaderModifier", None),
            )?),
            "ResponseHeaderModifier" => Filter::ResponseHeaders(compile_header_mods(
                f.response_header_modifier.as_ref().ok_or_else(|| missing("responseHeaderModifier"))?,
                &At::new(&ff, ".responseHeaderModifier", None),
            )?),
            "RequestRedirect" => {
                redirect = true;
                let r = f.request_redirect.as_ref().ok_or_else(|| missing("requestRedirect"))?;
                let status = u16::try_from(r.status_code.unwrap_or(302)).unwrap_or(0);
                if ![301, 302, 303, 307, 308].contains(&status) {
                    return Err(format!("{ff}.requestRedirect.statusCode: unsupported value {:?}", r.status_code));
                }
                if let Some(s) = &r.scheme
                    && s != "http"
                    && s != "https"
                {
                    return Err(format!("{ff}.requestRedirect.scheme: unsupported value {s:?}"));
                }
                Filter::Redirect(Redirect {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    port: r
                        .port
                        .map(|p| u16::try_from(p).map_err(|_| format!("{ff}.requestRedirect.port: out of range")))
                        .transpose()?,
                    path: r
                        .path
                        .as_ref()
                        .map(|p| compile_path_modifier(p, &At::new(&ff, ".requestRedirect.path", None), matches))
                        .transpose()?,
                    status,
                })
            }
            "URLRewrite" => {
                rewrite = true;
                let r = f.url_rewrite.as_ref().ok_or_else(|| missing("urlRewrite"))?;
                Filter::UrlRewrite(UrlRewrite {
                    hostname: r.hostname.clone(),
                    path: r
                        .path
                        .as_ref()
                        .map(|p| compile_path_modifier(p, &At::new(&ff, ".urlRewrite.path", None), matches))
                        .transpose()?,
                })
            }
            other => return Err(format!("{ff}.type: filter {other:?} is not supported")),
        });
    }
    if redirect && rewrite {
        return Err(format!("{field}: RequestRedirect and URLRewrite cannot be used together"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_hasher_is_keyed_hash() {
        for salt in [&b""[..], b"salt", &[7u8; 64], &[9u8; 100]] {
            let h = KeyedHasher::new(salt);
            for data in [&b""[..], b"default/svc:80", &[1u8; 200]] {
                assert_eq!(h.hash(data), sessile_session::naming::keyed_hash(salt, data));
            }
        }
    }

    #[test]
    fn field_paths_format_like_the_strings_they_replace() {
        let rule = At::new(&"spec", ".rules", Some(2));
        let backend = At::new(&rule, ".backendRefs", Some(0));
        assert_eq!(At::new(&backend, ".filters", None).to_string(), "spec.rules[2].backendRefs[0].filters");
        assert_eq!(At::new(&At::new(&rule, ".filters", None), "", Some(1)).to_string(), "spec.rules[2].filters[1]");
    }
}
