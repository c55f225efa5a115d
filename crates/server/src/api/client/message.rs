//! Sending, redacting and reading events: send, redact, /event, /messages,
//! /context, /timestamp_to_event.

use missive_core::builder::NewEvent;
use missive_store::Direction;
use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::client::{
        context::get_context,
        message::{get_message_events, send_message_event},
        redact::redact_event,
        room::{get_event_by_timestamp, get_room_event},
    },
    events::TimelineEventType,
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    App, Error, Result,
    api::client::state::readable_state,
    ruma_wrapper::Ruma,
    services::{
        ratelimit::Action,
        rooms::content_object,
        timeline::{filter_allows, parse_position, position_token},
    },
};

fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(v).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

pub async fn send(app: App, req: Ruma<send_message_event::v3::Request>) -> Result<send_message_event::v3::Response> {
    let s = req.session()?.clone();
    app.rate_limiter
        .check(&app.config.rate_limits, Action::Send, s.user_id.as_str())?;
    let content = content_object(req.body.body.json())?;
    let kind: TimelineEventType = req.body.event_type.to_string().into();
    if kind == TimelineEventType::RoomRedaction {
        return Err(Error::invalid_param("Use /redact to redact events"));
    }
    if app.membership(&req.body.room_id, &s.user_id).await?.as_deref() != Some("join") {
        app.store
            .room(req.body.room_id.to_string())
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        return Err(Error::forbidden("You are not joined to this room"));
    }
    let event_id = app
        .send_event(
            &req.body.room_id,
            &s.user_id,
            NewEvent::message(kind, content),
            Some((s.device_id.to_string(), req.body.txn_id.to_string())),
        )
        .await?;
    Ok(send_message_event::v3::Response::new(event_id))
}

pub async fn redact(app: App, req: Ruma<redact_event::v3::Request>) -> Result<redact_event::v3::Response> {
    let s = req.session()?.clone();
    let version = app.room_version(&req.body.room_id).await?;
    let target = app
        .store
        .event(req.body.event_id.to_string())
        .await?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if target.pdu.room_id != req.body.room_id {
        return Err(Error::invalid_param("Cannot redact an event of another room"));
    }
    // The auth rules let any member send a redaction; whether it applies
    // is decided after. A redaction that would not apply is refused here,
    // rather than acknowledged and ignored.
    if target.pdu.kind == TimelineEventType::RoomCreate {
        return Err(Error::forbidden("The room's create event cannot be redacted"));
    }
    if target.pdu.sender != s.user_id {
        let pl = app.power_levels(&req.body.room_id).await?;
        if pl.user(&s.user_id) < pl.action("redact") {
            return Err(Error::forbidden("You may only redact your own events"));
        }
    }
    let mut content = json!({});
    if let Some(r) = &req.body.reason {
        content["reason"] = r.clone().into();
    }
    if version.rules.redaction.content_field_redacts {
        content["redacts"] = req.body.event_id.to_string().into();
    }
    let event_id = app
        .send_event(
            &req.body.room_id,
            &s.user_id,
            NewEvent {
                kind: TimelineEventType::RoomRedaction,
                state_key: None,
                content,
                redacts: Some(req.body.event_id.clone()),
            },
            Some((s.device_id.to_string(), req.body.txn_id.to_string())),
        )
        .await?;
    Ok(redact_event::v3::Response::new(event_id))
}

pub async fn get_event(app: App, req: Ruma<get_room_event::v3::Request>) -> Result<get_room_event::v3::Response> {
    let user = req.user()?.clone();
    let ev = app
        .store
        .event(req.body.event_id.to_string())
        .await?
        .filter(|e| e.pdu.room_id == req.body.room_id)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if !app.may_see_event(&user, &ev).await? {
        return Err(Error::not_found("Event not found"));
    }
    let json = app.timeline_client_event(&ev, req.session.as_ref()).await?;
    Ok(get_room_event::v3::Response::new(raw(&json)?))
}

