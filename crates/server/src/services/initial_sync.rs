//! `GET /rooms/{roomId}/initialSync`: a snapshot of one room (state, latest
//! messages, the user's room account data). Deprecated for anything but
//! peeking, still in the spec. Members see the current state and latest
//! messages; former members what there was when they left; others only a
//! world-readable room. Messages pass the history-visibility check.

use missive_store::Direction;
use ruma::{
    RoomId,
    api::client::{
        peeking::get_current_state::v3::{PaginationChunk, Response},
        room::Visibility,
    },
    events::room::member::MembershipState,
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    App, Error, Result,
    api::client::state::readable_state,
    services::{accounts::Session, timeline::position_token},
};

/// Messages in the snapshot.
const MESSAGES: usize = 20;

fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(v).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

impl App {
    pub async fn room_initial_sync(&self, session: &Session, room_id: &RoomId) -> Result<Response> {
        let user = &session.user_id;
        // Refuses non-members of rooms that are not world-readable.
        let state = readable_state(self, room_id, user).await?;
        let own = self
            .store
            .current_state_event(room_id.to_string(), "m.room.member".into(), user.to_string())
            .await?;
        let membership = own.as_ref().and_then(|e| e.pdu.membership());
        // A former member's view ends where they left.
        let end = match (membership.as_deref(), &own) {
            (Some("leave") | Some("ban"), Some(own)) => own.stream_pos,
            _ => self.store.persisted_upto(),
        };
        let mut events = self
            .store
            .room_events(room_id.to_string(), end + 1, None, Direction::Backward, MESSAGES)
            .await?;
        let start = events.last().map(|e| position_token(e.stream_pos - 1));
        events.reverse();
        let events = self.filter_visible(user, room_id, events).await?;

        let mut resp = Response::new(room_id.to_owned());
        resp.membership = membership.as_deref().map(MembershipState::from);
        let mut chunk = Vec::with_capacity(events.len());
        for json in self.timeline_client_events(&events, Some(session)).await? {
            chunk.push(raw(&json)?);
        }
        let mut messages = PaginationChunk::new(chunk, position_token(end));
        messages.start = start;
        resp.messages = Some(messages);

        for ev in self
            .store
            .events(state.values().map(|e| e.to_string()).collect())
            .await?
        {
            resp.state.push(raw(&self.client_event(&ev, Some(session)).await?)?);
        }
        let published = self.store.room(room_id.to_string()).await?.is_some_and(|r| r.published);
        resp.visibility = Some(if published {
            Visibility::Public
        } else {
            Visibility::Private
        });
        for row in self
            .store
            .account_data_since(user.to_string(), 0, self.store.persisted_upto())
            .await?
        {
            if row.room_id == room_id.as_str() {
                resp.account_data
                    .push(raw(&json!({ "type": row.kind, "content": row.content }))?);
            }
        }
        Ok(resp)
    }
}
