//! Sealed session tokens, the key ring, cookie/header codecs, timeout rules and session naming.
//!
//! This crate holds every piece of session persistence (GEP-1619) that does not need the
//! network: the proxy asks [`resolve()`] which endpoint a request's token pins, [`seal`]s a
//! token when it mints or refreshes a session, and writes it with [`set_cookie`] or as a
//! header. The only I/O is reading and creating the key ring file ([`KeyRing::load`],
//! [`KeyRing::load_or_create`]).
#![forbid(unsafe_code)]

pub mod carrier;
pub mod keyring;
pub mod naming;
pub mod recent;
pub mod resolve;
pub mod timeouts;
pub mod token;

pub use carrier::{
    CookieAttrs, cookie_values, header_values, is_valid_cookie_path, is_valid_token_name, itoa, set_cookie,
    set_cookie_with,
};
pub use keyring::{KEY_FILE_NAME, KeyRing, KeyRingError};
pub use naming::{generated_session_name, keyed_hash};
pub use recent::RecentTokens;
pub use resolve::{Eligibility, MAX_CANDIDATES, Rejection, Resumed, TokenMemo, judge, resolve, resolve_remembering};
pub use timeouts::{CLOCK_SKEW_MS, Freshness, SessionTimeouts, freshness, max_age_secs, now_ms};
pub use token::{Claims, MAX_TOKEN_LEN, OpenError, open, seal, seal_into};
