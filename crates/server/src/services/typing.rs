//! Typing notifications: ephemeral, in memory, with their own serial so a
//! sync token can say which typing state a client has seen.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId};

pub struct Typing(Mutex<TypingState>);

/// Serials start at the clock so that tokens handed out before a restart
/// stay below every serial handed out after it.
impl Default for Typing {
    fn default() -> Self {
        Typing(Mutex::new(TypingState {
            serial: crate::services::accounts::now_ms() as u64,
            rooms: HashMap::new(),
        }))
    }
}

struct TypingState {
    serial: u64,
    rooms: HashMap<OwnedRoomId, RoomTyping>,
}

#[derive(Default)]
struct RoomTyping {
    serial: u64,
    users: HashMap<OwnedUserId, Instant>,
}

/// Longest a client may ask to be shown typing for.
pub const MAX_TYPING: Duration = Duration::from_secs(120);

impl Typing {
    pub fn serial(&self) -> u64 {
        self.0.lock().expect("typing lock").serial
    }

    /// Sets or clears a user's typing; returns whether anything changed.
    pub fn set(&self, room: &RoomId, user: &OwnedUserId, timeout: Option<Duration>) -> bool {
        let mut s = self.0.lock().expect("typing lock");
        let room_state = s.rooms.entry(room.to_owned()).or_default();
        let changed = match timeout {
            Some(t) => room_state
                .users
                .insert(user.clone(), Instant::now() + t.min(MAX_TYPING))
                .is_none(),
            None => room_state.users.remove(user).is_some(),
        };
        if changed {
            s.serial += 1;
            let serial = s.serial;
            s.rooms.get_mut(room).expect("present").serial = serial;
        }
        changed
    }

    /// Drops expired entries; returns whether anything changed.
    pub fn expire(&self) -> bool {
        let mut s = self.0.lock().expect("typing lock");
        let now = Instant::now();
        let mut changed_rooms = vec![];
        for (room, t) in s.rooms.iter_mut() {
            let before = t.users.len();
            t.users.retain(|_, until| *until > now);
            if t.users.len() != before {
                changed_rooms.push(room.clone());
            }
        }
        if changed_rooms.is_empty() {
            return false;
        }
        s.serial += 1;
        let serial = s.serial;
        for r in changed_rooms {
            s.rooms.get_mut(&r).expect("present").serial = serial;
        }
        true
    }

    /// Users typing in a room if it changed after `since`.
    pub fn changed_since(&self, room: &RoomId, since: u64) -> Option<Vec<OwnedUserId>> {
        let s = self.0.lock().expect("typing lock");
        let t = s.rooms.get(room)?;
        (t.serial > since).then(|| {
            let mut users: Vec<_> = t.users.keys().cloned().collect();
            users.sort();
            users
        })
    }
}

impl crate::App {
    /// A local user's typing: shown here and in the other processes, and
    /// sent to the other servers in the room (which expire it on their own
    /// if the stop never comes).
    pub async fn set_local_typing(&self, room: &RoomId, user: &OwnedUserId, timeout: Option<Duration>) {
        self.set_typing(room, user, timeout).await;
        self.federate_typing(room, user, timeout.is_some()).await;
    }
}
