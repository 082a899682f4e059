//! `sessionPersistence` in all three API generations, normalised and validated as the CRDs would.

use std::time::Duration;

use serde_json::Value;
use sessile_core::duration;

/// A validated persistence config, before scoping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistenceSpec {
    /// Explicit cookie or header name (`sessionName`, `cookie.name` or `header.name`).
    pub name: Option<String>,
    pub kind: CarrierKind,
    pub absolute_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub permanent: bool,
    pub cookie_path: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarrierKind {
    Cookie,
    Header,
}

/// Parses and validates one `sessionPersistence` object. `field` prefixes error messages
/// (e.g. `spec.rules[0].sessionPersistence`).
pub fn parse(value: &Value, field: impl std::fmt::Display) -> Result<PersistenceSpec, String> {
    let obj = value.as_object().ok_or_else(|| format!("{field}: must be an object"))?;
    let str_field = |name: &str| -> Result<Option<&str>, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("{field}.{name}: must be a string")),
        }
    };
    let sub_object = |name: &str| -> Result<Option<&serde_json::Map<String, Value>>, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(format!("{field}.{name}: must be an object")),
        }
    };
    let sub_str = |m: &serde_json::Map<String, Value>, parent: &str, name: &str| -> Result<Option<String>, String> {
        match m.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{field}.{parent}.{name}: must be a string")),
        }
    };

    let kind = match str_field("type")? {
        None | Some("Cookie") => CarrierKind::Cookie,
        Some("Header") => CarrierKind::Header,
        Some(other) => return Err(format!("{field}.type: unsupported value {other:?}: must be Cookie or Header")),
    };
    let cookie_config = sub_object("cookieConfig")?;
    let cookie = sub_object("cookie")?;
    let header = sub_object("header")?;
    if kind == CarrierKind::Header && (cookie_config.is_some() || cookie.is_some()) {
        let which = if cookie.is_some() { "cookie" } else { "cookieConfig" };
        return Err(format!("{field}.{which}: cookie settings are not allowed when type is Header"));
    }
    if kind == CarrierKind::Cookie && header.is_some() {
        return Err(format!("{field}.header: header settings are not allowed when type is Cookie"));
    }

    let mut lifetime = None;
    let mut cookie_path = None;
    let mut nested_name = None;
    for (label, m) in [("cookieConfig", cookie_config), ("cookie", cookie)] {
        if let Some(m) = m {
            if let Some(l) = sub_str(m, label, "lifetimeType")? {
                lifetime = Some((label, l));
            }
            if label == "cookie" {
                cookie_path = sub_str(m, label, "path")?;
                nested_name = sub_str(m, label, "name")?.map(|n| (format!("{label}.name"), n));
            }
        }
    }
    if let Some(h) = header {
        nested_name = sub_str(h, "header", "name")?.map(|n| ("header.name".to_string(), n));
    }
    let permanent = match &lifetime {
        None => false,
        Some((_, l)) if l == "Session" => false,
        Some((_, l)) if l == "Permanent" => true,
        Some((label, l)) => {
            return Err(format!("{field}.{label}.lifetimeType: unsupported value {l:?}: must be Permanent or Session"));
        }
    };

    let session_name = str_field("sessionName")?.map(str::to_string);
    let name = match (session_name, nested_name) {
        (Some(a), Some((label, b))) if a != b => {
            return Err(format!("{field}: sessionName {a:?} and {label} {b:?} disagree; set one of them"));
        }
        (Some(a), _) => Some(("sessionName".to_string(), a)),
        (None, b) => b,
    };
    if let Some((label, n)) = &name
        && !is_token(n)
    {
        return Err(format!(
            "{field}.{label}: {n:?} is not a valid {} name (an RFC 7230 token of 1-128 characters)",
            if kind == CarrierKind::Cookie { "cookie" } else { "header" }
        ));
    }

    let parse_duration = |name: &str| -> Result<Option<Duration>, String> {
        match str_field(name)? {
            None => Ok(None),
            Some(text) => match duration::parse(text) {
                Some(d) if d.is_zero() => Ok(None),
                Some(d) => Ok(Some(d)),
                None => Err(format!("{field}.{name}: {text:?} is not a valid duration (GEP-2257, e.g. 1h, 30m, 10s)")),
            },
        }
    };
    let absolute_timeout = parse_duration("absoluteTimeout")?;
    let idle_timeout = parse_duration("idleTimeout")?;
    if permanent && absolute_timeout.is_none() {
        return Err(format!("{field}: AbsoluteTimeout must be specified when cookie lifetimeType is Permanent"));
    }
    if let Some(p) = &cookie_path
        && (!p.starts_with('/') || p.chars().any(|c| c.is_control() || c == ';'))
    {
        return Err(format!("{field}.cookie.path: {p:?} must start with / and contain no ';' or control characters"));
    }
    Ok(PersistenceSpec { name: name.map(|(_, n)| n), kind, absolute_timeout, idle_timeout, permanent, cookie_path })
}

