//! Prometheus metrics: requests, latency, upstream errors, sessions by outcome and reason, reloads.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A shared label value: cloning it per request costs a reference count, not an allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0.as_ref(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Label,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// `namespace/name/rule-index`.
    pub rule: Label,
    /// `namespace/service:port`.
    pub backend: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub rule: Label,
    pub backend: Label,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub upstream_connect_errors: Family<EndpointLabels, Counter>,
    pub sessions_created: Family<SessionLabels, Counter>,
    pub sessions_resumed: Family<SessionLabels, Counter>,
    pub sessions_rejected: Family<RejectLabels, Counter>,
    pub session_repins: Family<SessionLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_version: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sessile");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let upstream_connect_errors = Family::<EndpointLabels, Counter>::default();
        let sessions_created = Family::<SessionLabels, Counter>::default();
        let sessions_resumed = Family::<SessionLabels, Counter>::default();
        let sessions_rejected = Family::<RejectLabels, Counter>::default();
        let session_repins = Family::<SessionLabels, Counter>::default();
        let config_reloads = Family::<ResultLabels, Counter>::default();
        let config_version = Gauge::default();
        registry.register("requests", "HTTP requests by route and status code", requests.clone());
        registry.register("request_duration_seconds", "Request duration by route", request_duration.clone());
        registry.register(
            "upstream_connect_errors",
            "Failed upstream connects by endpoint",
            upstream_connect_errors.clone(),
        );
        registry.register(
            "session_created",
            "Sessions created (token minted for a new session)",
            sessions_created.clone(),
        );
        registry.register("session_resumed", "Requests routed by an existing session token", sessions_resumed.clone());
        registry.register(
            "session_rejected",
            "Requests whose token was not used, by reason",
            sessions_rejected.clone(),
        );
        registry.register("session_repins", "Sessions moved to another endpoint", session_repins.clone());
        registry.register("config_reloads", "Configuration loads by result", config_reloads.clone());
        registry.register("config_version", "Version of the configuration in use", config_version.clone());
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_connect_errors,
            sessions_created,
            sessions_resumed,
            sessions_rejected,
            session_repins,
            config_reloads,
            config_version,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
