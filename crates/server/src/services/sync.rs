//! `/sync`: what changed for a user between two tokens, and waiting for it.
//!
//! A token is `s{pos}_{typing}_{presence}`: the stream position (every
//! persisted change is below it and nothing above it was shown), plus the
//! serials of the in-memory typing and presence state.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use missive_store::{Direction, StoredEvent};
use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UInt,
    api::client::{
        filter::{FilterDefinition, LazyLoadOptions, RoomEventFilter},
        sync::sync_events::v3 as sync,
    },
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    App, Error, Result,
    services::{
        accounts::Session,
        timeline::{filter_allows, position_token},
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    pub pos: i64,
    pub typing: u64,
    pub presence: u64,
}

impl SyncToken {
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.strip_prefix('s')?.split('_');
        let pos = it.next()?.parse().ok()?;
        let typing = it.next().map(|t| t.parse()).transpose().ok()?.unwrap_or(0);
        let presence = it.next().map(|t| t.parse()).transpose().ok()?.unwrap_or(0);
        Some(SyncToken { pos, typing, presence })
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_{}_{}", self.pos, self.typing, self.presence)
    }
}

/// The state event types shown with an invite or knock (here and to other servers).
pub(crate) const STRIPPED_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

pub(crate) fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(v).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

/// The content of an `m.receipt` event for these receipts, as `user` sees
/// them (others' private read receipts left out).
pub(crate) fn receipt_content(
    receipts: Vec<missive_store::ReceiptRow>,
    user: &ruma::UserId,
) -> BTreeMap<String, Value> {
    let mut content: BTreeMap<String, Value> = BTreeMap::new();
    for r in receipts {
        if r.receipt_type == "m.read.private" && r.user_id != user.as_str() {
            continue;
        }
        let mut receipt = json!({ "ts": r.ts });
        if r.thread_id != "unthreaded" {
            receipt["thread_id"] = r.thread_id.clone().into();
        }
        content
            .entry(r.event_id)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .entry(r.receipt_type)
            .or_insert_with(|| json!({}))[r.user_id] = receipt;
    }
    content
}

/// The members a client names an unnamed room after: up to five others
/// who are joined or invited, in a stable order.
pub(crate) fn heroes(members: &[(String, String)], user: &ruma::UserId) -> Vec<OwnedUserId> {
    let mut heroes: Vec<_> = members
        .iter()
        .filter(|(u, m)| u != user.as_str() && (m == "join" || m == "invite"))
        .filter_map(|(u, _)| OwnedUserId::try_from(u.clone()).ok())
        .collect();
    heroes.sort();
    heroes.truncate(5);
    heroes
}

/// Whether a user's departure (their leave or ban) followed a time in the
/// room: the membership it replaced was `join`.
fn left_after_joining(departure: &StoredEvent) -> bool {
    departure
        .unsigned
        .as_ref()
        .and_then(|u| u.get("prev_content"))
        .and_then(|c| c.get("membership"))
        .and_then(Value::as_str)
        == Some("join")
}

/// At most this many events are read to fill one room's timeline in a
/// sync, hidden ones included.
const MAX_SCANNED: usize = 500;

/// A room's timeline in a sync response.
pub(crate) struct Window {
    /// Oldest first.
    pub events: Vec<StoredEvent>,
    /// Older events the client did not get wait before these (it paginates).
    pub limited: bool,
    /// Events between the last sync and these were left out (limited, or
    /// hidden from the user), so the state they changed must be sent.
    pub gap: bool,
}

/// The member events each device holds while lazy-loading members, so
/// that later syncs leave out those it has (the spec's "redundant"
/// members). What a response carries counts only once the client comes
/// back with that response's token: a lost response, retried, is sent its
/// members again. Per process and bounded: a device this process forgot,
/// or one whose last sync another process answered, is sent its members
/// again, which is harmless.
#[derive(Default)]
pub struct LazyMembers(std::sync::Mutex<LazyMemberRecords>);

#[derive(Default)]
pub struct LazyMemberRecords {
    devices: HashMap<(OwnedUserId, ruma::OwnedDeviceId), DeviceMembers>,
    /// Entries across all devices, against [`LAZY_MEMBERS_TOTAL`].
    total: usize,
}

