//! `GET /events`, the event stream (room previews, and the older stream of
//! all the user's rooms). ruma's request type requires a room, which the
//! spec's older form does not: this one endpoint is read by hand.

use std::time::Duration;

use axum::{
    extract::{Query, Request, State},
    response::{IntoResponse, Response},
};
use ruma::OwnedRoomId;

use crate::{
    App, Error, Result,
    ruma_wrapper::{JsonResponse, RumaResponse, access_token},
    services::event_stream::StreamRequest,
};

/// The query of `GET /events?from=&room_id=&timeout=`.
#[derive(serde::Deserialize)]
pub struct Params {
    from: Option<String>,
    room_id: Option<OwnedRoomId>,
    /// Milliseconds.
    timeout: Option<u64>,
}

/// The longest the stream waits, whatever the client asks.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn events(State(app): State<App>, req: Request) -> Response {
    match answer(&app, req).await {
        Ok(r) => RumaResponse(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn answer(app: &App, req: Request) -> Result<JsonResponse> {
    let (parts, _) = req.into_parts();
    let token = access_token(&parts).ok_or_else(|| Error::missing_token("Missing access token"))?;
    let session = app.authenticate(&token).await?;
    let Query(p) = Query::<Params>::try_from_uri(&parts.uri).map_err(|e| Error::invalid_param(e.to_string()))?;
    let body = app
        .event_stream(
            &session,
            StreamRequest {
                from: p.from,
                room_id: p.room_id,
                timeout: Duration::from_millis(p.timeout.unwrap_or(0)).min(MAX_TIMEOUT),
            },
        )
        .await?;
    Ok(JsonResponse(body))
}

/// The paths of the stream, for the router.
pub const PATHS: [&str; 2] = ["/_matrix/client/r0/events", "/_matrix/client/v3/events"];
