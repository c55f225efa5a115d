//! Joining, leaving and invites for users of other servers: make_join,
//! send_join, make_leave, send_leave, make_knock, send_knock, invite. The
//! v1 send_join, send_leave and invite, which other implementations still
//! call, take the same requests as v2 and answer `[200, body]`.

use axum::Router;
use ruma::{
    RoomVersionId,
    api::federation::membership::{
        RawStrippedState, create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
        prepare_knock_event, prepare_leave_event,
    },
};
use serde_json::json;

use crate::{
    App, Error, Result,
    ruma_wrapper::{JsonResponse, RouterExt, Ruma},
};

pub fn routes(router: Router<App>) -> Router<App> {
    router
        .ruma::<prepare_join_event::v1::Request, _, _>(make_join)
        .ruma::<create_join_event::v2::Request, _, _>(send_join)
        .ruma::<prepare_leave_event::v1::Request, _, _>(make_leave)
        .ruma::<create_leave_event::v2::Request, _, _>(send_leave)
        .ruma::<prepare_knock_event::v1::Request, _, _>(make_knock)
        .ruma::<create_knock_event::v1::Request, _, _>(send_knock)
        .ruma::<create_invite::v2::Request, _, _>(invite)
        // Same path parameters and the bare event as body: v2's request types.
        .ruma_at::<create_join_event::v2::Request, _, _, _>(
            &["/_matrix/federation/v1/send_join/{room_id}/{event_id}"],
            send_join_v1,
        )
        .ruma_at::<create_leave_event::v2::Request, _, _, _>(
            &["/_matrix/federation/v1/send_leave/{room_id}/{event_id}"],
            send_leave_v1,
        )
        .ruma_at::<create_join_event::v2::Request, _, _, _>(
            &["/_matrix/federation/v1/invite/{room_id}/{event_id}"],
            invite_v1,
        )
}

/// The v1 answers: the v2 body, behind its status code.
fn v1_answer(body: serde_json::Value) -> JsonResponse {
    JsonResponse(json!([200, body]))
}

async fn send_join_v1(app: App, req: Ruma<create_join_event::v2::Request>) -> Result<JsonResponse> {
    let res = send_join(app, req).await?;
    let body = JsonResponse::from_ruma(res, |_| {})?.0;
    Ok(v1_answer(body))
}

async fn send_leave_v1(app: App, req: Ruma<create_leave_event::v2::Request>) -> Result<JsonResponse> {
    send_leave(app, req).await?;
    Ok(v1_answer(json!({})))
}

/// `PUT /_matrix/federation/v1/invite`: the body is the invite itself, with
/// the room's stripped state in its `unsigned`; the version comes from the
/// stripped create event (version 1 without one, as v1 predates versions).
async fn invite_v1(app: App, req: Ruma<create_join_event::v2::Request>) -> Result<JsonResponse> {
    let origin = req.origin()?;
    let b = &req.body;
    #[derive(serde::Deserialize, Default)]
    struct Unsigned {
        #[serde(default)]
        invite_room_state: Vec<RawStrippedState>,
    }
    #[derive(serde::Deserialize)]
    struct Invite {
        #[serde(default)]
        unsigned: Option<Unsigned>,
    }
    let invite: Invite = serde_json::from_str(b.pdu.get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let state = invite.unsigned.unwrap_or_default().invite_room_state;
    let version = state
        .iter()
        .find_map(|s| {
            let raw = match s {
                RawStrippedState::Pdu(p) => p.get(),
                #[allow(deprecated)]
                RawStrippedState::Stripped(r) => r.json().get(),
                _ => return None,
            };
            let v: serde_json::Value = serde_json::from_str(raw).ok()?;
            (v["type"] == "m.room.create").then(|| v["content"]["room_version"].as_str().unwrap_or("1").to_owned())
        })
        .unwrap_or_else(|| "1".to_owned());
    let version = RoomVersionId::try_from(version).map_err(|e| Error::bad_json(e.to_string()))?;
    let event = app
        .accept_invite(origin, &b.room_id, &b.event_id, &version, &b.pdu, &state)
        .await?;
    let event: serde_json::Value = serde_json::from_str(event.get()).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(v1_answer(json!({ "event": event })))
}

async fn make_knock(
    app: App,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> Result<prepare_knock_event::v1::Response> {
    let origin = req.origin()?;
    let (version, event) = app
        .membership_template(origin, &req.body.room_id, &req.body.user_id, "knock", &req.body.ver)
        .await?;
    Ok(prepare_knock_event::v1::Response::new(version, event))
}

async fn send_knock(app: App, req: Ruma<create_knock_event::v1::Request>) -> Result<create_knock_event::v1::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    let (event, _) = app
        .accept_membership(origin, &b.room_id, &b.event_id, &b.pdu, "knock")
        .await?;
    Ok(create_knock_event::v1::Response::new(
        app.invite_state(&b.room_id, &event.sender).await?,
    ))
}

async fn make_join(app: App, req: Ruma<prepare_join_event::v1::Request>) -> Result<prepare_join_event::v1::Response> {
    let origin = req.origin()?;
    let (version, event) = app
        .membership_template(origin, &req.body.room_id, &req.body.user_id, "join", &req.body.ver)
        .await?;
    let mut res = prepare_join_event::v1::Response::new(event);
    res.room_version = Some(version);
    Ok(res)
}

async fn send_join(app: App, req: Ruma<create_join_event::v2::Request>) -> Result<create_join_event::v2::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    let (event, state_before) = app
        .accept_membership(origin, &b.room_id, &b.event_id, &b.pdu, "join")
        .await?;
    let (state, auth_chain) = app.state_and_auth_chain(&state_before, &event.auth_events).await?;
    let mut room_state = create_join_event::v2::RoomState::new();
    room_state.state = state;
    room_state.auth_chain = auth_chain;
    room_state.event = Some(event.json);
    let mut servers: Vec<String> = app
        .servers_in_room(&b.room_id)
        .await?
        .into_iter()
        .map(|s| s.to_string())
        .collect();
    servers.push(app.server_name.to_string());
    room_state.servers_in_room = Some(servers);
    Ok(create_join_event::v2::Response::new(room_state))
}

async fn make_leave(
    app: App,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> Result<prepare_leave_event::v1::Response> {
    let origin = req.origin()?;
    let (version, event) = app
        .membership_template(origin, &req.body.room_id, &req.body.user_id, "leave", &[])
        .await?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), event))
}

async fn send_leave(app: App, req: Ruma<create_leave_event::v2::Request>) -> Result<create_leave_event::v2::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    app.accept_membership(origin, &b.room_id, &b.event_id, &b.pdu, "leave")
        .await?;
    Ok(create_leave_event::v2::Response::new())
}

async fn invite(app: App, req: Ruma<create_invite::v2::Request>) -> Result<create_invite::v2::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    let event = app
        .accept_invite(
            origin,
            &b.room_id,
            &b.event_id,
            &b.room_version,
            &b.event,
            &b.invite_room_state,
        )
        .await?;
    Ok(create_invite::v2::Response::new(event))
}
