//! `/sync` and filters.

use std::time::Duration;

use ruma::api::client::{
    filter::{FilterDefinition, create_filter, get_filter},
    sync::sync_events::{self, v3::Filter},
};

use serde_json::{Map, Value, json};

use crate::{
    App, Error, Result,
    api::client::require_self,
    ruma_wrapper::{JsonResponse, Ruma},
    services::sync::{SyncRequest, SyncToken},
};

pub async fn sync(app: App, req: Ruma<sync_events::v3::Request>) -> Result<JsonResponse> {
    let session = req.session()?.clone();
    let r = req.body;
    let since = match &r.since {
        Some(t) => Some(SyncToken::parse(t).ok_or_else(|| Error::invalid_param("Invalid since token"))?),
        None => None,
    };
    let filter = match r.filter {
        None => FilterDefinition::default(),
        Some(Filter::FilterDefinition(f)) => f,
        Some(Filter::FilterId(id)) => load_filter(&app, &session.user_id, &id).await?,
        Some(_) => FilterDefinition::default(),
    };
    if app.config.presence {
        let state = r.set_presence.as_str();
        if state != "offline" {
            app.set_presence(&session.user_id, state, None).await;
        }
    }
    let timeout = r
        .timeout
        .unwrap_or(Duration::ZERO)
        .min(Duration::from_millis(app.config.max_sync_timeout_ms));
    app.touch_device(&session, req.client_ip).await?;
    let resp = app
        .sync(
            &session,
            SyncRequest {
                since,
                filter,
                full_state: r.full_state,
                timeout,
            },
        )
        .await?;
    JsonResponse::from_ruma(resp, complete_shape)
}

/// The keys clients read without checking that they are there, as the
/// reference server always sends them: ruma leaves out empty sections, a
/// `false` `limited` and an empty one-time key count.
fn complete_shape(v: &mut Value) {
    fn events(obj: &mut Map<String, Value>, key: &str) {
        let section = obj.entry(key).or_insert_with(|| json!({}));
        if let Some(s) = section.as_object_mut() {
            s.entry("events").or_insert_with(|| json!([]));
        }
    }
    let Some(top) = v.as_object_mut() else { return };
    for key in ["account_data", "presence", "to_device"] {
        events(top, key);
    }
    top.entry("device_one_time_keys_count").or_insert_with(|| json!({}));
    top.entry("device_unused_fallback_key_types")
        .or_insert_with(|| json!([]));
    let Some(rooms) = top.get_mut("rooms").and_then(Value::as_object_mut) else {
        return;
    };
    /// The rooms of one section of `rooms`.
    fn section<'a>(rooms: &'a mut Map<String, Value>, name: &str) -> impl Iterator<Item = &'a mut Map<String, Value>> {
        rooms
            .get_mut(name)
            .and_then(Value::as_object_mut)
            .into_iter()
            .flat_map(|m| m.values_mut())
            .filter_map(Value::as_object_mut)
    }
    for (name, keys) in [
        ("join", &["state", "account_data", "ephemeral"][..]),
        ("leave", &["state", "account_data"][..]),
    ] {
        for room in section(rooms, name) {
            for key in keys {
                events(room, key);
            }
            events(room, "timeline");
            if let Some(t) = room.get_mut("timeline").and_then(Value::as_object_mut) {
                t.entry("limited").or_insert(Value::Bool(false));
            }
            if name == "join" {
                let counts = room.entry("unread_notifications").or_insert_with(|| json!({}));
                if let Some(c) = counts.as_object_mut() {
                    c.entry("notification_count").or_insert_with(|| json!(0));
                    c.entry("highlight_count").or_insert_with(|| json!(0));
                }
                room.entry("summary").or_insert_with(|| json!({}));
            }
        }
    }
    for (name, key) in [("invite", "invite_state"), ("knock", "knock_state")] {
        for room in section(rooms, name) {
            events(room, key);
        }
    }
}

async fn load_filter(app: &App, user: &ruma::UserId, id: &str) -> Result<FilterDefinition> {
    let n: i64 = id.parse().map_err(|_| Error::not_found("Unknown filter"))?;
    let json = app
        .store
        .filter(user.to_string(), n)
        .await?
        .ok_or_else(|| Error::not_found("Unknown filter"))?;
    serde_json::from_str(&json).map_err(|e| Error::Internal(e.to_string()))
}

pub async fn create(app: App, req: Ruma<create_filter::v3::Request>) -> Result<create_filter::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let json = serde_json::to_string(&req.body.filter).map_err(|e| Error::bad_json(e.to_string()))?;
    let id = app.store.create_filter(req.body.user_id.to_string(), json).await?;
    Ok(create_filter::v3::Response::new(id.to_string()))
}

pub async fn get(app: App, req: Ruma<get_filter::v3::Request>) -> Result<get_filter::v3::Response> {
    require_self(&req, &req.body.user_id)?;
    let f = load_filter(&app, &req.body.user_id, &req.body.filter_id).await?;
    Ok(get_filter::v3::Response::new(f))
}
