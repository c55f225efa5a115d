//! Relations (edits, reactions, replies in threads) and the thread list.

use missive_store::Direction;
use ruma::{
    RoomId, UInt, UserId,
    api::{
        Direction as Dir,
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads,
        },
    },
    serde::Raw,
};
use serde_json::Value;

use crate::{
    App, Error, Result,
    ruma_wrapper::Ruma,
    services::{
        accounts::Session,
        timeline::{parse_position, position_token},
    },
};

fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(v).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

pub struct Page<T> {
    chunk: Vec<Raw<T>>,
    next_batch: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn relations<T>(
    app: &App,
    session: &Session,
    room_id: &RoomId,
    parent: &ruma::EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&str>,
    dir: Dir,
    limit: Option<UInt>,
) -> Result<Page<T>> {
    let user: &UserId = &session.user_id;
    let parent_ev = app
        .store
        .event(parent.to_string())
        .await?
        .filter(|e| e.pdu.room_id == room_id)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if !app.may_see_event(user, &parent_ev).await? {
        return Err(Error::not_found("Event not found"));
    }
    let dir = Direction::from(dir);
    let from = match from {
        Some(t) => Some(parse_position(t).ok_or_else(|| Error::invalid_param("Invalid from token"))?),
        None => None,
    };
    let limit = limit.map(|l| u64::from(l) as usize).unwrap_or(50).clamp(1, 100);
    let events = app
        .store
        .relations(parent.to_string(), rel_type, event_type, from, dir, limit)
        .await?;
    let next_batch = (events.len() == limit)
        .then(|| events.last().map(|e| position_token(e.stream_pos)))
        .flatten();
    let events = app.filter_visible(user, room_id, events).await?;
    let mut chunk = vec![];
    for json in app.timeline_client_events(&events, Some(session)).await? {
        chunk.push(raw(&json)?);
    }
    Ok(Page { chunk, next_batch })
}

pub async fn relating(
    app: App,
    req: Ruma<get_relating_events::v1::Request>,
) -> Result<get_relating_events::v1::Response> {
    let r = &req.body;
    let page = relations(
        &app,
        req.session()?,
        &r.room_id,
        &r.event_id,
        None,
        None,
        r.from.as_deref(),
        r.dir,
        r.limit,
    )
    .await?;
    let mut resp = get_relating_events::v1::Response::new(page.chunk);
    resp.next_batch = page.next_batch;
    Ok(resp)
}

pub async fn relating_with_type(
    app: App,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type::v1::Response> {
    let r = &req.body;
    let page = relations(
        &app,
        req.session()?,
        &r.room_id,
        &r.event_id,
        Some(r.rel_type.to_string()),
        None,
        r.from.as_deref(),
        r.dir,
        r.limit,
    )
    .await?;
    let mut resp = get_relating_events_with_rel_type::v1::Response::new(page.chunk);
    resp.next_batch = page.next_batch;
    Ok(resp)
}

pub async fn relating_with_type_and_event(
    app: App,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let r = &req.body;
    let page = relations(
        &app,
        req.session()?,
        &r.room_id,
        &r.event_id,
        Some(r.rel_type.to_string()),
        Some(r.event_type.to_string()),
        r.from.as_deref(),
        r.dir,
        r.limit,
    )
    .await?;
    let mut resp = get_relating_events_with_rel_type_and_event_type::v1::Response::new(page.chunk);
    resp.next_batch = page.next_batch;
    Ok(resp)
}

pub async fn threads(app: App, req: Ruma<get_threads::v1::Request>) -> Result<get_threads::v1::Response> {
    let session = req.session()?.clone();
    let r = &req.body;
    crate::api::client::state::readable_state(&app, &r.room_id, &session.user_id).await?;
    let before = match &r.from {
        Some(t) => Some(parse_position(t).ok_or_else(|| Error::invalid_param("Invalid from token"))?),
        None => None,
    };
    let limit = r.limit.map(|l| u64::from(l) as usize).unwrap_or(50).clamp(1, 100);
    let roots = app.store.thread_roots(r.room_id.to_string(), before, limit).await?;
    let next_batch = (roots.len() == limit)
        .then(|| roots.last().map(|(_, latest)| position_token(*latest)))
        .flatten();
    let participated_only = matches!(r.include, get_threads::v1::IncludeThreads::Participated);
    let mut chunk = vec![];
    for (root, _) in roots {
        if participated_only && root.pdu.sender != session.user_id {
            let replies = app
                .store
                .relations(
                    root.pdu.event_id.to_string(),
                    Some("m.thread".into()),
                    None,
                    None,
                    Direction::Forward,
                    1000,
                )
                .await?;
            if !replies.iter().any(|e| e.pdu.sender == session.user_id) {
                continue;
            }
        }
        if !app.may_see_event(&session.user_id, &root).await? {
            continue;
        }
        chunk.push(raw(&app.timeline_client_event(&root, Some(&session)).await?)?);
    }
    let mut resp = get_threads::v1::Response::new(chunk);
    resp.next_batch = next_batch;
    Ok(resp)
}
