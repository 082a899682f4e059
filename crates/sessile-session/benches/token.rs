//! Benchmarks of the per-request session work: sealing, opening and resolving a token.

use std::hint::black_box;

use divan::Bencher;
use sessile_session::{Claims, Eligibility, KeyRing, SessionTimeouts, cookie_values, open, resolve, seal};

fn main() {
    divan::main();
}

fn ring() -> KeyRing {
    KeyRing::parse("key 1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").expect("valid key ring")
}

fn claims(endpoint: &str) -> Claims {
    Claims {
        scope: 0x1111_2222_3333_4444,
        backend: 0x5555_6666_7777_8888,
        endpoint: endpoint.parse().expect("valid address"),
        endpoint_identity: 0x9999_aaaa_bbbb_cccc,
        created_ms: 1_700_000_000_000,
        refreshed_ms: 1_700_000_000_000,
    }
}

#[divan::bench(args = ["10.1.2.3:8080", "[2001:db8::1]:8080"])]
fn seal_token(bencher: Bencher, endpoint: &str) {
    let ring = ring();
    let c = claims(endpoint);
    bencher.bench(|| seal(black_box(&ring), black_box(&c)));
}

#[divan::bench(args = ["10.1.2.3:8080", "[2001:db8::1]:8080"])]
fn open_token(bencher: Bencher, endpoint: &str) {
    let ring = ring();
    let token = seal(&ring, &claims(endpoint));
    bencher.bench(|| open(black_box(&ring), black_box(&token)));
}

#[divan::bench]
fn resolve_one_cookie(bencher: Bencher) {
    let ring = ring();
    let c = claims("10.1.2.3:8080");
    let line = format!("theme=dark; sp-0123456789={}; lang=en", seal(&ring, &c));
    let timeouts = SessionTimeouts {
        absolute: Some(std::time::Duration::from_secs(3600)),
        idle: Some(std::time::Duration::from_secs(600)),
    };
    bencher.bench(|| {
        resolve(
            black_box(&ring),
            c.scope,
            cookie_values([black_box(line.as_str())], "sp-0123456789"),
            c.created_ms + 1_000,
            &timeouts,
            |_: &Claims| Eligibility::Eligible,
        )
    });
}
