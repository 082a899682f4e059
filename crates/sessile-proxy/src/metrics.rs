//! Prometheus metrics: requests, latency, upstream errors, endpoint health, sessions by outcome,
//! reason and endpoint, configuration reloads and errors.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sessile_core::{Backend, EndpointState, Rule, Snapshot};

use crate::health::Health;
use crate::session::{Decision, SessionFlag};

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

/// An endpoint address as a label value, formatted only when scraped (no allocation per request).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct AddrLabel(pub SocketAddr);

impl EncodeLabelValue for AddrLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        write!(encoder, "{}", self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// `namespace/name/rule-index`.
    pub rule: Label,
    /// `namespace/service:port`.
    pub backend: Label,
}

/// Session outcomes per endpoint (for each endpoint's share of sessions).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointSessionLabels {
    pub backend: Label,
    pub endpoint: AddrLabel,
    /// `new` (a token minted: new, expired, invalid or re-pinned) or `resumed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointHealthLabels {
    pub backend: Label,
    pub endpoint: AddrLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStateLabels {
    pub backend: Label,
    /// `ready`, `draining` or `unhealthy`.
    pub state: &'static str,
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
    pub endpoint_sessions: Family<EndpointSessionLabels, Counter>,
    /// 1 when the endpoint takes traffic, 0 while it is in its refused-connection back-off (refreshed on scrape).
    pub endpoint_healthy: Family<EndpointHealthLabels, Gauge>,
    /// Endpoints per backend by state (refreshed on scrape).
    pub endpoints: Family<EndpointStateLabels, Gauge>,
    pub config_reloads: Family<ResultLabels, Counter>,
    /// Documents that could not be loaded in the last reload.
    pub config_load_errors: Gauge,
    /// Resources in the configuration in use that are not accepted (see `/status`).
    pub config_resources_not_accepted: Gauge,
    pub config_last_reload_success: Gauge,
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
        let endpoint_sessions = Family::<EndpointSessionLabels, Counter>::default();
        let endpoint_healthy = Family::<EndpointHealthLabels, Gauge>::default();
        let endpoints = Family::<EndpointStateLabels, Gauge>::default();
        let config_reloads = Family::<ResultLabels, Counter>::default();
        let config_load_errors = Gauge::default();
        let config_resources_not_accepted = Gauge::default();
        let config_last_reload_success = Gauge::default();
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
        registry.register(
            "endpoint_sessions",
            "Session requests by endpoint: new sessions pinned there and requests resumed there",
            endpoint_sessions.clone(),
        );
        registry.register(
            "endpoint_healthy",
            "1 when the endpoint takes traffic, 0 while it is skipped after refusing connections",
            endpoint_healthy.clone(),
        );
        registry.register("endpoints", "Endpoints per backend by state", endpoints.clone());
        registry.register("config_reloads", "Configuration loads by result", config_reloads.clone());
        registry.register(
            "config_load_errors",
            "Documents that could not be loaded in the last reload",
            config_load_errors.clone(),
        );
        registry.register(
            "config_resources_not_accepted",
            "Resources of the configuration in use that are not accepted",
            config_resources_not_accepted.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When a configuration was last applied, seconds since the epoch",
            config_last_reload_success.clone(),
        );
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
            endpoint_sessions,
            endpoint_healthy,
            endpoints,
            config_reloads,
            config_load_errors,
            config_resources_not_accepted,
            config_last_reload_success,
            config_version,
        }
    }
}

/// Request counters kept per rule for this many status codes (first come); others use the family.
const CODE_SLOTS: usize = 6;

/// A rule's metric handles, made on its first request and attached to the rule: the hot path
/// increments them directly instead of hashing label sets into the families per request. They
/// are the families' own series (a reload's new rule with the same label continues them).
struct RuleMetrics {
    /// The `Metrics` the handles belong to (a snapshot applied to two gateways counts in each).
    owner: usize,
    duration: Histogram,
    codes: [OnceLock<(u16, Counter)>; CODE_SLOTS],
    /// Per backendRef of the rule: sessions created and resumed, then rejections by reason.
    sessions: Vec<SessionSlots>,
}

