//! Joining, leaving and invites for users of other servers: make_join,
//! send_join (v2), make_leave, send_leave (v2), make_knock, send_knock, invite (v2).

use axum::Router;
use ruma::api::federation::membership::{
    create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event, prepare_knock_event,
    prepare_leave_event,
};

use crate::{
    App, Result,
    ruma_wrapper::{RouterExt, Ruma},
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
