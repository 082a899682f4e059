//! The proxy's one error type: which side failed and whether another endpoint may be tried.

use std::fmt;

/// Where a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

#[derive(Debug)]
pub struct ProxyError {
    pub side: Side,
    /// True when the request was never sent, so another endpoint may take it.
    pub retryable: bool,
    pub message: String,
}

impl ProxyError {
    pub fn connect(message: impl Into<String>) -> ProxyError {
        ProxyError { side: Side::Upstream, retryable: true, message: message.into() }
    }

    pub fn upstream(message: impl Into<String>) -> ProxyError {
        ProxyError { side: Side::Upstream, retryable: false, message: message.into() }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.side {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
        };
        write!(f, "{side}: {}", self.message)
    }
}

impl std::error::Error for ProxyError {}
