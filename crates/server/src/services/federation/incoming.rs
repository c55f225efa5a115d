//! PDUs from other servers: the checks of the spec's "Checks performed on
//! receipt of a PDU", in order, then persistence.
//!
//! 1. A valid event for the room's version, whose event ID is its hash.
//! 2. Signatures of the servers that must sign it, and its content hash.
//! 3. Authorised by its own auth events.
//! 4. Authorised by the state before it (its `prev_events`' states,
//!    resolved); missing `prev_events` are first asked of the sender.
//! 5. Authorised by the room's current state, or soft-failed: kept, but
//!    neither shown to clients nor used as a forward extremity.
//!
//! An event failing 1–4 is rejected: recorded, and nothing else changes.

use std::collections::HashMap;

use missive_core::{
    auth::{self, StateMap},
    pdu::Pdu,
    visibility::HistoryVisibility,
};
use missive_store::{NewRoomEvent, StoreError, federation::RemoteAppend};
use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedRoomId, RoomId, ServerName, UInt,
    api::federation::event::{get_event, get_missing_events, get_room_state},
    events::StateEventType,
    signatures::Verified,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{App, Error, Result, services::rooms::RoomVersion};

/// At most this many missing prev_events have their state fetched.
const MAX_REMOTE_STATES: usize = 4;

/// The most events a newly joined server is sent to catch up.
const CATCH_UP_EVENTS: usize = 50;

