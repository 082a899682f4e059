//! Cookie / custom header token extraction and `resolve` on arbitrary header lines.
//!
//! Input: lines separated by `\n`. Line 0 picks the cookie name (used when it is a valid
//! token name, otherwise `sessile-session`); the other lines are header values (lines that
//! are not UTF-8 are skipped, as the proxy does).
#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sessile_session::{
    Claims, CookieAttrs, Eligibility, KeyRing, MAX_CANDIDATES, Rejection, SessionTimeouts, cookie_values,
    header_values, is_valid_token_name, open, resolve, seal, set_cookie,
};

const RING: &str = "salt 3q2+7wAAAAAAAAAAAAAAAA\n\
                    key 2 8J+YgPCfmIDwn5iA8J+YgPCfmIDwn5iA8J+YgPCfmIA\n\
                    key 1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
static KEYS: LazyLock<KeyRing> = LazyLock::new(|| KeyRing::parse(RING).expect("fixed test ring"));
const SCOPE: u64 = 0x1111_2222_3333_4444;
const NOW: u64 = 1_700_000_060_000;
const TIMEOUTS: SessionTimeouts =
    SessionTimeouts { absolute: Some(Duration::from_secs(8 * 3600)), idle: Some(Duration::from_secs(1800)) };

fn genuine() -> Claims {
    Claims {
        scope: SCOPE,
        backend: 7,
        endpoint: SocketAddr::from(([10, 0, 0, 1], 8080)),
        endpoint_identity: 9,
        created_ms: NOW - 60_000,
        refreshed_ms: NOW,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next().and_then(|l| std::str::from_utf8(l).ok()).unwrap_or("");
    let name = if is_valid_token_name(first) { first } else { "sessile-session" };
    let headers: Vec<&str> = lines.filter_map(|l| std::str::from_utf8(l).ok()).collect();

    for v in cookie_values(headers.iter().copied(), name) {
        assert!(!v.contains(';'), "cookie value {v:?} contains ';'");
        assert!(headers.iter().any(|h| h.contains(v)), "cookie value {v:?} not taken from the input");
    }
    for v in header_values(headers.iter().copied()) {
        assert!(!v.is_empty() && !v.contains(','), "header value {v:?}");
        assert_eq!(v, v.trim_matches([' ', '\t']), "header value {v:?} not trimmed");
    }

    // resolve with every candidate extraction; eligible only sees authentic in-scope claims.
    let eligible = |c: &Claims| {
        assert_eq!(c.scope, SCOPE);
        if c.endpoint_identity % 2 == 0 { Eligibility::Gone } else { Eligibility::Eligible }
    };
    let by_cookie = resolve(&KEYS, SCOPE, cookie_values(headers.iter().copied(), name), NOW, &TIMEOUTS, eligible);
    let by_header = resolve(&KEYS, SCOPE, header_values(headers.iter().copied()), NOW, &TIMEOUTS, eligible);
    for r in [by_cookie, by_header] {
        if let Ok(resumed) = r {
            assert_eq!(resumed.claims.scope, SCOPE);
        }
    }

    // A genuine session cookie on a line of its own before the fuzzed lines is always
    // found first and resolves, whatever follows it.
    let token = seal(&KEYS, &genuine());
    let attrs = CookieAttrs { name, path: "/", secure: true, max_age_secs: Some(3600) };
    let set = set_cookie(&attrs, &token);
    let pair = set.split(';').next().expect("name=value");
    let mut with_genuine = vec![pair];
    with_genuine.extend(headers.iter().copied());
    let first_value = cookie_values(with_genuine.iter().copied(), name).next();
    assert_eq!(first_value, Some(token.as_str()));
    assert_eq!(open(&KEYS, first_value.unwrap()), Ok(genuine()));
    let r = resolve(&KEYS, SCOPE, cookie_values(with_genuine.iter().copied(), name), NOW, &TIMEOUTS, |_| {
        Eligibility::Eligible
    });
    assert_eq!(r.map(|r| r.claims), Ok(genuine()));

    // Beyond MAX_CANDIDATES candidates the genuine token is not examined.
    let mut late: Vec<&str> = vec!["x"; MAX_CANDIDATES];
    late.push(&token);
    assert_eq!(
        resolve(&KEYS, SCOPE, header_values(late.iter().copied()), NOW, &TIMEOUTS, |_| Eligibility::Eligible),
        Err(Rejection::Invalid)
    );
});
