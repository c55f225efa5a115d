//! Client-Server API handlers: parse (ruma), authorise, call a service.

pub mod account;
pub mod account_data;
pub mod alias;
pub mod backup;
pub mod dehydrated_device;
pub mod device;
pub mod directory;
pub mod discovery;
pub mod events;
pub mod guest;
pub mod initial_sync;
pub mod keys;
pub mod media;
pub mod membership;
pub mod message;
pub mod presence;
pub mod profile;
pub mod push;
pub mod receipt;
pub mod register;
pub mod relations;
pub mod reporting;
pub mod room;
pub mod search;
pub mod session;
pub mod sliding_sync;
pub mod space;
pub mod state;
pub mod sync;
pub mod thirdparty;
pub mod to_device;
pub mod typing;
pub mod voip;

use ruma::UserId;

use crate::{Error, Result, ruma_wrapper::Ruma};

/// Endpoints with a `{userId}` in the path act only on the caller's own account.
pub fn require_self<R>(req: &Ruma<R>, user: &UserId) -> Result<()> {
    if req.user()? != user {
        return Err(Error::forbidden("You may only act on your own account"));
    }
    Ok(())
}

/// The `auth` object of a request body, for user-interactive authentication.
pub fn uia_auth<R>(req: &Ruma<R>) -> Option<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(&req.raw_body)
        .ok()?
        .get("auth")
        .cloned()
}
