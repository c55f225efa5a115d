//! Room aliases.

use ruma::{
    OwnedRoomId,
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        room::aliases,
    },
};

use crate::{App, Error, Result, ruma_wrapper::Ruma};

pub async fn create(app: App, req: Ruma<create_alias::v3::Request>) -> Result<create_alias::v3::Response> {
    let user = req.user()?.clone();
    let alias = &req.body.room_alias;
    if alias.server_name() != app.server_name {
        return Err(Error::invalid_param("Alias must be on this server"));
    }
    app.store
        .room(req.body.room_id.to_string())
        .await?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    if app.membership(&req.body.room_id, &user).await?.as_deref() != Some("join") {
        return Err(Error::forbidden("You are not joined to this room"));
    }
    match app
        .store
        .set_alias(alias.to_string(), req.body.room_id.to_string(), user.to_string())
        .await
    {
        Err(missive_store::StoreError::Exists) => Err(Error::Matrix {
            status: http::StatusCode::CONFLICT,
            errcode: "M_UNKNOWN",
            message: "Room alias already exists".into(),
            extra: None,
        }),
        r => Ok(r.map(|_| create_alias::v3::Response::new())?),
    }
}

pub async fn get(app: App, req: Ruma<get_alias::v3::Request>) -> Result<get_alias::v3::Response> {
    let (room, servers) = app.resolve_alias(&req.body.room_alias).await?;
    Ok(get_alias::v3::Response::new(room, servers))
}

/// The alias's creator, or a room member with power to change the canonical alias, may delete it.
pub async fn delete(app: App, req: Ruma<delete_alias::v3::Request>) -> Result<delete_alias::v3::Response> {
    let user = req.user()?.clone();
    let (room, creator) = app
        .store
        .alias(req.body.room_alias.to_string())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let room = OwnedRoomId::try_from(room).map_err(|e| Error::Internal(e.to_string()))?;
    if creator != user.as_str() {
        let pl = app.power_levels(&room).await?;
        if app.membership(&room, &user).await?.as_deref() != Some("join")
            || pl.user(&user) < pl.event("m.room.canonical_alias", true)
        {
            return Err(Error::forbidden("Not allowed to delete this alias"));
        }
    }
    app.store.delete_alias(req.body.room_alias.to_string()).await?;
    Ok(delete_alias::v3::Response::new())
}

pub async fn list(app: App, req: Ruma<aliases::v3::Request>) -> Result<aliases::v3::Response> {
    let user = req.user()?.clone();
    crate::api::client::state::readable_state(&app, &req.body.room_id, &user).await?;
    let list = app
        .store
        .room_aliases(req.body.room_id.to_string())
        .await?
        .into_iter()
        .filter_map(|a| ruma::OwnedRoomAliasId::try_from(a).ok())
        .collect();
    Ok(aliases::v3::Response::new(list))
}
