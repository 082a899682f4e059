//! The AEAD-sealed session token: its claims, its wire format, sealing and opening.
//!
//! # Wire format
//!
//! The token is URL-safe base64 without padding (at most [`MAX_TOKEN_LEN`] characters)
//! of:
//!
//! ```text
//! version u8 (= 1) | key_id u32 BE | nonce [u8; 12] | AES-256-GCM(plaintext) | tag [u8; 16]
//! ```
//!
//! `version` and `key_id` (the first 5 bytes) are the additional authenticated data; the
//! nonce is random for every seal. The plaintext is:
//!
//! ```text
//! family u8 | ip | port u16 BE | scope u64 | backend u64 | endpoint_identity u64
//!           | created_ms u64 | refreshed_ms u64            (all integers big-endian)
//! ```
//!
//! where `family` is 4 (`ip` = 4 bytes), 6 (`ip` = 16 bytes) or 7 (`ip` = 16 bytes
//! followed by the IPv6 `flowinfo` u32 and `scope_id` u32, used only when either is
//! non-zero). Tokens are 80 bytes (107 characters) for IPv4 and 92 bytes (123
//! characters) for IPv6 endpoints.
//!
//! Opening never panics and does not allocate: the base64 is decoded into a stack
//! buffer, input longer than [`MAX_TOKEN_LEN`] is rejected before decoding, and the
//! only secret-dependent work is ring's constant-time AEAD open.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};

use crate::keyring::KeyRing;

/// Longest token, in characters, that [`seal`] produces and [`open`] accepts.
pub const MAX_TOKEN_LEN: usize = 200;

const VERSION: u8 = 1;
const HEADER_LEN: usize = 5; // version + key id
const TAG_LEN: usize = 16;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;
const FAMILY_V6_SCOPED: u8 = 7;
/// Plaintext after the address: port + five u64s.
const FIXED_TAIL: usize = 2 + 5 * 8;
const PT_V4: usize = 1 + 4 + FIXED_TAIL;
const PT_V6: usize = 1 + 16 + FIXED_TAIL;
const PT_V6_SCOPED: usize = 1 + 16 + 8 + FIXED_TAIL;
const MAX_PT: usize = PT_V6_SCOPED;
const MAX_SEALED: usize = HEADER_LEN + NONCE_LEN + MAX_PT + TAG_LEN;
/// Stack buffer for decoding; [`MAX_TOKEN_LEN`] characters decode to at most 150 bytes.
const DECODE_BUF: usize = 160;

const _: () = assert!(MAX_TOKEN_LEN / 4 * 3 + 2 <= DECODE_BUF);
const _: () = assert!(MAX_SEALED.div_ceil(3) * 4 <= MAX_TOKEN_LEN);

/// What a session token says. Every field is authenticated and hidden from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Keyed hash of the persistence scope ([`crate::keyed_hash`]).
    pub scope: u64,
    /// Keyed hash of the backend id `ns/svc:port`.
    pub backend: u64,
    /// The pinned endpoint (IPv4 or IPv6, including IPv6 flowinfo and scope id).
    pub endpoint: SocketAddr,
    /// Keyed hash of the endpoint's `targetRef` uid or name (hash of `""` when unknown),
    /// so that an address reused by a new pod does not inherit the old pod's sessions.
    pub endpoint_identity: u64,
    /// When the session was created, in ms since the unix epoch (wall clock).
    pub created_ms: u64,
    /// When the token was last (re)issued, in ms since the unix epoch.
    pub refreshed_ms: u64,
}

/// Why a token could not be opened. Callers treat both as "no token".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not base64, wrong length, unknown version or impossible layout.
    #[error("malformed token")]
    Malformed,
    /// Unknown key id or failed authentication (forged, altered or from another ring).
    #[error("token not authentic")]
    Unauthentic,
}