#[derive(Default)]
struct DeviceMembers {
    /// The token of the last response this process gave the device.
    served: Option<SyncToken>,
    /// What the device acknowledged having.
    held: HashMap<(OwnedRoomId, OwnedUserId), ruma::OwnedEventId>,
    /// What the response being built (or last given) carries.
    pending: Vec<(OwnedRoomId, OwnedUserId, ruma::OwnedEventId)>,
}

/// The most member events remembered across all devices; past it, every
/// record starts again empty (clients are then sent members again).
const LAZY_MEMBERS_TOTAL: usize = 500_000;

impl LazyMembers {
    fn with<T>(&self, s: &Session, f: impl FnOnce(&mut DeviceMembers) -> T) -> T {
        let mut records = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if records.total >= LAZY_MEMBERS_TOTAL {
            records.devices.clear();
            records.total = 0;
        }
        let key = (s.user_id.clone(), s.device_id.clone());
        let device = records.devices.entry(key).or_default();
        let before = device.held.len() + device.pending.len();
        let out = f(device);
        let after = device.held.len() + device.pending.len();
        records.total = (records.total + after).saturating_sub(before);
        out
    }

    /// A sync from `since` starts: what the response that gave `since`
    /// carried is now held; any other `since` (a retry, a first sync, a
    /// token from another process) means nothing is known to be held.
    fn begin(&self, s: &Session, since: Option<SyncToken>) {
        self.with(s, |d| {
            let pending = std::mem::take(&mut d.pending);
            if since.is_some() && since == d.served {
                for (room, member, event) in pending {
                    d.held.insert((room, member), event);
                }
            } else {
                d.held.clear();
            }
        });
    }

    /// The response is given with this token.
    fn finish(&self, s: &Session, next: SyncToken) {
        self.with(s, |d| d.served = Some(next));
    }

    /// A new attempt at the response (a long poll looking again).
    fn restart(&self, s: &Session) {
        self.with(s, |d| d.pending.clear());
    }

    fn held(&self, s: &Session, room: &RoomId, member: &ruma::UserId, event: &ruma::EventId) -> bool {
        self.with(s, |d| {
            d.held
                .get(&(room.to_owned(), member.to_owned()))
                .is_some_and(|e| e == event)
        })
    }

    fn sent(&self, s: &Session, room: &RoomId, member: &ruma::UserId, event: &ruma::EventId) {
        self.with(s, |d| {
            d.pending.push((room.to_owned(), member.to_owned(), event.to_owned()));
        });
    }

    fn forget_room(&self, s: &Session, room: &RoomId) {
        self.with(s, |d| d.held.retain(|(r, _), _| r != room));
    }
}

pub struct SyncRequest {
    pub since: Option<SyncToken>,
    pub filter: FilterDefinition,
    pub full_state: bool,
    pub timeout: Duration,
}

impl App {
    /// Answers a sync, waiting up to the timeout when there is nothing new.
    pub async fn sync(&self, session: &Session, req: SyncRequest) -> Result<sync::Response> {
        let lazy = matches!(
            req.filter.room.state.lazy_load_options,
            LazyLoadOptions::Enabled {
                include_redundant_members: false
            }
        );
        if lazy {
            self.lazy_members.begin(session, req.since);
        }
        let resp = self.sync_waiting(session, &req, lazy).await?;
        if lazy && let Some(next) = SyncToken::parse(&resp.next_batch) {
            self.lazy_members.finish(session, next);
        }
        Ok(resp)
    }

    async fn sync_waiting(&self, session: &Session, req: &SyncRequest, lazy: bool) -> Result<sync::Response> {
        let deadline = tokio::time::Instant::now() + req.timeout;
        let mut rx = self.notifier.subscribe();
        loop {
            rx.borrow_and_update();
            if lazy {
                self.lazy_members.restart(session);
            }
            let (resp, empty) = self.sync_once(session, req).await?;
            if !empty || req.since.is_none() || req.full_state || tokio::time::Instant::now() >= deadline {
                return Ok(resp);
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                // One last look: the response's token must be current.
                if lazy {
                    self.lazy_members.restart(session);
                }
                return Ok(self.sync_once(session, req).await?.0);
            }
        }
    }

