//! The HTTP API, one module per spec area.

pub mod client;
pub mod federation;
