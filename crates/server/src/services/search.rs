//! Server-side search (`POST /search`, the `room_events` category) over the
//! store's full-text index. Only rooms the user has been joined to are
//! searched (and not the ones they forgot), and every result and context
//! event passes the same history-visibility check as `/messages`. Encrypted
//! rooms' messages are not in the index: the server cannot read them.

use std::collections::{BTreeMap, HashMap, HashSet};

use missive_store::{
    Direction, StoredEvent,
    search::{SearchFrom, SearchKey, SearchOrder, SearchQuery, search_words},
};
use ruma::{
    OwnedMxcUri, OwnedRoomId, OwnedUserId, UInt,
    api::client::filter::RoomEventFilter,
    api::client::search::search_events::v3::{
        Criteria, EventContextResult, GroupingKey, OrderBy, ResultGroup, ResultGroupMap, ResultRoomEvents, SearchKeys,
        SearchResult, UserProfile,
    },
    serde::Raw,
};
use serde_json::Value;

use crate::{
    App, Error, Result,
    services::{
        accounts::Session,
        timeline::{filter_allows, position_token},
    },
};

/// Results per page when the filter names no limit, and at most.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 50;
/// Context events on each side of a result, at most.
const MAX_CONTEXT: usize = 20;
/// Matches examined per request at most, however many are hidden from
/// the user: a page may come back short, with a `next_batch` to go on.
const MAX_SCAN: usize = 1000;

fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(v).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

/// Where the next page starts, as the client sees it: an offset in the
/// ranked list (`r…`) or the position newest-first results stay below (`p…`).
fn parse_batch(token: &str, order: SearchOrder) -> Result<SearchFrom> {
    let bad = || Error::invalid_param("Unknown next_batch token");
    match (order, token.split_at_checked(1)) {
        (SearchOrder::Rank, Some(("r", n))) => Ok(SearchFrom::Offset(n.parse().map_err(|_| bad())?)),
        (SearchOrder::Recent, Some(("p", n))) => Ok(SearchFrom::Before(n.parse().map_err(|_| bad())?)),
        _ => Err(bad()),
    }
}

fn batch_token(from: SearchFrom) -> Option<String> {
    match from {
        SearchFrom::Start => None,
        SearchFrom::Offset(n) => Some(format!("r{n}")),
        SearchFrom::Before(p) => Some(format!("p{p}")),
    }
}

impl App {
    /// Runs a `room_events` search for the session's user. `with_context`
    /// says whether the request had an `event_context` (ruma cannot tell an
    /// absent one from the default).
    pub async fn search_room_events(
        &self,
        session: &Session,
        criteria: &Criteria,
        next_batch: Option<&str>,
        with_context: bool,
    ) -> Result<ResultRoomEvents> {
        let user = &session.user_id;
        let filter = &criteria.filter;
        let order = match &criteria.order_by {
            None | Some(OrderBy::Rank) => SearchOrder::Rank,
            Some(OrderBy::Recent) => SearchOrder::Recent,
            Some(o) => return Err(Error::invalid_param(format!("Unknown order_by {}", o.as_str()))),
        };
        let mut keys = vec![];
        for k in criteria.keys.iter().flatten() {
            keys.push(match k {
                SearchKeys::ContentBody => SearchKey::Body,
                SearchKeys::ContentName => SearchKey::Name,
                SearchKeys::ContentTopic => SearchKey::Topic,
                k => return Err(Error::invalid_param(format!("Unknown search key {}", k.as_str()))),
            });
        }

        // The rooms to look in: those the user was ever joined to and has
        // not forgotten, narrowed by the filter.
        let forgotten: HashSet<String> = self
            .store
            .forgotten_rooms(user.to_string())
            .await?
            .into_iter()
            .collect();
        let wanted: Option<HashSet<String>> = filter.rooms.as_ref().map(|r| r.iter().map(|r| r.to_string()).collect());
        let rooms: Vec<String> = self
            .store
            .rooms_ever_joined(user.to_string())
            .await?
            .into_iter()
            .filter(|r| !forgotten.contains(r))
            .filter(|r| wanted.as_ref().is_none_or(|w| w.contains(r)))
            .filter(|r| !filter.not_rooms.iter().any(|n| n.as_str() == r))
            .collect();

        let query = SearchQuery {
            term: criteria.search_term.clone(),
            keys,
            rooms,
            senders: filter
                .senders
                .as_ref()
                .map(|s| s.iter().map(|u| u.to_string()).collect()),
            not_senders: filter.not_senders.iter().map(|u| u.to_string()).collect(),
            types: filter.types.clone(),
            not_types: filter.not_types.clone(),
            order,
        };
        let limit = filter
            .limit
            .map(|l| u64::from(l) as usize)
            .unwrap_or(DEFAULT_LIMIT)
            .clamp(1, MAX_LIMIT);
        let start = match next_batch {
            Some(t) => parse_batch(t, order)?,
            None => SearchFrom::Start,
        };

        let (hits, next) = self.visible_hits(user, &query, filter, start, limit).await?;
        let count = self.visible_count(user, &query).await?;

        let mut out = ResultRoomEvents::new();
        out.count = Some(UInt::try_from(count).unwrap_or(UInt::MAX));
        out.highlights = search_words(&criteria.search_term);
        out.next_batch = next.and_then(batch_token);
        for (ev, rank) in &hits {
            let mut result = SearchResult::new();
            result.rank = Some(*rank);
            result.result = Some(raw(&self.timeline_client_event(ev, Some(session)).await?)?);
            if with_context {
                result.context = self.search_context(session, criteria, ev).await?;
            }
            out.results.push(result);
        }

        if criteria.include_state == Some(true) {
            let rooms: HashSet<&OwnedRoomId> = hits.iter().map(|(ev, _)| &ev.pdu.room_id).collect();
            for room in rooms {
                let Ok(state) = crate::api::client::state::readable_state(self, room, user).await else {
                    continue;
                };
                let events = self
                    .store
                    .events(state.values().map(|e| e.to_string()).collect())
                    .await?;
                let mut list = Vec::with_capacity(events.len());
                for e in &events {
                    list.push(raw(&self.client_event(e, Some(session)).await?)?);
                }
                out.state.insert(room.clone(), list);
            }
        }

        for grouping in &criteria.groupings.group_by {
            let group = match &grouping.key {
                Some(GroupingKey::RoomId) => {
                    ResultGroupMap::RoomId(groups(&hits, &out.next_batch, |e| e.pdu.room_id.clone()))
                }
                Some(GroupingKey::Sender) => {
                    ResultGroupMap::Sender(groups(&hits, &out.next_batch, |e| e.pdu.sender.clone()))
                }
                _ => continue,
            };
            out.groups.insert(group);
        }
        Ok(out)
    }

