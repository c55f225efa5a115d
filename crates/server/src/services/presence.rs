//! Presence, in memory: who is online, set by `/sync?set_presence` and the
//! presence API. Disabled entirely by `presence = false`.

use std::{collections::HashMap, sync::Mutex};

use ruma::{OwnedUserId, UserId};

#[derive(Clone, Debug)]
pub struct PresenceRecord {
    pub state: String,
    pub status_msg: Option<String>,
    pub last_active_ms: i64,
    pub serial: u64,
}

pub struct Presence(Mutex<PresenceState>);

/// Serials start at the clock, as typing's do, to survive restarts.
impl Default for Presence {
    fn default() -> Self {
        Presence(Mutex::new(PresenceState {
            serial: crate::services::accounts::now_ms() as u64,
            users: HashMap::new(),
        }))
    }
}

struct PresenceState {
    serial: u64,
    users: HashMap<OwnedUserId, PresenceRecord>,
}

impl Presence {
    pub fn serial(&self) -> u64 {
        self.0.lock().expect("presence lock").serial
    }

    /// Records a user's presence; returns whether it changed what others see.
    pub fn set(&self, user: &UserId, state: &str, status_msg: Option<Option<String>>, now_ms: i64) -> bool {
        let mut s = self.0.lock().expect("presence lock");
        let prev = s.users.get(user).cloned();
        let status_msg = match status_msg {
            Some(m) => m,
            None => prev.as_ref().and_then(|p| p.status_msg.clone()),
        };
        let changed = prev
            .as_ref()
            .is_none_or(|p| p.state != state || p.status_msg != status_msg);
        let serial = if changed {
            s.serial += 1;
            s.serial
        } else {
            prev.as_ref().map(|p| p.serial).unwrap_or(0)
        };
        s.users.insert(
            user.to_owned(),
            PresenceRecord {
                state: state.to_owned(),
                status_msg,
                last_active_ms: now_ms,
                serial,
            },
        );
        changed
    }

    pub fn get(&self, user: &UserId) -> Option<PresenceRecord> {
        self.0.lock().expect("presence lock").users.get(user).cloned()
    }

    /// Presence of the given users changed after `since`.
    pub fn changed_since(&self, users: &[OwnedUserId], since: u64) -> Vec<(OwnedUserId, PresenceRecord)> {
        let s = self.0.lock().expect("presence lock");
        users
            .iter()
            .filter_map(|u| {
                s.users
                    .get(u)
                    .filter(|r| r.serial > since)
                    .map(|r| (u.clone(), r.clone()))
            })
            .collect()
    }
}
