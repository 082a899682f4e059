//! The `sessile` binary's wiring, as a library so end-to-end tests run the real gateway in-process.
#![forbid(unsafe_code)]

pub mod controller;
pub mod demo;
pub mod explain;
pub mod run;
