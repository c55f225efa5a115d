//! `/sync` and filters.

use std::time::Duration;

use ruma::api::client::{
    filter::{FilterDefinition, create_filter, get_filter},
    sync::sync_events::{self, v3::Filter},
};

use crate::{
    App, Error, Result,
    api::client::require_self,
    ruma_wrapper::Ruma,
    services::sync::{SyncRequest, SyncToken},
};

pub async fn sync(app: App, req: Ruma<sync_events::v3::Request>) -> Result<sync_events::v3::Response> {
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
    app.store
        .touch_device(session.user_id.to_string(), session.device_id.to_string(), None)
        .await?;
    app.sync(
        &session,
        SyncRequest {
            since,
            filter,
            full_state: r.full_state,
            timeout,
        },
    )
    .await
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
