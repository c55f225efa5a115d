//! Typing notifications.

use ruma::api::client::typing::create_typing_event::{self, v3::Typing};

use crate::{App, Error, Result, api::client::require_self, ruma_wrapper::Ruma};

pub async fn typing(
    app: App,
    req: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let user = req.body.user_id.clone();
    if app.membership(&req.body.room_id, &user).await?.as_deref() != Some("join") {
        return Err(Error::forbidden("You are not joined to this room"));
    }
    let timeout = match req.body.state {
        Typing::Yes(t) => Some(t.timeout),
        _ => None,
    };
    app.set_local_typing(&req.body.room_id, &user, timeout).await;
    Ok(create_typing_event::v3::Response::new())
}
