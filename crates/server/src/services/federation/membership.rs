//! Joining, leaving and inviting across servers: both halves of the
//! spec's make_join/send_join, make_leave/send_leave and invite v2.

use std::collections::{HashMap, HashSet};

use missive_core::{
    auth::{self, StateMap},
    builder::{NewEvent, Prev, build_pdu},
    pdu::Pdu,
};
use missive_store::{NewRoom, NewRoomEvent, StoreError, federation::RemoteAppend};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomId, RoomVersionId, ServerName, UserId,
    api::federation::backfill::get_backfill,
    api::federation::membership::{
        RawStrippedState, create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
        prepare_knock_event, prepare_leave_event,
    },
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Value, json, value::RawValue as RawJsonValue};

use crate::{
    App, Error, Result,
    services::rooms::{RoomVersion, Target},
};

/// How many events of a room's history are fetched when joining it.
const HISTORY_ON_JOIN: u32 = 50;

/// The room versions this server can join.
pub fn supported_versions() -> Vec<RoomVersionId> {
    missive_core::SUPPORTED_ROOM_VERSIONS
        .iter()
        .filter_map(|v| RoomVersionId::try_from(*v).ok())
        .collect()
}

/// Stripped state events (as JSON text) from the PDUs or stripped events
/// another server sent with an invite or a knock.
fn stripped_of(state: &[RawStrippedState]) -> String {
    let stripped: Vec<Value> = state
        .iter()
        .filter_map(|s| {
            let raw = match s {
                RawStrippedState::Pdu(p) => p.get(),
                #[allow(deprecated)]
                RawStrippedState::Stripped(r) => r.json().get(),
                #[allow(unreachable_patterns)]
                _ => return None,
            };
            let v: Value = serde_json::from_str(raw).ok()?;
            Some(json!({
                "type": v.get("type")?,
                "state_key": v.get("state_key")?,
                "sender": v.get("sender")?,
                "content": v.get("content")?,
            }))
        })
        .collect();
    Value::from(stripped).to_string()
}

/// `M_INCOMPATIBLE_ROOM_VERSION` for a room of `version`.
fn incompatible_room_version(version: &RoomVersionId) -> Error {
    Error::Matrix {
        status: http::StatusCode::BAD_REQUEST,
        errcode: "M_INCOMPATIBLE_ROOM_VERSION",
        message: format!("Room version {version} is not supported by both servers"),
        extra: Some(
            [("room_version".to_owned(), Value::from(version.to_string()))]
                .into_iter()
                .collect(),
        ),
    }
}

fn remote_error(e: crate::services::federation::incoming::PduRejection) -> Error {
    use crate::services::federation::incoming::PduRejection;
    match e {
        PduRejection::Invalid(m) => Error::bad_json(m),
        PduRejection::Internal(m) => Error::Internal(m),
        PduRejection::UnknownRoom => Error::not_found("Unknown room"),
        e => Error::forbidden(e.to_string()),
    }
}

/// The fields of a make_join/make_leave template this server builds on.
#[derive(serde::Deserialize)]
struct Template {
    room_id: OwnedRoomId,
    #[serde(default, deserialize_with = "missive_core::pdu::event_refs_with_hashes")]
    prev_events: Vec<(OwnedEventId, Option<String>)>,
    #[serde(default, deserialize_with = "missive_core::pdu::event_refs_with_hashes")]
    auth_events: Vec<(OwnedEventId, Option<String>)>,
    #[serde(default)]
    depth: u64,
    #[serde(default)]
    content: serde_json::Map<String, Value>,
}

impl App {
    // ---- This server's users in rooms held elsewhere ----

    /// Our user's membership event on another server's make_join/leave/knock
    /// template, signed by this server.
    fn member_event_from_template(
        &self,
        version: &RoomVersion,
        room_id: &RoomId,
        user: &UserId,
        content: Value,
        template: Template,
    ) -> Result<Pdu> {
        // Versions 1 and 2 name each event with its hashes: the resident
        // server's are kept as they came.
        let ref_hashes = template
            .prev_events
            .iter()
            .chain(&template.auth_events)
            .filter_map(|(id, h)| Some((id.clone(), h.clone()?)))
            .collect();
        build_pdu(
            &version.rules,
            self.server_name.as_str(),
            &self.key,
            user,
            NewEvent::state(TimelineEventType::RoomMember, user.as_str(), content),
            Prev {
                room_id: Some(room_id),
                prev_events: template.prev_events.into_iter().map(|(id, _)| id).collect(),
                auth_events: template.auth_events.into_iter().map(|(id, _)| id).collect(),
                depth: template.depth,
                ref_hashes,
            },
            MilliSecondsSinceUnixEpoch::now(),
        )
        .map_err(|e| Error::bad_json(e.to_string()))
    }

