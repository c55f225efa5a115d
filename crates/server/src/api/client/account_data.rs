//! Account data (global and per room) and room tags, which live in the
//! `m.tag` room account data.

use ruma::{
    RoomId, UserId,
    api::client::{
        config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{App, Error, Result, api::client::require_self, ruma_wrapper::Ruma, services::rooms::content_object};

/// Types the server manages itself and clients may not set directly.
const RESERVED: &[&str] = &["m.fully_read", "m.push_rules"];

async fn set(app: &App, user: &UserId, room: Option<&RoomId>, kind: &str, content: Value) -> Result<()> {
    if RESERVED.contains(&kind) {
        return Err(Error::bad_json(format!("{kind} cannot be set through this API")));
    }
    if let Some(room) = room {
        app.store
            .room(room.to_string())
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
    }
    app.store
        .set_account_data(
            user.to_string(),
            room.map(|r| r.to_string()).unwrap_or_default(),
            kind.to_owned(),
            content,
        )
        .await?;
    app.notify();
    Ok(())
}

async fn get(app: &App, user: &UserId, room: Option<&RoomId>, kind: &str) -> Result<Value> {
    app.store
        .account_data(
            user.to_string(),
            room.map(|r| r.to_string()).unwrap_or_default(),
            kind.to_owned(),
        )
        .await?
        .ok_or_else(|| Error::not_found("Account data not found"))
}

fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(v).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

pub async fn set_global(
    app: App,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let content = content_object(req.body.data.json())?;
    set(&app, &req.body.user_id, None, &req.body.event_type.to_string(), content).await?;
    Ok(set_global_account_data::v3::Response::new())
}

pub async fn get_global(
    app: App,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let v = get(&app, &req.body.user_id, None, &req.body.event_type.to_string()).await?;
    Ok(get_global_account_data::v3::Response::new(raw(&v)?))
}

pub async fn set_room(
    app: App,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let content = content_object(req.body.data.json())?;
    set(
        &app,
        &req.body.user_id,
        Some(&req.body.room_id),
        &req.body.event_type.to_string(),
        content,
    )
    .await?;
    Ok(set_room_account_data::v3::Response::new())
}

pub async fn get_room(
    app: App,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let v = get(
        &app,
        &req.body.user_id,
        Some(&req.body.room_id),
        &req.body.event_type.to_string(),
    )
    .await?;
    Ok(get_room_account_data::v3::Response::new(raw(&v)?))
}

async fn tags(app: &App, user: &UserId, room: &RoomId) -> Result<Value> {
    Ok(app
        .store
        .account_data(user.to_string(), room.to_string(), "m.tag".into())
        .await?
        .unwrap_or_else(|| json!({ "tags": {} })))
}

pub async fn get_tags(app: App, req: Ruma<get_tags::v3::Request>) -> Result<get_tags::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let t = tags(&app, &req.body.user_id, &req.body.room_id).await?;
    let parsed = serde_json::from_value(t.get("tags").cloned().unwrap_or_else(|| json!({}))).unwrap_or_default();
    Ok(get_tags::v3::Response::new(parsed))
}

pub async fn create_tag(app: App, req: Ruma<create_tag::v3::Request>) -> Result<create_tag::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    if req.body.tag.len() > 255 {
        return Err(Error::invalid_param("Tag too long"));
    }
    let info: Value = serde_json::from_slice(&req.raw_body).map_err(|e| Error::not_json(e.to_string()))?;
    let mut t = tags(&app, &req.body.user_id, &req.body.room_id).await?;
    t["tags"][&req.body.tag] = info;
    app.store
        .room(req.body.room_id.to_string())
        .await?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    app.store
        .set_account_data(
            req.body.user_id.to_string(),
            req.body.room_id.to_string(),
            "m.tag".into(),
            t,
        )
        .await?;
    app.notify();
    Ok(create_tag::v3::Response::new())
}

pub async fn delete_tag(app: App, req: Ruma<delete_tag::v3::Request>) -> Result<delete_tag::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let mut t = tags(&app, &req.body.user_id, &req.body.room_id).await?;
    if let Some(obj) = t.get_mut("tags").and_then(Value::as_object_mut) {
        obj.remove(&req.body.tag);
    }
    app.store
        .set_account_data(
            req.body.user_id.to_string(),
            req.body.room_id.to_string(),
            "m.tag".into(),
            t,
        )
        .await?;
    app.notify();
    Ok(delete_tag::v3::Response::new())
}
