//! Reading Gateway API YAML from files and directories into `Resources`; one bad document never stops the rest.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::raw::{Meta, PolicySpec, RouteSpec};
use crate::resources::{Object, Origin, Resources, parse_timestamp};

/// A document that could not be used, located precisely enough to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    /// 1-based document index within the file.
    pub document: Option<usize>,
    /// `Kind namespace/name` when known.
    pub object: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for LoadError {}

/// Loads configuration, remembering when each object was first seen so that objects without
/// `creationTimestamp` keep a stable age across reloads.
#[derive(Debug, Default)]
pub struct Loader {
    first_seen: HashMap<String, i64>,
    /// Objects seen in the load in progress (entries for objects that disappeared are forgotten).
    seen: std::collections::HashSet<String>,
    /// Where first-seen times are kept across restarts (`--state-dir`), if anywhere.
    memory: Option<PathBuf>,
    /// A first-seen time was added since the last save.
    dirty: bool,
}

/// The result of one load: usable objects and the documents that were not usable.
#[derive(Debug, Default)]
pub struct Loaded {
    pub resources: Resources,
    pub errors: Vec<LoadError>,
    /// Files that were read, for watching.
    pub files: Vec<PathBuf>,
}

impl Loader {
    pub fn new() -> Loader {
        Loader::default()
    }

    /// A loader that keeps first-seen times in `path` (JSON), so that objects without
    /// `creationTimestamp` keep their age, and conflicts their winners, across restarts.
    pub fn with_memory(path: PathBuf) -> Loader {
        let first_seen = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Loader { first_seen, memory: Some(path), ..Loader::default() }
    }

    /// A loader that reads first-seen times from `path` but never writes them (`sessile explain`
    /// reads a running gateway's state without changing it).
    pub fn with_memory_read_only(path: PathBuf) -> Loader {
        Loader { memory: None, ..Loader::with_memory(path) }
    }

    /// Forgets objects not seen in the load that just finished and saves the times when they changed.
    fn finish_load(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        let before = self.first_seen.len();
        self.first_seen.retain(|k, _| seen.contains(k));
        let changed = std::mem::take(&mut self.dirty) || self.first_seen.len() != before;
        if let (true, Some(path)) = (changed, &self.memory) {
            let tmp = path.with_extension("tmp");
            let written = serde_json::to_vec(&self.first_seen)
                .map_err(std::io::Error::other)
                .and_then(|bytes| std::fs::write(&tmp, bytes))
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = written {
                eprintln!("sessile: cannot save {}: {e}", path.display());
            }
        }
    }

