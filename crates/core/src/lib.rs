//! The pure room model: how events are built, hashed, signed, authorised and
//! shown to clients. Nothing here does I/O, so every rule can be unit-tested
//! and shared by the client API, federation and the store.

pub mod auth;
pub mod builder;
pub mod pdu;
pub mod signing_key;
pub mod visibility;

pub use ruma;

/// Room versions this server can create and join, the default first.
pub const SUPPORTED_ROOM_VERSIONS: &[&str] = &["12", "11", "10"];
/// The version `/createRoom` uses when the client names none.
pub const DEFAULT_ROOM_VERSION: &str = "12";

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

/// The rules of a room version this server supports, or `None`.
pub fn rules_for(version: &RoomVersionId) -> Option<RoomVersionRules> {
    if SUPPORTED_ROOM_VERSIONS.contains(&version.as_str()) {
        version.rules()
    } else {
        None
    }
}
