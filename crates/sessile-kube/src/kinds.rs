//! The kinds controller mode watches, with the API group/version/plural used to reach each.

use kube::discovery::ApiResource;

/// One watched kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// A CRD that may be missing: a 404 on list is logged once and the kind is read as empty.
    pub optional: bool,
    /// Server-side filter (`fieldSelector`), e.g. only TLS Secrets.
    pub fields: Option<&'static str>,
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version: self.api_version(),
            kind: self.kind.to_string(),
            plural: self.plural.to_string(),
        }
    }
}

const GW: &str = "gateway.networking.k8s.io";

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    optional: bool,
) -> Kind {
    Kind { group, version, kind, plural, namespaced, optional, fields: None }
}

/// Everything translation reads. Versions are the oldest still served by current Gateway API releases,
/// so one build works across CRD bundle versions.
pub const WATCHED: &[Kind] = &[
    kind(GW, "v1", "GatewayClass", "gatewayclasses", false, true),
    kind(GW, "v1", "Gateway", "gateways", true, true),
    kind(GW, "v1", "HTTPRoute", "httproutes", true, true),
    kind(GW, "v1", "GRPCRoute", "grpcroutes", true, true),
    kind(GW, "v1beta1", "ReferenceGrant", "referencegrants", true, true),
    kind(GW, "v1alpha2", "BackendLBPolicy", "backendlbpolicies", true, true),
    kind("gateway.networking.x-k8s.io", "v1alpha1", "XBackendTrafficPolicy", "xbackendtrafficpolicies", true, true),
    kind("", "v1", "Service", "services", true, false),
    kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true, false),
    // Only TLS Secrets are read for listeners; the session key Secret is watched on its own (keys.rs).
    Kind { fields: Some("type=kubernetes.io/tls"), ..kind("", "v1", "Secret", "secrets", true, false) },
];

/// Kinds whose status the controller writes, by Kind name.
pub fn by_kind(name: &str) -> Option<&'static Kind> {
    WATCHED.iter().find(|k| k.kind == name)
}

/// The Lease kind used for leader election.
pub const LEASE: Kind = kind("coordination.k8s.io", "v1", "Lease", "leases", true, false);
