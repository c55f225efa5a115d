//! Guest accounts in rooms: they stay only where the room admits them.

use ruma::{OwnedUserId, RoomId, UserId};

use crate::{App, Result};

impl App {
    /// Makes this server's guests leave a room that no longer admits them
    /// (the spec: when `m.room.guest_access` is no longer `can_join`). Run
    /// apart from the request that changed it, which holds the room.
    pub fn remove_guests_if_barred(&self, room_id: &RoomId) {
        let (app, room) = (self.clone(), room_id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = app.remove_guests(&room).await {
                tracing::warn!(%room, "guests not removed from a room that no longer admits them: {e}");
            }
        });
    }

    async fn remove_guests(&self, room_id: &RoomId) -> Result<()> {
        let admitted = self
            .state_content(room_id, "m.room.guest_access", "")
            .await?
            .is_some_and(|c| c.get("guest_access").and_then(|v| v.as_str()) == Some("can_join"));
        if admitted {
            return Ok(());
        }
        let joined: Vec<String> = self
            .store
            .room_members(room_id.to_string())
            .await?
            .into_iter()
            .filter(|(u, m)| m == "join" && UserId::parse(u.as_str()).is_ok_and(|u| self.is_local(&u)))
            .map(|(u, _)| u)
            .collect();
        for guest in self.store.guests_among(joined).await? {
            let Ok(guest) = OwnedUserId::try_from(guest) else {
                continue;
            };
            self.set_membership(room_id, &guest, &guest, "leave", None, None)
                .await?;
        }
        Ok(())
    }
}
