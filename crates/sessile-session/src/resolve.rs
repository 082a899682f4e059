//! Choosing the session token of a request among its candidates, and why tokens are rejected.
//!
//! The proxy collects the candidate tokens ([`crate::cookie_values`] or
//! [`crate::header_values`]), asks [`resolve()`] for the first one that belongs to the
//! rule's scope, has not expired and names an eligible endpoint, and counts the
//! [`Rejection`] otherwise (metric label [`Rejection::as_str`]).

use crate::keyring::KeyRing;
use crate::timeouts::{Freshness, SessionTimeouts, freshness};
use crate::token::{Claims, OpenError, open};

/// At most this many candidate tokens of one request are examined; a client sending
/// thousands of cookies costs at most this many AEAD opens.
pub const MAX_CANDIDATES: usize = 16;

/// Why a request was not routed by an existing session (spec section 11 metric labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// No candidate token at all.
    Absent,
    /// Tokens present but none opened (malformed, forged, altered, unknown key, or
    /// timestamps from the future).
    Invalid,
    /// An authentic token of another scope (another rule or named session).
    OtherScope,
    /// The idle timeout passed.
    ExpiredIdle,
    /// The absolute timeout passed.
    ExpiredAbsolute,
    /// The pinned endpoint no longer exists.
    EndpointGone,
    /// The pinned endpoint is unhealthy.
    EndpointUnhealthy,
    /// The pinned endpoint is draining and does not take this session (only used by
    /// callers that refuse some sessions on draining endpoints).
    EndpointDrainingNew,
}

impl Rejection {
    /// Every reason, in declaration order (for pre-registering metric label sets).
    pub const ALL: [Rejection; 8] = [
        Rejection::Absent,
        Rejection::Invalid,
        Rejection::OtherScope,
        Rejection::ExpiredIdle,
        Rejection::ExpiredAbsolute,
        Rejection::EndpointGone,
        Rejection::EndpointUnhealthy,
        Rejection::EndpointDrainingNew,
    ];

    /// The metric label: `absent`, `invalid`, `other-scope`, `expired-idle`,
    /// `expired-absolute`, `endpoint-gone`, `endpoint-unhealthy`, `endpoint-draining-new`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Absent => "absent",
            Rejection::Invalid => "invalid",
            Rejection::OtherScope => "other-scope",
            Rejection::ExpiredIdle => "expired-idle",
            Rejection::ExpiredAbsolute => "expired-absolute",
            Rejection::EndpointGone => "endpoint-gone",
            Rejection::EndpointUnhealthy => "endpoint-unhealthy",
            Rejection::EndpointDrainingNew => "endpoint-draining-new",
        }
    }

    /// How far a token got before being rejected; the highest is the most informative.
    fn stage(self) -> u8 {
        match self {
            Rejection::Absent => 0,
            Rejection::Invalid => 1,
            Rejection::OtherScope => 2,
            Rejection::ExpiredIdle | Rejection::ExpiredAbsolute => 3,
            Rejection::EndpointGone | Rejection::EndpointUnhealthy | Rejection::EndpointDrainingNew => 4,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the endpoint a token names may still serve its session (the caller's view of
/// its endpoints, spec sections 8 and 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eligibility {
    /// Healthy, draining with existing sessions allowed, or unknown health: use it.
    Eligible,
    /// Not among the rule's backends' endpoints (any more), or a different endpoint
    /// identity now has that address.
    Gone,
    /// Known unhealthy (e.g. refused connections).
    Unhealthy,
    /// Draining and not taking this session.
    DrainingNew,
}

/// The last token a connection opened, with its claims. The same bytes under the same key ring
/// always open to the same claims, so a client that repeats its token on a keep-alive connection
/// skips the base64 decoding and the AES-GCM open; scope, expiry and endpoint checks still run on
/// every request. Holding the ring keeps a rotated-out ring from being mistaken for the new one.
#[derive(Default)]
pub struct TokenMemo {
    last: Option<(KeyRing, Box<str>, Claims)>,
}

impl TokenMemo {
    /// [`open()`], answered from memory when `token` is the last token opened under `ring`.
    pub fn open(&mut self, ring: &KeyRing, token: &str) -> Result<Claims, OpenError> {
        if let Some((last_ring, last_token, claims)) = &self.last
            && last_ring.same_ring(ring)
            && **last_token == *token
        {
            return Ok(*claims);
        }
        let claims = open(ring, token)?;
        self.last = Some((ring.clone(), token.into(), claims));
        Ok(claims)
    }
}

/// The session a request resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resumed {
    /// The token's claims; route to `claims.endpoint`.
    pub claims: Claims,
    /// Re-issue the token on this response with `refreshed_ms = now` (idle refresh).
    pub refresh: bool,
}

/// Picks the session token of a request.
///
/// Candidates are tried in order (at most [`MAX_CANDIDATES`]; empty strings are
/// skipped). The first one that opens under `ring`, has `claims.scope == scope`, is not
/// expired or from the future under `timeouts` at `now_ms`, and whose claims `eligible`
/// judges [`Eligibility::Eligible`] wins. `eligible` is only called for tokens that passed
/// every other check.
///
/// When none wins: [`Rejection::Absent`] if there was no non-empty candidate, otherwise
/// the most informative reason seen: an `endpoint-*` reason, then an `expired-*` reason,
/// then [`Rejection::OtherScope`], then [`Rejection::Invalid`] (which also covers
/// unopenable tokens and timestamps from the future); among equals, the first seen.
pub fn resolve<'a>(
    ring: &KeyRing,
    scope: u64,
    candidates: impl IntoIterator<Item = &'a str>,
    now_ms: u64,
    timeouts: &SessionTimeouts,
    eligible: impl FnMut(&Claims) -> Eligibility,
) -> Result<Resumed, Rejection> {
    resolve_remembering(&mut TokenMemo::default(), ring, scope, candidates, now_ms, timeouts, eligible)
}