/// How many missing events are asked for to fill one gap.
const MISSING_EVENTS_LIMIT: u32 = 50;

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PduRejection {
    #[error("{0}")]
    Invalid(String),
    #[error("signature check failed: {0}")]
    Signature(String),
    #[error("content hash check failed")]
    Hash,
    #[error("not allowed by its auth events: {0}")]
    AuthEvents(String),
    #[error("not allowed by the state before it: {0}")]
    StateBefore(String),
    #[error("unknown room")]
    UnknownRoom,
    #[error("server not allowed in the room: {0}")]
    Acl(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Not a verdict on the event: its past could not be had now, so it
    /// is not stored, nor marked rejected, and may come again.
    #[error("its past is unknown: {0}")]
    MissingPast(String),
}

impl From<Error> for PduRejection {
    fn from(e: Error) -> Self {
        PduRejection::Internal(e.to_string())
    }
}
impl From<StoreError> for PduRejection {
    fn from(e: StoreError) -> Self {
        PduRejection::Internal(e.to_string())
    }
}

/// The room ID a PDU names (v12 create events name none: they are never
/// received for a room that exists).
pub fn pdu_room_id(raw: &RawJsonValue) -> Option<OwnedRoomId> {
    #[derive(serde::Deserialize)]
    struct R {
        room_id: Option<OwnedRoomId>,
    }
    serde_json::from_str::<R>(raw.get()).ok()?.room_id
}

/// The event ID of a PDU (its reference hash, or the ID it carries in
/// versions 1 and 2), whether or not it checks out.
pub fn event_id_of(version: &RoomVersion, raw: &RawJsonValue) -> Option<OwnedEventId> {
    let mut obj: CanonicalJsonObject = serde_json::from_str(raw.get()).ok()?;
    obj.remove("unsigned");
    missive_core::pdu::event_id_for(&obj, &version.rules).ok()
}

impl App {
    /// Checks 1 and 2: parses a PDU of the room's version, derives its event
    /// ID and verifies the signatures and content hash.
    pub async fn verify_pdu(
        &self,
        version: &RoomVersion,
        room_id: &RoomId,
        raw: &RawJsonValue,
    ) -> Result<Pdu, PduRejection> {
        let mut obj: CanonicalJsonObject =
            serde_json::from_str(raw.get()).map_err(|e| PduRejection::Invalid(format!("not canonical JSON: {e}")))?;
        // `unsigned` is the sender's own annotation (age, …), not part of the event.
        obj.remove("unsigned");
        missive_core::limits::check(&obj).map_err(|e| PduRejection::Invalid(e.to_string()))?;
        missive_core::pdu::check_event_refs(&obj, &version.rules).map_err(|e| PduRejection::Invalid(e.to_string()))?;
        let event_id =
            missive_core::pdu::event_id_for(&obj, &version.rules).map_err(|e| PduRejection::Invalid(e.to_string()))?;
        let keys = self
            .public_keys_for(&obj)
            .await
            .map_err(|e| PduRejection::Signature(e.to_string()))?;
        match ruma::signatures::verify_event(&keys, &obj, &version.rules) {
            Ok(Verified::All) => {}
            // The spec redacts such an event; a closed federation rejects
            // it instead, so that a tampered message never reaches a room.
            Ok(Verified::Signatures) => return Err(PduRejection::Hash),
            Err(e) => return Err(PduRejection::Signature(e.to_string())),
        }
        let pdu =
            Pdu::from_canonical(event_id, Some(room_id), &obj).map_err(|e| PduRejection::Invalid(e.to_string()))?;
        if pdu.room_id != room_id {
            return Err(PduRejection::Invalid("PDU of another room".into()));
        }
        Ok(pdu)
    }

    /// Handles one PDU of a transaction from `origin`. Returns its event ID
    /// (when it has one) and the outcome.
    pub async fn handle_incoming_pdu(
        &self,
        origin: &ServerName,
        raw: &RawJsonValue,
    ) -> (Option<OwnedEventId>, Result<(), PduRejection>) {
        let Some(room_id) = pdu_room_id(raw) else {
            return (None, Err(PduRejection::Invalid("PDU without room_id".into())));
        };
        let version = match self.store.room(room_id.to_string()).await {
            Ok(Some(r)) => match RoomVersion::parse(&r.room_version) {
                Ok(v) => v,
                Err(e) => return (None, Err(e.into())),
            },
            Ok(None) => return (None, Err(PduRejection::UnknownRoom)),
            Err(e) => return (None, Err(e.into())),
        };
        // A room this server only holds an invite or knock for: its events
        // cannot be checked, and are not this server's business yet.
        match self.has_local_member(&room_id).await {
            Ok(true) => {}
            Ok(false) => return (event_id_of(&version, raw), Err(PduRejection::UnknownRoom)),
            Err(e) => return (event_id_of(&version, raw), Err(e.into())),
        }
        if let Err(e) = self.check_server_acl(&room_id, origin).await {
            return (event_id_of(&version, raw), Err(PduRejection::Acl(e.to_string())));
        }
        let pdu = match self.verify_pdu(&version, &room_id, raw).await {
            Ok(p) => p,
            Err(e) => return (event_id_of(&version, raw), Err(e)),
        };
        let id = pdu.event_id.clone();
        let guard = match self.room_locks.lock(&room_id, &self.store).await {
            Ok(g) => g,
            Err(e) => return (Some(id), Err(e.into())),
        };
        let res = self.process_pdu(&version, pdu, origin, true, true, &[]).await;
        drop(guard);
        (Some(id), res)
    }

    /// Checks 3 to 5 and persistence; the caller holds the room lock.
    /// `fill_gaps` asks `origin` for missing `prev_events` first; `live` is
    /// an event happening now (sent to us, or a join through us), not one
    /// fetched to fill a gap in the past.
    #[allow(clippy::too_many_arguments)]
    pub async fn process_pdu(
        &self,
        version: &RoomVersion,
        pdu: Pdu,
        origin: &ServerName,
        fill_gaps: bool,
        live: bool,
        forward_to: &[ruma::OwnedServerName],
    ) -> Result<(), PduRejection> {
        if let Some(ev) = self.store.event(pdu.event_id.to_string()).await?
            && ev.stream_pos > 0
        {
            return Ok(());
        }
        if let Some(reason) = self.store.rejection(pdu.event_id.to_string()).await? {
            return Err(PduRejection::Invalid(format!("rejected before: {reason}")));
        }
        let room_id = pdu.room_id.clone();

        // Missing prev_events: ask the sender for the events between what we
        // have and this one, oldest first, each going through these checks.
        let mut prevs = self.timeline_events(&pdu.prev_events).await?;
        if fill_gaps && prevs.len() < pdu.prev_events.len() {
            self.fill_gap(version, &pdu, origin).await;
            prevs = self.timeline_events(&pdu.prev_events).await?;
        }

        // 3. Auth events, fetched from the sender when missing.
        let auth_events = self.load_auth_events(version, &pdu, origin).await?;
        let auth_state: StateMap = auth_events
            .values()
            .filter_map(|p| {
                p.state_key
                    .as_ref()
                    .map(|sk| ((p.kind.to_string().into(), sk.clone()), p.event_id.clone()))
            })
            .collect();
        let mut loaded = auth_events;
        // From room version 12 the create event is implied by the room ID
        // and left out of `auth_events`; the rules still read it.
        let mut auth_state = auth_state;
        if let Some(create) = self.add_create_event(&room_id, &mut loaded).await? {
            auth_state
                .entry((StateEventType::RoomCreate, String::new()))
                .or_insert(create);
        }
        if let Err(reason) = auth::check(&version.rules, &pdu, &auth_state, &loaded) {
            return self.reject(&pdu, PduRejection::AuthEvents(reason)).await;
        }

        // 4. The state before the event.
        let mut states = self.states_after(&prevs).await?;
        // A prev_event still unknown after asking for the gap: its state
        // comes from the sender (`/state`), each event checked, so that
        // the other side of a fork is not left out of the resolution. An
        // event whose past cannot be had is not taken: checked against a
        // guess, it would let a server graft events onto any point of the
        // room and add forward extremities at will.
        let missing: Vec<&OwnedEventId> = pdu.prev_events.iter().filter(|p| !prevs.contains(p)).collect();
        if missing.len() > MAX_REMOTE_STATES {
            return Err(PduRejection::MissingPast(format!(
                "{} of its prev_events are unknown here",
                missing.len()
            )));
        }
        for missing in missing {
            match self.remote_state_after(version, &room_id, missing, origin).await {
                Ok(state) => states.push(state),
                Err(e) => {
                    tracing::info!(event = %pdu.event_id, prev = %missing, "state at a missing prev_event unavailable from {origin}: {e}");
                    return Err(PduRejection::MissingPast(format!(
                        "the state at its prev_event {missing} is unavailable"
                    )));
                }
            }
        }
        let state_before = if states.is_empty() {
            // No prev_events at all: only a create event, whose own checks
            // are its auth events'.
            StateMap::new()
        } else {
            self.resolve_states(version, states, &[]).await?
        };
        self.load_state_events(version, &state_before, &pdu, &mut loaded)
            .await?;
        if let Err(reason) = auth::check(&version.rules, &pdu, &state_before, &loaded) {
            return self.reject(&pdu, PduRejection::StateBefore(reason)).await;
        }

        // 5. Soft failure against the current state.
        let current = self.store.current_state_ids(room_id.to_string()).await?;
        let mut soft_failed = false;
        if current != state_before {
            self.load_state_events(version, &current, &pdu, &mut loaded).await?;
            if let Err(reason) = auth::check(&version.rules, &pdu, &current, &loaded) {
                tracing::info!(event = %pdu.event_id, %reason, "soft-failed event from {origin}");
                soft_failed = true;
            }
        }

        // The room's state after the new set of forward extremities.
        let new_current = if soft_failed {
            None
        } else {
            let mut after = state_before.clone();
            if let Some(sk) = &pdu.state_key {
                after.insert((pdu.kind.to_string().into(), sk.clone()), pdu.event_id.clone());
            }
            let others: Vec<OwnedEventId> = self
                .store
                .forward_extremities(room_id.to_string())
                .await?
                .0
                .into_iter()
                .filter(|e| !pdu.prev_events.contains(e))
                .collect();
            if others.is_empty() {
                Some(after)
            } else {
                tracing::debug!(event = %pdu.event_id, ?others, "resolving the room's state over its extremities");
                let mut states = self.states_after(&others).await?;
                states.push(after);
                // The event is not stored yet: resolution must still see it.
                Some(self.resolve_states(version, states, std::slice::from_ref(&pdu)).await?)
            }
        };
        tracing::debug!(event = %pdu.event_id, kind = %pdu.kind, soft_failed, prev = ?pdu.prev_events, "accepted event");
        let unsigned = pdu.state_key.as_ref().and_then(|sk| {
            state_before
                .get(&(pdu.kind.to_string().into(), sk.clone()))
                .and_then(|prev| loaded.get(prev))
                .map(|prev| {
                    serde_json::json!({
                        "prev_content": prev.content_value(),
                        "prev_sender": prev.sender,
                        "replaces_state": prev.event_id,
                    })
                })
        });
        // A server whose first user joins now: it cannot have seen what this
        // server's users sent while its join was on its way here.
        let in_state = new_current
            .as_ref()
            .zip(pdu.state_key.as_ref())
            .is_some_and(|(c, sk)| c.get(&(pdu.kind.to_string().into(), sk.clone())) == Some(&pdu.event_id));
        let joining_server = match (live && in_state, pdu.membership().as_deref(), pdu.state_key.as_deref()) {
            (true, Some("join"), Some(sk)) => match <&ruma::UserId>::try_from(sk) {
                Ok(u)
                    if !self.is_local(u)
                        && !self
                            .servers_in_room(&room_id)
                            .await?
                            .iter()
                            .any(|s| s == u.server_name()) =>
                {
                    Some(u.server_name().to_owned())
                }
                _ => None,
            },
            _ => None,
        };
        let (rel_type, relates_to) = crate::services::rooms::relation_of(&pdu);
        let append = RemoteAppend {
            event: NewRoomEvent {
                pdu: pdu.clone(),
                unsigned,
                txn: None,
                rel_type,
                relates_to,
                new_room: None,
                media_refs: vec![],
                federate_to: forward_to.iter().map(|s| s.to_string()).collect(),
            },
            state_before,
            current: new_current,
        };
        let position = match self.store.append_remote_event(append).await {
            Ok(p) => Some(p),
            Err(StoreError::Exists) => None,
            Err(e) => return Err(e.into()),
        };
        if let (Some(server), Some(at)) = (joining_server, position)
            && let Err(e) = self.catch_up_joined_server(&room_id, &server, &pdu, at).await
        {
            tracing::warn!(room = %room_id, %server, "a newly joined server was not caught up: {e}");
        }
        if !forward_to.is_empty() {
            self.wake_sender();
        }
        if in_state && pdu.kind == ruma::events::TimelineEventType::RoomGuestAccess {
            self.remove_guests_if_barred(&room_id);
        }
        if !soft_failed {
            if let Some(target) = &pdu.redacts {
                self.apply_redaction(version, &pdu, target).await?;
            }
            self.notify();
            self.queue_push(&pdu);
        }
        Ok(())
    }

    /// Sends a server that just joined the room the events of this
    /// server's users it cannot have seen: those stored here between the
    /// newest of its join's `prev_events` and the join itself (at most
    /// [`CATCH_UP_EVENTS`]), where the room's history is shared. Without
    /// this, a message sent here while the join was being relayed went only
    /// to the servers in the room before it, and never to the new one.
    async fn catch_up_joined_server(
        &self,
        room_id: &RoomId,
        server: &ServerName,
        join: &Pdu,
        join_at: i64,
    ) -> Result<(), PduRejection> {
        let prevs = self
            .store
            .events(join.prev_events.iter().map(|e| e.to_string()).collect())
            .await?;
        let Some(from) = prevs.iter().map(|e| e.stream_pos).filter(|p| *p > 0).max() else {
            return Ok(());
        };
        let between = self
            .store
            .room_events(
                room_id.to_string(),
                from,
                Some(join_at - 1),
                missive_store::Direction::Forward,
                CATCH_UP_EVENTS,
            )
            .await?;
        let joiner = <&ruma::UserId>::try_from(join.state_key.as_deref().unwrap_or_default())
            .map_err(|e| PduRejection::Invalid(e.to_string()))?;
        let mut ours = vec![];
        for e in between.into_iter().filter(|e| self.is_local(&e.pdu.sender)) {
            // What the new server's users may not read is not sent; they
            // may still ask for it, and are then answered by those rules.
            let (visibility, _) = self.visibility_at_group(joiner, e.state_group).await?;
            if matches!(visibility, HistoryVisibility::Shared | HistoryVisibility::WorldReadable) {
                ours.push(e.pdu.event_id.to_string());
            }
        }
        if !ours.is_empty() {
            tracing::debug!(room = %room_id, %server, events = ours.len(), "catching a newly joined server up");
            self.store.queue_pdus_for(server.to_string(), ours).await?;
            self.wake_sender();
        }
        Ok(())
    }

    /// The room state after `event_id` as `origin` holds it: `/state` at
    /// the event (the state before it) plus the event itself, every event
    /// verified and kept as an outlier.
    async fn remote_state_after(
        &self,
        version: &RoomVersion,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        origin: &ServerName,
    ) -> Result<StateMap, PduRejection> {
        let res = self
            .federation_request(
                origin,
                get_room_state::v1::Request::new(event_id.clone(), room_id.to_owned()),
            )
            .await?;
        let prev = self
            .federation_request(origin, get_event::v1::Request::new(event_id.clone()))
            .await?;
        let prev = self.verify_pdu(version, room_id, &prev.pdu).await?;
        if prev.event_id != *event_id {
            return Err(PduRejection::Invalid(format!(
                "{origin} sent another event for {event_id}"
            )));
        }
        let mut state = StateMap::new();
        let mut keep = vec![];
        let chain_len = res.auth_chain.len();
        for (i, raw) in res.auth_chain.iter().chain(res.pdus.iter()).enumerate() {
            let in_state = i >= chain_len;
            match self.verify_pdu(version, room_id, raw).await {
                Ok(p) => {
                    if in_state && let Some(sk) = &p.state_key {
                        state.insert((p.kind.to_string().into(), sk.clone()), p.event_id.clone());
                    }
                    keep.push(p);
                }
                Err(e) => tracing::info!(room = %room_id, "state event from {origin} refused: {e}"),
            }
        }
        if let Some(sk) = &prev.state_key {
            state.insert((prev.kind.to_string().into(), sk.clone()), prev.event_id.clone());
        }
        keep.push(prev);
        self.store.store_outliers(keep, None).await?;
        Ok(state)
    }

    async fn reject(&self, pdu: &Pdu, why: PduRejection) -> Result<(), PduRejection> {
        tracing::info!(event = %pdu.event_id, reason = %why, "rejected event");
        self.store
            .mark_rejected(
                pdu.event_id.to_string(),
                pdu.room_id.to_string(),
                why.to_string(),
                ruma::MilliSecondsSinceUnixEpoch::now().get().into(),
            )
            .await?;
        Err(why)
    }

    /// Those of `ids` that are in the timeline (not outliers).
    async fn timeline_events(&self, ids: &[OwnedEventId]) -> Result<Vec<OwnedEventId>> {
        Ok(self
            .store
            .events(ids.iter().map(|e| e.to_string()).collect())
            .await?
            .into_iter()
            .filter(|e| e.stream_pos > 0)
            .map(|e| e.pdu.event_id)
            .collect())
    }

    /// Asks `origin` for the events between the room's forward extremities
    /// and `pdu`, and processes them oldest first.
    async fn fill_gap(&self, version: &RoomVersion, pdu: &Pdu, origin: &ServerName) {
        let earliest = match self.store.forward_extremities(pdu.room_id.to_string()).await {
            Ok((e, _)) => e,
            Err(_) => return,
        };
        let mut req = get_missing_events::v1::Request::new(pdu.room_id.clone(), earliest, vec![pdu.event_id.clone()]);
        req.limit = UInt::from(MISSING_EVENTS_LIMIT);
        let events = match self.federation_request(origin, req).await {
            Ok(r) => r.events,
            Err(e) => {
                tracing::info!(room = %pdu.room_id, "get_missing_events from {origin} failed: {e}");
                return;
            }
        };
        let mut parsed = vec![];
        for raw in &events {
            match self.verify_pdu(version, &pdu.room_id, raw).await {
                Ok(p) => parsed.push(p),
                Err(e) => tracing::info!("missing event from {origin} refused: {e}"),
            }
        }
        parsed.sort_by_key(|p| p.depth);
        for p in parsed {
            if p.event_id == pdu.event_id {
                continue;
            }
            if let Err(e) = Box::pin(self.process_pdu(version, p, origin, false, false, &[])).await {
                tracing::info!("missing event from {origin} not accepted: {e}");
            }
        }
    }

    /// The event's auth events, fetching (and verifying) missing ones from `origin`.
    async fn load_auth_events(
        &self,
        version: &RoomVersion,
        pdu: &Pdu,
        origin: &ServerName,
    ) -> Result<HashMap<OwnedEventId, Pdu>, PduRejection> {
        let mut found: HashMap<OwnedEventId, Pdu> = self
            .store
            .events(pdu.auth_events.iter().map(|e| e.to_string()).collect())
            .await?
            .into_iter()
            .map(|e| (e.pdu.event_id.clone(), e.pdu))
            .collect();
        let mut fetched = vec![];
        let missing: Vec<OwnedEventId> = pdu
            .auth_events
            .iter()
            .filter(|e| !found.contains_key(*e))
            .cloned()
            .collect();
        for id in &missing {
            if self.store.rejection(id.to_string()).await?.is_some() {
                return Err(PduRejection::AuthEvents(format!("auth event {id} was rejected")));
            }
            let res = self
                .federation_request(origin, get_event::v1::Request::new(id.clone()))
                .await
                .map_err(|e| PduRejection::AuthEvents(format!("auth event {id} unavailable: {e}")))?;
            let p = self.verify_pdu(version, &pdu.room_id, &res.pdu).await?;
            if p.event_id != *id {
                return Err(PduRejection::AuthEvents(format!(
                    "{origin} sent another event for {id}"
                )));
            }
            fetched.push(p.clone());
            found.insert(p.event_id.clone(), p);
        }
        if !fetched.is_empty() {
            self.store.store_outliers(fetched, None).await?;
        }
        Ok(found)
    }

    async fn add_create_event(
        &self,
        room_id: &RoomId,
        loaded: &mut HashMap<OwnedEventId, Pdu>,
    ) -> Result<Option<OwnedEventId>> {
        let Some(c) = self
            .store
            .current_state_event(room_id.to_string(), "m.room.create".into(), String::new())
            .await?
        else {
            return Ok(None);
        };
        let id = c.pdu.event_id.clone();
        loaded.entry(id.clone()).or_insert(c.pdu);
        Ok(Some(id))
    }

    /// Loads the entries of `state` the auth rules look at for `pdu`.
    async fn load_state_events(
        &self,
        version: &RoomVersion,
        state: &StateMap,
        pdu: &Pdu,
        loaded: &mut HashMap<OwnedEventId, Pdu>,
    ) -> Result<(), PduRejection> {
        let mut keys = auth::auth_types(
            &version.rules,
            &pdu.kind,
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
        )
        .unwrap_or_default();
        keys.push((StateEventType::RoomCreate, String::new()));
        if let Some(sk) = &pdu.state_key {
            keys.push((pdu.kind.to_string().into(), sk.clone()));
        }
        let ids: Vec<String> = keys
            .iter()
            .filter_map(|k| state.get(k))
            .filter(|e| !loaded.contains_key(*e))
            .map(|e| e.to_string())
            .collect();
        for ev in self.store.events(ids).await? {
            loaded.insert(ev.pdu.event_id.clone(), ev.pdu);
        }
        Ok(())
    }
}
