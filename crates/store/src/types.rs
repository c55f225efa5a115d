//! Plain data exchanged with the store.

use missive_core::pdu::Pdu;

#[derive(Clone, Debug)]
pub struct UserRow {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub deactivated: bool,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct DeviceRow {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub last_seen_ip: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TokenOwner {
    pub user_id: String,
    pub device_id: String,
    pub expires_ts: Option<i64>,
    /// A guest account (`/register?kind=guest`).
    pub is_guest: bool,
}

#[derive(Clone, Debug)]
pub struct RegistrationToken {
    pub token: String,
    pub uses_allowed: Option<i64>,
    pub completed: i64,
    pub expiry_ts: Option<i64>,
}

/// A stored room event with what the server keeps beside the PDU.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub pdu: Pdu,
    pub stream_pos: i64,
    pub state_group: i64,
    pub unsigned: Option<serde_json::Value>,
    pub redacted_by: Option<String>,
    pub txn_device: Option<String>,
    pub txn_id: Option<String>,
}

/// A new event to append to a room's timeline, in one transaction.
#[derive(Clone, Debug)]
pub struct NewRoomEvent {
    pub pdu: Pdu,
    pub unsigned: Option<serde_json::Value>,
    /// The transaction the client sent it in, for idempotent retries.
    pub txn: Option<(String, String)>,
    pub rel_type: Option<String>,
    pub relates_to: Option<String>,
    /// When the room does not exist yet (its create event).
    pub new_room: Option<NewRoom>,
    /// Local media IDs this (non-state) event attaches, for media access by room.
    pub media_refs: Vec<String>,
    /// Other servers to send the event to (queued in the same transaction).
    pub federate_to: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct NewRoom {
    pub room_version: String,
    pub creator: String,
}

#[derive(Clone, Debug)]
pub struct Membership {
    pub room_id: String,
    pub membership: String,
    pub event_id: String,
    pub stream_pos: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

impl From<ruma::api::Direction> for Direction {
    fn from(d: ruma::api::Direction) -> Self {
        match d {
            ruma::api::Direction::Forward => Direction::Forward,
            ruma::api::Direction::Backward => Direction::Backward,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AccountDataRow {
    pub room_id: String,
    pub kind: String,
    pub content: serde_json::Value,
    pub stream_pos: i64,
}

#[derive(Clone, Debug)]
pub struct ReceiptRow {
    pub receipt_type: String,
    pub user_id: String,
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
    pub stream_pos: i64,
}

#[derive(Clone, Debug)]
pub struct RoomRow {
    pub room_id: String,
    pub room_version: String,
    pub creator: String,
    pub published: bool,
}

/// Where a room stands in the stream, for ordering room lists.
#[derive(Clone, Debug)]
pub struct RoomPositions {
    pub room_id: String,
    /// Its latest event.
    pub last: i64,
    /// Its latest event of a type that bumps it, if any.
    pub bumped: Option<i64>,
}