    async fn sync_once(&self, session: &Session, req: &SyncRequest) -> Result<(sync::Response, bool)> {
        let user = &session.user_id;
        let since = req.since;
        let since_pos = since.map(|s| s.pos);
        let mut resp = sync::Response::new(String::new());
        // To-device messages come first: when more wait than one response
        // carries, they hold the whole response's position back.
        let (upto, e2ee_news) = self
            .sync_e2ee(session, since_pos, self.store.persisted_upto(), &mut resp)
            .await?;
        let next = SyncToken {
            pos: upto,
            typing: self.typing.serial(),
            presence: self.presence.serial(),
        };
        resp.next_batch = next.to_string();
        let mut empty = !e2ee_news;

        let room_filter = &req.filter.room;
        let forgotten: HashSet<String> = self
            .store
            .forgotten_rooms(user.to_string())
            .await?
            .into_iter()
            .collect();
        let mut shared_users: HashSet<OwnedUserId> = HashSet::new();

        let account_data = self
            .store
            .account_data_since(user.to_string(), since_pos.unwrap_or(0), upto)
            .await?;
        let mut memberships = self.store.memberships(user.to_string()).await?;
        self.drop_ignored_invites(user, &mut memberships).await?;
        for m in memberships {
            let Ok(room_id) = OwnedRoomId::try_from(m.room_id.clone()) else {
                continue;
            };
            if m.stream_pos > upto {
                continue;
            }
            if let Some(rooms) = &room_filter.rooms
                && !rooms.contains(&room_id)
            {
                continue;
            }
            if room_filter.not_rooms.contains(&room_id) {
                continue;
            }
            let changed_since = since_pos.is_none_or(|s| m.stream_pos > s);
            match m.membership.as_str() {
                "join" => {
                    let fresh = req.full_state || since_pos.is_none() || changed_since;
                    let joined = self
                        .joined_room(session, &room_id, since, fresh, upto, &req.filter, &account_data)
                        .await?;
                    for (u, mm) in self.store.room_members(room_id.to_string()).await? {
                        if mm == "join"
                            && let Ok(u) = OwnedUserId::try_from(u)
                        {
                            shared_users.insert(u);
                        }
                    }
                    if let Some(j) = joined {
                        empty = false;
                        resp.rooms.join.insert(room_id, j);
                    }
                }
                "invite" if changed_since => {
                    let mut room = sync::InvitedRoom::new();
                    room.invite_state.events = self.stripped_state(&room_id, &m.event_id).await?;
                    resp.rooms.invite.insert(room_id, room);
                    empty = false;
                }
                "knock" if changed_since => {
                    let mut room = sync::KnockedRoom::new();
                    room.knock_state.events = self.stripped_state(&room_id, &m.event_id).await?;
                    resp.rooms.knock.insert(room_id, room);
                    empty = false;
                }
                "leave" | "ban" if changed_since && !forgotten.contains(&m.room_id) => {
                    if since_pos.is_none() && !room_filter.include_leave {
                        continue;
                    }
                    if let Some(left) = self
                        .left_room(session, &room_id, since, m.stream_pos, &m.event_id, &req.filter)
                        .await?
                    {
                        resp.rooms.leave.insert(room_id, left);
                        empty = false;
                    }
                }
                _ => {}
            }
        }

        // Global account data.
        for row in &account_data {
            if !row.room_id.is_empty() {
                continue;
            }
            resp.account_data
                .events
                .push(raw(&json!({ "type": row.kind, "content": row.content }))?);
            empty = false;
        }

        // Presence of users who share a room.
        if self.config.presence {
            shared_users.insert(user.clone());
            let users: Vec<_> = shared_users.into_iter().collect();
            let now = crate::services::accounts::now_ms();
            for (u, p) in self
                .presence
                .changed_since(&users, since.map(|s| s.presence).unwrap_or(0))
            {
                let mut content = json!({
                    "presence": p.state,
                    "last_active_ago": (now - p.last_active_ms).max(0),
                    "currently_active": p.state == "online",
                });
                if let Some(m) = p.status_msg {
                    content["status_msg"] = m.into();
                }
                resp.presence
                    .events
                    .push(raw(&json!({ "type": "m.presence", "sender": u, "content": content }))?);
                if &u != user {
                    empty = false;
                }
            }
        }
        Ok((resp, empty))
    }

