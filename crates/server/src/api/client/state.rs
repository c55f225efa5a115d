//! Room state: read all, read one, send one.

use missive_core::builder::NewEvent;
use ruma::{
    RoomId, UserId,
    api::client::state::{get_state_event_for_key, get_state_events, send_state_event},
    serde::Raw,
};

use crate::{App, Error, Result, ruma_wrapper::Ruma, services::rooms::content_object};

/// The state a user may read: the current state for members; for former
/// members, the state when they left; for anyone, if the room is world-readable.
pub async fn readable_state(app: &App, room_id: &RoomId, user: &UserId) -> Result<missive_core::auth::StateMap> {
    app.store
        .room(room_id.to_string())
        .await?
        .ok_or_else(|| Error::forbidden("You are not a member of this room"))?;
    match app.membership(room_id, user).await?.as_deref() {
        Some("join") => Ok(app.store.current_state_ids(room_id.to_string()).await?),
        Some("leave") | Some("ban") => {
            let own = app
                .store
                .current_state_event(room_id.to_string(), "m.room.member".into(), user.to_string())
                .await?
                .ok_or_else(|| Error::forbidden("You are not a member of this room"))?;
            Ok((*app.store.state_at_group(own.state_group).await?).clone())
        }
        _ => {
            let hv = app.state_content(room_id, "m.room.history_visibility", "").await?;
            if hv
                .as_ref()
                .and_then(|v| v.get("history_visibility"))
                .and_then(|v| v.as_str())
                == Some("world_readable")
            {
                Ok(app.store.current_state_ids(room_id.to_string()).await?)
            } else {
                Err(Error::forbidden("You are not a member of this room"))
            }
        }
    }
}

pub async fn get_state(app: App, req: Ruma<get_state_events::v3::Request>) -> Result<get_state_events::v3::Response> {
    let user = req.user()?.clone();
    let state = readable_state(&app, &req.body.room_id, &user).await?;
    let events = app
        .store
        .events(state.values().map(|e| e.to_string()).collect())
        .await?;
    let mut out = vec![];
    for ev in events {
        let json = app.client_event(&ev, req.session.as_ref()).await?;
        out.push(Raw::from_json(
            serde_json::value::to_raw_value(&json).map_err(|e| Error::Internal(e.to_string()))?,
        ));
    }
    Ok(get_state_events::v3::Response::new(out))
}

pub async fn get_state_for_key(
    app: App,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    let user = req.user()?.clone();
    let state = readable_state(&app, &req.body.room_id, &user).await?;
    let id = state
        .get(&(req.body.event_type.clone(), req.body.state_key.clone()))
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let ev = app
        .store
        .event(id.to_string())
        .await?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let body = match req.body.format {
        get_state_event_for_key::v3::StateEventFormat::Event => app.client_event(&ev, req.session.as_ref()).await?,
        _ => ev.pdu.content_value(),
    };
    Ok(get_state_event_for_key::v3::Response::new(
        serde_json::value::to_raw_value(&body).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

pub async fn send_state(app: App, req: Ruma<send_state_event::v3::Request>) -> Result<send_state_event::v3::Response> {
    let user = req.user()?.clone();
    let content = content_object(req.body.body.json())?;
    let kind = req.body.event_type.to_string();
    if kind == "m.room.create" {
        return Err(Error::forbidden("The create event cannot be replaced"));
    }
    let event_id = app
        .send_event(
            &req.body.room_id,
            &user,
            NewEvent::state(kind.as_str().into(), &req.body.state_key, content),
            None,
        )
        .await?;
    Ok(send_state_event::v3::Response::new(event_id))
}
