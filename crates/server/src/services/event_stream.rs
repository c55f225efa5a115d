//! `GET /events`: the event stream of the spec's room previews (peeking),
//! and without a room the older stream of every room the user is in. New
//! events after a token, waiting up to a timeout when there are none.

use std::time::Duration;

use missive_store::{Direction, StoredEvent};
use ruma::{OwnedRoomId, RoomId};
use serde_json::{Value, json};

use crate::{
    App, Error, Result,
    api::client::state::readable_state,
    services::{accounts::Session, sync::SyncToken, timeline::parse_position},
};

/// The most events one answer carries; the rest come with the next call.
const MAX_EVENTS: usize = 100;

/// What the stream is asked for.
pub struct StreamRequest {
    pub from: Option<String>,
    /// One room (peeking, or a room the user is in); `None` for all the
    /// user's joined rooms.
    pub room_id: Option<OwnedRoomId>,
    pub timeout: Duration,
}

impl App {
    pub async fn event_stream(&self, session: &Session, req: StreamRequest) -> Result<Value> {
        let user = &session.user_id;
        let from = match &req.from {
            Some(t) => parse_position(t).ok_or_else(|| Error::invalid_param("Invalid from token"))?,
            None => self.store.persisted_upto(),
        };
        if session.is_guest && req.room_id.is_none() {
            return Err(Error::invalid_param("Guests must name a room (room_id)"));
        }
        if let Some(room) = &req.room_id {
            // A member's room, or a world-readable one: anyone may watch it.
            readable_state(self, room, user).await?;
        }
        let deadline = tokio::time::Instant::now() + req.timeout;
        let mut rx = self.notifier.subscribe();
        loop {
            rx.borrow_and_update();
            let upto = self.store.persisted_upto();
            let rooms: Vec<OwnedRoomId> = match &req.room_id {
                Some(r) => vec![r.clone()],
                None => self
                    .store
                    .memberships(user.to_string())
                    .await?
                    .into_iter()
                    .filter(|m| m.membership == "join")
                    .filter_map(|m| OwnedRoomId::try_from(m.room_id).ok())
                    .collect(),
            };
            let mut events: Vec<StoredEvent> = vec![];
            // The answer covers up to `end`: no further than any room whose
            // read stopped short of `upto`, nor than the events it can carry.
            let mut end = upto.max(from);
            for room in &rooms {
                let (visible, read_to) = self.stream_events(user, room, from, upto).await?;
                events.extend(visible);
                if let Some(p) = read_to {
                    end = end.min(p);
                }
            }
            events.retain(|e| e.stream_pos <= end);
            events.sort_by_key(|e| e.stream_pos);
            if events.len() > MAX_EVENTS {
                events.truncate(MAX_EVENTS);
                end = events.last().map_or(end, |e| e.stream_pos);
            }
            // Events to give, or a stretch read past (hidden ones only): answer.
            if !events.is_empty() || end < upto.max(from) || tokio::time::Instant::now() >= deadline {
                let chunk = self.timeline_client_events(&events, Some(session)).await?;
                return Ok(json!({
                    "chunk": chunk,
                    "start": token(from),
                    "end": token(end),
                }));
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                continue;
            }
        }
    }

    /// A room's events in (from, upto] the user may see, oldest first, and
    /// where the read stopped when the room had more than one read takes.
    async fn stream_events(
        &self,
        user: &ruma::UserId,
        room: &RoomId,
        from: i64,
        upto: i64,
    ) -> Result<(Vec<StoredEvent>, Option<i64>)> {
        let events = self
            .store
            .room_events(room.to_string(), from, Some(upto), Direction::Forward, MAX_EVENTS)
            .await?;
        let read_to = (events.len() == MAX_EVENTS)
            .then(|| events.last().map(|e| e.stream_pos))
            .flatten();
        Ok((self.filter_visible(user, room, events).await?, read_to))
    }
}

/// A stream token, in the form `/sync` gives (either is accepted back).
fn token(pos: i64) -> String {
    SyncToken {
        pos,
        typing: 0,
        presence: 0,
    }
    .to_string()
}
