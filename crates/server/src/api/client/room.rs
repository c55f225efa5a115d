//! Room creation, upgrade, and directory visibility.

use ruma::api::client::{
    directory::{get_room_visibility, set_room_visibility},
    room::{Visibility, create_room, get_summary, upgrade_room},
};

use crate::{App, Error, Result, ruma_wrapper::Ruma, services::create_room::CreateRoom};

pub async fn create_room(app: App, req: Ruma<create_room::v3::Request>) -> Result<create_room::v3::Response> {
    let user = req.user()?.clone();
    // Read the body as the spec's JSON: content overrides keep unknown fields.
    let body: CreateRoom = if req.raw_body.is_empty() {
        CreateRoom::default()
    } else {
        serde_json::from_slice(&req.raw_body).map_err(|e| Error::bad_json(e.to_string()))?
    };
    let room_id = app.create_room(&user, body).await?;
    Ok(create_room::v3::Response::new(room_id))
}

pub async fn upgrade_room(app: App, req: Ruma<upgrade_room::v3::Request>) -> Result<upgrade_room::v3::Response> {
    let user = req.user()?.clone();
    let new = app
        .upgrade_room(
            &user,
            &req.body.room_id,
            req.body.new_version.as_str(),
            req.body.additional_creators.clone(),
        )
        .await?;
    Ok(upgrade_room::v3::Response::new(new))
}

pub async fn get_visibility(
    app: App,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    let room = app
        .store
        .room(req.body.room_id.to_string())
        .await?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    Ok(get_room_visibility::v3::Response::new(if room.published {
        Visibility::Public
    } else {
        Visibility::Private
    }))
}

pub async fn set_visibility(
    app: App,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let user = req.user()?.clone();
    let room_id = &req.body.room_id;
    app.store
        .room(room_id.to_string())
        .await?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    let pl = app.power_levels(room_id).await?;
    if app.membership(room_id, &user).await?.as_deref() != Some("join")
        || pl.user(&user) < pl.event("m.room.canonical_alias", true)
    {
        return Err(Error::forbidden(
            "Not allowed to change this room's directory visibility",
        ));
    }
    let public = match req.body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(Error::invalid_param("Unknown visibility")),
    };
    app.store.set_room_published(room_id.to_string(), public).await?;
    Ok(set_room_visibility::v3::Response::new())
}

/// `/room_summary`: what a user may learn of a room before joining it. A
/// room they may not preview is answered as unknown, so nothing leaks.
pub async fn summary(app: App, req: Ruma<get_summary::v1::Request>) -> Result<get_summary::v1::Response> {
    let unknown = || Error::not_found("Room not found");
    let room_id = app
        .resolve_room(&req.body.room_id_or_alias)
        .await
        .map_err(|_| unknown())?;
    let info = app.room_info(&room_id).await?.ok_or_else(unknown)?;
    let visible = match &req.session {
        Some(s) => app.may_preview_room(&s.user_id, &info).await?,
        None => info.summary.world_readable || matches!(info.summary.join_rule, ruma::room::JoinRuleSummary::Public),
    };
    if !visible {
        return Err(unknown());
    }
    let membership = match &req.session {
        Some(s) => app.membership(&room_id, &s.user_id).await?,
        None => None,
    };
    let mut resp = get_summary::v1::Response::new(info.summary);
    resp.membership = membership.map(|m| m.as_str().into());
    Ok(resp)
}
