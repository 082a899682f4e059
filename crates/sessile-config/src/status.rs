//! Resource status exactly as the controller would write it to the Kubernetes status subresource.
//!
//! Statuses are typed (not `serde_json::Value` trees): with 5,000 routes the JSON trees cost
//! about 4 KiB and 35 allocations per route to build, compare and drop. Every struct below
//! declares its fields in alphabetical order of their JSON names, so the serialized form (`GET
//! /status`, `sessile check`) is byte for byte what the `Value` form produced.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// A status string that is usually a literal (`True`, `Accepted`, `gateway.networking.k8s.io`).
pub type Text = Cow<'static, str>;

/// One condition (`metav1.Condition`). Fields in JSON key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Shared by every condition written at one time (one allocation per translation).
    pub last_transition_time: Arc<str>,
    pub message: String,
    pub observed_generation: i64,
    pub reason: Text,
    pub status: Text,
    #[serde(rename = "type")]
    pub kind: Text,
}

/// Builds conditions for one object generation at one time.
#[derive(Debug, Clone)]
pub struct Conditions {
    pub generation: i64,
    pub now: Arc<str>,
    pub list: Vec<Condition>,
}

impl Conditions {
    pub fn new(generation: i64, now: &Arc<str>) -> Conditions {
        Conditions { generation, now: now.clone(), list: Vec::new() }
    }

    /// Sets (or replaces) condition `kind`.
    pub fn set(
        &mut self,
        kind: &'static str,
        ok: bool,
        reason: impl Into<Text>,
        message: impl Into<String>,
    ) -> &mut Self {
        let c = Condition {
            kind: Cow::Borrowed(kind),
            status: Cow::Borrowed(if ok { "True" } else { "False" }),
            reason: reason.into(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time: self.now.clone(),
        };
        match self.list.iter_mut().find(|x| x.kind == kind) {
            Some(existing) => *existing = c,
            None => self.list.push(c),
        }
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Condition> {
        self.list.iter().find(|c| c.kind == kind)
    }

    pub fn is_true(&self, kind: &str) -> bool {
        self.get(kind).is_some_and(|c| c.status == "True")
    }

    /// Whether every condition is in its healthy state (`PartiallyInvalid`/`Conflicted` False, others True).
    pub fn healthy(&self) -> bool {
        self.list.iter().all(|c| match c.kind.as_ref() {
            "PartiallyInvalid" | "Conflicted" => c.status == "False",
            _ => c.status == "True",
        })
    }

    /// The conditions, without spare capacity (statuses live as long as their configuration).
    pub fn into_list(mut self) -> Vec<Condition> {
        self.list.shrink_to_fit();
        self.list
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.list).unwrap_or(Value::Null)
    }
}

/// The `status` of one resource: `conditions` and `listeners` (GatewayClass, Gateway), `parents`
/// (routes) or `ancestors` (policies). Fields in JSON key order; absent ones are not written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ancestors: Option<Vec<ParentStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Vec<ListenerStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parents: Option<Vec<ParentStatus>>,
}

impl Status {
    /// The status as a JSON value (what the controller writes to the status subresource).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Compact JSON, as `serde_json::Value` displays.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

/// A route's `parents[]` entry (`parentRef`) or a policy's `ancestors[]` entry (`ancestorRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ancestor_ref: Option<ParentRef>,
    pub conditions: Vec<Condition>,
    pub controller_name: Text,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<ParentRef>,
}

/// A route parent or policy ancestor reference in status form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    pub group: Text,
    pub kind: Text,
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// One `listeners[]` entry of a Gateway status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteGroupKind {
    pub group: Text,
    pub kind: String,
}

/// The status of one resource, as served by `GET /status` and printed by `sessile check`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    pub api_version: String,
    pub kind: String,
    pub metadata: StatusMeta,
    pub status: Status,
    /// Whether every condition is healthy (drives the exit code of `sessile check`).
    #[serde(skip)]
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusMeta {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
}

/// A route parent or policy ancestor reference in status form.
pub fn parent_ref(
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    section: Option<&str>,
    port: Option<i32>,
) -> ParentRef {
    ParentRef {
        group: text(group),
        kind: text(kind),
        name: name.to_string(),
        namespace: namespace.to_string(),
        port,
        section_name: section.map(str::to_string),
    }
}

/// [`parent_ref`] as a JSON value.
pub fn parent_ref_json(
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    section: Option<&str>,
    port: Option<i32>,
) -> Value {
    serde_json::to_value(parent_ref(group, kind, namespace, name, section, port)).unwrap_or(Value::Null)
}