/// [`resolve()`], opening tokens through `memo` (a connection's memory of its last token).
pub fn resolve_remembering<'a>(
    memo: &mut TokenMemo,
    ring: &KeyRing,
    scope: u64,
    candidates: impl IntoIterator<Item = &'a str>,
    now_ms: u64,
    timeouts: &SessionTimeouts,
    mut eligible: impl FnMut(&Claims) -> Eligibility,
) -> Result<Resumed, Rejection> {
    let mut best = Rejection::Absent;
    for token in candidates.into_iter().take(MAX_CANDIDATES) {
        if token.is_empty() {
            continue;
        }
        match judge(memo, ring, scope, token, now_ms, timeouts, &mut eligible) {
            Ok(resumed) => return Ok(resumed),
            Err(reason) if reason.stage() > best.stage() => best = reason,
            Err(_) => {}
        }
    }
    Err(best)
}

/// The verdict on one candidate token, opened through `memo` (what [`resolve()`] applies to each;
/// `explain` shows it per token).
pub fn judge(
    memo: &mut TokenMemo,
    ring: &KeyRing,
    scope: u64,
    token: &str,
    now_ms: u64,
    timeouts: &SessionTimeouts,
    eligible: &mut impl FnMut(&Claims) -> Eligibility,
) -> Result<Resumed, Rejection> {
    let claims = memo.open(ring, token).map_err(|_| Rejection::Invalid)?;
    if claims.scope != scope {
        return Err(Rejection::OtherScope);
    }
    let refresh = match freshness(&claims, now_ms, timeouts) {
        Freshness::Fresh => false,
        Freshness::Refresh => true,
        Freshness::ExpiredIdle => return Err(Rejection::ExpiredIdle),
        Freshness::ExpiredAbsolute => return Err(Rejection::ExpiredAbsolute),
        Freshness::FromFuture => return Err(Rejection::Invalid),
    };
    match eligible(&claims) {
        Eligibility::Eligible => Ok(Resumed { claims, refresh }),
        Eligibility::Gone => Err(Rejection::EndpointGone),
        Eligibility::Unhealthy => Err(Rejection::EndpointUnhealthy),
        Eligibility::DrainingNew => Err(Rejection::EndpointDrainingNew),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::seal;
    use crate::token::tests::{claims, test_ring};
    use std::time::Duration;

    const SCOPE: u64 = 0x1111_2222_3333_4444; // the scope of `claims()`
    const NOW: u64 = 1_700_000_060_000; // == claims().refreshed_ms

    fn no_timeouts() -> SessionTimeouts {
        SessionTimeouts::default()
    }

    fn always(e: Eligibility) -> impl FnMut(&Claims) -> Eligibility {
        move |_| e
    }

    #[test]
    fn labels() {
        let labels: Vec<_> = Rejection::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "absent",
                "invalid",
                "other-scope",
                "expired-idle",
                "expired-absolute",
                "endpoint-gone",
                "endpoint-unhealthy",
                "endpoint-draining-new"
            ]
        );
        assert_eq!(Rejection::OtherScope.to_string(), "other-scope");
        let mut sorted = Rejection::ALL;
        sorted.sort();
        assert_eq!(sorted, Rejection::ALL);
    }

    #[test]
    fn absent() {
        let ring = test_ring();
        let t = no_timeouts();
        assert_eq!(resolve(&ring, SCOPE, [], NOW, &t, always(Eligibility::Eligible)), Err(Rejection::Absent));
        assert_eq!(resolve(&ring, SCOPE, ["", ""], NOW, &t, always(Eligibility::Eligible)), Err(Rejection::Absent));
    }

    #[test]
    fn resumes_valid_token() {
        let ring = test_ring();
        let c = claims("10.0.0.7:8080");
        let tok = seal(&ring, &c);
        let mut seen = Vec::new();
        let r = resolve(&ring, SCOPE, [tok.as_str()], NOW, &no_timeouts(), |cl: &Claims| {
            seen.push(cl.endpoint);
            Eligibility::Eligible
        });
        assert_eq!(r, Ok(Resumed { claims: c, refresh: false }));
        assert_eq!(seen, vec![c.endpoint]);
    }

    #[test]
    fn a_remembered_token_is_trusted_only_under_the_ring_that_opened_it() {
        let ring = test_ring();
        let c = claims("10.0.0.7:8080");
        let tok = seal(&ring, &c);
        let mut memo = TokenMemo::default();
        let e = || always(Eligibility::Eligible);
        let none = no_timeouts();
        for _ in 0..2 {
            let r = resolve_remembering(&mut memo, &ring, SCOPE, [tok.as_str()], NOW, &none, e());
            assert_eq!(r, Ok(Resumed { claims: c, refresh: false }));
        }
        // Everything after opening still runs on a remembered token.
        let r = resolve_remembering(&mut memo, &ring, SCOPE + 1, [tok.as_str()], NOW, &none, e());
        assert_eq!(r, Err(Rejection::OtherScope));
        let idle = SessionTimeouts { absolute: None, idle: Some(Duration::from_secs(10)) };
        let r = resolve_remembering(&mut memo, &ring, SCOPE, [tok.as_str()], NOW + 15_000, &idle, e());
        assert_eq!(r, Err(Rejection::ExpiredIdle));
        let r = resolve_remembering(&mut memo, &ring, SCOPE, [tok.as_str()], NOW, &none, always(Eligibility::Gone));
        assert_eq!(r, Err(Rejection::EndpointGone));
        // A reloaded ring without the token's key rejects it, remembered or not; so does a
        // reload of the same keys until the token is opened under it.
        let rotated = KeyRing::generate();
        let r = resolve_remembering(&mut memo, &rotated, SCOPE, [tok.as_str()], NOW, &none, e());
        assert_eq!(r, Err(Rejection::Invalid));
        let reloaded = KeyRing::parse(&ring.to_file_text()).unwrap();
        assert!(!reloaded.same_ring(&ring) && ring.same_ring(&ring.clone()));
        let r = resolve_remembering(&mut memo, &reloaded, SCOPE, [tok.as_str()], NOW, &none, e());
        assert_eq!(r, Ok(Resumed { claims: c, refresh: false }));
        // One altered character is another token; failures are not remembered.
        let mut altered = tok.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        let r = resolve_remembering(&mut memo, &reloaded, SCOPE, [altered.as_str()], NOW, &none, e());
        assert_eq!(r, Err(Rejection::Invalid));
        let r = resolve_remembering(&mut memo, &reloaded, SCOPE, [tok.as_str()], NOW, &none, e());
        assert_eq!(r, Ok(Resumed { claims: c, refresh: false }));
    }

    #[test]
    fn invalid_tokens() {
        let ring = test_ring();
        let other_ring = seal(&KeyRing::generate(), &claims("10.0.0.1:80"));
        let mut future = claims("10.0.0.1:80");
        future.created_ms = NOW + 31_000;
        let future = seal(&ring, &future);
        for tok in ["garbage", other_ring.as_str(), future.as_str()] {
            let r = resolve(&ring, SCOPE, [tok], NOW, &no_timeouts(), |_: &Claims| -> Eligibility {
                panic!("eligibility must not be asked for invalid tokens")
            });
            assert_eq!(r, Err(Rejection::Invalid), "{tok}");
        }
    }

    #[test]
    fn other_scope() {
        let ring = test_ring();
        let tok = seal(&ring, &claims("10.0.0.1:80"));
        let r = resolve(&ring, SCOPE + 1, ["junk", tok.as_str()], NOW, &no_timeouts(), always(Eligibility::Eligible));
        assert_eq!(r, Err(Rejection::OtherScope));
    }

    #[test]
    fn expired_and_refresh() {
        let ring = test_ring();
        let tok = seal(&ring, &claims("10.0.0.1:80")); // created NOW-60s, refreshed NOW
        let idle = SessionTimeouts { absolute: None, idle: Some(Duration::from_secs(10)) };
        let abs = SessionTimeouts { absolute: Some(Duration::from_secs(60)), idle: None };
        let e = || always(Eligibility::Eligible);
        assert_eq!(resolve(&ring, SCOPE, [tok.as_str()], NOW + 15_000, &idle, e()), Err(Rejection::ExpiredIdle));
        assert_eq!(resolve(&ring, SCOPE, [tok.as_str()], NOW, &abs, e()), Err(Rejection::ExpiredAbsolute));
        let r = resolve(&ring, SCOPE, [tok.as_str()], NOW + 6_000, &idle, e()).unwrap();
        assert!(r.refresh);
        let r = resolve(&ring, SCOPE, [tok.as_str()], NOW + 5_000, &idle, e()).unwrap();
        assert!(!r.refresh);
    }

    #[test]
    fn endpoint_reasons() {
        let ring = test_ring();
        let tok = seal(&ring, &claims("10.0.0.1:80"));
        for (e, want) in [
            (Eligibility::Gone, Rejection::EndpointGone),
            (Eligibility::Unhealthy, Rejection::EndpointUnhealthy),
            (Eligibility::DrainingNew, Rejection::EndpointDrainingNew),
        ] {
            assert_eq!(resolve(&ring, SCOPE, [tok.as_str()], NOW, &no_timeouts(), always(e)), Err(want));
        }
    }

    #[test]
    fn first_eligible_wins() {
        let ring = test_ring();
        let a = seal(&ring, &claims("10.0.0.1:80"));
        let b = seal(&ring, &claims("10.0.0.2:80"));
        let c = seal(&ring, &claims("10.0.0.3:80"));
        let gone: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut asked = 0;
        let r = resolve(&ring, SCOPE, ["x", a.as_str(), b.as_str(), c.as_str()], NOW, &no_timeouts(), |cl: &Claims| {
            asked += 1;
            if cl.endpoint == gone { Eligibility::Gone } else { Eligibility::Eligible }
        })
        .unwrap();
        assert_eq!(r.claims.endpoint, "10.0.0.2:80".parse().unwrap());
        assert_eq!(asked, 2, "stops at the first eligible token");
    }

    #[test]
    fn most_informative_reason() {
        let ring = test_ring();
        let ok = seal(&ring, &claims("10.0.0.1:80"));
        let mut other = claims("10.0.0.2:80");
        other.scope = 99;
        let other = seal(&ring, &other);
        let mut old = claims("10.0.0.3:80");
        old.created_ms = 0;
        let old = seal(&ring, &old);
        let abs = SessionTimeouts { absolute: Some(Duration::from_secs(3600)), idle: None };
        let gone_if_ok = |cl: &Claims| {
            assert_eq!(cl.endpoint, "10.0.0.1:80".parse().unwrap());
            Eligibility::Gone
        };
        let run = |cands: &[&str], f: &mut dyn FnMut(&Claims) -> Eligibility| {
            resolve(&ring, SCOPE, cands.iter().copied(), NOW, &abs, f)
        };
        assert_eq!(run(&["bad", other.as_str()], &mut gone_if_ok.clone()), Err(Rejection::OtherScope));
        assert_eq!(run(&[other.as_str(), "bad"], &mut gone_if_ok.clone()), Err(Rejection::OtherScope));
        assert_eq!(
            run(&[other.as_str(), old.as_str(), "bad"], &mut gone_if_ok.clone()),
            Err(Rejection::ExpiredAbsolute)
        );
        assert_eq!(
            run(&[ok.as_str(), old.as_str(), other.as_str()], &mut gone_if_ok.clone()),
            Err(Rejection::EndpointGone)
        );
        assert_eq!(run(&[old.as_str(), ok.as_str()], &mut gone_if_ok.clone()), Err(Rejection::EndpointGone));
        // Among equals, the first seen wins.
        let mut n = 0;
        let mut alternating = |_: &Claims| {
            n += 1;
            if n == 1 { Eligibility::Unhealthy } else { Eligibility::Gone }
        };
        assert_eq!(run(&[ok.as_str(), ok.as_str()], &mut alternating), Err(Rejection::EndpointUnhealthy));
    }

    #[test]
    fn caps_candidates() {
        let ring = test_ring();
        let good = seal(&ring, &claims("10.0.0.1:80"));
        let other = {
            let mut c = claims("10.0.0.1:80");
            c.scope = 7;
            seal(&ring, &c)
        };
        let e = || always(Eligibility::Eligible);
        // The 16th candidate is examined, the 17th is not.
        let mut cands = vec![other.as_str(); MAX_CANDIDATES - 1];
        cands.push(good.as_str());
        assert!(resolve(&ring, SCOPE, cands.iter().copied(), NOW, &no_timeouts(), e()).is_ok());
        let mut cands = vec![other.as_str(); MAX_CANDIDATES];
        cands.push(good.as_str());
        assert_eq!(resolve(&ring, SCOPE, cands.iter().copied(), NOW, &no_timeouts(), e()), Err(Rejection::OtherScope));
        // A hostile request with 10,000 tokens: only 16 are pulled from the iterator.
        let mut pulled = 0;
        let hostile = std::iter::repeat_with(|| {
            pulled += 1;
            other.as_str()
        })
        .take(10_000);
        assert_eq!(resolve(&ring, SCOPE, hostile, NOW, &no_timeouts(), e()), Err(Rejection::OtherScope));
        assert_eq!(pulled, MAX_CANDIDATES);
    }

    #[test]
    fn works_with_cookie_and_header_carriers() {
        let ring = test_ring();
        let tok = seal(&ring, &claims("10.0.0.9:80"));
        let line = format!("sp-aaaaaaaaaa=stale; other=1; sp-aaaaaaaaaa={tok}");
        let r = resolve(
            &ring,
            SCOPE,
            crate::cookie_values([line.as_str()], "sp-aaaaaaaaaa"),
            NOW,
            &no_timeouts(),
            always(Eligibility::Eligible),
        );
        assert_eq!(r.unwrap().claims.endpoint, "10.0.0.9:80".parse().unwrap());
        let hv = format!("junk, {tok}");
        let r = resolve(
            &ring,
            SCOPE,
            crate::header_values([hv.as_str()]),
            NOW,
            &no_timeouts(),
            always(Eligibility::Eligible),
        );
        assert!(r.is_ok());
    }
}