    /// Loads a YAML file or every `*.yaml`/`*.yml` below a directory (sorted, recursive, hidden entries skipped).
    /// Fails only when `path` itself cannot be read.
    pub fn load_path(&mut self, path: &Path) -> Result<Loaded, LoadError> {
        let unreadable = |e: std::io::Error| LoadError {
            file: path.display().to_string(),
            document: None,
            object: None,
            message: format!("cannot read: {e}"),
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        let mut files = Vec::new();
        if meta.is_dir() {
            collect_yaml_files(path, &mut files).map_err(unreadable)?;
        } else {
            files.push(path.to_path_buf());
        }
        let mut loaded = Loaded::default();
        let now = now_secs();
        for file in &files {
            let label = file.display().to_string();
            match std::fs::read_to_string(file) {
                Ok(text) => self.load_str_at(&label, &text, now, &mut loaded),
                Err(e) => loaded.errors.push(LoadError {
                    file: label,
                    document: None,
                    object: None,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        loaded.files = files;
        self.finish_load();
        Ok(loaded)
    }

    /// Loads the documents of one YAML text (`file` labels errors).
    pub fn load_str(&mut self, file: &str, text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        self.load_str_at(file, text, now_secs(), &mut loaded);
        self.finish_load();
        loaded
    }

    fn load_str_at(&mut self, file: &str, text: &str, now: i64, loaded: &mut Loaded) {
        for (index, (first_line, doc)) in split_documents(text).into_iter().enumerate() {
            let document = index + 1;
            let mut error = |object: Option<String>, message: String| {
                loaded.errors.push(LoadError { file: file.to_string(), document: Some(document), object, message })
            };
            let value: Value = match serde_saphyr::from_str(doc) {
                Ok(v) => v,
                Err(e) => {
                    error(None, format!("invalid YAML (document starts at line {first_line}): {e}"));
                    continue;
                }
            };
            if value.is_null() {
                continue;
            }
            let origin = Origin::File { path: file.to_string(), document };
            if let Err((object, message)) = self.add_value(value, origin, now, &mut loaded.resources) {
                let message = match message.contains("line") {
                    true => format!("{message} (document starts at line {first_line})"),
                    false => message,
                };
                error(object, message);
            }
        }
    }

    /// Adds one object given as JSON (file documents and cluster objects both come through here).
    pub fn add_value(
        &mut self,
        value: Value,
        origin: Origin,
        now: i64,
        out: &mut Resources,
    ) -> Result<(), (Option<String>, String)> {
        let Value::Object(map) = &value else {
            return Err((None, "a document must be a mapping with apiVersion, kind and metadata".into()));
        };
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        if kind.is_empty() || api_version.is_empty() {
            return Err((None, "apiVersion and kind are required".into()));
        }
        let meta: Meta = match map.get("metadata") {
            Some(m) => {
                serde_json::from_value(m.clone()).map_err(|e| (Some(kind.clone()), format!("field metadata: {e}")))?
            }
            None => Meta::default(),
        };
        let namespace = meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
        let object = Some(format!("{kind} {namespace}/{}", meta.name));
        if meta.name.is_empty() {
            return Err((Some(kind), "field metadata.name is required".into()));
        }
        let created = match &meta.creation_timestamp {
            Some(ts) => parse_timestamp(ts).ok_or_else(|| {
                (object.clone(), format!("field metadata.creationTimestamp: {ts:?} is not an RFC 3339 time"))
            })?,
            None => {
                let key = format!("{kind}/{namespace}/{}", meta.name);
                let t = *self.first_seen.entry(key.clone()).or_insert_with(|| {
                    self.dirty = true;
                    now
                });
                self.seen.insert(key);
                t
            }
        };
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let head = Head {
            api_version: &api_version,
            kind: &kind,
            meta: &meta,
            namespace: &namespace,
            created,
            origin: &origin,
        };
        let fail = |e: String| (object.clone(), e);
        match (group, kind.as_str()) {
            ("gateway.networking.k8s.io", "GatewayClass") => {
                out.gateway_classes.push(head.object(spec_of(&value).map_err(fail)?));
            }
            ("gateway.networking.k8s.io", "Gateway") => out.gateways.push(head.object(spec_of(&value).map_err(fail)?)),
            ("gateway.networking.k8s.io", "HTTPRoute") => {
                check_typed::<gateway_api::experimental::httproutes::HttpRouteSpec>(&value).map_err(fail)?;
                out.routes.push(head.object(spec_of::<RouteSpec>(&value).map_err(fail)?));
            }
            ("gateway.networking.k8s.io", "GRPCRoute") => {
                check_typed::<gateway_api::experimental::grpcroutes::GrpcRouteSpec>(&value).map_err(fail)?;
                out.routes.push(head.object(spec_of::<RouteSpec>(&value).map_err(fail)?));
            }
            ("gateway.networking.k8s.io", "ReferenceGrant") => {
                out.reference_grants.push(head.object(spec_of(&value).map_err(fail)?))
            }
            ("gateway.networking.k8s.io", "BackendLBPolicy") => {
                out.policies.push(head.object(spec_of::<PolicySpec>(&value).map_err(fail)?))
            }
            ("gateway.networking.x-k8s.io", "XBackendTrafficPolicy") => {
                check_typed::<gateway_api::experimental::xbackendtrafficpolicies::XBackendTrafficPolicySpec>(&value)
                    .map_err(fail)?;
                out.policies.push(head.object(spec_of::<PolicySpec>(&value).map_err(fail)?))
            }
            ("", "Service") => {
                out.services.push(head.object(whole::<k8s_openapi::api::core::v1::Service>(&value).map_err(fail)?))
            }
            ("", "Secret") => out.secrets.push(head.object(whole(&value).map_err(fail)?)),
            ("discovery.k8s.io", "EndpointSlice") => {
                out.endpoint_slices.push(head.object(whole(&value).map_err(fail)?))
            }
            _ => return Err((object, format!("unsupported kind {kind} in {api_version}; this document is ignored"))),
        }
        Ok(())
    }
}

/// The identity part of an object, shared by every kind.
struct Head<'a> {
    api_version: &'a str,
    kind: &'a str,
    meta: &'a Meta,
    namespace: &'a str,
    created: i64,
    origin: &'a Origin,
}

impl Head<'_> {
    fn object<T>(&self, spec: T) -> Object<T> {
        Object {
            api_version: self.api_version.to_string(),
            kind: self.kind.to_string(),
            meta: self.meta.clone(),
            namespace: self.namespace.to_string(),
            created: self.created,
            spec,
            origin: self.origin.clone(),
        }
    }
}

fn spec_of<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    let spec = value.get("spec").cloned().unwrap_or(Value::Object(Default::default()));
    serde_json::from_value(spec).map_err(|e| format!("field spec: {e}"))
}

/// Checks the spec against the `gateway-api` crate's typed schema (enums, required fields).
fn check_typed<T: DeserializeOwned>(value: &Value) -> Result<(), String> {
    spec_of::<T>(value).map(|_| ())
}

fn whole<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    serde_json::from_value(value.clone()).map_err(|e| format!("invalid object: {e}"))
}

fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits a multi-document YAML text on `---` lines; returns (first line number, text) per document.
pub fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs.retain(|(_, d)| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    docs
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let docs = split_documents("a: 1\n---\n# only a comment\n---\nb: 2\n...\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0], (1, "a: 1\n"));
        assert_eq!(docs[1].0, 5);
    }

    #[test]
    fn one_bad_document_does_not_stop_the_rest() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\nkind: [\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\nspec: {rules: [{backendRefs: [{name: a, port: \"eighty\"}]}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n";
        let mut loader = Loader::new();
        let loaded = loader.load_str("test.yaml", text);
        assert_eq!(loaded.resources.services.len(), 2);
        assert_eq!(loaded.errors.len(), 2, "{:?}", loaded.errors);
        assert_eq!(loaded.errors[0].document, Some(2));
        let route_err = &loaded.errors[1];
        assert_eq!(route_err.document, Some(3));
        assert_eq!(route_err.object.as_deref(), Some("HTTPRoute ns/r"));
        assert!(route_err.to_string().starts_with("test.yaml: document 3 (HTTPRoute ns/r): field spec"), "{route_err}");
    }

    #[test]
    fn creation_time_is_stable_across_reloads() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n";
        let mut loader = Loader::new();
        let first = loader.load_str("f", text).resources.services[0].created;
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = loader.load_str("f", text).resources.services[0].created;
        assert_eq!(first, second);
    }
}
