//! Persistence. The server talks to storage only through [`Store`]; the
//! SQLite backend (embedded default) is the first implementation and the
//! only place with SQL.
//!
//! Every change a client can sync is stamped with one stream position taken
//! from a single counter; [`Store::persisted_upto`] is the highest position
//! below which every position is committed, and sync never reads past it.

pub mod accounts;
pub mod backup;
pub mod db;
pub mod dehydrated;
pub mod directory;
pub mod e2ee;
mod event_json;
mod events;
pub mod federation;
pub mod media;
pub mod migrate;
pub mod migrations;
mod misc;
pub mod push;
pub mod search;
pub mod server_keys;
pub mod state_cache;
mod store;
pub mod types;

pub use store::{Lease, Positions, RoomLease, Store};
pub use types::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] db::DbError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("already exists")]
    Exists,
    /// A local event's `prev_events` are no longer the room's forward
    /// extremities: another process sent in the room since it was built.
    #[error("the room changed since the event was built")]
    Stale,
    #[error("not found")]
    NotFound,
    #[error("storage task failed: {0}")]
    Task(String),
    /// A newer release migrated the database further than this one knows.
    #[error(
        "the database is at schema version {found}, newer than this release of Missive knows ({known}): \
         run the release that migrated it, or a newer one"
    )]
    SchemaTooNew { found: i64, known: i64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
