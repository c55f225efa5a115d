//! Profiles: display name and avatar. A change is also announced, as a new
//! member event, in every room the user has joined (as clients expect).

use ruma::{
    OwnedRoomId, UserId,
    api::client::profile::{get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name},
};

use crate::{App, Error, Result, api::client::require_self, ruma_wrapper::Ruma};

async fn local_profile(app: &App, user: &UserId) -> Result<missive_store::UserRow> {
    if !app.is_local(user) {
        return Err(Error::not_found("Profiles of users on other servers need federation"));
    }
    match app.store.user(user.to_string()).await? {
        Some(row) if !row.deactivated => Ok(row),
        _ => Err(Error::not_found("Unknown user")),
    }
}

pub async fn get_profile(app: App, req: Ruma<get_profile::v3::Request>) -> Result<get_profile::v3::Response> {
    let row = local_profile(&app, &req.body.user_id).await?;
    let mut resp = get_profile::v3::Response::new();
    if let Some(d) = row.displayname {
        resp.set("displayname".into(), d.into());
    }
    if let Some(a) = row.avatar_url {
        resp.set("avatar_url".into(), a.into());
    }
    Ok(resp)
}

pub async fn get_displayname(
    app: App,
    req: Ruma<get_display_name::v3::Request>,
) -> Result<get_display_name::v3::Response> {
    let row = local_profile(&app, &req.body.user_id).await?;
    Ok(get_display_name::v3::Response::new(row.displayname))
}

pub async fn get_avatar_url(app: App, req: Ruma<get_avatar_url::v3::Request>) -> Result<get_avatar_url::v3::Response> {
    let row = local_profile(&app, &req.body.user_id).await?;
    let resp = get_avatar_url::v3::Response::new(row.avatar_url.map(Into::into));
    Ok(resp)
}

pub async fn set_displayname(
    app: App,
    req: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let name = req.body.displayname.clone().filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.len() > 256) {
        return Err(Error::invalid_param("Display name too long"));
    }
    app.store.set_displayname(req.body.user_id.to_string(), name).await?;
    propagate(&app, &req.body.user_id).await?;
    Ok(set_display_name::v3::Response::new())
}

pub async fn set_avatar_url(app: App, req: Ruma<set_avatar_url::v3::Request>) -> Result<set_avatar_url::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let url = req
        .body
        .avatar_url
        .as_ref()
        .map(|u| u.to_string())
        .filter(|u| !u.is_empty());
    app.store.set_avatar_url(req.body.user_id.to_string(), url).await?;
    propagate(&app, &req.body.user_id).await?;
    Ok(set_avatar_url::v3::Response::new())
}

/// Re-sends the user's join in each joined room with the new profile.
async fn propagate(app: &App, user: &UserId) -> Result<()> {
    for m in app.store.memberships(user.to_string()).await? {
        if m.membership != "join" {
            continue;
        }
        let Ok(room) = OwnedRoomId::try_from(m.room_id) else {
            continue;
        };
        if let Err(e) = app.set_membership(&room, user, user, "join", None, None).await {
            tracing::warn!(%room, error = %e, "could not update member event with new profile");
        }
    }
    Ok(())
}
