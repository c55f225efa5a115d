//! Membership endpoints.

use std::collections::BTreeMap;

use ruma::{
    OwnedRoomId, OwnedUserId,
    api::client::knock::knock_room,
    api::client::membership::{
        ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
        joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
    serde::Raw,
};

use crate::{App, Error, Result, ruma_wrapper::Ruma, services::timeline::parse_position};

pub async fn join_by_id(app: App, req: Ruma<join_room_by_id::v3::Request>) -> Result<join_room_by_id::v3::Response> {
    let user = req.user()?.clone();
    app.join(&req.body.room_id, &user, req.body.reason.clone()).await?;
    Ok(join_room_by_id::v3::Response::new(req.body.room_id.clone()))
}

pub async fn join_by_id_or_alias(
    app: App,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let user = req.user()?.clone();
    let (room_id, mut servers) = app.resolve_room_and_servers(&req.body.room_id_or_alias).await?;
    servers.extend(req.body.via.iter().cloned());
    app.join_via(&room_id, &user, req.body.reason.clone(), &servers).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

pub async fn knock(app: App, req: Ruma<knock_room::v3::Request>) -> Result<knock_room::v3::Response> {
    let user = req.user()?.clone();
    let room_id = app.resolve_room(&req.body.room_id_or_alias).await?;
    let known = app.store.room(room_id.to_string()).await?.is_some();
    if app.federation_enabled() && !(known && app.has_local_member(&room_id).await?) {
        let mut servers = req.body.via.clone();
        servers.extend(room_id.server_name().map(ToOwned::to_owned));
        app.knock_remote(&room_id, &user, req.body.reason.clone(), &servers)
            .await?;
        return Ok(knock_room::v3::Response::new(room_id));
    }
    if !known {
        return Err(Error::not_found("Unknown room"));
    }
    app.set_membership(&room_id, &user, &user, "knock", req.body.reason.clone(), None)
        .await?;
    Ok(knock_room::v3::Response::new(room_id))
}

pub async fn invite(app: App, req: Ruma<invite_user::v3::Request>) -> Result<invite_user::v3::Response> {
    let user = req.user()?.clone();
    let invite_user::v3::InvitationRecipient::UserId(invitee) = &req.body.recipient else {
        return Err(Error::threepid_denied("Third-party invites are not supported"));
    };
    let user_id = &invitee.user_id;
    if !app.is_local(user_id) {
        if !app.federation_enabled() || !app.server_allowed(user_id.server_name()) {
            return Err(Error::forbidden("This server does not federate with the user's server"));
        }
    } else if app.store.user(user_id.to_string()).await?.is_none_or(|u| u.deactivated) {
        return Err(Error::not_found("Unknown user"));
    }
    let reason = invitee.reason.clone();
    app.set_membership(&req.body.room_id, &user, user_id, "invite", reason, None)
        .await?;
    Ok(invite_user::v3::Response::new())
}

pub async fn leave(app: App, req: Ruma<leave_room::v3::Request>) -> Result<leave_room::v3::Response> {
    let user = req.user()?.clone();
    app.store
        .room(req.body.room_id.to_string())
        .await?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    let membership = app.membership(&req.body.room_id, &user).await?;
    if membership.as_deref() == Some("invite") && !app.has_local_member(&req.body.room_id).await? {
        // An invite to a room held elsewhere is declined through the inviter's server.
        app.reject_remote_invite(&req.body.room_id, &user, req.body.reason.clone())
            .await?;
        return Ok(leave_room::v3::Response::new());
    }
    match membership.as_deref() {
        Some("join") | Some("invite") | Some("knock") => {
            app.set_membership(&req.body.room_id, &user, &user, "leave", req.body.reason.clone(), None)
                .await?;
        }
        _ => return Err(Error::forbidden("You are not in this room")),
    }
    Ok(leave_room::v3::Response::new())
}

pub async fn forget(app: App, req: Ruma<forget_room::v3::Request>) -> Result<forget_room::v3::Response> {
    let user = req.user()?.clone();
    match app.membership(&req.body.room_id, &user).await?.as_deref() {
        Some("join") | Some("invite") | Some("knock") => {
            return Err(Error::bad_state("Leave the room before forgetting it"));
        }
        None => return Err(Error::not_found("You were never in this room")),
        _ => {}
    }
    app.store
        .forget_room(user.to_string(), req.body.room_id.to_string())
        .await?;
    Ok(forget_room::v3::Response::new())
}

pub async fn kick(app: App, req: Ruma<kick_user::v3::Request>) -> Result<kick_user::v3::Response> {
    let user = req.user()?.clone();
    match app.membership(&req.body.room_id, &req.body.user_id).await?.as_deref() {
        Some("join") | Some("invite") | Some("knock") => {}
        _ => return Err(Error::forbidden("That user is not in the room")),
    }
    app.set_membership(
        &req.body.room_id,
        &user,
        &req.body.user_id,
        "leave",
        req.body.reason.clone(),
        None,
    )
    .await?;
    Ok(kick_user::v3::Response::new())
}

pub async fn ban(app: App, req: Ruma<ban_user::v3::Request>) -> Result<ban_user::v3::Response> {
    let user = req.user()?.clone();
    app.set_membership(
        &req.body.room_id,
        &user,
        &req.body.user_id,
        "ban",
        req.body.reason.clone(),
        None,
    )
    .await?;
    Ok(ban_user::v3::Response::new())
}

pub async fn unban(app: App, req: Ruma<unban_user::v3::Request>) -> Result<unban_user::v3::Response> {
    let user = req.user()?.clone();
    if app.membership(&req.body.room_id, &req.body.user_id).await?.as_deref() != Some("ban") {
        return Err(Error::forbidden("That user is not banned"));
    }
    app.set_membership(
        &req.body.room_id,
        &user,
        &req.body.user_id,
        "leave",
        req.body.reason.clone(),
        None,
    )
    .await?;
    Ok(unban_user::v3::Response::new())
}

pub async fn joined_rooms(app: App, req: Ruma<joined_rooms::v3::Request>) -> Result<joined_rooms::v3::Response> {
    let rooms = app
        .store
        .memberships(req.user()?.to_string())
        .await?
        .into_iter()
        .filter(|m| m.membership == "join")
        .filter_map(|m| OwnedRoomId::try_from(m.room_id).ok())
        .collect();
    Ok(joined_rooms::v3::Response::new(rooms))
}

/// Members may read the member list; so may former members, as of when they left.
pub async fn members(app: App, req: Ruma<get_member_events::v3::Request>) -> Result<get_member_events::v3::Response> {
    let user = req.user()?.clone();
    let room_id = &req.body.room_id;
    app.store
        .room(room_id.to_string())
        .await?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    let membership = app.membership(room_id, &user).await?;
    // The state to read: at `at`, or now; a former member sees it as of their departure.
    let mut at = req
        .body
        .at
        .as_deref()
        .and_then(parse_position)
        .unwrap_or(app.store.persisted_upto());
    match membership.as_deref() {
        Some("join") => {}
        Some("leave") | Some("ban") => {
            let own = app
                .store
                .current_state_event(room_id.to_string(), "m.room.member".into(), user.to_string())
                .await?;
            if let Some(own) = own {
                at = at.min(own.stream_pos);
            }
        }
        _ => return Err(Error::forbidden("You are not a member of this room")),
    }
    let state = match app.store.last_event_at(room_id.to_string(), at).await? {
        Some(e) => app.store.state_at_group(e.state_group).await?,
        None => Default::default(),
    };
    let ids: Vec<String> = state
        .iter()
        .filter(|((k, _), _)| k.to_string() == "m.room.member")
        .map(|(_, id)| id.to_string())
        .collect();
    let mut chunk = vec![];
    for ev in app.store.events(ids).await? {
        let m = ev.pdu.membership().unwrap_or_default();
        if let Some(want) = &req.body.membership
            && want.as_str() != m
        {
            continue;
        }
        if let Some(not) = &req.body.not_membership
            && not.as_str() == m
        {
            continue;
        }
        let json = app.client_event(&ev, req.session.as_ref()).await?;
        chunk.push(Raw::from_json(
            serde_json::value::to_raw_value(&json).map_err(|e| Error::Internal(e.to_string()))?,
        ));
    }
    Ok(get_member_events::v3::Response::new(chunk))
}

pub async fn joined_members(app: App, req: Ruma<joined_members::v3::Request>) -> Result<joined_members::v3::Response> {
    let user = req.user()?.clone();
    let room_id = &req.body.room_id;
    if app.membership(room_id, &user).await?.as_deref() != Some("join") {
        return Err(Error::forbidden("You are not a member of this room"));
    }
    let state = app.store.current_state_ids(room_id.to_string()).await?;
    let ids: Vec<String> = state
        .iter()
        .filter(|((k, _), _)| k.to_string() == "m.room.member")
        .map(|(_, id)| id.to_string())
        .collect();
    let mut joined = BTreeMap::new();
    for ev in app.store.events(ids).await? {
        if ev.pdu.membership().as_deref() != Some("join") {
            continue;
        }
        let Some(uid) = ev.pdu.state_key.as_deref().and_then(|u| OwnedUserId::try_from(u).ok()) else {
            continue;
        };
        let c = ev.pdu.content_value();
        let mut member = joined_members::v3::RoomMember::new();
        member.display_name = c.get("displayname").and_then(|v| v.as_str()).map(str::to_owned);
        member.avatar_url = c.get("avatar_url").and_then(|v| v.as_str()).map(Into::into);
        joined.insert(uid, member);
    }
    Ok(joined_members::v3::Response::new(joined))
}
