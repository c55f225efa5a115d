//! Retrieving events: single events, the state at an event, auth chains,
//! backfill, missing events and the event nearest a timestamp.

use axum::Router;
use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_event_by_timestamp, get_missing_events, get_room_state, get_room_state_ids},
    },
};

use crate::{
    App, Error, Result,
    ruma_wrapper::{RouterExt, Ruma},
};

pub fn routes(router: Router<App>) -> Router<App> {
    router
        .ruma::<get_event::v1::Request, _, _>(event)
        .ruma::<get_room_state::v1::Request, _, _>(state)
        .ruma::<get_room_state_ids::v1::Request, _, _>(state_ids)
        .ruma::<get_event_authorization::v1::Request, _, _>(event_auth)
        .ruma::<get_backfill::v1::Request, _, _>(backfill)
        .ruma::<get_missing_events::v1::Request, _, _>(missing_events)
        .ruma::<get_event_by_timestamp::v1::Request, _, _>(timestamp_to_event)
}

fn usize_of(n: UInt) -> usize {
    usize::try_from(u64::from(n)).unwrap_or(usize::MAX)
}

async fn event(app: App, req: Ruma<get_event::v1::Request>) -> Result<get_event::v1::Response> {
    let pdu = app.federation_event(req.origin()?, &req.body.event_id).await?;
    Ok(get_event::v1::Response::new(
        app.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdu,
    ))
}

async fn state(app: App, req: Ruma<get_room_state::v1::Request>) -> Result<get_room_state::v1::Response> {
    let (pdus, auth_chain) = app
        .federation_state(req.origin()?, &req.body.room_id, &req.body.event_id)
        .await?;
    Ok(get_room_state::v1::Response::new(auth_chain, pdus))
}

async fn state_ids(app: App, req: Ruma<get_room_state_ids::v1::Request>) -> Result<get_room_state_ids::v1::Response> {
    let (pdu_ids, auth_chain_ids) = app
        .federation_state_ids(req.origin()?, &req.body.room_id, &req.body.event_id)
        .await?;
    Ok(get_room_state_ids::v1::Response::new(auth_chain_ids, pdu_ids))
}

async fn event_auth(
    app: App,
    req: Ruma<get_event_authorization::v1::Request>,
) -> Result<get_event_authorization::v1::Response> {
    let chain = app
        .federation_event_auth(req.origin()?, &req.body.room_id, &req.body.event_id)
        .await?;
    Ok(get_event_authorization::v1::Response::new(chain))
}

async fn backfill(app: App, req: Ruma<get_backfill::v1::Request>) -> Result<get_backfill::v1::Response> {
    let b = &req.body;
    if b.v.is_empty() {
        return Err(Error::missing_param("v: at least one event ID is needed"));
    }
    let pdus = app
        .federation_backfill(req.origin()?, &b.room_id, b.v.clone(), usize_of(b.limit))
        .await?;
    Ok(get_backfill::v1::Response::new(
        app.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdus,
    ))
}

async fn missing_events(
    app: App,
    req: Ruma<get_missing_events::v1::Request>,
) -> Result<get_missing_events::v1::Response> {
    let b = &req.body;
    let events = app
        .federation_missing_events(
            req.origin()?,
            &b.room_id,
            b.latest_events.clone(),
            &b.earliest_events,
            u64::from(b.min_depth),
            usize_of(b.limit),
        )
        .await?;
    Ok(get_missing_events::v1::Response::new(events))
}

async fn timestamp_to_event(
    app: App,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response> {
    let b = &req.body;
    let ts = i64::try_from(u64::from(b.ts.0)).unwrap_or(i64::MAX);
    let (event_id, at) = app
        .federation_timestamp_to_event(req.origin()?, &b.room_id, ts, b.dir.into())
        .await?;
    let at = MilliSecondsSinceUnixEpoch(UInt::try_from(at.max(0) as u64).unwrap_or_default());
    Ok(get_event_by_timestamp::v1::Response::new(event_id, at))
}
