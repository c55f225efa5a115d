//! Simplified sliding sync (MSC4186): the client keeps a connection
//! (`conn_id`) and asks for windows (`ranges`) of its room list, ordered
//! by recency, plus rooms it subscribes to; the server answers with what
//! changed in those rooms since the connection's last position, and with
//! the extensions (to-device, E2EE, account data, receipts, typing).
//!
//! A position (`pos`) names a response the client received: it carries the
//! server's stream position (the same "persisted up to" as `/sync`, so
//! nothing is skipped or repeated) and, in memory, what the connection had
//! been sent by then: which rooms, up to which stream position, with which
//! `required_state`. A client may send the same `pos` again (a lost
//! response), so a few recent positions are kept per connection. A `pos`
//! the server no longer knows (expired, or from before a restart) is
//! answered with `400 M_UNKNOWN_POS`, and the client starts over.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http::StatusCode;
use missive_core::auth::StateMap;
use missive_store::{AccountDataRow, Membership, RoomPositions};
use ruma::{
    JsOption, OwnedDeviceId, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        filter::RoomEventFilter,
        sync::sync_events::v5::{self as ss, request::ExtensionRoomConfig},
    },
    events::StateEventType,
};
use serde_json::{Value, json};

use crate::{
    App, Error, Result,
    services::{
        accounts::Session,
        sync::{heroes, raw, receipt_content},
        timeline::position_token,
    },
};

/// Event types that move a room up the room list (its `bump_stamp`):
/// messages and the like, not state changes or reactions.
const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// How long an unused connection keeps its positions.
const CONNECTION_TTL: Duration = Duration::from_secs(6 * 3600);
/// Positions kept per connection: the one the client holds and a few more
/// for a response that was lost on the way.
const KEPT_POSITIONS: usize = 4;
/// Most connections one device holds; the least recently used goes first.
const MAX_CONNECTIONS_PER_DEVICE: usize = 16;

type ConnKey = (OwnedUserId, OwnedDeviceId, String);

/// The sliding sync connections of every device, in memory.
#[derive(Default)]
pub struct Connections {
    conns: Mutex<HashMap<ConnKey, Connection>>,
    serial: AtomicU64,
}

struct Connection {
    /// Positions handed out, oldest first, with what each had sent.
    positions: VecDeque<(String, Arc<ConnState>)>,
    last_used: Instant,
}

/// What a connection had been sent as of one position.
#[derive(Clone, Default)]
struct ConnState {
    /// The stream position the response covered.
    upto: i64,
    /// The typing serial it covered.
    typing: u64,
    rooms: HashMap<OwnedRoomId, SentRoom>,
    /// The count last reported for each list.
    lists: BTreeMap<String, u64>,
}

/// A room as the connection has it.
#[derive(Clone)]
struct SentRoom {
    /// The client has this room's timeline and state up to here.
    pos: i64,
    /// Sent as an invite (stripped state only).
    invite: bool,
    /// The `required_state` it was sent with.
    required_state: Vec<(String, String)>,
    /// Members sent for `$LAZY`.
    lazy_members: HashSet<String>,
}

impl Connections {
    /// Starts the connection afresh (a request without `pos`).
    fn reset(&self, key: &ConnKey) {
        self.conns.lock().expect("connections lock").remove(key);
    }

    fn get(&self, key: &ConnKey, pos: &str) -> Option<Arc<ConnState>> {
        let mut conns = self.conns.lock().expect("connections lock");
        let conn = conns.get_mut(key)?;
        if conn.last_used.elapsed() > CONNECTION_TTL {
            conns.remove(key);
            return None;
        }
        conn.last_used = Instant::now();
        conn.positions.iter().find(|(p, _)| p == pos).map(|(_, s)| s.clone())
    }

