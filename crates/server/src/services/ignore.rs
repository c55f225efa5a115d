//! Ignoring users (`m.ignored_user_list` in the user's account data): the
//! spec's "Ignoring Users". An ignored user's messages and invites never
//! reach the user who ignores them, nor notify them; their state events
//! still do, since the room's state is the room's.

use std::collections::HashSet;

use missive_store::{Membership, StoredEvent};
use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use crate::{App, Result};

const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// The users an `m.ignored_user_list` content names.
pub fn ignored_in(content: &Value) -> HashSet<OwnedUserId> {
    content
        .get("ignored_users")
        .and_then(Value::as_object)
        .map(|o| {
            o.keys()
                .filter_map(|u| OwnedUserId::try_from(u.as_str()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `viewer`, ignoring `ignored`, is kept from this event: a
/// message (not state) from someone they ignore.
pub fn hides(ignored: &HashSet<OwnedUserId>, viewer: &UserId, ev: &StoredEvent) -> bool {
    !ev.pdu.is_state() && ev.pdu.sender != viewer && ignored.contains(&ev.pdu.sender)
}

impl App {
    /// The users `user` ignores.
    pub async fn ignored_users(&self, user: &UserId) -> Result<HashSet<OwnedUserId>> {
        Ok(self
            .store
            .account_data(user.to_string(), String::new(), IGNORED_USER_LIST.into())
            .await?
            .map(|c| ignored_in(&c))
            .unwrap_or_default())
    }

    /// Of `users`, those who ignore `sender`.
    pub async fn users_ignoring(&self, users: &[OwnedUserId], sender: &UserId) -> Result<HashSet<OwnedUserId>> {
        let lists = self
            .store
            .global_account_data_of(users.iter().map(|u| u.to_string()).collect(), IGNORED_USER_LIST)
            .await?;
        Ok(lists
            .into_iter()
            .filter(|(_, content)| ignored_in(content).contains(sender))
            .filter_map(|(u, _)| OwnedUserId::try_from(u).ok())
            .collect())
    }

    /// Drops from a user's memberships the invites sent by someone they ignore.
    pub async fn drop_ignored_invites(&self, user: &UserId, memberships: &mut Vec<Membership>) -> Result<()> {
        let invites: Vec<String> = memberships
            .iter()
            .filter(|m| m.membership == "invite")
            .map(|m| m.event_id.clone())
            .collect();
        if invites.is_empty() {
            return Ok(());
        }
        let ignored = self.ignored_users(user).await?;
        if ignored.is_empty() {
            return Ok(());
        }
        let hidden: HashSet<String> = self
            .store
            .events(invites)
            .await?
            .into_iter()
            .filter(|e| ignored.contains(&e.pdu.sender))
            .map(|e| e.pdu.event_id.to_string())
            .collect();
        memberships.retain(|m| !(m.membership == "invite" && hidden.contains(&m.event_id)));
        Ok(())
    }
}