    /// End-to-end encryption in a sync: the device's to-device messages,
    /// device-list changes since the last sync, and key counts. Returns the
    /// position the response covers (see [`App::to_device_for_sync`]) and
    /// whether there is news worth answering a waiting sync for.
    async fn sync_e2ee(
        &self,
        session: &Session,
        since: Option<i64>,
        upto: i64,
        resp: &mut sync::Response,
    ) -> Result<(i64, bool)> {
        let (events, upto) = self.to_device_for_sync(session, since, upto).await?;
        let mut news = !events.is_empty();
        resp.to_device.events = events;
        if let Some(since) = since.filter(|s| *s < upto) {
            let lists = self
                .store
                .device_list_updates(session.user_id.to_string(), since, upto)
                .await?;
            let ids = |v: Vec<String>| -> Vec<OwnedUserId> {
                v.into_iter().filter_map(|u| OwnedUserId::try_from(u).ok()).collect()
            };
            resp.device_lists.changed = ids(lists.changed);
            resp.device_lists.left = ids(lists.left);
            news |= !resp.device_lists.is_empty();
        }
        let counts = self
            .store
            .key_counts(session.user_id.to_string(), session.device_id.to_string())
            .await?;
        let (one_time, fallback) = crate::services::e2ee::sync_key_counts(&counts);
        resp.device_one_time_keys_count = one_time;
        resp.device_unused_fallback_key_types = Some(fallback);
        Ok((upto, news))
    }

    /// Stripped state shown with an invite or knock.
    pub(crate) async fn stripped_state(
        &self,
        room_id: &RoomId,
        own_event: &str,
    ) -> Result<Vec<Raw<ruma::events::AnyStrippedStateEvent>>> {
        let own = self.store.event(own_event.to_owned()).await?;
        // An invite from another server comes with the state it sent.
        if let Some(own) = &own
            && own.stream_pos < 0
            && let Some(sk) = &own.pdu.state_key
            && let Some(state) = self.store.remote_invite_state(room_id.to_string(), sk.clone()).await?
        {
            let mut out = vec![];
            for v in serde_json::from_str::<Vec<serde_json::Value>>(&state).unwrap_or_default() {
                out.push(raw(&v)?);
            }
            out.push(raw(&own.pdu.to_stripped())?);
            return Ok(out);
        }
        // The room as it was at the invite or knock, not as it is now: what
        // changed since is for members, which the invitee is not yet.
        let Some(own) = own else {
            return Ok(vec![]);
        };
        let mut keys: Vec<(String, String)> = STRIPPED_STATE
            .iter()
            .map(|t| ((*t).to_owned(), String::new()))
            .collect();
        // The sender of the invite or knock, so the client can name them.
        let sender_key = ("m.room.member".to_owned(), own.pdu.sender.to_string());
        keys.push(sender_key.clone());
        let state = self.store.state_ids_at_group_for(own.state_group, keys).await?;
        let mut ids: Vec<String> = STRIPPED_STATE
            .iter()
            .filter_map(|t| state.get(&((*t).to_owned(), String::new())))
            .map(|e| e.to_string())
            .collect();
        ids.push(own_event.to_owned());
        if let Some(sender) = state.get(&sender_key)
            && sender.as_str() != own_event
        {
            ids.push(sender.to_string());
        }
        let mut out = vec![];
        for ev in self.store.events(ids).await? {
            out.push(raw(&ev.pdu.to_stripped())?);
        }
        Ok(out)
    }