/// A unique AES-GCM nonce without a system call per token: a random 32-bit process prefix and a
/// counter that starts at a random 64-bit value (NIST SP 800-38D deterministic construction).
/// Two processes sharing a key collide only if both their prefixes and counter ranges overlap.
fn next_nonce() -> [u8; NONCE_LEN] {
    static STATE: std::sync::OnceLock<([u8; 4], std::sync::atomic::AtomicU64)> = std::sync::OnceLock::new();
    let (prefix, counter) = STATE.get_or_init(|| {
        let mut seed = [0u8; 12];
        SystemRandom::new().fill(&mut seed).expect("operating system random number generator failed");
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&seed[..4]);
        let start = u64::from_be_bytes(seed[4..].try_into().expect("8 bytes"));
        (prefix, std::sync::atomic::AtomicU64::new(start))
    });
    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..4].copy_from_slice(prefix);
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    nonce
}

/// Seals `claims` under the ring's current key with a unique nonce (see `next_nonce`).
///
/// The result is URL-safe base64 without padding, at most [`MAX_TOKEN_LEN`] characters,
/// and valid as a cookie value and as a header value.
///
/// # Panics
///
/// If the operating system's random number generator fails (first call only).
pub fn seal(ring: &KeyRing, claims: &Claims) -> String {
    let mut token = String::with_capacity(MAX_TOKEN_LEN);
    seal_into(ring, claims, &mut token);
    token
}

/// [`seal`], appending the token to `out` (a `Set-Cookie` value is built around it in place).
///
/// # Panics
///
/// As [`seal`].
pub fn seal_into(ring: &KeyRing, claims: &Claims, out: &mut String) {
    let key = ring.current();
    let mut buf = [0u8; MAX_SEALED];
    let mut header = [0u8; HEADER_LEN];
    header[0] = VERSION;
    header[1..].copy_from_slice(&key.id.to_be_bytes());
    let nonce = next_nonce();

    let (head, body) = buf.split_at_mut(HEADER_LEN + NONCE_LEN);
    head[..HEADER_LEN].copy_from_slice(&header);
    head[HEADER_LEN..].copy_from_slice(&nonce);
    let pt_len = encode_plaintext(claims, body);
    let (pt, rest) = body.split_at_mut(pt_len);
    let tag = key
        .aead
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(header), pt)
        .expect("AES-GCM seals any input of this size");
    rest[..TAG_LEN].copy_from_slice(tag.as_ref());
    URL_SAFE_NO_PAD.encode_string(&buf[..HEADER_LEN + NONCE_LEN + pt_len + TAG_LEN], out);
}

/// Opens a token sealed by [`seal`] under any key of `ring`.
///
/// Unknown key id or a bad tag gives [`OpenError::Unauthentic`]; bad base64, length,
/// version or plaintext layout gives [`OpenError::Malformed`]. Never panics and never
/// allocates. The claims are not checked against a scope or the clock: see
/// [`crate::resolve()`].
pub fn open(ring: &KeyRing, token: &str) -> Result<Claims, OpenError> {
    let input = token.as_bytes();
    if input.len() > MAX_TOKEN_LEN {
        return Err(OpenError::Malformed);
    }
    let mut buf = [0u8; DECODE_BUF];
    let n = URL_SAFE_NO_PAD.decode_slice(input, &mut buf).map_err(|_| OpenError::Malformed)?;
    let data = buf.get_mut(..n).ok_or(OpenError::Malformed)?;
    let pt_len = n.checked_sub(HEADER_LEN + NONCE_LEN + TAG_LEN).ok_or(OpenError::Malformed)?;
    if !matches!(pt_len, PT_V4 | PT_V6 | PT_V6_SCOPED) {
        return Err(OpenError::Malformed);
    }
    let (head, sealed) = data.split_at_mut_checked(HEADER_LEN + NONCE_LEN).ok_or(OpenError::Malformed)?;
    let (header, nonce) = head.split_at_checked(HEADER_LEN).ok_or(OpenError::Malformed)?;
    let (&version, id) = header.split_first().ok_or(OpenError::Malformed)?;
    if version != VERSION {
        return Err(OpenError::Malformed);
    }
    let id = u32::from_be_bytes(id.try_into().map_err(|_| OpenError::Malformed)?);
    let key = ring.find(id).ok_or(OpenError::Unauthentic)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Malformed)?;
    let pt = key.aead.open_in_place(nonce, Aad::from(header), sealed).map_err(|_| OpenError::Unauthentic)?;
    decode_plaintext(pt).ok_or(OpenError::Malformed)
}

