//! Stateless absolute and idle timeout rules for session tokens, and the wall clock.
//!
//! Nothing is stored server-side: a token's `created_ms` and `refreshed_ms` claims and
//! the current time decide whether it is still good, needs re-issuing, or has expired.
//! All arithmetic saturates; replicas may disagree by up to [`CLOCK_SKEW_MS`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::token::Claims;

/// How far in the future (ms) a token's timestamps may be before it is rejected as
/// [`Freshness::FromFuture`]; covers clock skew between replicas.
pub const CLOCK_SKEW_MS: u64 = 30_000;

/// The timeouts of one persistence scope. `None` or a zero duration means no timeout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// The session ends this long after it was created, whatever the activity.
    pub absolute: Option<Duration>,
    /// The session ends when no request carrying it arrived for this long (see
    /// [`freshness`] for the exact guarantee).
    pub idle: Option<Duration>,
}

/// The verdict of [`freshness`] on a token's timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Valid; no need to re-issue.
    Fresh,
    /// Valid; re-issue the token with `refreshed_ms = now` on this response.
    Refresh,
    /// The idle timeout has passed; treat as absent.
    ExpiredIdle,
    /// The absolute timeout has passed; treat as absent.
    ExpiredAbsolute,
    /// A timestamp is more than [`CLOCK_SKEW_MS`] ahead of now; treat as invalid.
    FromFuture,
}

/// Decides what to do with an authentic token at `now_ms`.
///
/// In order:
/// 1. `created_ms` or `refreshed_ms` more than [`CLOCK_SKEW_MS`] after `now_ms`:
///    [`Freshness::FromFuture`].
/// 2. Absolute timeout `A` set and `now >= created + A`: [`Freshness::ExpiredAbsolute`].
/// 3. Idle timeout `I` set, with `h = I / 2` (integer ms) and
///    `e = now - max(created, refreshed)` (saturating at 0, so timestamps slightly in the
///    future count as "just refreshed"):
///    `e >= I + h` → [`Freshness::ExpiredIdle`]; `e > h` → [`Freshness::Refresh`];
///    otherwise [`Freshness::Fresh`].
/// 4. Otherwise [`Freshness::Fresh`].
///
/// # The idle guarantee
///
/// *Claim:* if the proxy re-issues the token on every [`Freshness::Refresh`] verdict and
/// the client sends each request with the newest token it received, a session never
/// expires for idleness while consecutive requests are less than `I` apart.
///
/// *Proof:* let `r` be the `refreshed_ms` of the token the client holds; it is the time
/// of the request on whose response that token was issued, so that request saw elapsed
/// time `0 <= h`. Take any request at `t` and the request before it at `t' < t`. Either
/// `t'` re-issued the token (`r = t'`) or it was judged fresh with the same token
/// (`t' - r <= h`); in both cases `t' - r <= h`. With the gap `t - t' < I`:
/// `t - r = (t - t') + (t' - r) < I + h`, so the request at `t` is not expired: it is
/// fresh (`t - r <= h` again) or a refresh (which sets `r = t`, so `t - r = 0 <= h`).
/// The invariant "the last request saw `t' - r <= h`" holds after every request, so by
/// induction no request in the sequence expires. ∎
///
/// Conversely, a gap of at least `I + h` (in particular of `1.5 * I` or more) after the
/// last request always expires the session, since `r` is at most the time of that
/// request. So a session idles out between `I` and `1.5 * I` after its last request, and
/// a `Set-Cookie` is sent at most once per `I / 2` of activity instead of on every
/// response.
///
/// Between replicas whose clocks differ by `s` (at most [`CLOCK_SKEW_MS`]) the same
/// argument holds for gaps shorter than `I - s`.
pub fn freshness(claims: &Claims, now_ms: u64, t: &SessionTimeouts) -> Freshness {
    let horizon = now_ms.saturating_add(CLOCK_SKEW_MS);
    if claims.created_ms > horizon || claims.refreshed_ms > horizon {
        return Freshness::FromFuture;
    }
    if let Some(absolute) = budget_ms(t.absolute)
        && now_ms >= claims.created_ms.saturating_add(absolute)
    {
        return Freshness::ExpiredAbsolute;
    }
    let Some(idle) = budget_ms(t.idle) else {
        return Freshness::Fresh;
    };
    let half = idle / 2;
    let last = claims.created_ms.max(claims.refreshed_ms);
    let elapsed = now_ms.saturating_sub(last);
    if elapsed >= idle.saturating_add(half) {
        Freshness::ExpiredIdle
    } else if elapsed > half {
        Freshness::Refresh
    } else {
        Freshness::Fresh
    }
}

/// Seconds left of the absolute timeout at `now_ms`, rounded up: the `Max-Age` of a
/// `Permanent` cookie.
///
/// At least 1 while the session has not expired; 0 once it has (or when `absolute` is
/// zero). Never more than `absolute` rounded up, even when `created_ms` is slightly in
/// the future.
pub fn max_age_secs(claims: &Claims, now_ms: u64, absolute: Duration) -> u64 {
    let absolute_ms = duration_ms(absolute);
    let end = claims.created_ms.saturating_add(absolute_ms);
    let left = end.saturating_sub(now_ms).min(absolute_ms);
    left.div_ceil(1000)
}

