//! Recently issued tokens, reused while the claims and carrier they were issued for are identical.
//!
//! A new session's claims are the endpoint, its backend and scope, and the issue time in
//! milliseconds: every client load-balanced to one endpoint within the same millisecond gets the
//! same claims, so one sealed token (and the header value built around it) serves them all. Under
//! load that replaces sealing (AES-GCM and base64, ~2,000 instructions) with a comparison; at low
//! load every new session still seals its own token. An entry can only match within the
//! millisecond it was issued in (the claims carry it), so a key rotation or configuration reload
//! is never served stale for longer than that.

/// A few recently issued values keyed by what they were issued for; the oldest is replaced first.
#[derive(Debug)]
pub struct RecentTokens<K, V> {
    entries: Vec<(K, V)>,
    capacity: usize,
    oldest: usize,
}

impl<K, V: Clone> RecentTokens<K, V> {
    /// An empty cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { entries: Vec::with_capacity(capacity), capacity, oldest: 0 }
    }

    /// The value of the first entry whose key `matches`, or else the key and value `issue` makes
    /// (then remembered). Building the key only on a miss keeps a hit free of allocation.
    pub fn get_or_issue(&mut self, matches: impl Fn(&K) -> bool, issue: impl FnOnce() -> (K, V)) -> V {
        if let Some((_, value)) = self.entries.iter().find(|(k, _)| matches(k)) {
            return value.clone();
        }
        let (key, value) = issue();
        if self.entries.len() < self.capacity {
            self.entries.push((key, value.clone()));
        } else {
            self.entries[self.oldest] = (key, value.clone());
            self.oldest = (self.oldest + 1) % self.capacity;
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn issues_once_per_key_and_replaces_the_oldest() {
        let issued = Cell::new(0);
        let mut cache = RecentTokens::new(2);
        let mut get = |key: u32| {
            cache.get_or_issue(
                |k| *k == key,
                || {
                    issued.set(issued.get() + 1);
                    (key, format!("token-{key}-{}", issued.get()))
                },
            )
        };
        assert_eq!(get(1), "token-1-1");
        assert_eq!(get(1), "token-1-1", "same key: the same value, not a new issue");
        assert_eq!(get(2), "token-2-2");
        assert_eq!(get(1), "token-1-1");
        assert_eq!(get(3), "token-3-3", "full: replaces key 1, the oldest");
        assert_eq!(get(2), "token-2-2");
        assert_eq!(get(1), "token-1-4", "key 1 was evicted, so it is issued again");
        assert_eq!(issued.get(), 4);
    }

    #[test]
    fn zero_capacity_still_caches_one() {
        let mut cache = RecentTokens::new(0);
        let mut get = |key: u32, value: u32| cache.get_or_issue(|k| *k == key, || (key, value));
        assert_eq!(get(1, 10), 10);
        assert_eq!(get(1, 11), 10);
        assert_eq!(get(2, 20), 20);
        assert_eq!(get(1, 12), 12);
    }
}
