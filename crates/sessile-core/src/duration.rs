//! GEP-2257 durations (`1h30m`, `500ms`, `0s`): parsing and formatting.

use std::time::Duration;

/// Parses a Gateway API duration: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`. Units may repeat.
/// Returns `None` for anything else.
pub fn parse(text: &str) -> Option<Duration> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut parts = 0;
    let mut total_ms: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 5 {
            return None;
        }
        let value: u64 = text[start..i].parse().ok()?;
        let unit_ms = match bytes.get(i)? {
            b'h' => {
                i += 1;
                3_600_000
            }
            b'm' if bytes.get(i + 1) == Some(&b's') => {
                i += 2;
                1
            }
            b'm' => {
                i += 1;
                60_000
            }
            b's' => {
                i += 1;
                1_000
            }
            _ => return None,
        };
        total_ms += value * unit_ms;
        parts += 1;
        if parts > 4 {
            return None;
        }
    }
    if parts == 0 {
        return None;
    }
    Some(Duration::from_millis(total_ms))
}

/// Formats a duration in GEP-2257 form (e.g. `1h2m3s`, `250ms`, `0s`).
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u64), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&(ms / size).to_string());
            out.push_str(unit);
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_durations() {
        assert_eq!(parse("0s"), Some(Duration::ZERO));
        assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("1s1s"), Some(Duration::from_secs(2)));
        assert_eq!(parse("99999h"), Some(Duration::from_secs(99999 * 3600)));
        assert_eq!(parse("1h1m1s1ms"), Some(Duration::from_millis(3_661_001)));
    }

    #[test]
    fn invalid_durations() {
        for bad in ["", "1", "h", "1d", "1.5s", "-1s", "100000s", "1h1m1s1ms1h", "1 s", "1S", "s1"] {
            assert_eq!(parse(bad), None, "{bad:?} must be rejected");
        }
    }

    #[test]
    fn format_round_trips() {
        for text in ["0s", "1h", "1h30m", "2s", "250ms", "1h2m3s4ms"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
