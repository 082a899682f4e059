//! `open` on arbitrary text with a fixed ring, and seal/open round trips of arbitrary claims.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sessile_session::{Claims, KeyRing, MAX_TOKEN_LEN, OpenError, open, seal};

const RING: &str = "salt 3q2+7wAAAAAAAAAAAAAAAA\n\
                    key 2 8J+YgPCfmIDwn5iA8J+YgPCfmIDwn5iA8J+YgPCfmIA\n\
                    key 1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
static KEYS: LazyLock<KeyRing> = LazyLock::new(|| KeyRing::parse(RING).expect("fixed test ring"));
/// Holds key 1 only: tokens sealed under key 2 must not open with it.
static OLD: LazyLock<KeyRing> = LazyLock::new(|| {
    KeyRing::parse("key 1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").expect("fixed test ring")
});

struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
}

fn claims_from(data: &[u8]) -> Claims {
    let mut b = Bytes(data);
    let [kind] = b.take::<1>();
    let port = u16::from_be_bytes(b.take());
    let endpoint = match kind % 3 {
        0 => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(b.take::<4>()), port)),
        1 => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b.take::<16>())), port),
        _ => {
            let ip = Ipv6Addr::from(b.take::<16>());
            let flow = u32::from_be_bytes(b.take());
            let scope_id = u32::from_be_bytes(b.take());
            SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope_id))
        }
    };
    Claims {
        scope: b.u64(),
        backend: b.u64(),
        endpoint,
        endpoint_identity: b.u64(),
        created_ms: b.u64(),
        refreshed_ms: b.u64(),
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. Arbitrary text never panics and never opens unless it is a real token.
    if let Ok(text) = std::str::from_utf8(data) {
        let r = open(&KEYS, text);
        if text.len() > MAX_TOKEN_LEN {
            assert_eq!(r, Err(OpenError::Malformed));
        }
        if let Ok(c) = r {
            // Only a genuine sealed token authenticates; re-sealing it must round trip.
            assert_eq!(open(&KEYS, &seal(&KEYS, &c)), Ok(c));
        }
        let _ = open(&OLD, text);
    }

    // 2. Round trip of arbitrary claims.
    let claims = claims_from(data);
    let token = seal(&KEYS, &claims);
    assert!(token.len() <= MAX_TOKEN_LEN, "token too long: {}", token.len());
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "not URL-safe: {token}");
    assert_eq!(open(&KEYS, &token), Ok(claims), "round trip of {claims:?}");
    // Sealed under key 2: the old ring cannot open it.
    assert_eq!(open(&OLD, &token), Err(OpenError::Unauthentic));

    // 3. Any single-character change of a genuine token is rejected.
    if !data.is_empty() {
        let mut bytes = token.clone().into_bytes();
        let i = data[0] as usize % bytes.len();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let replacement = alphabet[data[data.len() - 1] as usize % alphabet.len()];
        if bytes[i] != replacement {
            bytes[i] = replacement;
            let altered = String::from_utf8(bytes).expect("ascii");
            // The last character may only carry padding bits, which base64 decoders reject or ignore.
            if let Ok(c) = open(&KEYS, &altered) {
                assert_eq!(c, claims, "altered token {altered} opened to different claims");
            }
        }
    }
});
