//! Profiles: display name, avatar and extended fields. A display name or avatar change is also announced, as a new
//! member event, in every room the user has joined (as clients expect).

use ruma::{
    OwnedRoomId, UserId,
    api::client::profile::{
        delete_profile_field, get_avatar_url, get_display_name, get_profile, get_profile_field, set_avatar_url,
        set_display_name, set_profile_field,
    },
    profile::{ProfileFieldName, ProfileFieldValue},
};

use crate::{App, Error, Result, api::client::require_self, ruma_wrapper::Ruma};

async fn local_profile(app: &App, user: &UserId) -> Result<missive_store::UserRow> {
    match app.store.user(user.to_string()).await? {
        Some(row) if !row.deactivated => Ok(row),
        _ => Err(Error::not_found("Unknown user")),
    }
}

/// One field of a remote user's profile, asked of their server.
async fn remote_field(app: &App, user: &UserId, field: ProfileFieldName) -> Result<Option<serde_json::Value>> {
    let key = field.as_str().to_owned();
    Ok(app.remote_profile(user, Some(field)).await?.remove(&key))
}

pub async fn get_profile(app: App, req: Ruma<get_profile::v3::Request>) -> Result<get_profile::v3::Response> {
    if !app.is_local(&req.body.user_id) {
        let mut resp = get_profile::v3::Response::new();
        for (k, v) in app.remote_profile(&req.body.user_id, None).await? {
            resp.set(k, v);
        }
        return Ok(resp);
    }
    let row = local_profile(&app, &req.body.user_id).await?;
    let mut resp = get_profile::v3::Response::new();
    if let Some(d) = row.displayname {
        resp.set("displayname".into(), d.into());
    }
    if let Some(a) = row.avatar_url {
        resp.set("avatar_url".into(), a.into());
    }
    for (k, v) in app.store.profile_fields(req.body.user_id.to_string()).await? {
        resp.set(k, v);
    }
    Ok(resp)
}

pub async fn get_displayname(
    app: App,
    req: Ruma<get_display_name::v3::Request>,
) -> Result<get_display_name::v3::Response> {
    if !app.is_local(&req.body.user_id) {
        let name = remote_field(&app, &req.body.user_id, ProfileFieldName::DisplayName).await?;
        return Ok(get_display_name::v3::Response::new(
            name.as_ref().and_then(|n| n.as_str()).map(str::to_owned),
        ));
    }
    let row = local_profile(&app, &req.body.user_id).await?;
    Ok(get_display_name::v3::Response::new(row.displayname))
}

pub async fn get_avatar_url(app: App, req: Ruma<get_avatar_url::v3::Request>) -> Result<get_avatar_url::v3::Response> {
    if !app.is_local(&req.body.user_id) {
        let url = remote_field(&app, &req.body.user_id, ProfileFieldName::AvatarUrl).await?;
        return Ok(get_avatar_url::v3::Response::new(
            url.as_ref().and_then(|u| u.as_str()).map(Into::into),
        ));
    }
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

/// The whole profile (extended fields included) may not exceed this, in bytes of JSON.
const MAX_PROFILE_BYTES: usize = 64 * 1024;

pub async fn get_field(app: App, req: Ruma<get_profile_field::v3::Request>) -> Result<get_profile_field::v3::Response> {
    let name = req.body.field.as_str().to_owned();
    if !app.is_local(&req.body.user_id) {
        let value = remote_field(&app, &req.body.user_id, req.body.field.clone())
            .await?
            .ok_or_else(|| Error::not_found("Profile field not set"))?;
        let value = ProfileFieldValue::new(&name, value).map_err(|e| Error::Internal(e.to_string()))?;
        return Ok(get_profile_field::v3::Response::new(value));
    }
    let row = local_profile(&app, &req.body.user_id).await?;
    let value = match name.as_str() {
        "displayname" => row.displayname.map(serde_json::Value::from),
        "avatar_url" => row.avatar_url.map(serde_json::Value::from),
        _ => app
            .store
            .profile_fields(req.body.user_id.to_string())
            .await?
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v),
    };
    let value = value.ok_or_else(|| Error::not_found("Profile field not set"))?;
    let value = ProfileFieldValue::new(&name, value).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(get_profile_field::v3::Response::new(value))
}

pub async fn set_field(app: App, req: Ruma<set_profile_field::v3::Request>) -> Result<set_profile_field::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let user = &req.body.user_id;
    let name = req.body.value.field_name();
    let value = req.body.value.value().into_owned();
    match name {
        ProfileFieldName::DisplayName => {
            let v = value.as_str().map(str::to_owned).filter(|v| !v.is_empty());
            app.store.set_displayname(user.to_string(), v).await?;
            propagate(&app, user).await?;
        }
        ProfileFieldName::AvatarUrl => {
            let v = value.as_str().map(str::to_owned).filter(|v| !v.is_empty());
            app.store.set_avatar_url(user.to_string(), v).await?;
            propagate(&app, user).await?;
        }
        other => {
            let key = other.as_str().to_owned();
            if key.is_empty() || key.len() > 255 {
                return Err(Error::invalid_param("Profile field names are 1 to 255 bytes"));
            }
            let mut size = value.to_string().len() + key.len();
            for (k, v) in app.store.profile_fields(user.to_string()).await? {
                if k != key {
                    size += k.len() + v.to_string().len();
                }
            }
            if size > MAX_PROFILE_BYTES {
                return Err(Error::Matrix {
                    status: http::StatusCode::BAD_REQUEST,
                    errcode: "M_PROFILE_TOO_LARGE",
                    message: "The profile would exceed 64 KiB".into(),
                    extra: None,
                });
            }
            app.store.set_profile_field(user.to_string(), key, Some(value)).await?;
        }
    }
    Ok(set_profile_field::v3::Response::new())
}

pub async fn delete_field(
    app: App,
    req: Ruma<delete_profile_field::v3::Request>,
) -> Result<delete_profile_field::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let user = &req.body.user_id;
    match &req.body.field {
        ProfileFieldName::DisplayName => {
            app.store.set_displayname(user.to_string(), None).await?;
            propagate(&app, user).await?;
        }
        ProfileFieldName::AvatarUrl => {
            app.store.set_avatar_url(user.to_string(), None).await?;
            propagate(&app, user).await?;
        }
        other => {
            app.store
                .set_profile_field(user.to_string(), other.as_str().to_owned(), None)
                .await?
        }
    }
    Ok(delete_profile_field::v3::Response::new())
}
