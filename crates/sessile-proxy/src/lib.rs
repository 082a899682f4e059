//! Sessile data plane: listeners, the request phases, upstream pools, endpoint health and the admin server.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod direct_h1;
pub mod error;
pub mod explain;
pub mod h1_server;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod session;
pub mod state;
pub mod upstream;

pub use limits::Limits;
pub use server::{Server, ServerOptions};
pub use state::Shared;