    /// Walks the matches in order from `start`, keeping those the user may
    /// see, until `limit` are found. Returns them with their rank, and where
    /// the next page starts if the matches are not exhausted.
    async fn visible_hits(
        &self,
        user: &ruma::UserId,
        query: &SearchQuery,
        filter: &RoomEventFilter,
        start: SearchFrom,
        limit: usize,
    ) -> Result<(Vec<(StoredEvent, f64)>, Option<SearchFrom>)> {
        let batch = (limit * 2).max(20);
        let mut cursor = match (start, query.order) {
            (SearchFrom::Start, SearchOrder::Rank) => SearchFrom::Offset(0),
            (SearchFrom::Start, SearchOrder::Recent) => SearchFrom::Before(i64::MAX),
            (from, _) => from,
        };
        let mut found = vec![];
        let mut scanned = 0;
        loop {
            let page = self.store.search_events(query.clone(), cursor, batch).await?;
            let exhausted = page.len() < batch;
            scanned += page.len();
            // Visibility is decided room by room, for the whole batch.
            let mut by_room: HashMap<OwnedRoomId, Vec<StoredEvent>> = HashMap::new();
            for hit in &page {
                by_room
                    .entry(hit.event.pdu.room_id.clone())
                    .or_default()
                    .push(hit.event.clone());
            }
            let mut visible = HashSet::new();
            for (room, events) in by_room {
                for e in self.filter_visible(user, &room, events).await? {
                    visible.insert(e.pdu.event_id);
                }
            }
            let mut taken = 0;
            for hit in page.iter() {
                taken += 1;
                cursor = match cursor {
                    SearchFrom::Offset(n) => SearchFrom::Offset(n + 1),
                    _ => SearchFrom::Before(hit.event.stream_pos),
                };
                // The index applied the filter's sender and type clauses;
                // this adds `contains_url`.
                if visible.contains(&hit.event.pdu.event_id) && filter_allows(filter, &hit.event) {
                    found.push((hit.event.clone(), hit.rank));
                    if found.len() == limit {
                        break;
                    }
                }
            }
            let more = !exhausted || taken < page.len();
            if found.len() == limit || !more {
                return Ok((found, more.then_some(cursor)));
            }
            if scanned >= MAX_SCAN {
                return Ok((found, Some(cursor)));
            }
        }
    }

    /// How many matches the user may see, in all: the matches are counted
    /// by state group in the store, and each group's visibility is checked
    /// on one of its events.
    async fn visible_count(&self, user: &ruma::UserId, query: &SearchQuery) -> Result<u64> {
        let groups = self.store.search_counts(query.clone()).await?;
        let counts: HashMap<String, i64> = groups.iter().map(|g| (g.event_id.clone(), g.count)).collect();
        let mut by_room: HashMap<String, Vec<String>> = HashMap::new();
        for g in groups {
            by_room.entry(g.room_id).or_default().push(g.event_id);
        }
        let mut total = 0u64;
        for (room, ids) in by_room {
            let Ok(room) = OwnedRoomId::try_from(room) else {
                continue;
            };
            let events = self.store.events(ids).await?;
            for e in self.filter_visible(user, &room, events).await? {
                total += counts.get(e.pdu.event_id.as_str()).copied().unwrap_or(0).max(0) as u64;
            }
        }
        Ok(total)
    }

