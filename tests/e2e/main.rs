//! End-to-end tests: each starts the real `missive` binary on a free port
//! with a throwaway data directory and drives it over HTTP, with the
//! `matrix-sdk` client (end-to-end encryption on) and with raw requests
//! where a test must see the exact wire format.

mod access_matrix;
mod api;
mod bad_input;
mod churn;
mod common;
mod compat;
mod concurrency;
mod directory;
mod durability;
mod encryption;
mod fed_harness;
mod federation;
mod federation_interop;
mod guests;
mod hostile_input;
mod keys;
mod leaks;
mod media;
mod migrate;
mod multiprocess;
mod push;
mod resource_limits;
mod room_versions;
mod rooms;
mod schema_migrations;
mod sliding_sync;
mod sync_fidelity;
mod url_preview;
mod verification;
mod voip;