    /// The timeline of a room between two positions: the newest `limit`
    /// events the filter and the user's view of the room let through.
    /// Hidden events do not count against the limit: older pages are read
    /// until the limit is filled (as far as [`MAX_SCANNED`]). A member sees
    /// the room's current state events wherever they fall.
    pub(crate) async fn timeline_window(
        &self,
        user: &ruma::UserId,
        room_id: &RoomId,
        after: Option<i64>,
        upto: i64,
        filter: &RoomEventFilter,
    ) -> Result<Window> {
        let limit = filter.limit.map(|l| u64::from(l) as usize).unwrap_or(10).clamp(1, 100);
        let mut kept: Vec<StoredEvent> = vec![];
        let mut before = upto + 1;
        let mut scanned = 0;
        let mut skipped = false;
        let mut exhausted = false;
        let mut current_state: Option<HashSet<ruma::OwnedEventId>> = None;
        let viewer = self.room_viewer(user, room_id).await?;
        while kept.len() <= limit && scanned < MAX_SCANNED {
            let page_size = if scanned == 0 { limit + 1 } else { (2 * limit).max(10) };
            let page = self
                .store
                .room_events(room_id.to_string(), before, after, Direction::Backward, page_size)
                .await?;
            let Some(oldest) = page.last() else {
                exhausted = true;
                break;
            };
            before = oldest.stream_pos;
            scanned += page.len();
            let full = page.len() == page_size;
            let fetched = page.len();
            let page: Vec<_> = page.into_iter().filter(|e| filter_allows(filter, e)).collect();
            if current_state.is_none() && page.iter().any(|e| e.pdu.is_state()) {
                current_state = Some(if self.membership(room_id, user).await?.as_deref() == Some("join") {
                    self.store
                        .current_state_ids(room_id.to_string())
                        .await?
                        .values()
                        .cloned()
                        .collect()
                } else {
                    HashSet::new()
                });
            }
            let always = current_state.clone().unwrap_or_default();
            let visible = self.filter_visible_with(&viewer, page, &always).await?;
            skipped |= visible.len() < fetched;
            kept.extend(visible);
            if !full {
                exhausted = true;
                break;
            }
        }
        let limited = kept.len() > limit || !exhausted;
        kept.truncate(limit);
        kept.reverse();
        Ok(Window {
            events: kept,
            limited,
            gap: limited || skipped,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn joined_room(
        &self,
        session: &Session,
        room_id: &RoomId,
        since: Option<SyncToken>,
        fresh: bool,
        upto: i64,
        filter: &FilterDefinition,
        account_data_rows: &[missive_store::AccountDataRow],
    ) -> Result<Option<sync::JoinedRoom>> {
        let user = &session.user_id;
        let after = if fresh { None } else { since.map(|s| s.pos) };
        let window = self
            .timeline_window(user, room_id, after, upto, &filter.room.timeline)
            .await?;
        let (timeline, limited) = (&window.events, window.limited);
        let room_account_data: Vec<_> = account_data_rows
            .iter()
            .filter(|r| r.room_id == room_id.as_str())
            .collect();
        // Most rooms have nothing new on an incremental sync: say so before
        // computing state, summaries and counts.
        if let (false, true, false, Some(since)) = (fresh, timeline.is_empty(), window.gap, since) {
            let typing = self.typing.changed_since(room_id, since.typing).is_some();
            if !typing
                && room_account_data.is_empty()
                && self
                    .store
                    .receipts_since(room_id.to_string(), since.pos, upto)
                    .await?
                    .is_empty()
                && !self
                    .store
                    .notifications_changed(user.to_string(), room_id.to_string(), since.pos, upto)
                    .await?
            {
                return Ok(None);
            }
        }
        let mut room = sync::JoinedRoom::new();
        let start_pos = timeline.first().map(|e| e.stream_pos - 1).unwrap_or(upto);
        let (state_events, state_now) = self
            .sync_state(
                session,
                room_id,
                (!fresh).then_some(since).flatten(),
                &window,
                start_pos,
                filter,
            )
            .await?;
        let mut state_json = vec![];
        for ev in &state_events {
            state_json.push(raw(&self.client_event(ev, Some(session)).await?)?);
        }
        room.state = sync::State::Before(state_json.into());

        room.timeline.limited = limited;
        room.timeline.prev_batch = Some(position_token(start_pos));
        for json in self.timeline_client_events(timeline, Some(session)).await? {
            room.timeline.events.push(raw(&json)?);
        }

        // Ephemeral: typing and receipts.
        let mut ephemeral = false;
        let typing_since = if fresh { 0 } else { since.map(|s| s.typing).unwrap_or(0) };
        if let Some(users) = self.typing.changed_since(room_id, typing_since) {
            if fresh && users.is_empty() {
                // Nothing to say on a fresh sync.
            } else {
                room.ephemeral
                    .events
                    .push(raw(&json!({ "type": "m.typing", "content": { "user_ids": users } }))?);
                ephemeral = true;
            }
        }
        let receipts = self
            .store
            .receipts_since(
                room_id.to_string(),
                if fresh { 0 } else { since.map(|s| s.pos).unwrap_or(0) },
                upto,
            )
            .await?;
        let content = receipt_content(receipts, user);
        if !content.is_empty() {
            room.ephemeral
                .events
                .push(raw(&json!({ "type": "m.receipt", "content": content }))?);
            ephemeral = true;
        }

        // Room account data.
        let mut account_data = false;
        let fresh_rows;
        let rows: Vec<&missive_store::AccountDataRow> = if fresh && since.is_some() {
            // A room new to this client gets all of its account data.
            fresh_rows = self.store.account_data_since(user.to_string(), 0, upto).await?;
            fresh_rows.iter().filter(|r| r.room_id == room_id.as_str()).collect()
        } else {
            room_account_data
        };
        for row in rows {
            room.account_data
                .events
                .push(raw(&json!({ "type": row.kind, "content": row.content }))?);
            account_data = true;
        }

        // Summary and unread counts.
        let members = self.store.room_members(room_id.to_string()).await?;
        let joined = members.iter().filter(|(_, m)| m == "join").count();
        let invited = members.iter().filter(|(_, m)| m == "invite").count();
        room.summary.joined_member_count = UInt::new(joined as u64);
        room.summary.invited_member_count = UInt::new(invited as u64);
        let has_name = state_now.contains_key(&("m.room.name".into(), String::new()))
            || state_now.contains_key(&("m.room.canonical_alias".into(), String::new()));
        if !has_name {
            room.summary.heroes = heroes(&members, user);
        }
        let (notifications, highlights) = self.unread_counts(user, room_id, upto).await?;
        room.unread_notifications.notification_count = UInt::new(notifications);
        room.unread_notifications.highlight_count = UInt::new(highlights);

        if fresh || !timeline.is_empty() || limited || ephemeral || account_data || !state_events.is_empty() {
            Ok(Some(room))
        } else {
            Ok(None)
        }
    }

    /// A room the user left or was removed from since the last sync: the
    /// timeline up to their departure (their own leave included), with the
    /// state a client needs to show it.
    async fn left_room(
        &self,
        session: &Session,
        room_id: &RoomId,
        since: Option<SyncToken>,
        left_at: i64,
        departure_id: &str,
        filter: &FilterDefinition,
    ) -> Result<Option<sync::LeftRoom>> {
        let window = self
            .timeline_window(
                &session.user_id,
                room_id,
                since.map(|s| s.pos),
                left_at,
                &filter.room.timeline,
            )
            .await?;
        let mut room = sync::LeftRoom::new();
        // Someone who never was in the room (an invite declined, a knock
        // withdrawn, a ban before any join) learns only that they are out.
        let departure = self.store.event(departure_id.to_owned()).await?;
        if let Some(own) = departure.filter(|d| !left_after_joining(d)) {
            room.timeline.prev_batch = Some(position_token(left_at - 1));
            for json in self.timeline_client_events(&[own], Some(session)).await? {
                room.timeline.events.push(raw(&json)?);
            }
            return Ok(Some(room));
        }
        room.timeline.limited = window.limited;
        let start = window.events.first().map(|e| e.stream_pos - 1).unwrap_or(left_at);
        room.timeline.prev_batch = Some(position_token(start));
        let (state_events, _) = self.sync_state(session, room_id, since, &window, start, filter).await?;
        let mut state_json = vec![];
        for ev in &state_events {
            state_json.push(raw(&self.client_event(ev, Some(session)).await?)?);
        }
        room.state = sync::State::Before(state_json.into());
        for json in self.timeline_client_events(&window.events, Some(session)).await? {
            room.timeline.events.push(raw(&json)?);
        }
        Ok(Some(room))
    }

    /// The state a sync gives with a room's timeline: all of it at the
    /// timeline's start on a first sync of the room (`since` is `None`),
    /// else what changed between the last sync and that start when events
    /// were left out in between. With lazy-loaded members, only the members
    /// of the timeline's senders (and the user's own on a first sync), less
    /// those this device was already sent unless redundant ones are asked
    /// for. Returns the events and the state at the timeline's start.
    async fn sync_state(
        &self,
        session: &Session,
        room_id: &RoomId,
        since: Option<SyncToken>,
        window: &Window,
        start_pos: i64,
        filter: &FilterDefinition,
    ) -> Result<(Vec<StoredEvent>, std::sync::Arc<missive_core::auth::StateMap>)> {
        let user = &session.user_id;
        let state_filter = &filter.room.state;
        let (lazy, redundant) = match state_filter.lazy_load_options {
            LazyLoadOptions::Disabled => (false, true),
            LazyLoadOptions::Enabled {
                include_redundant_members,
            } => (true, include_redundant_members),
        };
        let wants = |kind: &str| {
            !state_filter
                .not_types
                .iter()
                .any(|t| crate::services::timeline::type_matches(t, kind))
                && state_filter
                    .types
                    .as_ref()
                    .is_none_or(|types| types.iter().any(|t| crate::services::timeline::type_matches(t, kind)))
        };
        let state_now = match self.store.last_event_at(room_id.to_string(), start_pos).await? {
            Some(e) => self.store.state_at_group(e.state_group).await?,
            None => Default::default(),
        };
        let first = since.is_none();
        if first && lazy && !redundant {
            self.lazy_members.forget_room(session, room_id);
        }
        let mut ids: Vec<ruma::OwnedEventId> = vec![];
        if first || window.gap {
            let before = match since {
                None => None,
                Some(since) => match self.store.last_event_at(room_id.to_string(), since.pos).await? {
                    Some(e) => Some(self.store.state_at_group(e.state_group).await?),
                    None => None,
                },
            };
            for ((kind, key), id) in state_now.iter() {
                if lazy && *kind == ruma::events::StateEventType::RoomMember {
                    continue;
                }
                if before
                    .as_ref()
                    .is_some_and(|b| b.get(&(kind.clone(), key.clone())) == Some(id))
                {
                    continue;
                }
                if wants(&kind.to_string()) {
                    ids.push(id.clone());
                }
            }
        }
        let in_timeline: HashSet<&ruma::EventId> = window.events.iter().map(|e| &*e.pdu.event_id).collect();
        if lazy && wants("m.room.member") {
            let mut members: Vec<&ruma::UserId> = window.events.iter().map(|e| &*e.pdu.sender).collect();
            if first {
                members.push(user);
            }
            members.sort();
            members.dedup();
            for m in members {
                let Some(id) = state_now.get(&(ruma::events::StateEventType::RoomMember, m.to_string())) else {
                    continue;
                };
                if in_timeline.contains(&**id) || (!redundant && self.lazy_members.held(session, room_id, m, id)) {
                    continue;
                }
                ids.push(id.clone());
            }
        }
        let events = self.store.events(ids.iter().map(|e| e.to_string()).collect()).await?;
        if lazy && !redundant {
            // What the client now holds: these members, and those whose
            // events its timeline carries.
            let sent = events
                .iter()
                .chain(&window.events)
                .filter(|e| e.pdu.kind == ruma::events::TimelineEventType::RoomMember);
            for ev in sent {
                if let Some(member) = ev
                    .pdu
                    .state_key
                    .as_deref()
                    .and_then(|k| <&ruma::UserId>::try_from(k).ok())
                {
                    self.lazy_members.sent(session, room_id, member, &ev.pdu.event_id);
                }
            }
        }
        Ok((events, state_now))
    }

    /// Notifications (and highlights among them) the user's push rules
    /// recorded in the room, after their latest read receipt or own event.
    pub(crate) async fn unread_counts(&self, user: &ruma::UserId, room_id: &RoomId, upto: i64) -> Result<(u64, u64)> {
        Ok(self
            .store
            .unread_notification_counts(user.to_string(), room_id.to_string(), upto)
            .await?)
    }
}
