//! Status writer (leader only): merges translated statuses into the cluster's, touching only our entries,
//! and patches `/status` with a resourceVersion precondition only when something changed.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use sessile_config::{CONTROLLER_NAME, ResourceStatus};

use crate::cluster::Cluster;
use crate::kinds::by_kind;

/// The field manager recorded on our status writes.
pub const FIELD_MANAGER: &str = "sessile";

/// What one sync did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub written: usize,
    /// Writes that failed (conflicts included); the next sync retries them.
    pub failed: usize,
}

/// Writes statuses; remembers what it wrote so that a write whose watch event is still in flight is not repeated.
pub struct StatusWriter {
    client: kube::Client,
    /// Object key -> (resourceVersion the patch was based on, status written).
    written: Mutex<HashMap<String, (String, Value)>>,
}

impl StatusWriter {
    pub fn new(client: kube::Client) -> StatusWriter {
        StatusWriter { client, written: Mutex::new(HashMap::new()) }
    }

    /// Brings every object's status in line with `desired`. `addresses` (from `--publish-service`) go to
    /// every Gateway we own; `None` leaves Gateway addresses alone.
    pub async fn sync(&self, cluster: &Cluster, desired: &[ResourceStatus], addresses: Option<&Value>) -> SyncReport {
        let mut report = SyncReport::default();
        {
            // Forget objects that no longer have a status of ours (deleted), so the memory stays bounded.
            let keys: std::collections::HashSet<String> =
                desired.iter().map(|d| format!("{}/{}/{}", d.kind, d.metadata.namespace, d.metadata.name)).collect();
            self.written.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| keys.contains(k));
        }
        for d in desired {
            let Some(kind) = by_kind(&d.kind) else { continue };
            let (ns, name) = (d.metadata.namespace.as_str(), d.metadata.name.as_str());
            let Some(object) = cluster.object(kind.kind, ns, name) else { continue };
            let current = object.get("status").cloned().unwrap_or_else(|| json!({}));
            let merged = merge_status(&d.kind, &current, &d.status.to_value(), addresses);
            if merged == current {
                continue;
            }
            let rv = object["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
            let key = format!("{}/{ns}/{name}", d.kind);
            {
                let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
                if written.get(&key).is_some_and(|(r, s)| *r == rv && *s == merged) {
                    // Already written on top of this version; its watch event has not arrived yet.
                    continue;
                }
            }
            let ar = kind.api_resource();
            let api: Api<DynamicObject> = match kind.namespaced {
                true => Api::namespaced_with(self.client.clone(), ns, &ar),
                false => Api::all_with(self.client.clone(), &ar),
            };
            // The resourceVersion makes the read-modify-write safe: a concurrent change gets 409 and a retry.
            let patch = json!({"metadata": {"resourceVersion": rv}, "status": merged});
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
            match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    report.written += 1;
                    tracing::debug!(kind = %d.kind, namespace = ns, name, "status written");
                    self.written.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (rv, merged));
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(kind = %d.kind, namespace = ns, name, error = %e, "status write failed; will retry");
                }
            }
        }
        report
    }
}

/// The status to write: `current` with our parts replaced by `desired`. Other controllers' route parents
/// and policy ancestors are kept; a condition whose status did not change keeps its lastTransitionTime.
pub fn merge_status(kind: &str, current: &Value, desired: &Value, addresses: Option<&Value>) -> Value {
    let mut out = match current {
        Value::Object(_) => current.clone(),
        _ => json!({}),
    };
    match kind {
        "GatewayClass" | "Gateway" => {
            if let Some(d) = desired.get("conditions") {
                out["conditions"] = merge_conditions(current.get("conditions"), d);
            }
            if let Some(Value::Array(d)) = desired.get("listeners") {
                let old = current.get("listeners").and_then(Value::as_array);
                let listeners = d
                    .iter()
                    .map(|l| {
                        let prev = old.and_then(|o| o.iter().find(|p| p["name"] == l["name"]));
                        with_conditions(l, prev)
                    })
                    .collect();
                out["listeners"] = Value::Array(listeners);
            }
            if kind == "Gateway"
                && let Some(a) = addresses
            {
                out["addresses"] = a.clone();
            }
        }
        _ => {
            for (list, key) in [("parents", "parentRef"), ("ancestors", "ancestorRef")] {
                let Some(Value::Array(d)) = desired.get(list) else { continue };
                if d.is_empty() && current.get(list).is_none() {
                    // Nothing of ours to say on an object another controller owns: leave it untouched.
                    continue;
                }
                let old: Vec<Value> = current.get(list).and_then(Value::as_array).cloned().unwrap_or_default();
                let mut merged: Vec<Value> = old.iter().filter(|e| !is_ours(e)).cloned().collect();
                for entry in d {
                    let prev = old.iter().find(|p| is_ours(p) && p[key] == entry[key]);
                    merged.push(with_conditions(entry, prev));
                }
                out[list] = Value::Array(merged);
            }
        }
    }
    out
}

