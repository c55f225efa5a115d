//! Reading room history: visibility (history visibility and membership at
//! each event), the client format, and pagination tokens.

use std::collections::{HashMap, HashSet};

use missive_core::visibility::{HistoryVisibility, may_see};
use missive_store::StoredEvent;
use ruma::{OwnedEventId, RoomId, UserId, api::client::filter::RoomEventFilter, events::TimelineEventType};
use serde_json::{Value, json};

use crate::{App, Result, services::accounts::Session};

/// How many of a user's membership events are walked back to find their
/// latest join.
const MEMBERSHIP_WALK: usize = 32;

/// A position in a room's timeline: between the event at `pos` and the next.
/// Sync tokens (`s…`) are accepted wherever a pagination token is.
pub fn parse_position(token: &str) -> Option<i64> {
    let rest = token.strip_prefix('s').or_else(|| token.strip_prefix('t'))?;
    rest.split('_').next()?.parse().ok()
}

pub fn position_token(pos: i64) -> String {
    format!("t{pos}")
}

/// Matches an event type against a filter pattern (`*` is a wildcard).
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

/// Whether an event passes a room event filter's type and sender clauses.
pub fn filter_allows(filter: &RoomEventFilter, ev: &StoredEvent) -> bool {
    let kind = ev.pdu.kind.to_string();
    if filter.not_types.iter().any(|t| type_matches(t, &kind)) {
        return false;
    }
    if let Some(types) = &filter.types
        && !types.iter().any(|t| type_matches(t, &kind))
    {
        return false;
    }
    if filter.not_senders.contains(&ev.pdu.sender) {
        return false;
    }
    if let Some(senders) = &filter.senders
        && !senders.contains(&ev.pdu.sender)
    {
        return false;
    }
    if let Some(url) = filter.url_filter {
        let has_url = ev.pdu.content_value().get("url").is_some();
        let want = matches!(url, ruma::api::client::filter::UrlFilter::EventsWithUrl);
        if has_url != want {
            return false;
        }
    }
    true
}

/// A user's own leave is theirs to see whatever the history visibility:
/// a client that left (or declined an invite to) a `joined`-only room
/// still learns that it is out, as the reference server shows it.
fn is_own_leave(user: &UserId, ev: &StoredEvent) -> bool {
    is_own_membership(user, ev) && ev.pdu.membership().as_deref() == Some("leave")
}

fn is_own_membership(user: &UserId, ev: &StoredEvent) -> bool {
    ev.pdu.kind == TimelineEventType::RoomMember && ev.pdu.state_key.as_deref() == Some(user.as_str())
}

/// What decides the events one user sees in one room, read once for a
/// request: whom they ignore, and when they last joined.
pub struct RoomViewer<'a> {
    user: &'a UserId,
    ignored: HashSet<ruma::OwnedUserId>,
    /// The position of the user's latest join (the spec's "joined the room
    /// at any point after the event" for `shared` history).
    last_join: Option<i64>,
}