    /// Records what a response sent and returns its position. Positions
    /// older than the one the client came from are dropped: it has moved on.
    fn save(&self, key: &ConnKey, from: Option<&str>, state: ConnState) -> String {
        let pos = format!("{}_{}", state.upto, self.serial.fetch_add(1, Ordering::Relaxed));
        let mut conns = self.conns.lock().expect("connections lock");
        let now = Instant::now();
        conns.retain(|_, c| now.duration_since(c.last_used) <= CONNECTION_TTL);
        if !conns.contains_key(key) {
            let mut same_device: Vec<_> = conns
                .iter()
                .filter(|(k, _)| k.0 == key.0 && k.1 == key.1)
                .map(|(k, c)| (c.last_used, k.clone()))
                .collect();
            same_device.sort();
            let excess = (same_device.len() + 1).saturating_sub(MAX_CONNECTIONS_PER_DEVICE);
            for (_, k) in same_device.into_iter().take(excess) {
                conns.remove(&k);
            }
        }
        let conn = conns.entry(key.clone()).or_insert_with(|| Connection {
            positions: VecDeque::new(),
            last_used: now,
        });
        conn.last_used = now;
        match from.and_then(|f| conn.positions.iter().position(|(p, _)| p == f)) {
            Some(i) => {
                conn.positions.drain(..i);
            }
            None => conn.positions.clear(),
        }
        conn.positions.push_back((pos.clone(), Arc::new(state)));
        while conn.positions.len() > KEPT_POSITIONS {
            conn.positions.pop_front();
        }
        pos
    }
}

fn unknown_pos() -> Error {
    Error::Matrix {
        status: StatusCode::BAD_REQUEST,
        errcode: "M_UNKNOWN_POS",
        message: "Unknown or expired sliding sync position; start again without pos".into(),
        extra: None,
    }
}

fn uint(n: impl TryInto<u64>) -> UInt {
    UInt::new_saturating(n.try_into().unwrap_or(0))
}

/// How a room is to be sent: the union of the lists and subscription that
/// include it.
#[derive(Default)]
struct RoomConfig {
    required_state: Vec<(String, String)>,
    timeline_limit: u64,
}

impl RoomConfig {
    fn add(&mut self, required_state: &[(StateEventType, String)], timeline_limit: UInt) {
        for (t, k) in required_state {
            let entry = (t.to_string(), k.clone());
            if !self.required_state.contains(&entry) {
                self.required_state.push(entry);
            }
        }
        self.required_state.sort();
        self.timeline_limit = self.timeline_limit.max(u64::from(timeline_limit));
    }
}

/// A parsed `required_state`: `*` matches any type or state key, `$ME`
/// is the user, and `m.room.member`/`$LAZY` asks for the members of the
/// timeline's senders.
struct RequiredState<'a> {
    entries: &'a [(String, String)],
    user: &'a str,
    lazy: bool,
}

impl<'a> RequiredState<'a> {
    fn new(entries: &'a [(String, String)], user: &'a str) -> Self {
        let lazy = entries.iter().any(|(t, k)| t == "m.room.member" && k == "$LAZY");
        RequiredState { entries, user, lazy }
    }

    fn matches(&self, kind: &str, key: &str) -> bool {
        self.entries.iter().any(|(t, k)| {
            let type_ok = t == "*" || t == kind;
            let key_ok = match k.as_str() {
                "*" => true,
                "$ME" => key == self.user,
                "$LAZY" => false,
                k => k == key,
            };
            type_ok && key_ok
        })
    }
}