/// The wall clock in ms since the unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(duration_ms).unwrap_or(0)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The timeout in ms, or `None` when unset or shorter than 1 ms.
fn budget_ms(d: Option<Duration>) -> Option<u64> {
    d.map(duration_ms).filter(|&ms| ms > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000_000;

    fn at(created_ms: u64, refreshed_ms: u64) -> Claims {
        Claims {
            scope: 1,
            backend: 2,
            endpoint: "10.0.0.1:80".parse().unwrap(),
            endpoint_identity: 3,
            created_ms,
            refreshed_ms,
        }
    }

    fn idle(ms: u64) -> SessionTimeouts {
        SessionTimeouts { absolute: None, idle: Some(Duration::from_millis(ms)) }
    }

    fn absolute(ms: u64) -> SessionTimeouts {
        SessionTimeouts { absolute: Some(Duration::from_millis(ms)), idle: None }
    }

    #[test]
    fn no_timeouts_is_always_fresh() {
        let c = at(T0, T0);
        for t in [
            SessionTimeouts::default(),
            SessionTimeouts { absolute: Some(Duration::ZERO), idle: Some(Duration::ZERO) },
            SessionTimeouts { absolute: None, idle: Some(Duration::from_micros(999)) },
        ] {
            assert_eq!(freshness(&c, T0, &t), Freshness::Fresh);
            assert_eq!(freshness(&c, u64::MAX, &t), Freshness::Fresh);
        }
    }

    #[test]
    fn from_future() {
        let t = SessionTimeouts::default();
        assert_eq!(freshness(&at(T0 + CLOCK_SKEW_MS, T0), T0, &t), Freshness::Fresh);
        assert_eq!(freshness(&at(T0 + CLOCK_SKEW_MS + 1, T0), T0, &t), Freshness::FromFuture);
        assert_eq!(freshness(&at(T0, T0 + CLOCK_SKEW_MS + 1), T0, &t), Freshness::FromFuture);
        assert_eq!(freshness(&at(u64::MAX, u64::MAX), u64::MAX, &t), Freshness::Fresh);
        assert_eq!(freshness(&at(u64::MAX, 0), 0, &t), Freshness::FromFuture);
    }

    #[test]
    fn absolute_timeout() {
        let t = absolute(2_000);
        assert_eq!(freshness(&at(T0, T0), T0 + 1_999, &t), Freshness::Fresh);
        assert_eq!(freshness(&at(T0, T0), T0 + 2_000, &t), Freshness::ExpiredAbsolute);
        assert_eq!(freshness(&at(T0, T0 + 1_999), T0 + 2_000, &t), Freshness::ExpiredAbsolute);
        // Saturating: a deadline past the end of time is the end of time.
        assert_eq!(freshness(&at(u64::MAX - 5, u64::MAX - 5), u64::MAX, &t), Freshness::ExpiredAbsolute);
        assert_eq!(freshness(&at(u64::MAX - 5, u64::MAX - 5), u64::MAX - 1, &t), Freshness::Fresh);
    }

    #[test]
    fn absolute_is_checked_before_idle() {
        let t = SessionTimeouts { absolute: Some(Duration::from_secs(10)), idle: Some(Duration::from_secs(2)) };
        assert_eq!(freshness(&at(T0, T0), T0 + 20_000, &t), Freshness::ExpiredAbsolute);
        assert_eq!(freshness(&at(T0, T0), T0 + 5_000, &t), Freshness::ExpiredIdle);
        assert_eq!(freshness(&at(T0, T0 + 8_000), T0 + 9_000, &t), Freshness::Fresh);
        assert_eq!(freshness(&at(T0, T0 + 8_000), T0 + 9_001, &t), Freshness::Refresh);
    }

    #[test]
    fn idle_thresholds() {
        let t = idle(2_000);
        let c = at(T0, T0 + 10_000);
        assert_eq!(freshness(&c, T0 + 10_000, &t), Freshness::Fresh);
        assert_eq!(freshness(&c, T0 + 11_000, &t), Freshness::Fresh);
        assert_eq!(freshness(&c, T0 + 11_001, &t), Freshness::Refresh);
        assert_eq!(freshness(&c, T0 + 12_999, &t), Freshness::Refresh);
        assert_eq!(freshness(&c, T0 + 13_000, &t), Freshness::ExpiredIdle);
        // Now slightly before refreshed (skew): zero elapsed.
        assert_eq!(freshness(&c, T0 + 9_000, &t), Freshness::Fresh);
        // refreshed earlier than created: the creation time counts as activity.
        assert_eq!(freshness(&at(T0, 0), T0 + 500, &t), Freshness::Fresh);
        // 1 ms idle: half is 0.
        assert_eq!(freshness(&at(T0, T0), T0, &idle(1)), Freshness::Fresh);
        assert_eq!(freshness(&at(T0, T0), T0 + 1, &idle(1)), Freshness::ExpiredIdle);
        assert_eq!(freshness(&at(0, 0), u64::MAX - 1, &idle(u64::MAX)), Freshness::Refresh);
        assert_eq!(freshness(&at(0, 0), u64::MAX, &idle(u64::MAX)), Freshness::ExpiredIdle);
    }

    #[test]
    fn max_age() {
        let c = at(T0, T0);
        let hour = Duration::from_secs(3600);
        assert_eq!(max_age_secs(&c, T0, hour), 3600);
        assert_eq!(max_age_secs(&c, T0 + 1, hour), 3600);
        assert_eq!(max_age_secs(&c, T0 + 1000, hour), 3599);
        assert_eq!(max_age_secs(&c, T0 + 3_599_999, hour), 1);
        assert_eq!(max_age_secs(&c, T0 + 3_600_000, hour), 0);
        assert_eq!(max_age_secs(&c, u64::MAX, hour), 0);
        // Created in the future (skew): capped at the full timeout.
        assert_eq!(max_age_secs(&at(T0 + 20_000, T0), T0, hour), 3600);
        assert_eq!(max_age_secs(&c, T0, Duration::from_millis(1)), 1);
        assert_eq!(max_age_secs(&c, T0, Duration::from_millis(1500)), 2);
        assert_eq!(max_age_secs(&c, T0, Duration::ZERO), 0);
        assert_eq!(max_age_secs(&at(u64::MAX, 0), 0, Duration::MAX), u64::MAX.div_ceil(1000));
    }

    #[test]
    fn clock_is_sane() {
        let now = now_ms();
        assert!(now > T0, "{now}");
        assert!(now_ms() >= now);
    }

    /// Simulates a client sending requests after the given gaps; returns the verdict
    /// of each request, re-issuing the token on `Refresh` as the proxy does.
    fn simulate(idle_ms: u64, start: u64, gaps: &[u64]) -> Vec<Freshness> {
        let t = idle(idle_ms);
        let mut claims = at(start, start);
        let mut now = start;
        let mut out = Vec::with_capacity(gaps.len());
        for gap in gaps {
            now += gap;
            let f = freshness(&claims, now, &t);
            if f == Freshness::Refresh {
                claims.refreshed_ms = now;
            }
            out.push(f);
        }
        out
    }

    #[test]
    fn idle_guarantee_exhaustive_small() {
        // Every gap sequence of length 4 over 0..idle for small idle budgets.
        for idle_ms in 1..=7u64 {
            let gaps: Vec<u64> = (0..idle_ms).collect();
            for a in &gaps {
                for b in &gaps {
                    for c in &gaps {
                        for d in &gaps {
                            let v = simulate(idle_ms, T0, &[*a, *b, *c, *d]);
                            assert!(
                                v.iter().all(|f| matches!(f, Freshness::Fresh | Freshness::Refresh)),
                                "idle {idle_ms} gaps {a},{b},{c},{d}: {v:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_gaps_shorter_than_idle_never_expire(
            idle_ms in 1u64..100_000,
            start in 0u64..(1u64 << 50),
            fractions in prop::collection::vec(0.0f64..1.0, 1..200),
        ) {
            let gaps: Vec<u64> = fractions.iter().map(|f| ((idle_ms as f64 * f) as u64).min(idle_ms - 1)).collect();
            for f in simulate(idle_ms, start, &gaps) {
                prop_assert!(matches!(f, Freshness::Fresh | Freshness::Refresh));
            }
        }

        #[test]
        fn prop_gap_of_one_and_a_half_idle_always_expires(
            idle_ms in 1u64..100_000,
            start in 0u64..(1u64 << 50),
            fractions in prop::collection::vec(0.0f64..1.0, 0..50),
            extra in 0u64..1_000_000,
        ) {
            let mut gaps: Vec<u64> = fractions.iter().map(|f| ((idle_ms as f64 * f) as u64).min(idle_ms - 1)).collect();
            // ceil(1.5 * idle) + extra
            gaps.push(idle_ms + idle_ms.div_ceil(2) + extra);
            let v = simulate(idle_ms, start, &gaps);
            prop_assert_eq!(*v.last().unwrap(), Freshness::ExpiredIdle);
        }

        #[test]
        fn prop_refresh_only_after_half_idle(idle_ms in 2u64..100_000, elapsed in 0u64..200_000) {
            let f = freshness(&at(T0, T0), T0 + elapsed, &idle(idle_ms));
            let expected = if elapsed >= idle_ms + idle_ms / 2 {
                Freshness::ExpiredIdle
            } else if elapsed > idle_ms / 2 {
                Freshness::Refresh
            } else {
                Freshness::Fresh
            };
            prop_assert_eq!(f, expected);
        }

        #[test]
        fn prop_never_panics(c in any::<u64>(), r in any::<u64>(), now in any::<u64>(), a in any::<Option<u64>>(), i in any::<Option<u64>>()) {
            let t = SessionTimeouts { absolute: a.map(Duration::from_millis), idle: i.map(Duration::from_millis) };
            let _ = freshness(&at(c, r), now, &t);
            let _ = max_age_secs(&at(c, r), now, Duration::from_millis(a.unwrap_or(0)));
        }
    }
}
