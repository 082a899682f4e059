//! The set of Gateway API and Kubernetes objects translation reads, with where each came from.

use std::fmt;

use gateway_api::experimental::gatewayclasses::GatewayClassSpec;
use gateway_api::experimental::gateways::GatewaySpec;
use gateway_api::experimental::referencegrants::ReferenceGrantSpec;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::raw::{Meta, PolicySpec, RouteSpec};

/// Where an object came from: a file and document index, or the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { path: String, document: usize },
    Cluster,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, document } => write!(f, "{path} (document {document})"),
            Origin::Cluster => f.write_str("cluster"),
        }
    }
}

/// One object: identity, metadata and its spec in the shape translation reads.
#[derive(Debug, Clone)]
pub struct Object<T> {
    pub api_version: String,
    pub kind: String,
    pub meta: Meta,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    /// `creationTimestamp` in seconds since the epoch.
    pub created: i64,
    pub spec: T,
    pub origin: Origin,
}

impl<T> Object<T> {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.meta.name)
    }

    pub fn generation(&self) -> i64 {
        self.meta.generation.unwrap_or(1)
    }
}

/// Every object Sessile reads, from files or from the cluster.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub gateway_classes: Vec<Object<GatewayClassSpec>>,
    pub gateways: Vec<Object<GatewaySpec>>,
    /// HTTPRoutes and GRPCRoutes (`kind` tells them apart).
    pub routes: Vec<Object<RouteSpec>>,
    pub reference_grants: Vec<Object<ReferenceGrantSpec>>,
    pub services: Vec<Object<Service>>,
    pub endpoint_slices: Vec<Object<EndpointSlice>>,
    pub secrets: Vec<Object<Secret>>,
    /// BackendLBPolicies and XBackendTrafficPolicies.
    pub policies: Vec<Object<PolicySpec>>,
}

impl Resources {
    pub fn len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.routes.len()
            + self.reference_grants.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses an RFC 3339 timestamp (`2024-01-02T03:04:05Z`) to seconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut secs = days * 86_400 + h * 3600 + mi * 60 + s;
    // Offset suffix: Z or +hh:mm / -hh:mm after optional fraction.
    let rest = &text[19..];
    let rest = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    match rest.as_bytes().first() {
        Some(b'Z') | Some(b'z') => {}
        Some(sign @ (b'+' | b'-')) => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let off = oh * 3600 + om * 60;
            secs -= if *sign == b'+' { off } else { -off };
        }
        _ => return None,
    }
    Some(secs)
}

/// Formats seconds since the epoch as RFC 3339 UTC.
pub fn format_timestamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for t in ["1970-01-01T00:00:00Z", "2024-02-29T12:34:56Z", "2026-11-23T15:03:33Z"] {
            assert_eq!(format_timestamp(parse_timestamp(t).unwrap()), t);
        }
        assert_eq!(parse_timestamp("2024-01-01T01:00:00+01:00"), parse_timestamp("2024-01-01T00:00:00Z"));
        assert_eq!(parse_timestamp("2024-01-01T00:00:00.123Z"), parse_timestamp("2024-01-01T00:00:00Z"));
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
