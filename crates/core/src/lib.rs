//! The pure room model: how events are built, hashed, signed, authorised and
//! shown to clients. Nothing here does I/O, so every rule can be unit-tested
//! and shared by the client API, federation and the store.

pub mod auth;
pub mod builder;
pub mod limits;
pub mod pdu;
pub mod signing_key;
pub mod state_res_v1;
pub mod validate;
pub mod visibility;

pub use ruma;

/// Room versions this server can create and join: every stable version,
/// newest first.
pub const SUPPORTED_ROOM_VERSIONS: &[&str] = &["12", "11", "10", "9", "8", "7", "6", "5", "4", "3", "2", "1"];
/// The version `/createRoom` uses when neither the client nor the
/// configuration (`default_room_version`) names one.
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
