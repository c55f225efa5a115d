//! Server-side key backup: `/room_keys/version` and `/room_keys/keys`.

use ruma::api::client::backup::{
    RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
    delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
    get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
    update_backup_version,
};

use crate::{App, Error, Result, ruma_wrapper::Ruma};

fn body<R>(req: &Ruma<R>) -> Result<&str> {
    std::str::from_utf8(&req.raw_body).map_err(|_| Error::not_json("Request body is not UTF-8"))
}

pub async fn create_version(
    app: App,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    let version = app.create_backup_version(req.user()?, body(&req)?).await?;
    Ok(create_backup_version::v3::Response::new(version))
}

pub async fn latest_version(
    app: App,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    let i = app.backup_info(req.user()?, None).await?;
    Ok(get_latest_backup_info::v3::Response::new(
        i.algorithm,
        i.count,
        i.etag,
        i.version,
    ))
}

pub async fn get_version(app: App, req: Ruma<get_backup_info::v3::Request>) -> Result<get_backup_info::v3::Response> {
    let i = app.backup_info(req.user()?, Some(&req.body.version)).await?;
    Ok(get_backup_info::v3::Response::new(
        i.algorithm,
        i.count,
        i.etag,
        i.version,
    ))
}

pub async fn update_version(
    app: App,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    app.update_backup_version(req.user()?, &req.body.version, body(&req)?)
        .await?;
    Ok(update_backup_version::v3::Response::new())
}

pub async fn delete_version(
    app: App,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    app.delete_backup_version(req.user()?, &req.body.version).await?;
    Ok(delete_backup_version::v3::Response::new())
}

pub async fn put_keys(app: App, req: Ruma<add_backup_keys::v3::Request>) -> Result<add_backup_keys::v3::Response> {
    let sessions = req
        .body
        .rooms
        .iter()
        .flat_map(|(room, keys)| {
            keys.sessions
                .iter()
                .map(move |(session, data)| (room.as_str(), session.as_str(), data))
        })
        .collect();
    let (etag, count) = app.put_room_keys(req.user()?, &req.body.version, sessions).await?;
    Ok(add_backup_keys::v3::Response::new(etag, count))
}

pub async fn put_room_keys(
    app: App,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let room = req.body.room_id.as_str();
    let sessions = req
        .body
        .sessions
        .iter()
        .map(|(session, data)| (room, session.as_str(), data))
        .collect();
    let (etag, count) = app.put_room_keys(req.user()?, &req.body.version, sessions).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count))
}

pub async fn put_session_key(
    app: App,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let b = &req.body;
    let (etag, count) = app
        .put_room_keys(
            req.user()?,
            &b.version,
            vec![(b.room_id.as_str(), b.session_id.as_str(), &b.session_data)],
        )
        .await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, count))
}

pub async fn get_keys(app: App, req: Ruma<get_backup_keys::v3::Request>) -> Result<get_backup_keys::v3::Response> {
    let keys = app.room_keys(req.user()?, &req.body.version, None, None).await?;
    Ok(get_backup_keys::v3::Response::new(
        keys.into_iter()
            .map(|(room, sessions)| (room, RoomKeyBackup::new(sessions)))
            .collect(),
    ))
}

pub async fn get_room_keys(
    app: App,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let b = &req.body;
    let mut keys = app
        .room_keys(req.user()?, &b.version, Some(b.room_id.as_str()), None)
        .await?;
    Ok(get_backup_keys_for_room::v3::Response::new(
        keys.remove(&b.room_id).unwrap_or_default(),
    ))
}

pub async fn get_session_key(
    app: App,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let b = &req.body;
    let data = app
        .room_keys(req.user()?, &b.version, Some(b.room_id.as_str()), Some(&b.session_id))
        .await?
        .remove(&b.room_id)
        .and_then(|mut s| s.remove(&b.session_id))
        .ok_or_else(|| Error::not_found("No key for this session in the backup"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(data))
}

pub async fn delete_keys(
    app: App,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    let (etag, count) = app.delete_room_keys(req.user()?, &req.body.version, None, None).await?;
    Ok(delete_backup_keys::v3::Response::new(etag, count))
}

pub async fn delete_room_keys(
    app: App,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let b = &req.body;
    let (etag, count) = app
        .delete_room_keys(req.user()?, &b.version, Some(b.room_id.as_str()), None)
        .await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count))
}

pub async fn delete_session_key(
    app: App,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let b = &req.body;
    let (etag, count) = app
        .delete_room_keys(req.user()?, &b.version, Some(b.room_id.as_str()), Some(&b.session_id))
        .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, count))
}