/// RFC 7230 token, 1-128 characters (cookie and header names).
pub fn is_token(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> PersistenceSpec {
        parse(&v, "sp").unwrap()
    }

    fn err(v: Value) -> String {
        parse(&v, "sp").unwrap_err()
    }

    #[test]
    fn defaults_are_cookie_session_lifetime() {
        let s = ok(json!({}));
        assert_eq!(s.kind, CarrierKind::Cookie);
        assert!(!s.permanent);
        assert_eq!(s.name, None);
    }

    #[test]
    fn all_three_generations() {
        let v15 = ok(json!({"sessionName": "s", "type": "Cookie", "absoluteTimeout": "1h", "idleTimeout": "30m",
            "cookieConfig": {"lifetimeType": "Permanent"}}));
        assert_eq!(v15.name.as_deref(), Some("s"));
        assert!(v15.permanent);
        assert_eq!(v15.idle_timeout, Some(Duration::from_secs(1800)));
        let v16 = ok(json!({"sessionName": "s", "absoluteTimeout": "10s"}));
        assert_eq!(v16.absolute_timeout, Some(Duration::from_secs(10)));
        let union = ok(json!({"type": "Cookie", "cookie": {"name": "c", "path": "/app", "lifetimeType": "Session"}}));
        assert_eq!(union.name.as_deref(), Some("c"));
        assert_eq!(union.cookie_path.as_deref(), Some("/app"));
        let header = ok(json!({"type": "Header", "header": {"name": "x-session"}}));
        assert_eq!(header.kind, CarrierKind::Header);
        assert_eq!(header.name.as_deref(), Some("x-session"));
    }

    #[test]
    fn zero_duration_means_no_timeout() {
        assert_eq!(ok(json!({"absoluteTimeout": "0s"})).absolute_timeout, None);
    }

    #[test]
    fn invalid_shapes() {
        assert!(
            err(json!({"cookieConfig": {"lifetimeType": "Permanent"}})).contains("AbsoluteTimeout must be specified")
        );
        assert!(err(json!({"type": "Header", "cookieConfig": {}})).contains("sp.cookieConfig"));
        assert!(err(json!({"type": "Cookie", "header": {"name": "x"}})).contains("sp.header"));
        assert!(err(json!({"type": "Sticky"})).contains("sp.type"));
        assert!(err(json!({"absoluteTimeout": "1d"})).contains("sp.absoluteTimeout"));
        assert!(err(json!({"idleTimeout": "100000s"})).contains("sp.idleTimeout"));
        assert!(err(json!({"sessionName": "bad name"})).contains("sp.sessionName"));
        assert!(err(json!({"sessionName": "x".repeat(129)})).contains("sessionName"));
        assert!(err(json!({"cookie": {"name": "a"}, "sessionName": "b"})).contains("disagree"));
        assert!(err(json!({"cookie": {"path": "app"}})).contains("cookie.path"));
        assert!(err(json!({"cookieConfig": {"lifetimeType": "Forever"}})).contains("lifetimeType"));
        assert!(err(json!("cookie")).contains("must be an object"));
    }
}