/// The rooms an extension applies to: those of the named lists (all lists
/// when unset) and the named subscriptions (all when unset).
fn extension_rooms(
    lists: Option<&Vec<String>>,
    rooms: Option<&Vec<ExtensionRoomConfig>>,
    in_lists: &BTreeMap<String, Vec<OwnedRoomId>>,
    subscribed: &BTreeSet<OwnedRoomId>,
) -> BTreeSet<OwnedRoomId> {
    let mut out = BTreeSet::new();
    for (name, rooms) in in_lists {
        if lists.is_none_or(|l| l.iter().any(|n| n == name || n == "*")) {
            out.extend(rooms.iter().cloned());
        }
    }
    match rooms {
        None => out.extend(subscribed.iter().cloned()),
        Some(cfg) => {
            for c in cfg {
                match c {
                    ExtensionRoomConfig::AllSubscribed => out.extend(subscribed.iter().cloned()),
                    ExtensionRoomConfig::Room(r) if subscribed.contains(r) => {
                        out.insert(r.clone());
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// What list filters need to know about a room, loaded once per request.
struct RoomFacts {
    encrypted: bool,
    room_type: Option<String>,
}

/// One room's update, and what the connection then has of it.
struct RoomUpdate {
    room: Option<ss::response::Room>,
    sent: SentRoom,
}

impl App {
    /// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`:
    /// answers at once when there is news (or on a new connection),
    /// otherwise waits for some up to the timeout.
    pub async fn sliding_sync(&self, session: &Session, req: &ss::Request) -> Result<ss::Response> {
        let key: ConnKey = (
            session.user_id.clone(),
            session.device_id.clone(),
            req.conn_id.clone().unwrap_or_default(),
        );
        let prev = match &req.pos {
            None => {
                self.sliding_connections.reset(&key);
                None
            }
            Some(p) => Some(self.sliding_connections.get(&key, p).ok_or_else(unknown_pos)?),
        };
        let timeout = req
            .timeout
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_millis(self.config.max_sync_timeout_ms));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.notifier.subscribe();
        let (mut resp, state) = loop {
            rx.borrow_and_update();
            let (resp, state, news) = self.sliding_sync_once(session, req, prev.as_deref()).await?;
            if news || prev.is_none() || tokio::time::Instant::now() >= deadline {
                break (resp, state);
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                // One last look: the response's position must be current.
                let (resp, state, _) = self.sliding_sync_once(session, req, prev.as_deref()).await?;
                break (resp, state);
            }
        };
        resp.pos = self.sliding_connections.save(&key, req.pos.as_deref(), state);
        Ok(resp)
    }

    /// One look: the response, what the connection has after it, and
    /// whether it holds anything new.
    async fn sliding_sync_once(
        &self,
        session: &Session,
        req: &ss::Request,
        prev: Option<&ConnState>,
    ) -> Result<(ss::Response, ConnState, bool)> {
        let user = &session.user_id;
        // The typing serial before the stream position: a change in between
        // is sent again rather than missed.
        let typing_serial = self.typing.serial();
        let upto = self.store.persisted_upto();
        let since = prev.map(|p| p.upto);
        let mut resp = ss::Response::new(String::new());
        resp.txn_id = req.txn_id.clone();
        let mut state = ConnState {
            upto,
            typing: typing_serial,
            rooms: prev.map(|p| p.rooms.clone()).unwrap_or_default(),
            lists: BTreeMap::new(),
        };
        let mut news = false;

        // The user's rooms as of `upto`; later changes come next time.
        let mut rows = self.store.memberships(user.to_string()).await?;
        self.drop_ignored_invites(user, &mut rows).await?;
        let memberships: HashMap<OwnedRoomId, Membership> = rows
            .into_iter()
            .filter_map(|m| Some((OwnedRoomId::try_from(m.room_id.clone()).ok()?, m)))
            .collect();
        let current = |room: &RoomId| memberships.get(room).filter(|m| m.stream_pos <= upto);
        let mut listed: Vec<OwnedRoomId> = memberships
            .iter()
            .filter(|(_, m)| m.stream_pos <= upto && matches!(m.membership.as_str(), "join" | "invite"))
            .map(|(r, _)| r.clone())
            .collect();
        listed.sort();
        let positions: HashMap<String, RoomPositions> = self
            .store
            .latest_positions(listed.iter().map(|r| r.to_string()).collect(), BUMP_TYPES, upto)
            .await?
            .into_iter()
            .map(|p| (p.room_id.clone(), p))
            .collect();
        let bump_stamp = |room: &RoomId| -> i64 {
            let m = &memberships[room];
            match (m.membership.as_str(), positions.get(room.as_str())) {
                ("join", Some(p)) => p.bumped.unwrap_or(p.last),
                _ => m.stream_pos,
            }
        };
        let dms = self.direct_rooms(user).await?;

        // Lists: filter, order by recency, keep the rooms in range.
        let mut wanted: BTreeMap<OwnedRoomId, RoomConfig> = BTreeMap::new();
        let mut in_lists: BTreeMap<String, Vec<OwnedRoomId>> = BTreeMap::new();
        let mut facts: HashMap<OwnedRoomId, RoomFacts> = HashMap::new();
        for (name, list) in &req.lists {
            let mut rooms = vec![];
            for room in &listed {
                if self
                    .list_includes(list.filters.as_ref(), room, &memberships[room], &dms, &mut facts)
                    .await?
                {
                    rooms.push((bump_stamp(room), room.clone()));
                }
            }
            rooms.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let count = rooms.len() as u64;
            let mut reply = ss::response::List::default();
            reply.count = uint(count);
            resp.lists.insert(name.clone(), reply);
            if prev.and_then(|p| p.lists.get(name)) != Some(&count) {
                news = true;
            }
            state.lists.insert(name.clone(), count);
            let mut in_range = vec![];
            for (i, (_, room)) in rooms.into_iter().enumerate() {
                let i = i as u64;
                if list
                    .ranges
                    .iter()
                    .any(|(start, end)| i >= u64::from(*start) && i <= u64::from(*end))
                {
                    wanted
                        .entry(room.clone())
                        .or_default()
                        .add(&list.room_details.required_state, list.room_details.timeline_limit);
                    in_range.push(room);
                }
            }
            in_lists.insert(name.clone(), in_range);
        }
        let mut subscribed = BTreeSet::new();
        for (room, sub) in &req.room_subscriptions {
            if current(room).is_some_and(|m| matches!(m.membership.as_str(), "join" | "invite")) {
                wanted
                    .entry(room.clone())
                    .or_default()
                    .add(&sub.required_state, sub.timeline_limit);
                subscribed.insert(room.clone());
            }
        }

        // Rooms in range or subscribed.
        for (room_id, cfg) in &wanted {
            let m = &memberships[room_id];
            let sent = prev.and_then(|p| p.rooms.get(room_id));
            let update = if m.membership == "invite" {
                self.invited_room_update(room_id, m, cfg, sent, upto, dms.contains(room_id))
                    .await?
            } else {
                let bump = bump_stamp(room_id);
                self.joined_room_update(
                    session,
                    room_id,
                    cfg,
                    sent,
                    since,
                    upto,
                    positions.get(room_id.as_str()).map(|p| p.last),
                    Some(bump),
                    dms.contains(room_id),
                )
                .await?
            };
            if let Some(room) = update.room {
                resp.rooms.insert(room_id.clone(), room);
            }
            state.rooms.insert(room_id.clone(), update.sent);
        }

        // Rooms the connection has that the user has left since: one last
        // update up to the leave, then they are forgotten.
        if let Some(prev) = prev {
            for (room_id, sent) in &prev.rooms {
                if wanted.contains_key(room_id) {
                    continue;
                }
                match current(room_id) {
                    Some(m) if matches!(m.membership.as_str(), "join" | "invite") => {}
                    Some(m) if m.stream_pos > sent.pos && matches!(m.membership.as_str(), "leave" | "ban") => {
                        let room = if sent.invite {
                            self.retracted_invite(session, m).await?
                        } else {
                            let cfg = RoomConfig {
                                required_state: sent.required_state.clone(),
                                timeline_limit: 10,
                            };
                            self.joined_room_update(
                                session,
                                room_id,
                                &cfg,
                                Some(sent),
                                since,
                                m.stream_pos,
                                Some(m.stream_pos),
                                None,
                                false,
                            )
                            .await?
                            .room
                        };
                        if let Some(room) = room {
                            resp.rooms.insert(room_id.clone(), room);
                        }
                        state.rooms.remove(room_id);
                    }
                    // Not yet visible at `upto`: keep it for next time.
                    None if memberships.contains_key(room_id) => {}
                    _ => {
                        state.rooms.remove(room_id);
                    }
                }
            }
        }
        news |= !resp.rooms.is_empty();

        // Extensions.
        let ext = &req.extensions;
        if ext.to_device.enabled == Some(true) {
            let since = match &ext.to_device.since {
                Some(s) => Some(
                    s.parse::<i64>()
                        .map_err(|_| Error::invalid_param("Invalid to_device since token"))?,
                ),
                None => None,
            };
            let (events, next) = self.to_device_for_sync(session, since, upto).await?;
            news |= !events.is_empty();
            let mut reply = ss::response::ToDevice::default();
            reply.next_batch = next.to_string();
            reply.events = events;
            resp.extensions.to_device = Some(reply);
        }
        if ext.e2ee.enabled == Some(true) {
            let e2ee = &mut resp.extensions.e2ee;
            if let Some(since) = since.filter(|s| *s < upto) {
                let lists = self.store.device_list_updates(user.to_string(), since, upto).await?;
                let ids = |v: Vec<String>| -> Vec<OwnedUserId> {
                    v.into_iter().filter_map(|u| OwnedUserId::try_from(u).ok()).collect()
                };
                e2ee.device_lists.changed = ids(lists.changed);
                e2ee.device_lists.left = ids(lists.left);
                news |= !e2ee.device_lists.is_empty();
            }
            let counts = self
                .store
                .key_counts(user.to_string(), session.device_id.to_string())
                .await?;
            let (one_time, fallback) = crate::services::e2ee::sync_key_counts(&counts);
            e2ee.device_one_time_keys_count = one_time;
            e2ee.device_unused_fallback_key_types = Some(fallback);
        }
        // Where each room's per-room extension data starts: from what the
        // connection had of it before this response, or from the beginning.
        let ext_since = |room: &RoomId| -> Option<i64> {
            prev.and_then(|p| p.rooms.get(room))
                .filter(|s| !s.invite)
                .map(|s| s.pos)
        };
        let joined = |room: &RoomId| current(room).is_some_and(|m| m.membership == "join");
        if ext.account_data.enabled == Some(true) {
            let rows = self.store.account_data_since(user.to_string(), 0, upto).await?;
            let reply = &mut resp.extensions.account_data;
            for row in rows.iter().filter(|r| r.room_id.is_empty()) {
                if since.is_none_or(|s| row.stream_pos > s) {
                    reply.global.push(raw(&account_data_event(row))?);
                }
            }
            let rooms = extension_rooms(
                ext.account_data.lists.as_ref(),
                ext.account_data.rooms.as_ref(),
                &in_lists,
                &subscribed,
            );
            for room in rooms.iter().filter(|r| joined(r)) {
                let from = ext_since(room).unwrap_or(0);
                let events = rows
                    .iter()
                    .filter(|r| r.room_id == room.as_str() && r.stream_pos > from)
                    .map(|r| raw(&account_data_event(r)))
                    .collect::<Result<Vec<_>>>()?;
                if !events.is_empty() {
                    reply.rooms.insert(room.clone(), events);
                }
            }
            news |= !reply.is_empty();
        }
        if ext.receipts.enabled == Some(true) {
            let rooms = extension_rooms(
                ext.receipts.lists.as_ref(),
                ext.receipts.rooms.as_ref(),
                &in_lists,
                &subscribed,
            );
            for room in rooms.iter().filter(|r| joined(r)) {
                let from = ext_since(room).unwrap_or(0);
                let receipts = self.store.receipts_since(room.to_string(), from, upto).await?;
                let content = receipt_content(receipts, user);
                if !content.is_empty() {
                    resp.extensions
                        .receipts
                        .rooms
                        .insert(room.clone(), raw(&json!({ "type": "m.receipt", "content": content }))?);
                }
            }
            news |= !resp.extensions.receipts.is_empty();
        }
        if ext.typing.enabled == Some(true) {
            let rooms = extension_rooms(
                ext.typing.lists.as_ref(),
                ext.typing.rooms.as_ref(),
                &in_lists,
                &subscribed,
            );
            for room in rooms.iter().filter(|r| joined(r)) {
                // A room that was live on the previous response has had
                // every typing change up to its serial; any other gets the
                // current state.
                let live = prev.is_some_and(|p| ext_since(room) == Some(p.upto));
                let from = if live { prev.map(|p| p.typing).unwrap_or(0) } else { 0 };
                if let Some(users) = self.typing.changed_since(room, from)
                    && (live || !users.is_empty())
                {
                    resp.extensions.typing.rooms.insert(
                        room.clone(),
                        raw(&json!({ "type": "m.typing", "content": { "user_ids": users } }))?,
                    );
                }
            }
            news |= !resp.extensions.typing.is_empty();
        }
        Ok((resp, state, news))
    }

    /// Whether a room passes a list's filters.
    async fn list_includes(
        &self,
        filters: Option<&ss::request::ListFilters>,
        room: &OwnedRoomId,
        m: &Membership,
        dms: &HashSet<OwnedRoomId>,
        facts: &mut HashMap<OwnedRoomId, RoomFacts>,
    ) -> Result<bool> {
        let Some(f) = filters else {
            return Ok(true);
        };
        if f.is_invite.is_some_and(|want| want != (m.membership == "invite")) {
            return Ok(false);
        }
        if f.is_dm.is_some_and(|want| want != dms.contains(room)) {
            return Ok(false);
        }
        if f.is_encrypted.is_none() && f.room_types.is_empty() && f.not_room_types.is_empty() {
            return Ok(true);
        }
        if !facts.contains_key(room) {
            let encrypted = self.state_content(room, "m.room.encryption", "").await?.is_some();
            let room_type = self
                .state_content(room, "m.room.create", "")
                .await?
                .and_then(|c| c.get("type").and_then(Value::as_str).map(str::to_owned));
            facts.insert(room.clone(), RoomFacts { encrypted, room_type });
        }
        let facts = &facts[room];
        if f.is_encrypted.is_some_and(|want| want != facts.encrypted) {
            return Ok(false);
        }
        let type_is = |t: &ruma::directory::RoomTypeFilter| t.as_str() == facts.room_type.as_deref();
        if f.not_room_types.iter().any(type_is) {
            return Ok(false);
        }
        Ok(f.room_types.is_empty() || f.room_types.iter().any(type_is))
    }

    /// The rooms the user's `m.direct` account data names.
    async fn direct_rooms(&self, user: &UserId) -> Result<HashSet<OwnedRoomId>> {
        let content = self
            .store
            .account_data(user.to_string(), String::new(), "m.direct".into())
            .await?;
        Ok(content
            .as_ref()
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|o| o.values())
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(|r| r.as_str().and_then(|r| OwnedRoomId::try_from(r).ok()))
            .collect())
    }

    /// An invite the connection does not have yet: its stripped state.
    async fn invited_room_update(
        &self,
        room_id: &RoomId,
        m: &Membership,
        cfg: &RoomConfig,
        sent: Option<&SentRoom>,
        upto: i64,
        is_dm: bool,
    ) -> Result<RoomUpdate> {
        let sent_now = SentRoom {
            pos: upto,
            invite: true,
            required_state: cfg.required_state.clone(),
            lazy_members: HashSet::new(),
        };
        if sent.is_some_and(|s| s.invite && s.pos >= m.stream_pos) {
            return Ok(RoomUpdate {
                room: None,
                sent: sent_now,
            });
        }
        let mut room = ss::response::Room::new();
        room.invite_state = Some(self.stripped_state(room_id, &m.event_id).await?);
        room.initial = Some(true);
        room.bump_stamp = Some(uint(m.stream_pos));
        room.is_dm = is_dm.then_some(true);
        Ok(RoomUpdate {
            room: Some(room),
            sent: sent_now,
        })
    }

    /// An invite withdrawn or rejected: the user's own membership event.
    async fn retracted_invite(&self, session: &Session, m: &Membership) -> Result<Option<ss::response::Room>> {
        let Some(ev) = self.store.event(m.event_id.clone()).await? else {
            return Ok(None);
        };
        let mut room = ss::response::Room::new();
        room.required_state = vec![raw(&self.client_event(&ev, Some(session)).await?)?];
        room.bump_stamp = Some(uint(m.stream_pos));
        Ok(Some(room))
    }

    /// A joined (or just left, with `end` at the leave) room: everything
    /// when the connection does not have it, otherwise what changed since
    /// it was last sent; `None` when nothing did.
    #[allow(clippy::too_many_arguments)]
    async fn joined_room_update(
        &self,
        session: &Session,
        room_id: &RoomId,
        cfg: &RoomConfig,
        sent: Option<&SentRoom>,
        conn_since: Option<i64>,
        end: i64,
        last_event: Option<i64>,
        bump_stamp: Option<i64>,
        is_dm: bool,
    ) -> Result<RoomUpdate> {
        let user = &session.user_id;
        let fresh = sent.is_none_or(|s| s.invite);
        let after = sent.filter(|_| !fresh).map(|s| s.pos);
        let spec_changed = sent.is_some_and(|s| !fresh && s.required_state != cfg.required_state);
        let new_events = after.is_none_or(|a| last_event.is_some_and(|l| l > a));
        let own_receipt_moved = match after {
            Some(a) if a < end => self
                .store
                .receipts_since(room_id.to_string(), a, end)
                .await?
                .iter()
                .any(|r| r.user_id == user.as_str() && r.receipt_type.starts_with("m.read")),
            _ => false,
        };
        if let Some(s) = sent
            && !fresh
            && !new_events
            && !spec_changed
            && !own_receipt_moved
        {
            let mut same = s.clone();
            same.pos = end;
            return Ok(RoomUpdate { room: None, sent: same });
        }

        // Timeline: the newest `timeline_limit` events after what was sent.
        let (timeline, limited) = if cfg.timeline_limit == 0 {
            (vec![], new_events)
        } else {
            let mut filter = RoomEventFilter::default();
            filter.limit = Some(uint(cfg.timeline_limit));
            let w = self.timeline_window(user, room_id, after, end, &filter).await?;
            (w.events, w.limited)
        };
        let senders: BTreeSet<String> = timeline.iter().map(|e| e.pdu.sender.to_string()).collect();

        // State: what the client asked for, as of the end of the timeline;
        // on an update, only what changed (all of it if the request did).
        let state_now = self.state_at(room_id, end).await?;
        let before = match after {
            Some(a) if !spec_changed => Some(self.state_at(room_id, a).await?),
            _ => None,
        };
        let changed = |kind: &StateEventType, key: &str| {
            let k = (kind.clone(), key.to_owned());
            before.as_ref().is_none_or(|b| b.get(&k) != state_now.get(&k))
        };
        let spec = RequiredState::new(&cfg.required_state, user.as_str());
        let mut lazy_members = sent
            .filter(|_| !fresh)
            .map(|s| s.lazy_members.clone())
            .unwrap_or_default();
        let mut ids = vec![];
        let mut members_changed = false;
        for ((kind, key), id) in state_now.iter() {
            let k = kind.to_string();
            let is_member = k == "m.room.member";
            let differs = changed(kind, key);
            members_changed |= is_member && differs;
            let wanted = if spec.matches(&k, key) {
                differs
            } else if spec.lazy && is_member {
                (senders.contains(key) && (differs || !lazy_members.contains(key)))
                    || (differs && lazy_members.contains(key))
            } else {
                false
            };
            if wanted {
                ids.push(id.to_string());
            }
        }
        if spec.lazy {
            lazy_members.extend(senders.iter().cloned());
        }
        let mut room = ss::response::Room::new();
        for ev in self.store.events(ids).await? {
            room.required_state
                .push(raw(&self.client_event(&ev, Some(session)).await?)?);
        }

        // Name, avatar and heroes, as clients show the room in a list.
        let content_of =
            |kind: &str| -> Option<String> { state_now.get(&(kind.into(), String::new())).map(|e| e.to_string()) };
        let name_id = content_of("m.room.name");
        let avatar_id = content_of("m.room.avatar");
        let mut loaded = HashMap::new();
        for ev in self
            .store
            .events(name_id.iter().chain(avatar_id.iter()).cloned().collect())
            .await?
        {
            loaded.insert(ev.pdu.event_id.to_string(), ev.pdu.content_value());
        }
        let name = name_id
            .as_ref()
            .and_then(|id| loaded.get(id))
            .and_then(|c| c.get("name")?.as_str())
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        if changed(&"m.room.name".into(), "") {
            room.name = name.clone();
        }
        if changed(&"m.room.avatar".into(), "") {
            let url = avatar_id
                .as_ref()
                .and_then(|id| loaded.get(id))
                .and_then(|c| c.get("url")?.as_str())
                .map(OwnedMxcUri::from)
                .filter(|u| u.is_valid());
            room.avatar = match (url, &before) {
                (Some(u), _) => JsOption::Some(u),
                (None, Some(_)) => JsOption::Null,
                (None, None) => JsOption::Undefined,
            };
        }
        let members = self.store.room_members(room_id.to_string()).await?;
        let has_alias = state_now.contains_key(&("m.room.canonical_alias".into(), String::new()));
        if name.is_none() && !has_alias && (before.is_none() || members_changed) {
            let ids = heroes(&members, user);
            let member_ids: Vec<String> = ids
                .iter()
                .filter_map(|u| state_now.get(&("m.room.member".into(), u.to_string())))
                .map(|e| e.to_string())
                .collect();
            let events = self.store.events(member_ids).await?;
            let mut list = vec![];
            for u in ids {
                let mut hero = ss::response::Hero::new(u.clone());
                if let Some(c) = events
                    .iter()
                    .find(|e| e.pdu.state_key.as_deref() == Some(u.as_str()))
                    .map(|e| e.pdu.content_value())
                {
                    hero.name = c.get("displayname").and_then(Value::as_str).map(str::to_owned);
                    hero.avatar = c
                        .get("avatar_url")
                        .and_then(Value::as_str)
                        .map(OwnedMxcUri::from)
                        .filter(|a| a.is_valid());
                }
                list.push(hero);
            }
            room.heroes = Some(list);
        }
        room.joined_count = Some(uint(members.iter().filter(|(_, m)| m == "join").count()));
        room.invited_count = Some(uint(members.iter().filter(|(_, m)| m == "invite").count()));
        let (notifications, highlights) = self.unread_counts(user, room_id, end).await?;
        room.unread_notifications.notification_count = Some(uint(notifications));
        room.unread_notifications.highlight_count = Some(uint(highlights));

        let start = timeline.first().map(|e| e.stream_pos - 1).unwrap_or(end);
        room.prev_batch = Some(position_token(start));
        room.limited = limited;
        room.num_live = Some(uint(
            conn_since.map_or(0, |s| timeline.iter().filter(|e| e.stream_pos > s).count()),
        ));
        for json in self.timeline_client_events(&timeline, Some(session)).await? {
            room.timeline.push(raw(&json)?);
        }
        room.initial = fresh.then_some(true);
        room.bump_stamp = bump_stamp.map(uint);
        room.is_dm = (fresh && is_dm).then_some(true);
        Ok(RoomUpdate {
            room: Some(room),
            sent: SentRoom {
                pos: end,
                invite: false,
                required_state: cfg.required_state.clone(),
                lazy_members,
            },
        })
    }

    /// A room's state after its last event at or before a position.
    async fn state_at(&self, room_id: &RoomId, pos: i64) -> Result<Arc<StateMap>> {
        Ok(match self.store.last_event_at(room_id.to_string(), pos).await? {
            Some(e) => self.store.state_at_group(e.state_group).await?,
            None => Default::default(),
        })
    }
}

fn account_data_event(row: &AccountDataRow) -> Value {
    json!({ "type": row.kind, "content": row.content })
}