/// The common literals without an allocation.
fn text(s: &str) -> Text {
    const KNOWN: [&str; 3] = ["gateway.networking.k8s.io", "Gateway", ""];
    match KNOWN.iter().find(|k| **k == s) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(s.to_string()),
    }
}

/// Keeps the `lastTransitionTime` of every condition whose status did not change since `old`, as
/// `meta.SetStatusCondition` does: a transition time only moves when the condition transitions.
/// Conditions are matched by resource, then listener name / parentRef / ancestorRef, then type.
pub fn carry_transition_times(old: &[ResourceStatus], new: &mut [ResourceStatus]) {
    // An index instead of a scan per resource: with 5,000 routes the scan was 25 million
    // string comparisons per reload.
    let mut index: HashMap<(&str, &str, &str), &ResourceStatus> = HashMap::with_capacity(old.len());
    for o in old {
        index.entry((o.kind.as_str(), o.metadata.namespace.as_str(), o.metadata.name.as_str())).or_insert(o);
    }
    for n in new.iter_mut() {
        if let Some(o) = index.get(&(n.kind.as_str(), n.metadata.namespace.as_str(), n.metadata.name.as_str())) {
            carry_status(&o.status, &mut n.status);
        }
    }
}

fn carry_status(old: &Status, new: &mut Status) {
    if let (Some(oc), Some(nc)) = (&old.conditions, &mut new.conditions) {
        carry_conditions(oc, nc);
    }
    if let (Some(ol), Some(nl)) = (&old.listeners, &mut new.listeners) {
        for item in nl.iter_mut() {
            if let Some(prev) = ol.iter().find(|p| p.name == item.name) {
                carry_conditions(&prev.conditions, &mut item.conditions);
            }
        }
    }
    for (ol, nl) in [(&old.parents, &mut new.parents), (&old.ancestors, &mut new.ancestors)] {
        if let (Some(ol), Some(nl)) = (ol, nl) {
            for item in nl.iter_mut() {
                let same = |p: &&ParentStatus| p.parent_ref == item.parent_ref && p.ancestor_ref == item.ancestor_ref;
                if let Some(prev) = ol.iter().find(same) {
                    carry_conditions(&prev.conditions, &mut item.conditions);
                }
            }
        }
    }
}

fn carry_conditions(old: &[Condition], new: &mut [Condition]) {
    for c in new.iter_mut() {
        if let Some(p) = old.iter().find(|p| p.kind == c.kind && p.status == c.status) {
            c.last_transition_time = p.last_transition_time.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_status(now: &str, accepted: bool) -> ResourceStatus {
        let now: Arc<str> = now.into();
        let mut c = Conditions::new(3, &now);
        c.set("Accepted", accepted, "Accepted", "attached");
        c.set("ResolvedRefs", true, "ResolvedRefs", "all references resolved");
        ResourceStatus {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "HTTPRoute".into(),
            metadata: StatusMeta { namespace: "ns".into(), name: "r".into(), generation: 3 },
            status: Status {
                parents: Some(vec![ParentStatus {
                    ancestor_ref: None,
                    conditions: c.into_list(),
                    controller_name: "sessile.dev/gateway-controller".into(),
                    parent_ref: Some(parent_ref(
                        "gateway.networking.k8s.io",
                        "Gateway",
                        "ns",
                        "gw",
                        Some("http"),
                        None,
                    )),
                }]),
                ..Status::default()
            },
            healthy: accepted,
        }
    }

    #[test]
    fn json_form_has_sorted_keys_like_a_json_value() {
        let s = route_status("2024-01-01T00:00:00Z", true);
        let text = serde_json::to_string(&s.status).unwrap();
        // A serde_json::Value (BTreeMap) round trip sorts keys: the typed form must already be sorted.
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value.to_string(), text);
        assert_eq!(s.status.to_string(), text);
        assert!(text.starts_with(r#"{"parents":[{"conditions":[{"lastTransitionTime":"2024-01-01T00:00:00Z","#));
        assert!(text.contains(r#""parentRef":{"group":"gateway.networking.k8s.io","kind":"Gateway","name":"gw","namespace":"ns","sectionName":"http"}"#));
    }

    #[test]
    fn transition_times_move_only_on_transitions() {
        let old = vec![route_status("2024-01-01T00:00:00Z", false)];
        let mut new = vec![route_status("2025-01-01T00:00:00Z", true)];
        carry_transition_times(&old, &mut new);
        let conds = &new[0].status.parents.as_ref().unwrap()[0].conditions;
        assert_eq!(&*conds[0].last_transition_time, "2025-01-01T00:00:00Z", "Accepted changed");
        assert_eq!(&*conds[1].last_transition_time, "2024-01-01T00:00:00Z", "ResolvedRefs did not");
    }
}
