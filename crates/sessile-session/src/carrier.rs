//! Carrying tokens: reading them from `Cookie` and custom request headers, writing `Set-Cookie`.
//!
//! These helpers work on `&str` header values so they do not depend on an HTTP crate.
//! Header values that are not valid UTF-8 (and so never hold a Sessile token) can simply
//! be skipped by the caller.

/// Every value of cookie `name` across all `Cookie` header lines, in order.
///
/// Splits each line on `;`, trims spaces and tabs around names and values, skips pairs
/// without `=`, compares names exactly (case-sensitive), and strips one pair of
/// surrounding double quotes from a value. Other cookies are ignored, never altered.
pub fn cookie_values<'a>(
    cookie_headers: impl IntoIterator<Item = &'a str>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    cookie_headers.into_iter().flat_map(|line| line.split(';')).filter_map(move |pair| {
        let (n, v) = pair.split_once('=')?;
        if trim_ows(n) != name {
            return None;
        }
        let v = trim_ows(v);
        Some(v.strip_prefix('"').and_then(|inner| inner.strip_suffix('"')).unwrap_or(v))
    })
}

/// The values of a (custom) header across all its lines, split on `,`, trimmed, empty
/// entries skipped. Tokens never contain commas, so a client or intermediary that folds
/// several header lines into one does not break them.
pub fn header_values<'a>(values: impl IntoIterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    values.into_iter().flat_map(|line| line.split(',')).map(trim_ows).filter(|v| !v.is_empty())
}

/// Attributes of the session cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieAttrs<'a> {
    /// Cookie name; must satisfy [`is_valid_token_name`].
    pub name: &'a str,
    /// Cookie path (`/` by default); must satisfy [`is_valid_cookie_path`].
    pub path: &'a str,
    /// Add `Secure` (HTTPS listeners).
    pub secure: bool,
    /// `Max-Age` for `Permanent` cookies; `None` for session cookies.
    pub max_age_secs: Option<u64>,
}

/// The `Set-Cookie` header value for `token`:
/// `<name>=<token>; Path=<path>; HttpOnly; SameSite=Lax`, then `; Secure` when
/// `secure`, then `; Max-Age=<n>` when set.
///
/// `SameSite=Lax`, not `Strict`: Strict cookies are not sent on the top-level redirect
/// back from a login provider, which would move the user to another backend mid-login.
///
/// The caller is responsible for `name` and `path` being valid (checked at configuration
/// time with [`is_valid_token_name`] and [`is_valid_cookie_path`]); tokens from
/// [`crate::seal`] are always valid cookie values.
pub fn set_cookie(attrs: &CookieAttrs<'_>, token: &str) -> String {
    set_cookie_with(attrs, token.len(), |out| out.push_str(token))
}

/// [`set_cookie`] with the token written in place by `write_token` (at most `token_len` bytes
/// fit without growing), e.g. by [`crate::seal_into`]: one allocation for the whole value.
pub fn set_cookie_with(attrs: &CookieAttrs<'_>, token_len: usize, write_token: impl FnOnce(&mut String)) -> String {
    const FIXED: &str = "; HttpOnly; SameSite=Lax";
    let mut out = String::with_capacity(attrs.name.len() + token_len + attrs.path.len() + 64);
    out.push_str(attrs.name);
    out.push('=');
    write_token(&mut out);
    out.push_str("; Path=");
    out.push_str(attrs.path);
    out.push_str(FIXED);
    if attrs.secure {
        out.push_str("; Secure");
    }
    if let Some(n) = attrs.max_age_secs {
        out.push_str("; Max-Age=");
        out.push_str(itoa(n, &mut [0u8; 20]));
    }
    out
}

/// Whether `name` is an RFC 7230 `token` (only `tchar`s) of 1 to 128 characters: the
/// rule for session cookie and header names.
pub fn is_valid_token_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(is_tchar)
}