pub async fn messages(
    app: App,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let user = req.user()?.clone();
    let r = &req.body;
    // Membership (or world-readable history) is required to read a room.
    readable_state(&app, &r.room_id, &user).await?;
    let dir = Direction::from(r.dir);
    let from = match &r.from {
        Some(t) => parse_position(t).ok_or_else(|| Error::invalid_param("Invalid from token"))?,
        None => match dir {
            Direction::Backward => app.store.persisted_upto(),
            Direction::Forward => 0,
        },
    };
    let to = match &r.to {
        Some(t) => Some(parse_position(t).ok_or_else(|| Error::invalid_param("Invalid to token"))?),
        None => None,
    };
    let limit = (u64::from(r.limit) as usize).clamp(1, 1000);
    // Backward from position P covers events at P and before.
    let (start, bound) = match dir {
        Direction::Backward => (from + 1, to),
        Direction::Forward => (from, Some(to.unwrap_or(i64::MAX).min(app.store.persisted_upto()))),
    };
    let events = app
        .store
        .room_events(r.room_id.to_string(), start, bound, dir, limit)
        .await?;
    // An `end` whenever the page held events, visible or not: a shorter
    // page is not proof of the room's start (clients stop at no `end`).
    let end = match (events.last(), dir) {
        (Some(last), Direction::Backward) => Some(position_token(last.stream_pos - 1)),
        (Some(last), Direction::Forward) => Some(position_token(last.stream_pos)),
        _ => None,
    };
    let events: Vec<_> = events.into_iter().filter(|e| filter_allows(&r.filter, e)).collect();
    let events = app.filter_visible(&user, &r.room_id, events).await?;
    let mut resp = get_message_events::v3::Response::new();
    resp.start = position_token(from);
    resp.end = end;
    let lazy = !r.filter.lazy_load_options.is_disabled();
    let mut senders = std::collections::BTreeSet::new();
    for ev in &events {
        senders.insert(ev.pdu.sender.to_string());
    }
    for json in app.timeline_client_events(&events, req.session.as_ref()).await? {
        resp.chunk.push(raw(&json)?);
    }
    if lazy && !events.is_empty() {
        // The members as the user may know them: now for a member, as they
        // were at the user's departure for a former member.
        let state = readable_state(&app, &r.room_id, &user).await?;
        let ids = senders
            .iter()
            .filter_map(|s| state.get(&("m.room.member".into(), s.clone())))
            .map(|e| e.to_string())
            .collect();
        for ev in app.store.events(ids).await? {
            resp.state
                .push(raw(&app.client_event(&ev, req.session.as_ref()).await?)?);
        }
    }
    Ok(resp)
}

pub async fn context(app: App, req: Ruma<get_context::v3::Request>) -> Result<get_context::v3::Response> {
    let user = req.user()?.clone();
    let r = &req.body;
    let ev = app
        .store
        .event(r.event_id.to_string())
        .await?
        .filter(|e| e.pdu.room_id == r.room_id)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if !app.may_see_event(&user, &ev).await? {
        return Err(Error::not_found("Event not found"));
    }
    let limit = (u64::from(r.limit) as usize).min(100);
    let before_n = limit / 2;
    let after_n = limit - before_n;
    let room = r.room_id.to_string();
    let before = app
        .store
        .room_events(room.clone(), ev.stream_pos, None, Direction::Backward, before_n)
        .await?;
    let after = app
        .store
        .room_events(
            room,
            ev.stream_pos,
            Some(app.store.persisted_upto()),
            Direction::Forward,
            after_n,
        )
        .await?;
    let start = before.last().map(|e| e.stream_pos - 1).unwrap_or(ev.stream_pos - 1);
    let end = after.last().map(|e| e.stream_pos).unwrap_or(ev.stream_pos);
    let before = app
        .filter_visible(
            &user,
            &r.room_id,
            before.into_iter().filter(|e| filter_allows(&r.filter, e)).collect(),
        )
        .await?;
    let after = app
        .filter_visible(
            &user,
            &r.room_id,
            after.into_iter().filter(|e| filter_allows(&r.filter, e)).collect(),
        )
        .await?;
    let mut resp = get_context::v3::Response::new();
    resp.start = Some(position_token(start));
    resp.end = Some(position_token(end));
    resp.event = Some(raw(&app.timeline_client_event(&ev, req.session.as_ref()).await?)?);
    for json in app.timeline_client_events(&before, req.session.as_ref()).await? {
        resp.events_before.push(raw(&json)?);
    }
    for json in app.timeline_client_events(&after, req.session.as_ref()).await? {
        resp.events_after.push(raw(&json)?);
    }
    // The state at the requested event.
    let state = app.store.state_at_group(ev.state_group).await?;
    let lazy = !r.filter.lazy_load_options.is_disabled();
    let senders: std::collections::BTreeSet<String> = before
        .iter()
        .chain(after.iter())
        .chain(std::iter::once(&ev))
        .map(|e| e.pdu.sender.to_string())
        .collect();
    let ids = state
        .iter()
        .filter(|((k, key), _)| !lazy || k.to_string() != "m.room.member" || senders.contains(key))
        .map(|(_, id)| id.to_string())
        .collect();
    // The state events themselves pass the same rules: an invitee who never
    // joined learns nothing of a room's members from its invite's context.
    let state = app
        .filter_visible(&user, &r.room_id, app.store.events(ids).await?)
        .await?;
    for e in &state {
        resp.state.push(raw(&app.client_event(e, req.session.as_ref()).await?)?);
    }
    Ok(resp)
}

/// How many events near a timestamp are looked at for one the user may see.
const TIMESTAMP_CANDIDATES: usize = 50;

pub async fn timestamp_to_event(
    app: App,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response> {
    let user = req.user()?.clone();
    let r = &req.body;
    readable_state(&app, &r.room_id, &user).await?;
    let dir = Direction::from(r.dir);
    let ts = u64::from(r.ts.0) as i64;
    // The closest event the user may see: a former member learns nothing,
    // not even the time, of what came after they left.
    let candidates = app
        .store
        .events_at_ts(r.room_id.to_string(), ts, dir, TIMESTAMP_CANDIDATES)
        .await?;
    let ev = app
        .filter_visible(&user, &r.room_id, candidates)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::not_found("No event found in that direction"))?;
    Ok(get_event_by_timestamp::v1::Response::new(
        ev.pdu.event_id,
        MilliSecondsSinceUnixEpoch(ev.pdu.origin_server_ts.0),
    ))
}
