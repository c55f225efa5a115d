//! Receipts (public, private, threaded) and read markers.

use ruma::{
    EventId, RoomId, UserId,
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
    },
    events::receipt::ReceiptThread,
};
use serde_json::json;

use crate::{App, Error, Result, ruma_wrapper::Ruma, services::accounts::now_ms};

async fn check_event(app: &App, user: &UserId, room: &RoomId, event: &EventId) -> Result<()> {
    if app.membership(room, user).await?.as_deref() != Some("join") {
        return Err(Error::forbidden("You are not joined to this room"));
    }
    let ev = app
        .store
        .event(event.to_string())
        .await?
        .filter(|e| e.pdu.room_id == room);
    match ev {
        Some(ev) if app.may_see_event(user, &ev).await? => Ok(()),
        _ => Err(Error::not_found("Event not found")),
    }
}

async fn receipt(app: &App, user: &UserId, room: &RoomId, kind: &str, event: &EventId, thread: &str) -> Result<()> {
    let ts = now_ms();
    app.store
        .set_receipt(
            room.to_string(),
            kind.to_owned(),
            user.to_string(),
            thread.to_owned(),
            event.to_string(),
            ts,
        )
        .await?;
    app.notify();
    // The user's phones clear (or lower) their badge.
    app.push_badge(user).await;
    // Private receipts stay on this server.
    if kind == "m.read" {
        app.federate_receipt(room, user, event.as_str(), thread, ts).await;
    }
    Ok(())
}

pub async fn create(app: App, req: Ruma<create_receipt::v3::Request>) -> Result<create_receipt::v3::Response> {
    let user = req.user()?.clone();
    let r = &req.body;
    check_event(&app, &user, &r.room_id, &r.event_id).await?;
    let thread = match &r.thread {
        ReceiptThread::Unthreaded => "unthreaded".to_owned(),
        ReceiptThread::Main => "main".to_owned(),
        ReceiptThread::Thread(id) => id.to_string(),
        _ => return Err(Error::invalid_param("Invalid thread_id")),
    };
    match &r.receipt_type {
        ReceiptType::Read => receipt(&app, &user, &r.room_id, "m.read", &r.event_id, &thread).await?,
        ReceiptType::ReadPrivate => receipt(&app, &user, &r.room_id, "m.read.private", &r.event_id, &thread).await?,
        ReceiptType::FullyRead => {
            if thread != "unthreaded" {
                return Err(Error::invalid_param("m.fully_read cannot be threaded"));
            }
            fully_read(&app, &user, &r.room_id, &r.event_id).await?
        }
        _ => return Err(Error::invalid_param("Unknown receipt type")),
    }
    Ok(create_receipt::v3::Response::new())
}

async fn fully_read(app: &App, user: &UserId, room: &RoomId, event: &EventId) -> Result<()> {
    app.store
        .set_account_data(
            user.to_string(),
            room.to_string(),
            "m.fully_read".into(),
            json!({ "event_id": event }),
        )
        .await?;
    app.notify();
    Ok(())
}

pub async fn read_markers(app: App, req: Ruma<set_read_marker::v3::Request>) -> Result<set_read_marker::v3::Response> {
    let user = req.user()?.clone();
    let r = &req.body;
    if let Some(e) = &r.fully_read {
        check_event(&app, &user, &r.room_id, e).await?;
        fully_read(&app, &user, &r.room_id, e).await?;
    }
    if let Some(e) = &r.read_receipt {
        check_event(&app, &user, &r.room_id, e).await?;
        receipt(&app, &user, &r.room_id, "m.read", e, "unthreaded").await?;
    }
    if let Some(e) = &r.private_read_receipt {
        check_event(&app, &user, &r.room_id, e).await?;
        receipt(&app, &user, &r.room_id, "m.read.private", e, "unthreaded").await?;
    }
    Ok(set_read_marker::v3::Response::new())
}
