//! Test support for Sessile end-to-end tests: real sockets, in-process backends, HTTP/1.1, h2c, TLS.
#![forbid(unsafe_code)]

pub mod backend;
pub mod client;
pub mod grpc;
pub mod raw;
pub mod tls;
pub mod train;
pub mod wait;
pub mod ws;

pub use backend::{BackendOptions, TestBackend, start_backend, start_backend_with};
pub use client::{CookieJar, TestClient, TestRequest, TestResponse};
pub use raw::{raw_exchange, status_line};
pub use wait::{eventually, within};
pub use ws::{WsResult, websocket_echo};

/// Default bound for any single wait inside the kit (connect, request, handshake).
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