fn is_ours(entry: &Value) -> bool {
    entry["controllerName"] == CONTROLLER_NAME
}

/// `entry` with its conditions' transition times carried over from `prev`.
fn with_conditions(entry: &Value, prev: Option<&Value>) -> Value {
    let mut e = entry.clone();
    if let Some(d) = entry.get("conditions") {
        e["conditions"] = merge_conditions(prev.and_then(|p| p.get("conditions")), d);
    }
    e
}

/// Conditions of `desired` (every type we set), then the types only `current` has (set by others),
/// with each unchanged condition keeping its lastTransitionTime.
fn merge_conditions(current: Option<&Value>, desired: &Value) -> Value {
    let old = current.and_then(Value::as_array).cloned().unwrap_or_default();
    let Some(new) = desired.as_array() else { return desired.clone() };
    let mut out: Vec<Value> = new
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(p) = old.iter().find(|p| p["type"] == c["type"] && p["status"] == c["status"])
                && let Some(t) = p.get("lastTransitionTime")
            {
                c["lastTransitionTime"] = t.clone();
            }
            c
        })
        .collect();
    out.extend(old.iter().filter(|p| !new.iter().any(|c| c["type"] == p["type"])).cloned());
    Value::Array(out)
}

/// Gateway `status.addresses` from the published Service: load balancer ingress IPs and hostnames,
/// else its cluster IPs.
pub fn service_addresses(service: &Value) -> Value {
    let mut out = Vec::new();
    for ingress in service["status"]["loadBalancer"]["ingress"].as_array().into_iter().flatten() {
        if let Some(ip) = ingress["ip"].as_str() {
            out.push(json!({"type": "IPAddress", "value": ip}));
        } else if let Some(host) = ingress["hostname"].as_str() {
            out.push(json!({"type": "Hostname", "value": host}));
        }
    }
    if out.is_empty() {
        let ips: Vec<&str> = match service["spec"]["clusterIPs"].as_array() {
            Some(list) => list.iter().filter_map(Value::as_str).collect(),
            None => service["spec"]["clusterIP"].as_str().into_iter().collect(),
        };
        out.extend(ips.into_iter().filter(|ip| *ip != "None").map(|ip| json!({"type": "IPAddress", "value": ip})));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_parents_of_other_controllers_are_kept() {
        let current = json!({"parents": [
            {"parentRef": {"name": "other"}, "controllerName": "example.com/other", "conditions": []},
            {"parentRef": {"name": "gw"}, "controllerName": CONTROLLER_NAME, "conditions": [
                {"type": "Accepted", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]},
            {"parentRef": {"name": "gone"}, "controllerName": CONTROLLER_NAME, "conditions": []}
        ]});
        let desired = json!({"parents": [
            {"parentRef": {"name": "gw"}, "controllerName": CONTROLLER_NAME, "conditions": [
                {"type": "Accepted", "status": "True", "lastTransitionTime": "2030-01-01T00:00:00Z"},
                {"type": "ResolvedRefs", "status": "False", "lastTransitionTime": "2030-01-01T00:00:00Z"}]}
        ]});
        let merged = merge_status("HTTPRoute", &current, &desired, None);
        let parents = merged["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2, "{merged:#}");
        assert_eq!(parents[0]["controllerName"], "example.com/other");
        assert_eq!(parents[1]["conditions"][0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(parents[1]["conditions"][1]["lastTransitionTime"], "2030-01-01T00:00:00Z");
        // Merging again changes nothing: no write when nothing changed.
        assert_eq!(merge_status("HTTPRoute", &merged, &desired, None), merged);
        // A route attached only to other controllers' Gateways is left alone.
        assert_eq!(merge_status("HTTPRoute", &json!({}), &json!({"parents": []}), None), json!({}));
    }

    #[test]
    fn gateway_conditions_of_other_types_are_kept_and_addresses_set() {
        let current = json!({"conditions": [{"type": "Example", "status": "True"}]});
        let desired = json!({"conditions": [{"type": "Accepted", "status": "True"}], "listeners": []});
        let addrs = json!([{"type": "IPAddress", "value": "192.0.2.1"}]);
        let merged = merge_status("Gateway", &current, &desired, Some(&addrs));
        assert_eq!(merged["conditions"].as_array().unwrap().len(), 2);
        assert_eq!(merged["addresses"], addrs);
        assert_eq!(merged["listeners"], json!([]));
    }

    #[test]
    fn service_addresses_prefer_the_load_balancer() {
        let lb = json!({"spec": {"clusterIP": "10.0.0.1"},
                        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}, {"hostname": "lb.example"}]}}});
        assert_eq!(
            service_addresses(&lb),
            json!([{"type": "IPAddress", "value": "192.0.2.7"}, {"type": "Hostname", "value": "lb.example"}])
        );
        let plain = json!({"spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"]}});
        assert_eq!(service_addresses(&plain), json!([{"type": "IPAddress", "value": "10.0.0.1"}]));
    }
}