    /// Joins `user` to a room through one of `servers` (make_join, then
    /// send_join), storing the room's state as received.
    pub async fn join_remote(&self, room_id: &RoomId, user: &UserId, servers: &[OwnedServerName]) -> Result<()> {
        if !self.federation_enabled() {
            return Err(Error::not_found("Unknown room"));
        }
        let mut last = Error::not_found("No server could be asked to join this room");
        for server in servers.iter().filter(|s| **s != self.server_name) {
            match self.join_through(room_id, user, server).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(room = %room_id, "joining through {server} failed: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn join_through(&self, room_id: &RoomId, user: &UserId, server: &ServerName) -> Result<()> {
        let mut req = prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        req.ver = supported_versions();
        let res = self.federation_request(server, req).await?;
        let version_id = res.room_version.unwrap_or(RoomVersionId::V1);
        let version = RoomVersion::parse(version_id.as_str())?;
        let mut template: Template =
            serde_json::from_str(res.event.get()).map_err(|e| Error::bad_json(format!("join template: {e}")))?;
        if template.room_id != room_id {
            return Err(Error::bad_json("join template for another room"));
        }
        let mut content = Value::Object(std::mem::take(&mut template.content));
        content["membership"] = "join".into();
        self.add_profile(user, &mut content).await?;
        let pdu = self.member_event_from_template(&version, room_id, user, content, template)?;
        let send = create_join_event::v2::Request::new(room_id.to_owned(), pdu.event_id.clone(), pdu.json.clone());
        let res = self.federation_request(server, send).await?.room_state;
        // A restricted join comes back signed by the resident server too.
        let join = match &res.event {
            Some(ev) => {
                let signed = self.verify_pdu(&version, room_id, ev).await.map_err(remote_error)?;
                if signed.event_id != pdu.event_id {
                    return Err(Error::bad_json("send_join returned another event"));
                }
                signed
            }
            None => pdu,
        };

        // The room's state and auth chain, each event checked.
        let mut events: HashMap<OwnedEventId, Pdu> = HashMap::new();
        for raw in &res.auth_chain {
            match self.verify_pdu(&version, room_id, raw).await {
                Ok(p) => {
                    events.insert(p.event_id.clone(), p);
                }
                Err(e) => tracing::info!(room = %room_id, "auth chain event from {server} refused: {e}"),
            }
        }
        let mut state = StateMap::new();
        for raw in &res.state {
            match self.verify_pdu(&version, room_id, raw).await {
                Ok(p) => {
                    if let Some(sk) = &p.state_key {
                        state.insert((p.kind.to_string().into(), sk.clone()), p.event_id.clone());
                    }
                    events.insert(p.event_id.clone(), p);
                }
                Err(e) => tracing::info!(room = %room_id, "state event from {server} refused: {e}"),
            }
        }
        let create = state
            .get(&(StateEventType::RoomCreate, String::new()))
            .and_then(|id| events.get(id))
            .ok_or_else(|| Error::bad_json("the room state has no create event"))?
            .clone();
        auth::check(&version.rules, &join, &state, &events)
            .map_err(|r| Error::forbidden(format!("the join is not allowed by the room's state: {r}")))?;
        let new_room = NewRoom {
            room_version: version.id.to_string(),
            creator: create.sender.to_string(),
        };
        let _guard = self.room_locks.lock(room_id, &self.store).await?;
        self.store
            .store_outliers(events.values().cloned().collect(), Some(new_room.clone()))
            .await?;
        // Recent history, so that the room does not start at the join for
        // members the room's history visibility lets read it.
        let history = self
            .history_before(&version, room_id, server, &join.prev_events, &create)
            .await;
        if !history.is_empty() {
            self.store.append_history(history, state.clone()).await?;
        }
        let mut after = state.clone();
        after.insert((StateEventType::RoomMember, user.to_string()), join.event_id.clone());
        let append = RemoteAppend {
            event: NewRoomEvent {
                pdu: join.clone(),
                unsigned: None,
                txn: None,
                rel_type: None,
                relates_to: None,
                new_room: Some(new_room),
                media_refs: vec![],
                federate_to: vec![],
            },
            state_before: state,
            current: Some(after),
        };
        match self.store.append_remote_event(append).await {
            Ok(_) | Err(StoreError::Exists) => {}
            Err(e) => return Err(e.into()),
        }
        self.notify();
        Ok(())
    }

    /// Up to [`HISTORY_ON_JOIN`] events before `latest`, from `server`'s
    /// `/backfill`, oldest first: each signed, hashed and allowed by its
    /// own auth events. A failure only means less history.
    async fn history_before(
        &self,
        version: &RoomVersion,
        room_id: &RoomId,
        server: &ServerName,
        latest: &[OwnedEventId],
        create: &Pdu,
    ) -> Vec<NewRoomEvent> {
        let req = get_backfill::v1::Request::new(room_id.to_owned(), latest.to_vec(), HISTORY_ON_JOIN.into());
        let pdus = match self.federation_request(server, req).await {
            Ok(r) => r.pdus,
            Err(e) => {
                tracing::info!(room = %room_id, "no history from {server}: {e}");
                return vec![];
            }
        };
        let mut verified: Vec<Pdu> = vec![];
        for raw in pdus.iter().take(HISTORY_ON_JOIN as usize) {
            match self.verify_pdu(version, room_id, raw).await {
                Ok(p) => verified.push(p),
                Err(e) => tracing::info!(room = %room_id, "history event from {server} refused: {e}"),
            }
        }
        let by_id: HashMap<OwnedEventId, Pdu> = verified.iter().map(|p| (p.event_id.clone(), p.clone())).collect();
        let mut out = vec![];
        for p in verified {
            let ids: Vec<String> = p.auth_events.iter().map(|e| e.to_string()).collect();
            let mut auth: HashMap<OwnedEventId, Pdu> = match self.store.events(ids).await {
                Ok(evs) => evs.into_iter().map(|e| (e.pdu.event_id.clone(), e.pdu)).collect(),
                Err(_) => continue,
            };
            for a in &p.auth_events {
                if let Some(e) = by_id.get(a) {
                    auth.insert(a.clone(), e.clone());
                }
            }
            let mut auth_state: StateMap = auth
                .values()
                .filter_map(|e| {
                    e.state_key
                        .as_ref()
                        .map(|sk| ((e.kind.to_string().into(), sk.clone()), e.event_id.clone()))
                })
                .collect();
            auth_state
                .entry((StateEventType::RoomCreate, String::new()))
                .or_insert(create.event_id.clone());
            auth.insert(create.event_id.clone(), create.clone());
            if let Err(reason) = auth::check(&version.rules, &p, &auth_state, &auth) {
                tracing::info!(room = %room_id, event = %p.event_id, "history event not allowed: {reason}");
                continue;
            }
            let (rel_type, relates_to) = crate::services::rooms::relation_of(&p);
            out.push(NewRoomEvent {
                pdu: p,
                unsigned: None,
                txn: None,
                rel_type,
                relates_to,
                new_room: None,
                media_refs: vec![],
                federate_to: vec![],
            });
        }
        out.sort_by(|a, b| {
            a.pdu
                .depth
                .cmp(&b.pdu.depth)
                .then(a.pdu.origin_server_ts.cmp(&b.pdu.origin_server_ts))
                .then_with(|| a.pdu.event_id.cmp(&b.pdu.event_id))
        });
        out
    }

    /// Declines an invite (or withdraws a knock) for a room this server
    /// is not in: through the inviting server when it answers, else here
    /// alone (an out-of-band leave, as the reference server does), so that
    /// a user is never stuck with an invite nobody can take back.
    pub async fn decline_remote(&self, room_id: &RoomId, user: &UserId, reason: Option<String>) -> Result<()> {
        let own = self
            .store
            .current_state_event(room_id.to_string(), "m.room.member".into(), user.to_string())
            .await?
            .ok_or_else(|| Error::forbidden("You are not invited to this room"))?;
        if own.pdu.membership().as_deref() == Some("invite") && self.federation_enabled() {
            match self.reject_remote_invite(room_id, user, reason.clone(), &own).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(room = %room_id, "declining the invite through its server failed, declining here: {e}")
                }
            }
        }
        let version = self
            .store
            .room(room_id.to_string())
            .await?
            .map(|r| r.room_version)
            .unwrap_or_else(|| "1".to_owned());
        let rules = RoomVersion::parse(&version)?.rules;
        let mut content = json!({ "membership": "leave" });
        if let Some(r) = reason {
            content["reason"] = r.into();
        }
        let mut auth_events = own.pdu.auth_events.clone();
        auth_events.push(own.pdu.event_id.clone());
        let ref_hashes = self.reference_hashes(&rules, auth_events.iter()).await?;
        let pdu = build_pdu(
            &rules,
            self.server_name.as_str(),
            &self.key,
            user,
            NewEvent::state(TimelineEventType::RoomMember, user.as_str(), content),
            Prev {
                room_id: Some(room_id),
                prev_events: vec![own.pdu.event_id.clone()],
                auth_events,
                depth: own.pdu.depth + 1,
                ref_hashes,
            },
            MilliSecondsSinceUnixEpoch::now(),
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        self.store.set_remote_membership(pdu, version, None).await?;
        self.notify();
        Ok(())
    }

    /// Rejects an invite to a room this server is not in (make_leave and
    /// send_leave through the inviting server).
    async fn reject_remote_invite(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<String>,
        invite: &missive_store::StoredEvent,
    ) -> Result<()> {
        let server = invite.pdu.sender.server_name().to_owned();
        let res = self
            .federation_request(
                &server,
                prepare_leave_event::v1::Request::new(room_id.to_owned(), user.to_owned()),
            )
            .await?;
        let version = RoomVersion::parse(res.room_version.as_ref().map_or("1", |v| v.as_str()))?;
        let template: Template =
            serde_json::from_str(res.event.get()).map_err(|e| Error::bad_json(format!("leave template: {e}")))?;
        let mut content = json!({ "membership": "leave" });
        if let Some(r) = reason {
            content["reason"] = r.into();
        }
        let pdu = self.member_event_from_template(&version, room_id, user, content, template)?;
        let send = create_leave_event::v2::Request::new(room_id.to_owned(), pdu.event_id.clone(), pdu.json.clone());
        self.federation_request(&server, send).await?;
        let version = self
            .store
            .room(room_id.to_string())
            .await?
            .map(|r| r.room_version)
            .unwrap_or_default();
        self.store.set_remote_membership(pdu, version, None).await?;
        self.notify();
        Ok(())
    }

    /// Has the invitee's server sign an invite of one of its users; returns
    /// the event with both signatures, which is what the room stores.
    pub async fn invite_remote(&self, version: &RoomVersion, pdu: Pdu) -> Result<Pdu> {
        let invitee = pdu
            .state_key
            .as_deref()
            .and_then(|s| <&UserId>::try_from(s).ok())
            .ok_or_else(|| Error::bad_json("invite without a user"))?;
        let server = invitee.server_name().to_owned();
        let invite_state = self.invite_state(&pdu.room_id, &pdu.sender).await?;
        let req = create_invite::v2::Request::new(
            pdu.room_id.clone(),
            pdu.event_id.clone(),
            version.id.clone(),
            pdu.json.clone(),
            invite_state,
        );
        let res = self.federation_request(&server, req).await?;
        let signed = self
            .verify_pdu(version, &pdu.room_id, &res.event)
            .await
            .map_err(remote_error)?;
        if signed.event_id != pdu.event_id || signed.content.get() != pdu.content.get() {
            return Err(Error::forbidden(format!(
                "{server} returned another event for the invite"
            )));
        }
        let signed_obj: CanonicalJsonObject =
            serde_json::from_str(signed.json.get()).map_err(|e| Error::Internal(e.to_string()))?;
        let has_sig = matches!(
            signed_obj.get("signatures"),
            Some(CanonicalJsonValue::Object(s)) if s.contains_key(server.as_str())
        );
        if !has_sig {
            return Err(Error::forbidden(format!("{server} did not sign the invite")));
        }
        Ok(signed)
    }

    /// The room state shown to someone invited or knocking, as full PDUs
    /// (the form the spec requires since Matrix 1.16), with `sender`'s membership.
    pub async fn invite_state(&self, room_id: &RoomId, sender: &UserId) -> Result<Vec<RawStrippedState>> {
        let state = self.store.current_state_ids(room_id.to_string()).await?;
        let mut ids: Vec<String> = crate::services::sync::STRIPPED_STATE
            .iter()
            .filter_map(|t| state.get(&((*t).into(), String::new())))
            .map(|e| e.to_string())
            .collect();
        if let Some(m) = state.get(&(StateEventType::RoomMember, sender.to_string())) {
            ids.push(m.to_string());
        }
        Ok(self
            .store
            .events(ids)
            .await?
            .into_iter()
            .map(|e| RawStrippedState::Pdu(e.pdu.json))
            .collect())
    }

    /// Knocks on a room this server is not in (make_knock, send_knock).
    pub async fn knock_remote(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<String>,
        servers: &[OwnedServerName],
    ) -> Result<()> {
        let mut last = Error::not_found("No server could be asked to knock on this room");
        for server in servers.iter().filter(|s| **s != self.server_name) {
            match self.knock_through(room_id, user, reason.clone(), server).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn knock_through(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<String>,
        server: &ServerName,
    ) -> Result<()> {
        let mut req = prepare_knock_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        req.ver = supported_versions();
        let res = self.federation_request(server, req).await?;
        let version = RoomVersion::parse(res.room_version.as_str())?;
        let template: Template =
            serde_json::from_str(res.event.get()).map_err(|e| Error::bad_json(format!("knock template: {e}")))?;
        let mut content = json!({ "membership": "knock" });
        if let Some(r) = reason {
            content["reason"] = r.into();
        }
        self.add_profile(user, &mut content).await?;
        let pdu = self.member_event_from_template(&version, room_id, user, content, template)?;
        let send = create_knock_event::v1::Request::new(room_id.to_owned(), pdu.event_id.clone(), pdu.json.clone());
        let res = self.federation_request(server, send).await?;
        self.store
            .set_remote_membership(pdu, version.id.to_string(), Some(stripped_of(&res.knock_room_state)))
            .await?;
        self.notify();
        Ok(())
    }

    // ---- Other servers' users in rooms this server is in ----

    /// Builds an unsigned membership event for a user of another server,
    /// checked against the room's current state (make_join, make_leave).
    pub async fn membership_template(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
        accepted_versions: &[RoomVersionId],
    ) -> Result<(RoomVersionId, Box<RawJsonValue>)> {
        if user.server_name() != origin {
            return Err(Error::forbidden("The user is not of the asking server"));
        }
        self.check_server_acl(room_id, origin).await?;
        let version = self.room_version(room_id).await?;
        if !accepted_versions.is_empty() && !accepted_versions.contains(&version.id) {
            return Err(incompatible_room_version(&version.id));
        }
        // Only a server with a member in the room knows its state well
        // enough to vouch for a template.
        if !self.has_local_member(room_id).await? {
            return Err(Error::not_found("This server is not in the room"));
        }
        let mut content = json!({ "membership": membership });
        if membership == "join" {
            self.authorise_restricted_join(room_id, user, &mut content).await?;
        }
        // Only a template: nothing is stored, so no room lock; send_join
        // checks the signed event again.
        let (pdu, _) = self
            .build_local(
                Target::Room(room_id, &version),
                user,
                NewEvent::state(TimelineEventType::RoomMember, user.as_str(), content),
            )
            .await?;
        let mut obj: CanonicalJsonObject =
            serde_json::from_str(pdu.json.get()).map_err(|e| Error::Internal(e.to_string()))?;
        obj.remove("signatures");
        obj.remove("hashes");
        obj.remove("event_id");
        Ok((version.id, super::raw_json(&obj)?))
    }

    pub(crate) async fn has_local_member(&self, room_id: &RoomId) -> Result<bool> {
        self.server_in_room(room_id, &self.server_name).await
    }

    /// A membership event of another server's user, signed by it
    /// (send_join, send_leave): checked and appended like any PDU, then
    /// sent by this (resident) server to the room's other servers.
    /// Returns the stored event and the room state before it.
    pub async fn accept_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        raw: &RawJsonValue,
        membership: &str,
    ) -> Result<(Pdu, StateMap)> {
        self.check_server_acl(room_id, origin).await?;
        let version = self.room_version(room_id).await?;
        let mut pdu = self.verify_pdu(&version, room_id, raw).await.map_err(remote_error)?;
        if pdu.event_id != event_id {
            return Err(Error::bad_json("The event ID does not match the event"));
        }
        if pdu.kind != TimelineEventType::RoomMember
            || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
            || pdu.membership().as_deref() != Some(membership)
            || pdu.sender.server_name() != origin
        {
            return Err(Error::bad_json(format!(
                "Not a {membership} event of a user of {origin}"
            )));
        }
        // A restricted join names one of our users as having let it in:
        // this server signs for them.
        if membership == "join"
            && let Some(via) = pdu
                .content_value()
                .get("join_authorised_via_users_server")
                .and_then(Value::as_str)
            && via.ends_with(&format!(":{}", self.server_name))
        {
            let mut obj: CanonicalJsonObject =
                serde_json::from_str(pdu.json.get()).map_err(|e| Error::Internal(e.to_string()))?;
            ruma::signatures::sign_json(self.server_name.as_str(), &self.key, &mut obj)
                .map_err(|e| Error::Internal(e.to_string()))?;
            pdu = Pdu::from_canonical(pdu.event_id.clone(), Some(room_id), &obj)
                .map_err(|e| Error::Internal(e.to_string()))?;
        }
        let _guard = self.room_locks.lock(room_id, &self.store).await?;
        let state_before = self.store.current_state_ids(room_id.to_string()).await?;
        let mut others: Vec<OwnedServerName> = self.servers_in_room(room_id).await?;
        others.retain(|s| s != origin);
        self.process_pdu(&version, pdu.clone(), origin, false, true, &others)
            .await
            .map_err(remote_error)?;
        let stored = self
            .store
            .event(pdu.event_id.to_string())
            .await?
            .filter(|e| e.stream_pos > 0)
            .ok_or_else(|| Error::forbidden("The event was not accepted into the room"))?;
        Ok((stored.pdu, state_before))
    }

    /// The events of a state with their whole auth chain, for send_join.
    pub async fn state_and_auth_chain(
        &self,
        state: &StateMap,
        extra: &[OwnedEventId],
    ) -> Result<(Vec<Box<RawJsonValue>>, Vec<Box<RawJsonValue>>)> {
        let ids: Vec<String> = state.values().map(|e| e.to_string()).collect();
        let state_events = self.store.events(ids).await?;
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut chain = vec![];
        let mut wanted: Vec<OwnedEventId> = state_events
            .iter()
            .flat_map(|e| e.pdu.auth_events.iter().cloned())
            .chain(extra.iter().cloned())
            .collect();
        while !wanted.is_empty() {
            let batch: Vec<String> = wanted
                .drain(..)
                .filter(|e| seen.insert(e.clone()))
                .map(|e| e.to_string())
                .collect();
            if batch.is_empty() {
                break;
            }
            for ev in self.store.events(batch).await? {
                wanted.extend(ev.pdu.auth_events.iter().filter(|a| !seen.contains(*a)).cloned());
                chain.push(ev.pdu.json);
            }
        }
        Ok((state_events.into_iter().map(|e| e.pdu.json).collect(), chain))
    }

    /// An invite of one of our users from another server: signed by this
    /// server and, when this server is not in the room, kept for the user.
    pub async fn accept_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        version_id: &RoomVersionId,
        raw: &RawJsonValue,
        invite_state: &[RawStrippedState],
    ) -> Result<Box<RawJsonValue>> {
        let version = RoomVersion::parse(version_id.as_str()).map_err(|_| incompatible_room_version(version_id))?;
        if self.store.room(room_id.to_string()).await?.is_some() {
            self.check_server_acl(room_id, origin).await?;
        }
        let pdu = self.verify_pdu(&version, room_id, raw).await.map_err(remote_error)?;
        if pdu.event_id != event_id {
            return Err(Error::bad_json("The event ID does not match the event"));
        }
        let invitee = pdu
            .state_key
            .as_deref()
            .and_then(|s| <&UserId>::try_from(s).ok())
            .ok_or_else(|| Error::bad_json("Not an invite"))?;
        if pdu.kind != TimelineEventType::RoomMember
            || pdu.membership().as_deref() != Some("invite")
            || pdu.sender.server_name() != origin
        {
            return Err(Error::bad_json("Not an invite from a user of the asking server"));
        }
        if !self.is_local(invitee)
            || self
                .store
                .user(invitee.to_string())
                .await?
                .is_none_or(|u| u.deactivated)
        {
            return Err(Error::not_found("Unknown user"));
        }
        let mut obj: CanonicalJsonObject =
            serde_json::from_str(pdu.json.get()).map_err(|e| Error::Internal(e.to_string()))?;
        ruma::signatures::sign_json(self.server_name.as_str(), &self.key, &mut obj)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let signed = Pdu::from_canonical(pdu.event_id.clone(), Some(room_id), &obj)
            .map_err(|e| Error::Internal(e.to_string()))?;
        if !self.has_local_member(room_id).await? {
            self.store
                .set_remote_membership(signed.clone(), version.id.to_string(), Some(stripped_of(invite_state)))
                .await?;
            self.notify();
        }
        super::raw_json(&obj)
    }
}