/// Whether `path` is usable as a cookie `Path` attribute: starts with `/`, at most 1024
/// bytes, and made only of printable ASCII other than `;` (RFC 6265 `path-value`,
/// restricted to ASCII), so it cannot inject attributes or headers.
pub fn is_valid_cookie_path(path: &str) -> bool {
    path.starts_with('/') && path.len() <= 1024 && path.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';')
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Trims optional whitespace (spaces and tabs).
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Formats `n` in decimal without allocating.
pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cookie_values_across_lines_in_order() {
        let lines = [
            "a=1; sid=first; b=2",
            "sid=\"second\";sid=third ;  sid = fourth",
            "SID=wrong-case; xsid=prefix; sidx=suffix",
        ];
        let got: Vec<_> = cookie_values(lines, "sid").collect();
        assert_eq!(got, vec!["first", "second", "third", "fourth"]);
    }

    #[test]
    fn cookie_values_tolerates_malformed_pairs() {
        let lines = ["garbage; ;;=; sid; sid=ok; =x; sid=; sid=\"; sid=\"\"; sid=a=b", ""];
        let got: Vec<_> = cookie_values(lines, "sid").collect();
        assert_eq!(got, vec!["ok", "", "\"", "", "a=b"]);
        assert_eq!(cookie_values([] as [&str; 0], "sid").count(), 0);
        assert_eq!(cookie_values(["\t sid\t=\tv\t"], "sid").collect::<Vec<_>>(), vec!["v"]);
    }

    #[test]
    fn header_values_split_and_trim() {
        let got: Vec<_> = header_values(["a, b,,c", " ", "d", ",e ,"]).collect();
        assert_eq!(got, vec!["a", "b", "c", "d", "e"]);
        assert_eq!(header_values([] as [&str; 0]).count(), 0);
    }

    #[test]
    fn set_cookie_exact_forms() {
        let mut a = CookieAttrs { name: "sp-0123456789", path: "/", secure: false, max_age_secs: None };
        assert_eq!(set_cookie(&a, "TOKEN"), "sp-0123456789=TOKEN; Path=/; HttpOnly; SameSite=Lax");
        a.secure = true;
        assert_eq!(set_cookie(&a, "T"), "sp-0123456789=T; Path=/; HttpOnly; SameSite=Lax; Secure");
        a.max_age_secs = Some(3600);
        a.path = "/app";
        assert_eq!(set_cookie(&a, "T"), "sp-0123456789=T; Path=/app; HttpOnly; SameSite=Lax; Secure; Max-Age=3600");
        a.secure = false;
        a.max_age_secs = Some(0);
        assert_eq!(set_cookie(&a, "T"), "sp-0123456789=T; Path=/app; HttpOnly; SameSite=Lax; Max-Age=0");
        a.max_age_secs = Some(u64::MAX);
        assert!(set_cookie(&a, "T").ends_with("; Max-Age=18446744073709551615"));
    }

    #[test]
    fn set_cookie_parses_with_cookie_crate() {
        let ring = crate::token::tests::test_ring();
        let token = crate::seal(&ring, &crate::token::tests::claims("[2001:db8::1]:443"));
        let attrs = CookieAttrs { name: "session", path: "/x/y", secure: true, max_age_secs: Some(120) };
        let header = set_cookie(&attrs, &token);
        let c = cookie::Cookie::parse(header.as_str()).unwrap();
        assert_eq!(c.name(), "session");
        assert_eq!(c.value(), token);
        assert_eq!(c.path(), Some("/x/y"));
        assert_eq!(c.http_only(), Some(true));
        assert_eq!(c.secure(), Some(true));
        assert_eq!(c.same_site(), Some(cookie::SameSite::Lax));
        assert_eq!(c.max_age(), Some(cookie::time::Duration::seconds(120)));
        assert_eq!(c.expires(), None);
        // And reading it back from a Cookie header.
        let line = format!("other=1; session={token}");
        assert_eq!(cookie_values([line.as_str()], "session").collect::<Vec<_>>(), vec![token.as_str()]);
    }

    #[test]
    fn set_cookie_with_seals_the_token_in_place() {
        let ring = crate::token::tests::test_ring();
        let claims = crate::token::tests::claims("10.0.0.7:8080");
        let attrs = CookieAttrs { name: "s", path: "/", secure: false, max_age_secs: Some(60) };
        let header = set_cookie_with(&attrs, crate::MAX_TOKEN_LEN, |out| crate::seal_into(&ring, &claims, out));
        let c = cookie::Cookie::parse(header.as_str()).unwrap();
        assert_eq!(crate::open(&ring, c.value()).unwrap(), claims);
        // The same attributes around the token as `set_cookie` writes.
        assert_eq!(header, set_cookie(&attrs, c.value()));
    }

    #[test]
    fn token_names() {
        for ok in ["a", "sp-0123456789", "X-Session_ID", "!#$%&'*+-.^_`|~09AZaz", &"a".repeat(128)] {
            assert!(is_valid_token_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a;b", "a=b", "a,b", "a\"b", "é", "a\tb", "(x)", "a/b", &"a".repeat(129)] {
            assert!(!is_valid_token_name(bad), "{bad}");
        }
    }

    #[test]
    fn cookie_paths() {
        for ok in ["/", "/app", "/a b/%20?x=1"] {
            assert!(is_valid_cookie_path(ok), "{ok}");
        }
        let long = format!("/{}", "a".repeat(1024));
        for bad in ["", "app", "/a;b", "/a\r\nSet-Cookie: x=1", "/\u{7f}", "/é", long.as_str()] {
            assert!(!is_valid_cookie_path(bad), "{bad:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_cookie_parsers_never_panic(lines in prop::collection::vec("\\PC*", 0..4), name in "\\PC{0,8}") {
            let _ = cookie_values(lines.iter().map(String::as_str), name.as_str()).count();
            let _ = header_values(lines.iter().map(String::as_str)).count();
        }

        #[test]
        fn prop_itoa(n in any::<u64>()) {
            let mut buf = [0u8; 20];
            prop_assert_eq!(itoa(n, &mut buf), n.to_string());
        }
    }
}