/// Writes the plaintext layout into `out` (at least [`MAX_PT`] bytes) and returns its
/// length.
fn encode_plaintext(c: &Claims, out: &mut [u8]) -> usize {
    let mut w = Writer { out, pos: 0 };
    match c.endpoint {
        SocketAddr::V4(a) => {
            w.put(&[FAMILY_V4]);
            w.put(&a.ip().octets());
        }
        SocketAddr::V6(a) if a.flowinfo() == 0 && a.scope_id() == 0 => {
            w.put(&[FAMILY_V6]);
            w.put(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            w.put(&[FAMILY_V6_SCOPED]);
            w.put(&a.ip().octets());
            w.put(&a.flowinfo().to_be_bytes());
            w.put(&a.scope_id().to_be_bytes());
        }
    }
    w.put(&c.endpoint.port().to_be_bytes());
    for v in [c.scope, c.backend, c.endpoint_identity, c.created_ms, c.refreshed_ms] {
        w.put(&v.to_be_bytes());
    }
    w.pos
}

fn decode_plaintext(pt: &[u8]) -> Option<Claims> {
    let mut r = Reader { rest: pt };
    let endpoint = match r.array::<1>()?[0] {
        FAMILY_V4 => {
            let ip = Ipv4Addr::from(r.array::<4>()?);
            let port = u16::from_be_bytes(r.array()?);
            SocketAddr::new(IpAddr::V4(ip), port)
        }
        FAMILY_V6 => {
            let ip = Ipv6Addr::from(r.array::<16>()?);
            let port = u16::from_be_bytes(r.array()?);
            SocketAddr::new(IpAddr::V6(ip), port)
        }
        FAMILY_V6_SCOPED => {
            let ip = Ipv6Addr::from(r.array::<16>()?);
            let flowinfo = u32::from_be_bytes(r.array()?);
            let scope_id = u32::from_be_bytes(r.array()?);
            let port = u16::from_be_bytes(r.array()?);
            SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope_id))
        }
        _ => return None,
    };
    let claims = Claims {
        endpoint,
        scope: r.u64()?,
        backend: r.u64()?,
        endpoint_identity: r.u64()?,
        created_ms: r.u64()?,
        refreshed_ms: r.u64()?,
    };
    r.rest.is_empty().then_some(claims)
}

struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.rest.split_first_chunk::<N>()?;
        self.rest = tail;
        Some(*head)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn nonces_never_repeat_across_threads() {
        let handles: Vec<_> =
            (0..4).map(|_| std::thread::spawn(|| (0..5000).map(|_| next_nonce()).collect::<Vec<_>>())).collect();
        let mut all = std::collections::HashSet::new();
        for h in handles {
            for n in h.join().unwrap() {
                assert!(all.insert(n), "nonce reused");
            }
        }
        assert_eq!(all.len(), 20_000);
    }
    use crate::keyring::tests::KEY_A;
    use proptest::prelude::*;

    pub(crate) fn test_ring() -> KeyRing {
        KeyRing::parse(&format!("salt 3q2+7wAAAAAAAAAAAAAAAA\nkey 1 {KEY_A}\n")).unwrap()
    }

    pub(crate) fn claims(endpoint: &str) -> Claims {
        Claims {
            scope: 0x1111_2222_3333_4444,
            backend: 0x5555_6666_7777_8888,
            endpoint: endpoint.parse().unwrap(),
            endpoint_identity: 0x9999_aaaa_bbbb_cccc,
            created_ms: 1_700_000_000_000,
            refreshed_ms: 1_700_000_060_000,
        }
    }

    fn decode(token: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(token).unwrap()
    }

    fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn round_trip_v4_v6_scoped() {
        let ring = test_ring();
        for (ep, len) in [("10.1.2.3:8080", 107), ("[2001:db8::1]:443", 123), ("[fe80::1%3]:80", 134)] {
            let c = claims(ep);
            let t = seal(&ring, &c);
            assert_eq!(t.len(), len, "{ep}");
            assert!(t.len() <= MAX_TOKEN_LEN);
            assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{t}");
            assert_eq!(open(&ring, &t), Ok(c));
        }
        let mut max = claims("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
        if let SocketAddr::V6(a) = &mut max.endpoint {
            a.set_flowinfo(u32::MAX);
            a.set_scope_id(u32::MAX);
        }
        let t = seal(&ring, &max);
        assert!(t.len() <= MAX_TOKEN_LEN);
        assert_eq!(open(&ring, &t), Ok(max));
    }

    #[test]
    fn nonce_is_fresh_per_seal() {
        let ring = test_ring();
        let c = claims("10.0.0.1:80");
        assert_ne!(seal(&ring, &c), seal(&ring, &c));
    }

    #[test]
    fn header_carries_version_and_key_id() {
        let ring = test_ring().with_new_current_key();
        let bytes = decode(&seal(&ring, &claims("10.0.0.1:80")));
        assert_eq!(bytes[0], VERSION);
        assert_eq!(&bytes[1..5], &2u32.to_be_bytes());
    }

    #[test]
    fn malformed_inputs() {
        let ring = test_ring();
        let good = seal(&ring, &claims("10.0.0.1:80"));
        let too_long = "A".repeat(MAX_TOKEN_LEN + 1);
        let padded = format!("{good}=");
        for bad in ["", "A", "not base64!", "AAAA", too_long.as_str(), padded.as_str(), "+/+/"] {
            assert_eq!(open(&ring, bad), Err(OpenError::Malformed), "{bad:?}");
        }
        // Wrong version, valid length.
        let mut bytes = decode(&good);
        bytes[0] = 2;
        assert_eq!(open(&ring, &encode(&bytes)), Err(OpenError::Malformed));
        // Lengths that are not a known layout, even when long enough.
        for n in [HEADER_LEN + NONCE_LEN + TAG_LEN, bytes.len() - 1, bytes.len() + 1, 150] {
            let v = vec![VERSION; n];
            assert_eq!(open(&ring, &encode(&v)), Err(OpenError::Malformed), "{n}");
        }
        // Non-canonical trailing bits are rejected (no two spellings of one token).
        let last = good.as_bytes()[good.len() - 1];
        let alt = if last == b'A' { 'B' } else { 'A' };
        let mut s = good[..good.len() - 1].to_string();
        s.push(alt);
        assert!(open(&ring, &s).is_err());
    }

    #[test]
    fn authentic_but_bad_layout_is_malformed() {
        // Seal a plaintext with an unknown family byte using the real key.
        let ring = test_ring();
        let key = ring.current();
        let mut buf = vec![VERSION, 0, 0, 0, 1];
        buf.extend_from_slice(&[7u8; NONCE_LEN]);
        let mut pt = vec![0u8; PT_V4];
        pt[0] = 9;
        let mut aad = [0u8; HEADER_LEN];
        aad.copy_from_slice(&buf[..HEADER_LEN]);
        let tag = key
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key([7; NONCE_LEN]), Aad::from(aad), &mut pt)
            .unwrap();
        buf.extend_from_slice(&pt);
        buf.extend_from_slice(tag.as_ref());
        assert_eq!(open(&ring, &encode(&buf)), Err(OpenError::Malformed));
        // Family 4 at a v6 length: also malformed.
        let mut pt = vec![0u8; PT_V6];
        pt[0] = FAMILY_V4;
        let tag = key
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key([7; NONCE_LEN]), Aad::from(aad), &mut pt)
            .unwrap();
        let mut buf2 = buf[..HEADER_LEN + NONCE_LEN].to_vec();
        buf2.extend_from_slice(&pt);
        buf2.extend_from_slice(tag.as_ref());
        assert_eq!(open(&ring, &encode(&buf2)), Err(OpenError::Malformed));
    }

    #[test]
    fn unknown_key_and_other_ring_are_unauthentic() {
        let ring = test_ring();
        let other = KeyRing::generate();
        let t = seal(&other, &claims("10.0.0.1:80"));
        assert_eq!(open(&ring, &t), Err(OpenError::Unauthentic)); // same key id 1, other key
        let mut bytes = decode(&t);
        bytes[1..5].copy_from_slice(&77u32.to_be_bytes());
        assert_eq!(open(&ring, &encode(&bytes)), Err(OpenError::Unauthentic));
    }

    #[test]
    fn rotation() {
        let old = test_ring();
        let rotated = old.with_new_current_key();
        let c = claims("10.0.0.1:80");
        let old_token = seal(&old, &c);
        assert_eq!(open(&rotated, &old_token), Ok(c));
        let new_token = seal(&rotated, &c);
        assert_eq!(&decode(&new_token)[1..5], &2u32.to_be_bytes());
        assert_eq!(open(&rotated, &new_token), Ok(c));
        // Replicas that have not yet received the rotated ring cannot open new tokens.
        assert_eq!(open(&old, &new_token), Err(OpenError::Unauthentic));
        // A rotated ring written to disk and read back still opens both.
        let reread = KeyRing::parse(&rotated.to_file_text()).unwrap();
        assert_eq!(open(&reread, &old_token), Ok(c));
        assert_eq!(open(&reread, &new_token), Ok(c));
        assert_eq!(open(&KeyRing::generate(), &old_token), Err(OpenError::Unauthentic));
    }

    #[test]
    fn sealed_bytes_hide_the_endpoint() {
        let ring = test_ring();
        for ep in ["10.20.30.40:8443", "[2001:db8:aaaa:bbbb::17]:9000"] {
            let c = claims(ep);
            let mut clear = match c.endpoint.ip() {
                IpAddr::V4(ip) => ip.octets().to_vec(),
                IpAddr::V6(ip) => ip.octets().to_vec(),
            };
            clear.extend_from_slice(&c.endpoint.port().to_be_bytes());
            for _ in 0..100 {
                let t = seal(&ring, &c);
                let bytes = decode(&t);
                assert!(!bytes.windows(clear.len()).any(|w| w == clear.as_slice()), "{ep}");
                assert!(!t.contains("10.20.30.40") && !t.contains("8443") && !t.contains("2001"));
            }
        }
    }

    fn arb_claims() -> impl Strategy<Value = Claims> {
        (any::<[u64; 5]>(), any::<SocketAddr>()).prop_map(|(v, endpoint)| Claims {
            scope: v[0],
            backend: v[1],
            endpoint,
            endpoint_identity: v[2],
            created_ms: v[3],
            refreshed_ms: v[4],
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_round_trip_and_length(c in arb_claims()) {
            let ring = test_ring();
            let t = seal(&ring, &c);
            prop_assert!(t.len() <= MAX_TOKEN_LEN);
            prop_assert_eq!(open(&ring, &t), Ok(c));
        }

        #[test]
        fn prop_bit_flip_rejected(c in arb_claims(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let ring = test_ring();
            let mut bytes = decode(&seal(&ring, &c));
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(open(&ring, &encode(&bytes)).is_err());
        }

        #[test]
        fn prop_byte_replace_rejected(c in arb_claims(), pos in any::<prop::sample::Index>(), b in any::<u8>()) {
            let ring = test_ring();
            let mut bytes = decode(&seal(&ring, &c));
            let i = pos.index(bytes.len());
            prop_assume!(bytes[i] != b);
            bytes[i] = b;
            prop_assert!(open(&ring, &encode(&bytes)).is_err());
        }

        #[test]
        fn prop_truncate_or_append_rejected(c in arb_claims(), cut in 1usize..40, extra in prop::collection::vec(any::<u8>(), 1..40)) {
            let ring = test_ring();
            let bytes = decode(&seal(&ring, &c));
            let short = &bytes[..bytes.len().saturating_sub(cut)];
            prop_assert!(open(&ring, &encode(short)).is_err());
            let mut long = bytes.clone();
            long.extend_from_slice(&extra);
            prop_assert!(open(&ring, &encode(&long)).is_err());
            // Truncating or appending characters of the text form, too.
            let t = encode(&bytes);
            prop_assert!(open(&ring, &t[..t.len() - cut.min(t.len())]).is_err());
            let appended = t.clone() + &encode(&extra);
            prop_assert!(open(&ring, &appended).is_err());
        }

        #[test]
        fn prop_arbitrary_strings_never_panic(s in "\\PC*", b64 in "[A-Za-z0-9_-]{0,210}") {
            let ring = test_ring();
            let _ = open(&ring, &s);
            let _ = open(&ring, &b64);
        }

        #[test]
        fn prop_arbitrary_bytes_never_open(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
            let ring = test_ring();
            let r = open(&ring, &encode(&bytes));
            prop_assert!(r.is_err());
        }
    }
}
