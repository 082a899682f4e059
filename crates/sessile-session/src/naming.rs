//! Keyed hashes of scopes, backends and endpoint identities, and generated session names.
//!
//! Everything here is an HMAC-SHA256 under the key ring's naming salt
//! ([`crate::KeyRing::naming_salt`]), so the values are stable across restarts, replicas
//! and key rotations, and reveal nothing about the namespaces, routes or addresses they
//! were computed from to anyone who does not hold the salt.

use ring::hmac;

/// Domain separator so a generated session name is never a prefix of a [`keyed_hash`]
/// value computed over the same input.
const NAME_DOMAIN: &[u8] = b"sessile/session-name/v1\0";

/// HMAC-SHA256 of `data` under `salt`, truncated to the first 8 bytes (big-endian).
///
/// Used for the `scope`, `backend` and `endpoint_identity` fields of
/// [`crate::Claims`]. 64 bits is plenty: the values are only compared for equality
/// inside a token that is already authenticated by the AEAD.
pub fn keyed_hash(salt: &[u8], data: &[u8]) -> u64 {
    let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
    let tag = hmac::sign(&key, data);
    first_u64(tag.as_ref())
}

/// The session (cookie or header) name Sessile uses when the configuration gives none:
/// `sp-` followed by 10 lowercase hex characters (40 bits) of an HMAC of
/// `scope_identity` under `salt`.
///
/// The name is unique per scope in practice and reveals nothing about the scope identity
/// (namespace, route, rule) to anyone without the salt.
pub fn generated_session_name(salt: &[u8], scope_identity: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(NAME_DOMAIN);
    ctx.update(scope_identity.as_bytes());
    let tag = ctx.sign();
    let mut name = String::with_capacity(13);
    name.push_str("sp-");
    for &b in tag.as_ref().iter().take(5) {
        name.push(char::from(HEX[usize::from(b >> 4)]));
        name.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    name
}

fn first_u64(bytes: &[u8]) -> u64 {
    let mut out = [0u8; 8];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    u64::from_be_bytes(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_hash_matches_hmac_sha256_prefix() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
        let h = keyed_hash(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(h, 0x5bdc_c146_bf60_754e);
    }

    #[test]
    fn keyed_hash_depends_on_salt_and_data() {
        let a = keyed_hash(b"salt-one-0123456", b"ns/svc:80");
        assert_eq!(a, keyed_hash(b"salt-one-0123456", b"ns/svc:80"));
        assert_ne!(a, keyed_hash(b"salt-two-0123456", b"ns/svc:80"));
        assert_ne!(a, keyed_hash(b"salt-one-0123456", b"ns/svc:81"));
        // Empty inputs are fine.
        let _ = keyed_hash(b"", b"");
    }

    #[test]
    fn generated_name_shape() {
        let n = generated_session_name(b"0123456789abcdef", "default/route/rule-0");
        assert_eq!(n.len(), 13);
        assert!(n.starts_with("sp-"));
        assert!(n[3..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(crate::carrier::is_valid_token_name(&n));
    }

    #[test]
    fn generated_name_is_stable_and_distinct() {
        let salt = b"0123456789abcdef";
        let a = generated_session_name(salt, "default/route-a/0");
        assert_eq!(a, generated_session_name(salt, "default/route-a/0"));
        assert_ne!(a, generated_session_name(salt, "default/route-a/1"));
        assert_ne!(a, generated_session_name(b"fedcba9876543210", "default/route-a/0"));
        assert!(!a.contains("default"));
    }

    #[test]
    fn generated_name_is_domain_separated_from_keyed_hash() {
        let salt = b"0123456789abcdef";
        let name = generated_session_name(salt, "x");
        let h = format!("{:016x}", keyed_hash(salt, b"x"));
        assert_ne!(&name[3..], &h[..10]);
    }
}
