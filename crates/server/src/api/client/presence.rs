//! Presence: set your own, read others' if you share a room.

use std::time::Duration;

use ruma::api::client::presence::{get_presence, set_presence};

use crate::{App, Error, Result, api::client::require_self, ruma_wrapper::Ruma, services::accounts::now_ms};

pub async fn set(app: App, req: Ruma<set_presence::v3::Request>) -> Result<set_presence::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    if !app.config.presence {
        return Err(Error::forbidden("Presence is disabled on this server"));
    }
    let msg = req.body.status_msg.clone().filter(|m| !m.is_empty());
    app.set_presence(&req.body.user_id, req.body.presence.as_str(), Some(msg))
        .await;
    Ok(set_presence::v3::Response::new())
}

pub async fn get(app: App, req: Ruma<get_presence::v3::Request>) -> Result<get_presence::v3::Response> {
    let me = req.user()?.clone();
    let target = &req.body.user_id;
    if !app.config.presence {
        return Err(Error::forbidden("Presence is disabled on this server"));
    }
    if &me != target && !app.store.share_a_room(me.to_string(), target.to_string()).await? {
        return Err(Error::forbidden("You do not share a room with this user"));
    }
    if app.store.user(target.to_string()).await?.is_none() {
        return Err(Error::not_found("Unknown user"));
    }
    let rec = app.presence.get(target);
    let mut resp = get_presence::v3::Response::new(
        rec.as_ref()
            .map(|r| r.state.as_str().into())
            .unwrap_or(ruma::presence::PresenceState::Offline),
    );
    if let Some(r) = rec {
        resp.status_msg = r.status_msg;
        resp.currently_active = Some(r.state == "online");
        resp.last_active_ago = Some(Duration::from_millis((now_ms() - r.last_active_ms).max(0) as u64));
    }
    Ok(resp)
}