    /// The events around a result the user may see, with the senders'
    /// profiles as they were at the result when asked.
    async fn search_context(
        &self,
        session: &Session,
        criteria: &Criteria,
        ev: &StoredEvent,
    ) -> Result<EventContextResult> {
        let user = &session.user_id;
        let ctx = &criteria.event_context;
        let before_n = (u64::from(ctx.before_limit) as usize).min(MAX_CONTEXT);
        let after_n = (u64::from(ctx.after_limit) as usize).min(MAX_CONTEXT);
        let room = ev.pdu.room_id.to_string();
        let before = if before_n == 0 {
            vec![]
        } else {
            self.store
                .room_events(room.clone(), ev.stream_pos, None, Direction::Backward, before_n)
                .await?
        };
        let after = if after_n == 0 {
            vec![]
        } else {
            self.store
                .room_events(
                    room,
                    ev.stream_pos,
                    Some(self.store.persisted_upto()),
                    Direction::Forward,
                    after_n,
                )
                .await?
        };
        let mut out = EventContextResult::new();
        out.start = Some(position_token(
            before.last().map(|e| e.stream_pos - 1).unwrap_or(ev.stream_pos - 1),
        ));
        out.end = Some(position_token(
            after.last().map(|e| e.stream_pos).unwrap_or(ev.stream_pos),
        ));
        let keep = |list: Vec<StoredEvent>| -> Vec<StoredEvent> {
            list.into_iter()
                .filter(|e| filter_allows(&criteria.filter, e))
                .collect()
        };
        let before = self.filter_visible(user, &ev.pdu.room_id, keep(before)).await?;
        let after = self.filter_visible(user, &ev.pdu.room_id, keep(after)).await?;
        for json in self.timeline_client_events(&before, Some(session)).await? {
            out.events_before.push(raw(&json)?);
        }
        for json in self.timeline_client_events(&after, Some(session)).await? {
            out.events_after.push(raw(&json)?);
        }
        if ctx.include_profile {
            let senders: HashSet<&OwnedUserId> = before
                .iter()
                .chain(after.iter())
                .chain(std::iter::once(ev))
                .map(|e| &e.pdu.sender)
                .collect();
            let state = self.store.state_at_group(ev.state_group).await?;
            let ids = senders
                .iter()
                .filter_map(|s| state.get(&("m.room.member".into(), s.to_string())))
                .map(|e| e.to_string())
                .collect();
            for member in self.store.events(ids).await? {
                let Some(Ok(user_id)) = member.pdu.state_key.as_deref().map(OwnedUserId::try_from) else {
                    continue;
                };
                let content = member.pdu.content_value();
                let mut profile = UserProfile::new();
                profile.displayname = content.get("displayname").and_then(Value::as_str).map(str::to_owned);
                profile.avatar_url = content.get("avatar_url").and_then(Value::as_str).map(OwnedMxcUri::from);
                out.profile_info.insert(user_id, profile);
            }
        }
        Ok(out)
    }
}

/// Results grouped by a key, each group with its results in page order and
/// the group's place among the groups.
fn groups<K: Ord + Clone>(
    hits: &[(StoredEvent, f64)],
    next_batch: &Option<String>,
    key: impl Fn(&StoredEvent) -> K,
) -> BTreeMap<K, ResultGroup> {
    let mut out: BTreeMap<K, ResultGroup> = BTreeMap::new();
    for (ev, _) in hits {
        let k = key(ev);
        let order = out.len();
        let g = out.entry(k).or_insert_with(|| {
            let mut g = ResultGroup::new();
            g.order = Some(UInt::try_from(order as u64).unwrap_or(UInt::MAX));
            g.next_batch = next_batch.clone();
            g
        });
        g.results.push(ev.pdu.event_id.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_tokens_round_trip_and_follow_the_order() {
        assert_eq!(parse_batch("r20", SearchOrder::Rank).unwrap(), SearchFrom::Offset(20));
        assert_eq!(
            parse_batch("p1234", SearchOrder::Recent).unwrap(),
            SearchFrom::Before(1234)
        );
        assert!(parse_batch("p1234", SearchOrder::Rank).is_err());
        assert!(parse_batch("rx", SearchOrder::Rank).is_err());
        assert!(parse_batch("", SearchOrder::Rank).is_err());
        assert_eq!(batch_token(SearchFrom::Offset(3)).as_deref(), Some("r3"));
    }
}