/// Slot of a rejection reason in `SessionSlots` (after created and resumed).
const fn rejection_slot(reason: sessile_session::Rejection) -> usize {
    2 + reason as usize
}

type SessionSlots = [OnceLock<Counter>; 2 + sessile_session::Rejection::ALL.len()];

/// A backend's per-endpoint session handles (new, resumed), attached to the backend.
struct BackendMetrics {
    owner: usize,
    endpoints: Vec<[OnceLock<Counter>; 2]>,
}

impl Metrics {
    fn owner(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    fn rule_metrics<'r>(&self, rule: &'r Rule) -> Option<&'r RuleMetrics> {
        let m = rule.attachment.get_or_init(|| RuleMetrics {
            owner: self.owner(),
            duration: self.request_duration.get_or_create(&RouteLabels { route: Label(rule.label.clone()) }).clone(),
            codes: Default::default(),
            sessions: rule.backends.iter().map(|_| Default::default()).collect(),
        })?;
        (m.owner == self.owner()).then_some(m)
    }

    fn backend_metrics<'b>(&self, backend: &'b Backend) -> Option<&'b BackendMetrics> {
        let m = backend.attachment.get_or_init(|| BackendMetrics {
            owner: self.owner(),
            endpoints: backend.endpoints.iter().map(|_| Default::default()).collect(),
        })?;
        (m.owner == self.owner()).then_some(m)
    }

    /// Counts a finished request (`rule` is `None` when no rule matched).
    pub fn record_request(&self, rule: Option<&Rule>, status: u16, elapsed: Duration) {
        static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("none"));
        let family_counter = |label: &Arc<str>| {
            self.requests.get_or_create(&RequestLabels { route: Label(label.clone()), code: status }).clone()
        };
        let Some((rule, m)) = rule.and_then(|r| Some((r, self.rule_metrics(r)?))) else {
            let label = rule.map_or_else(|| NO_ROUTE.clone(), |r| r.label.clone());
            family_counter(&label).inc();
            self.request_duration.get_or_create(&RouteLabels { route: Label(label) }).observe(elapsed.as_secs_f64());
            return;
        };
        m.duration.observe(elapsed.as_secs_f64());
        for slot in &m.codes {
            let (code, counter) = slot.get_or_init(|| (status, family_counter(&rule.label)));
            if *code == status {
                counter.inc();
                return;
            }
        }
        family_counter(&rule.label).inc();
    }

    /// Counts a session decision: created or resumed, re-pins, rejection reasons, per-endpoint share.
    pub fn record_session(&self, rule: &Rule, d: &Decision) {
        if rule.session.is_none() {
            return;
        }
        let resumed = matches!(d.flag, SessionFlag::Resumed | SessionFlag::Refreshed);
        let outcome = usize::from(resumed);
        let labels = || SessionLabels { rule: Label(rule.label.clone()), backend: Label(d.target.backend.id.clone()) };
        let slots = self.rule_metrics(rule).and_then(|m| m.sessions.get(d.target.backend_index));
        // The rule's handle when it has one, else the family's series (hashed per call).
        let count = |slot: usize, counter: &dyn Fn() -> Counter| match slots {
            Some(slots) => slots[slot].get_or_init(counter).inc(),
            None => counter().inc(),
        };
        count(outcome, &|| match resumed {
            true => self.sessions_resumed.get_or_create(&labels()).clone(),
            false => self.sessions_created.get_or_create(&labels()).clone(),
        });
        let endpoint_counter = || {
            self.endpoint_sessions
                .get_or_create(&EndpointSessionLabels {
                    backend: Label(d.target.backend.id.clone()),
                    endpoint: AddrLabel(d.target.addr),
                    outcome: if resumed { "resumed" } else { "new" },
                })
                .clone()
        };
        let endpoint_slots =
            d.target.endpoint_index.and_then(|i| self.backend_metrics(&d.target.backend)?.endpoints.get(i));
        match endpoint_slots {
            Some(slots) => slots[outcome].get_or_init(endpoint_counter).inc(),
            None => endpoint_counter().inc(),
        };
        if d.flag == SessionFlag::Repinned {
            self.session_repins.get_or_create(&labels()).inc();
        }
        if let Some(reason) = d.rejection {
            count(rejection_slot(reason), &|| {
                let SessionLabels { rule, backend } = labels();
                self.sessions_rejected.get_or_create(&RejectLabels { rule, backend, reason: reason.as_str() }).clone()
            });
        }
    }

    /// Sets the endpoint gauges from the configuration in use and the passive health state.
    pub fn refresh_endpoints(&self, snapshot: &Snapshot, health: &Health) {
        self.endpoint_healthy.clear();
        self.endpoints.clear();
        for b in snapshot.backends() {
            let backend = Label(b.id.clone());
            for state in ["ready", "draining", "unhealthy"] {
                self.endpoints.get_or_create(&EndpointStateLabels { backend: backend.clone(), state }).set(0);
            }
            for e in &b.endpoints {
                let healthy = health.is_healthy(e.addr);
                self.endpoint_healthy
                    .get_or_create(&EndpointHealthLabels { backend: backend.clone(), endpoint: AddrLabel(e.addr) })
                    .set(i64::from(healthy));
                let state = match (healthy, e.state) {
                    (false, _) => "unhealthy",
                    (true, EndpointState::Draining) => "draining",
                    (true, EndpointState::Ready) => "ready",
                };
                self.endpoints.get_or_create(&EndpointStateLabels { backend: backend.clone(), state }).inc();
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessile_core::{RouteRef, Timeouts};

    /// A rule labelled `ns/r/0`.
    fn rule() -> Rule {
        let route = Arc::new(RouteRef { kind: "HTTPRoute".into(), namespace: "ns".into(), name: "r".into() });
        Rule::new(route, 0, None, vec![], vec![], Timeouts::default(), None)
    }

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn cached_request_handles_count_in_the_family_series() {
        let metrics = Metrics::default();
        let first = rule();
        // More distinct codes than the per-rule slots, and repeats of each.
        let codes = [200, 404, 503, 200, 301, 302, 304, 500, 502, 200, 404];
        for code in codes {
            metrics.record_request(Some(&first), code, Duration::from_millis(1));
        }
        // A reload's new rule with the same label continues the same series.
        let reloaded = rule();
        metrics.record_request(Some(&reloaded), 502, Duration::from_millis(1));
        metrics.record_request(None, 404, Duration::from_millis(1));
        // The same rule counted by a second gateway's metrics stays out of the first's.
        let other = Metrics::default();
        other.record_request(Some(&first), 200, Duration::from_millis(1));

        let text = metrics.encode();
        for (code, expected) in
            [(200, 3.0), (404, 2.0), (503, 1.0), (301, 1.0), (302, 1.0), (304, 1.0), (500, 1.0), (502, 2.0)]
        {
            let prefix = format!("sessile_requests_total{{route=\"ns/r/0\",code=\"{code}\"}}");
            assert_eq!(line_value(&text, &prefix), Some(expected), "code {code}\n{text}");
        }
        assert_eq!(line_value(&text, "sessile_requests_total{route=\"none\",code=\"404\"}"), Some(1.0));
        assert_eq!(line_value(&text, "sessile_request_duration_seconds_count{route=\"ns/r/0\"}"), Some(12.0));
        assert_eq!(line_value(&other.encode(), "sessile_requests_total{route=\"ns/r/0\",code=\"200\"}"), Some(1.0));
    }
}
