//! Resource status exactly as the controller would write it to the Kubernetes status subresource.

use serde::Serialize;
use serde_json::{Value, json};

/// One condition (`metav1.Condition`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
    pub last_transition_time: String,
}

/// Builds conditions for one object generation at one time.
#[derive(Debug, Clone)]
pub struct Conditions {
    pub generation: i64,
    pub now: String,
    pub list: Vec<Condition>,
}

impl Conditions {
    pub fn new(generation: i64, now: &str) -> Conditions {
        Conditions { generation, now: now.to_string(), list: Vec::new() }
    }

    /// Sets (or replaces) condition `kind`.
    pub fn set(&mut self, kind: &str, ok: bool, reason: &str, message: impl Into<String>) -> &mut Self {
        let c = Condition {
            kind: kind.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
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
        self.list.iter().all(|c| match c.kind.as_str() {
            "PartiallyInvalid" | "Conflicted" => c.status == "False",
            _ => c.status == "True",
        })
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.list).unwrap_or(Value::Null)
    }
}

/// The status of one resource, as served by `GET /status` and printed by `sessile check`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    pub api_version: String,
    pub kind: String,
    pub metadata: StatusMeta,
    pub status: Value,
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
pub fn parent_ref_json(
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    section: Option<&str>,
    port: Option<i32>,
) -> Value {
    let mut v = json!({"group": group, "kind": kind, "namespace": namespace, "name": name});
    if let Some(s) = section {
        v["sectionName"] = json!(s);
    }
    if let Some(p) = port {
        v["port"] = json!(p);
    }
    v
}

/// Keeps the `lastTransitionTime` of every condition whose status did not change since `old`, as
/// `meta.SetStatusCondition` does: a transition time only moves when the condition transitions.
/// Conditions are matched by resource, then listener name / parentRef / ancestorRef, then type.
pub fn carry_transition_times(old: &[ResourceStatus], new: &mut [ResourceStatus]) {
    for n in new.iter_mut() {
        let prev = old.iter().find(|o| {
            o.kind == n.kind && o.metadata.namespace == n.metadata.namespace && o.metadata.name == n.metadata.name
        });
        if let Some(o) = prev {
            carry_value(&o.status, &mut n.status);
        }
    }
}

fn carry_value(old: &Value, new: &mut Value) {
    if let (Some(oc), Some(nc)) =
        (old.get("conditions").and_then(Value::as_array), new.get_mut("conditions").and_then(Value::as_array_mut))
    {
        for c in nc.iter_mut() {
            let same = oc.iter().find(|p| p["type"] == c["type"] && p["status"] == c["status"]);
            if let Some(t) = same.and_then(|p| p.get("lastTransitionTime")) {
                c["lastTransitionTime"] = t.clone();
            }
        }
    }
    for (list, key) in [("listeners", "name"), ("parents", "parentRef"), ("ancestors", "ancestorRef")] {
        if let (Some(ol), Some(nl)) =
            (old.get(list).and_then(Value::as_array), new.get_mut(list).and_then(Value::as_array_mut))
        {
            for item in nl.iter_mut() {
                if let Some(prev) = ol.iter().find(|p| p[key] == item[key]) {
                    carry_value(prev, item);
                }
            }
        }
    }
}