impl App {
    /// Reads what decides the events `user` sees in `room_id`.
    pub async fn room_viewer<'a>(&self, user: &'a UserId, room_id: &RoomId) -> Result<RoomViewer<'a>> {
        Ok(RoomViewer {
            user,
            ignored: self.ignored_users(user).await?,
            last_join: self.last_join_pos(room_id, user).await?,
        })
    }

    /// The stream position of `user`'s latest join of the room, found by
    /// walking back their membership events (each names the one it replaced).
    async fn last_join_pos(&self, room_id: &RoomId, user: &UserId) -> Result<Option<i64>> {
        let mut ev = self
            .store
            .current_state_event(room_id.to_string(), "m.room.member".into(), user.to_string())
            .await?;
        for _ in 0..MEMBERSHIP_WALK {
            let Some(e) = ev else { return Ok(None) };
            if e.pdu.membership().as_deref() == Some("join") {
                return Ok(Some(e.stream_pos));
            }
            let previous = e
                .unsigned
                .as_ref()
                .and_then(|u| u.get("replaces_state"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            ev = match previous {
                Some(id) => self.store.event(id).await?,
                None => None,
            };
        }
        Ok(None)
    }

    /// Keeps the events `user` may see under the room's history visibility.
    pub async fn filter_visible(
        &self,
        user: &UserId,
        room_id: &RoomId,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<StoredEvent>> {
        let viewer = self.room_viewer(user, room_id).await?;
        self.filter_visible_with(&viewer, events, &HashSet::new()).await
    }

    /// [`filter_visible`](Self::filter_visible) for a viewer read already,
    /// also keeping the events of `always` (the room's current state, shown
    /// to a member in a sync timeline whatever the history visibility at
    /// the time).
    pub async fn filter_visible_with(
        &self,
        viewer: &RoomViewer<'_>,
        events: Vec<StoredEvent>,
        always: &HashSet<OwnedEventId>,
    ) -> Result<Vec<StoredEvent>> {
        let user = viewer.user;
        let mut by_group: HashMap<i64, (HistoryVisibility, Option<String>)> = HashMap::new();
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            if crate::services::ignore::hides(&viewer.ignored, user, &ev) {
                continue;
            }
            if is_own_leave(user, &ev) || always.contains(&ev.pdu.event_id) {
                out.push(ev);
                continue;
            }
            let (visibility, at_event) = match by_group.get(&ev.state_group) {
                Some(v) => v.clone(),
                None => {
                    let v = self.visibility_at_group(user, ev.state_group).await?;
                    by_group.insert(ev.state_group, v.clone());
                    v
                }
            };
            let joined_later = viewer.last_join.is_some_and(|j| j >= ev.stream_pos);
            if may_see(visibility, at_event.as_deref(), joined_later) {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// The history visibility in force at a state group, and the user's
    /// membership there.
    pub(crate) async fn visibility_at_group(
        &self,
        user: &UserId,
        group: i64,
    ) -> Result<(HistoryVisibility, Option<String>)> {
        // Two entries of the state, not all of it: a page of a room with
        // thousands of members costs what it does in a small room.
        let hv_key = ("m.room.history_visibility".to_owned(), String::new());
        let member_key = ("m.room.member".to_owned(), user.to_string());
        let state = self
            .store
            .state_ids_at_group_for(group, vec![hv_key.clone(), member_key.clone()])
            .await?;
        let mut ids = vec![];
        let hv_id = state.get(&hv_key).cloned();
        let member_id = state.get(&member_key).cloned();
        ids.extend(hv_id.iter().map(|e| e.to_string()));
        ids.extend(member_id.iter().map(|e| e.to_string()));
        let loaded = self.store.events(ids).await?;
        let find =
            |id: &Option<ruma::OwnedEventId>| id.as_ref().and_then(|id| loaded.iter().find(|e| &e.pdu.event_id == id));
        let vis = find(&hv_id).and_then(|e| {
            e.pdu
                .content_value()
                .get("history_visibility")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let at_event = find(&member_id).and_then(|e| e.pdu.membership());
        Ok((HistoryVisibility::parse(vis.as_deref()), at_event))
    }

    /// Whether `user` may see this one event.
    pub async fn may_see_event(&self, user: &UserId, ev: &StoredEvent) -> Result<bool> {
        let viewer = self.room_viewer(user, &ev.pdu.room_id).await?;
        Ok(!self
            .filter_visible_with(&viewer, vec![ev.clone()], &HashSet::new())
            .await?
            .is_empty())
    }

    /// Events in the client format, with `unsigned` filled in for the viewer.
    pub async fn client_events(&self, events: &[StoredEvent], viewer: Option<&Session>) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            out.push(self.client_event(ev, viewer).await?);
        }
        Ok(out)
    }

    /// Timeline events in the client format: as [`client_events`](Self::client_events),
    /// and each with the viewer's membership in the room after it
    /// (`unsigned.membership`, MSC4115), so that a client tells a message
    /// sent before it joined from one whose key it lacks.
    pub async fn timeline_client_events(&self, events: &[StoredEvent], viewer: Option<&Session>) -> Result<Vec<Value>> {
        let Some(v) = viewer else {
            return self.client_events(events, None).await;
        };
        let memberships = self.memberships_after(&v.user_id, events).await?;
        let mut out = Vec::with_capacity(events.len());
        for (ev, membership) in events.iter().zip(memberships) {
            let mut json = self.client_event(ev, viewer).await?;
            json["unsigned"]["membership"] = membership.into();
            out.push(json);
        }
        Ok(out)
    }

    /// One timeline event for the viewer (see [`timeline_client_events`](Self::timeline_client_events)).
    pub async fn timeline_client_event(&self, ev: &StoredEvent, viewer: Option<&Session>) -> Result<Value> {
        let mut out = self.timeline_client_events(std::slice::from_ref(ev), viewer).await?;
        Ok(out.pop().unwrap_or_default())
    }

    /// `user`'s membership in the state after each event: `leave` when they
    /// have none. One look-up per distinct member event, not per event.
    async fn memberships_after(&self, user: &UserId, events: &[StoredEvent]) -> Result<Vec<String>> {
        let mut member_ids = Vec::with_capacity(events.len());
        let key = ("m.room.member".to_owned(), user.to_string());
        let mut by_group: HashMap<i64, Option<OwnedEventId>> = HashMap::new();
        for ev in events {
            let id = if is_own_membership(user, ev) {
                None
            } else if let Some(id) = by_group.get(&ev.state_group) {
                id.clone()
            } else {
                let id = self
                    .store
                    .state_ids_at_group_for(ev.state_group, vec![key.clone()])
                    .await?
                    .remove(&key);
                by_group.insert(ev.state_group, id.clone());
                id
            };
            member_ids.push(id);
        }
        let mut wanted: Vec<String> = member_ids.iter().flatten().map(|e| e.to_string()).collect();
        wanted.sort();
        wanted.dedup();
        let found: HashMap<OwnedEventId, String> = self
            .store
            .events(wanted)
            .await?
            .into_iter()
            .filter_map(|e| Some((e.pdu.event_id.clone(), e.pdu.membership()?)))
            .collect();
        Ok(events
            .iter()
            .zip(member_ids)
            .map(|(ev, id)| match id {
                None if is_own_membership(user, ev) => ev.pdu.membership(),
                None => None,
                Some(id) => found.get(&id).cloned(),
            })
            .map(|m| m.unwrap_or_else(|| "leave".to_owned()))
            .collect())
    }

    pub async fn client_event(&self, ev: &StoredEvent, viewer: Option<&Session>) -> Result<Value> {
        let mut unsigned = ev.unsigned.clone().unwrap_or_else(|| json!({}));
        let now = crate::services::accounts::now_ms();
        let ts = u64::from(ev.pdu.origin_server_ts.0) as i64;
        unsigned["age"] = (now - ts).max(0).into();
        if let (Some(v), Some(dev), Some(txn)) = (viewer, &ev.txn_device, &ev.txn_id)
            && v.user_id == ev.pdu.sender
            && v.device_id.as_str() == dev
        {
            unsigned["transaction_id"] = txn.clone().into();
        }
        if let Some(by) = &ev.redacted_by
            && let Some(r) = self.store.event(by.clone()).await?
            && !self.ignores(viewer, &r.pdu.sender).await?
        {
            unsigned["redacted_because"] = r.pdu.to_client_event(None);
        }
        if ev.redacted_by.is_none()
            && let Some(relations) = self.bundled_relations(ev, viewer).await?
        {
            unsigned["m.relations"] = relations;
        }
        Ok(ev.pdu.to_client_event(Some(unsigned)))
    }

    /// Whether the viewer (if any) ignores `user`.
    async fn ignores(&self, viewer: Option<&Session>, user: &UserId) -> Result<bool> {
        Ok(match viewer {
            Some(v) => self.ignored_users(&v.user_id).await?.contains(user),
            None => false,
        })
    }

    /// The aggregations a client shows with an event: its latest edit (by
    /// its own sender), its thread summary and its references, each made
    /// only of the related events the viewer may see (a former member does
    /// not read, through the summary, what was said after they left).
    async fn bundled_relations(&self, ev: &StoredEvent, viewer: Option<&Session>) -> Result<Option<Value>> {
        let rows = self.store.relation_rows(ev.pdu.event_id.to_string()).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let kinds: HashMap<String, String> = rows.iter().map(|(t, _, id)| (id.clone(), t.clone())).collect();
        let mut related = self
            .store
            .events(rows.into_iter().map(|(_, _, id)| id).collect())
            .await?;
        if let Some(v) = viewer {
            related = self.filter_visible(&v.user_id, &ev.pdu.room_id, related).await?;
        }
        related.sort_by_key(|e| e.stream_pos);
        // The relation as recorded when the event came (a redacted reply
        // still counts in its thread).
        let rel_type = |e: &StoredEvent| kinds.get(e.pdu.event_id.as_str()).cloned();
        let mut out = serde_json::Map::new();
        let edit = related
            .iter()
            .rev()
            .find(|e| rel_type(e).as_deref() == Some("m.replace") && e.pdu.sender == ev.pdu.sender);
        if let Some(e) = edit {
            out.insert("m.replace".into(), e.pdu.to_client_event(None));
        }
        let thread: Vec<&StoredEvent> = related
            .iter()
            .filter(|e| rel_type(e).as_deref() == Some("m.thread"))
            .collect();
        if let Some(latest) = thread.last() {
            let participated =
                viewer.is_some_and(|v| ev.pdu.sender == v.user_id || thread.iter().any(|e| e.pdu.sender == v.user_id));
            out.insert(
                "m.thread".into(),
                json!({
                    "latest_event": latest.pdu.to_client_event(None),
                    "count": thread.len(),
                    "current_user_participated": participated,
                }),
            );
        }
        let refs: Vec<Value> = related
            .iter()
            .filter(|e| rel_type(e).as_deref() == Some("m.reference"))
            .map(|e| json!({ "event_id": e.pdu.event_id }))
            .collect();
        if !refs.is_empty() {
            out.insert("m.reference".into(), json!({ "chunk": refs }));
        }
        Ok((!out.is_empty()).then_some(Value::Object(out)))
    }
}
