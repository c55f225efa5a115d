//! Membership endpoints.

use ruma::{
    OwnedRoomId,
    api::client::knock::knock_room,
    api::client::membership::{
        ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
        joined_members, joined_rooms, kick_user, leave_room, mutual_rooms, unban_user,
    },
    serde::Raw,
};

use crate::{
    App, Error, Result,
    ruma_wrapper::{JsonResponse, Ruma},
    services::timeline::parse_position,
};

pub async fn join_by_id(app: App, req: Ruma<join_room_by_id::v3::Request>) -> Result<join_room_by_id::v3::Response> {
    let session = req.session()?;
    let content = guest_join(&app, session, &req.body.room_id).await?;
    app.join_via(
        &req.body.room_id,
        &session.user_id,
        req.body.reason.clone(),
        &[],
        content,
    )
    .await?;
    Ok(join_room_by_id::v3::Response::new(req.body.room_id.clone()))
}

/// A guest joins only rooms of this server that admit guests
/// (`m.room.guest_access` is `can_join`), and says so in its member event.
async fn guest_join(
    app: &App,
    session: &crate::services::accounts::Session,
    room_id: &ruma::RoomId,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    if !session.is_guest {
        return Ok(None);
    }
    let admitted = app
        .state_content(room_id, "m.room.guest_access", "")
        .await
        .ok()
        .flatten()
        .is_some_and(|c| c.get("guest_access").and_then(|v| v.as_str()) == Some("can_join"));
    if !admitted {
        return Err(Error::forbidden("Guest access not allowed in this room"));
    }
    let mut content = serde_json::Map::new();
    content.insert("kind".into(), "guest".into());
    Ok(Some(content))
}

pub async fn join_by_id_or_alias(
    app: App,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let user = req.user()?.clone();
    let (room_id, mut servers) = app.resolve_room_and_servers(&req.body.room_id_or_alias).await?;
    servers.extend(req.body.via.iter().cloned());
    // The body's other keys go into the member event, as the reference
    // server keeps them.
    let mut content =
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&req.raw_body).unwrap_or_default();
    for key in ["reason", "third_party_signed", "membership", "kind"] {
        content.remove(key);
    }
    if let Some(guest) = guest_join(&app, req.session()?, &room_id).await? {
        content.extend(guest);
    }
    app.join_via(&room_id, &user, req.body.reason.clone(), &servers, Some(content))
        .await?;
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
    let own = app
        .store
        .current_state_event(req.body.room_id.to_string(), "m.room.member".into(), user.to_string())
        .await?;
    let membership = own.as_ref().and_then(|e| e.pdu.membership());
    // An invite or a knock for a room this server does not hold (an
    // outlier: no timeline here) is declined through the room's servers,
    // or here alone when they cannot be reached.
    if matches!(membership.as_deref(), Some("invite") | Some("knock"))
        && own.as_ref().is_some_and(|e| e.stream_pos <= 0)
        && !app.has_local_member(&req.body.room_id).await?
    {
        app.decline_remote(&req.body.room_id, &user, req.body.reason.clone())
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
    // No membership, whether or not the room exists: the same 403, so that
    // the answer does not tell which rooms exist.
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

/// The room's joined members with their names and avatars (`null` when
/// unset: clients read both keys). For members, and for anyone when the
/// room is world-readable (room previews); not for former members.
pub async fn joined_members(app: App, req: Ruma<joined_members::v3::Request>) -> Result<JsonResponse> {
    let user = req.user()?.clone();
    let room_id = &req.body.room_id;
    match app.membership(room_id, &user).await?.as_deref() {
        Some("join") => {}
        Some("leave") | Some("ban") => return Err(Error::forbidden("You are not a member of this room")),
        _ => {
            // Not a member: the current state, only if world-readable.
            crate::api::client::state::readable_state(&app, room_id, &user).await?;
        }
    }
    let state = app.store.current_state_ids(room_id.to_string()).await?;
    let ids: Vec<String> = state
        .iter()
        .filter(|((k, _), _)| k.to_string() == "m.room.member")
        .map(|(_, id)| id.to_string())
        .collect();
    let mut joined = serde_json::Map::new();
    for ev in app.store.events(ids).await? {
        if ev.pdu.membership().as_deref() != Some("join") {
            continue;
        }
        let Some(uid) = ev.pdu.state_key.clone() else { continue };
        let c = ev.pdu.content_value();
        let text = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        joined.insert(
            uid,
            serde_json::json!({ "display_name": text("displayname"), "avatar_url": text("avatar_url") }),
        );
    }
    Ok(JsonResponse(serde_json::json!({ "joined": joined })))
}

/// How many rooms one page of `mutual_rooms` lists.
const MUTUAL_ROOMS_PAGE: usize = 100;

/// `GET /mutual_rooms?user_id=` (MSC2666): the rooms the caller and
/// another user are both joined to, by room ID, a hundred at a time. The
/// page token is the last room ID of the previous page; it is read as
/// `from` (the stable path) or `batch_token` (the unstable one), and given
/// back under both names.
pub async fn mutual_rooms(app: App, req: Ruma<mutual_rooms::unstable::Request>) -> Result<JsonResponse> {
    let user = req.user()?;
    let other = &req.body.user_id;
    if other == user {
        return Err(Error::invalid_param("You share every room with yourself"));
    }
    let after = req.query_param("from").or_else(|| req.body.batch_token.clone());
    let joined = |rows: Vec<missive_store::Membership>| -> std::collections::BTreeSet<String> {
        rows.into_iter()
            .filter(|m| m.membership == "join")
            .map(|m| m.room_id)
            .collect()
    };
    let mine = joined(app.store.memberships(user.to_string()).await?);
    let theirs = joined(app.store.memberships(other.to_string()).await?);
    let shared: Vec<&String> = mine
        .intersection(&theirs)
        .filter(|r| after.as_ref().is_none_or(|a| r.as_str() > a.as_str()))
        .collect();
    let page: Vec<&String> = shared.iter().take(MUTUAL_ROOMS_PAGE).copied().collect();
    let mut body = serde_json::json!({ "joined": page, "count": page.len() });
    if shared.len() > page.len()
        && let Some(last) = page.last()
    {
        body["next_batch"] = last.as_str().into();
        body["next_batch_token"] = last.as_str().into();
    }
    Ok(JsonResponse(body))
}
