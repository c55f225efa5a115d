//! Typing notifications.

use ruma::api::client::typing::create_typing_event::{self, v3::Typing};

use crate::{App, Error, Result, api::client::require_self, ruma_wrapper::Ruma};

/// The longest a client may say it keeps typing, as the reference server caps it.
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What `timeout` a `{"typing": true}` without one gets: 30 s, as the
/// reference server gives (ruma's request type requires the field).
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

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
        Typing::Yes(t) => Some(t.timeout.min(MAX_TIMEOUT)),
        _ => None,
    };
    app.set_local_typing(&req.body.room_id, &user, timeout).await;
    Ok(create_typing_event::v3::Response::new())
}
