//! Sessile core: the immutable runtime snapshot, route matching and load balancing. No I/O.
#![forbid(unsafe_code)]

pub mod balance;
pub mod duration;
pub mod hostname;
pub mod matching;
pub mod model;

pub use model::*;
