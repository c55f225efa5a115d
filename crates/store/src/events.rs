//! Room events, room state (as state groups: a delta chain with periodic
//! full snapshots), forward extremities and current state.

use std::sync::Arc;

use crate::db::{Connection, OptionalExtension, params};
use missive_core::{auth::StateMap, pdu::Pdu};
use ruma::{OwnedEventId, OwnedRoomId, events::StateEventType};

use crate::{
    Direction, Membership, NewRoomEvent, Result, RoomPositions, RoomRow, StoreError, StoredEvent, store::Store,
};

/// A delta chain longer than this is cut by a full snapshot, bounding reads.
const MAX_CHAIN: i64 = 32;

pub(crate) const EVENT_COLS: &str =
    "stream_pos, event_id, room_id, json, unsigned, state_group, redacted_by, txn_device, txn_id";

pub(crate) fn event_row(r: &crate::db::Row) -> crate::db::Result<StoredEvent> {
    let event_id: String = r.get(1)?;
    let room_id: String = r.get(2)?;
    let json: String = r.get(3)?;
    let unsigned: Option<String> = r.get(4)?;
    let bad = |e: String| rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into());
    let event_id = OwnedEventId::try_from(event_id).map_err(|e| bad(e.to_string()))?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| bad(e.to_string()))?;
    let raw = serde_json::value::RawValue::from_string(json).map_err(|e| bad(e.to_string()))?;
    let pdu = Pdu::from_json(event_id, Some(&room_id), raw).map_err(|e| bad(e.to_string()))?;
    Ok(StoredEvent {
        pdu,
        stream_pos: r.get(0)?,
        state_group: r.get(5)?,
        unsigned: unsigned.and_then(|u| serde_json::from_str(&u).ok()),
        redacted_by: r.get(6)?,
        txn_device: r.get(7)?,
        txn_id: r.get(8)?,
    })
}

fn load_state_group(c: &Connection<'_>, group: i64) -> Result<StateMap> {
    // Walk up the chain to the snapshot, then apply deltas oldest first.
    let mut chain = vec![group];
    let mut cur = group;
    while let Some(prev) = c
        .query_row("SELECT prev_id FROM state_groups WHERE id = ?1", [cur], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()?
        .ok_or_else(|| StoreError::Corrupt(format!("missing state group {cur}")))?
    {
        chain.push(prev);
        cur = prev;
    }
    let mut map = StateMap::new();
    let mut st = c.prepare_cached("SELECT type, state_key, event_id FROM state_group_entries WHERE group_id = ?1")?;
    for g in chain.iter().rev() {
        let rows = st.query_map([g], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
        for row in rows {
            let (t, k, e) = row?;
            let e = OwnedEventId::try_from(e).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            map.insert((StateEventType::from(t), k), e);
        }
    }
    Ok(map)
}

impl Store {
    fn cached_state(&self, group: i64) -> Option<Arc<StateMap>> {
        self.inner.state_cache.lock().ok()?.get(group)
    }

    fn cache_state(&self, group: i64, map: Arc<StateMap>) {
        if let Ok(mut c) = self.inner.state_cache.lock() {
            c.insert(group, map);
        }
    }

    /// The bytes the cache of room states may hold.
    pub fn set_state_cache_bytes(&self, budget: usize) {
        if let Ok(mut c) = self.inner.state_cache.lock() {
            c.set_budget(budget);
        }
    }

    /// Some entries of a state group's state, without reading the rest:
    /// what deciding one event's visibility needs, whatever the room's size.
    pub async fn state_ids_at_group_for(
        &self,
        group: i64,
        keys: Vec<(String, String)>,
    ) -> Result<std::collections::HashMap<(String, String), OwnedEventId>> {
        if let Some(m) = self.cached_state(group) {
            return Ok(keys
                .into_iter()
                .filter_map(|(t, k)| {
                    let e = m.get(&(StateEventType::from(t.as_str()), k.clone()))?.clone();
                    Some(((t, k), e))
                })
                .collect());
        }
        if keys.is_empty() {
            return Ok(Default::default());
        }
        let cached = self.inner.chain_cache.lock().ok().and_then(|c| c.get(group));
        let chain = match cached {
            Some(chain) => chain,
            None => {
                // The group's delta chain (at most MAX_CHAIN long), nearest first.
                let chain: Arc<[i64]> = self
                    .read(move |c| {
                        c.query_map(
                            "WITH RECURSIVE chain(id, depth) AS ( \
                               SELECT CAST(?1 AS BIGINT), 0 \
                               UNION ALL SELECT g.prev_id, c.depth + 1 FROM state_groups g JOIN chain c ON g.id = c.id \
                               WHERE g.prev_id IS NOT NULL) \
                             SELECT id FROM chain ORDER BY depth",
                            [group],
                            |r| r.get::<_, i64>(0),
                        )?
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(Into::into)
                    })
                    .await?
                    .into();
                if let Ok(mut c) = self.inner.chain_cache.lock() {
                    c.insert(group, chain.clone());
                }
                chain
            }
        };
        self.read(move |c| {
            // …then the entries for the keys asked in those groups, each
            // found by the primary key: the nearest group naming a key wins.
            let groups: Vec<String> = (0..chain.len()).map(|i| format!("?{}", i + 1)).collect();
            let wanted: Vec<String> = (0..keys.len())
                .map(|i| {
                    let at = chain.len() + 2 * i + 1;
                    format!("(type = ?{at} AND state_key = ?{})", at + 1)
                })
                .collect();
            let sql = format!(
                "SELECT group_id, type, state_key, event_id FROM state_group_entries \
                 WHERE group_id IN ({}) AND ({})",
                groups.join(", "),
                wanted.join(" OR ")
            );
            let mut values: Vec<crate::db::Value> = chain.iter().map(|g| crate::db::Value::Int(*g)).collect();
            for (t, k) in &keys {
                values.push(crate::db::Value::Text(t.clone()));
                values.push(crate::db::Value::Text(k.clone()));
            }
            let depth = |g: i64| chain.iter().position(|x| *x == g).unwrap_or(usize::MAX);
            let mut found: std::collections::HashMap<(String, String), (usize, OwnedEventId)> =
                std::collections::HashMap::new();
            let rows = c.query_map(&sql, crate::db::params_from_iter(values), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for row in rows {
                let (g, t, k, e) = row?;
                let e = OwnedEventId::try_from(e).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let d = depth(g);
                match found.get(&(t.clone(), k.clone())) {
                    Some((nearer, _)) if *nearer <= d => {}
                    _ => {
                        found.insert((t, k), (d, e));
                    }
                }
            }
            Ok(found.into_iter().map(|(key, (_, e))| (key, e)).collect())
        })
        .await
    }

    /// The full state of a state group (the state after some event).
    pub async fn state_at_group(&self, group: i64) -> Result<Arc<StateMap>> {
        if let Some(m) = self.cached_state(group) {
            return Ok(m);
        }
        let map = Arc::new(self.read(move |c| load_state_group(c, group)).await?);
        self.cache_state(group, map.clone());
        Ok(map)
    }

    /// Appends a local event to its room in one transaction: the event, its
    /// state group, forward extremities, current state and the federation
    /// queue entries. Returns its position.
    pub async fn append_event(&self, ev: NewRoomEvent) -> Result<i64> {
        self.write(move |tx, positions| {
            let pdu = &ev.pdu;
            let room_id = pdu.room_id.as_str();
            if let Some(r) = &ev.new_room {
                insert_room(tx, room_id, r)?;
            }
            if ev.new_room.is_none() {
                // Local events extend the room's current (deepest)
                // extremities: refuse one built on extremities that another
                // writer has replaced since.
                let mut current = extremities(tx, room_id)?;
                let mut built: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
                current.sort();
                built.sort();
                if current != built {
                    return Err(StoreError::Stale);
                }
            }
            let base = current_group(tx, room_id)?;
            let group = match (&pdu.state_key, base) {
                (None, Some((g, _))) => g,
                (None, None) => return Err(StoreError::Corrupt("first event of a room is not a state event".into())),
                (Some(sk), base) => {
                    let change = [(pdu.kind.to_string(), sk.clone(), pdu.event_id.to_string())];
                    write_group(tx, room_id, base, &change, false)?
                }
            };
            let pos = positions.take();
            insert_event(tx, pos, &ev, group)?;
            crate::search::index_event(tx, pos, pdu)?;
            advance_extremities(tx, pdu)?;
            if let Some(sk) = &pdu.state_key {
                set_current(
                    tx,
                    room_id,
                    &pdu.kind.to_string(),
                    sk,
                    pdu.event_id.as_str(),
                    pdu.membership(),
                    pos,
                )?;
            }
            if base.map(|(g, _)| g) != Some(group) {
                set_current_group(tx, room_id, group)?;
            }
            crate::federation::queue_pdu(tx, pdu.event_id.as_str(), &ev.federate_to)?;
            Ok(pos)
        })
        .await
    }

    pub async fn room(&self, room_id: String) -> Result<Option<RoomRow>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT room_id, room_version, creator, published FROM rooms WHERE room_id = ?1",
                [room_id],
                |r| {
                    Ok(RoomRow {
                        room_id: r.get(0)?,
                        room_version: r.get(1)?,
                        creator: r.get(2)?,
                        published: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    pub async fn set_room_published(&self, room_id: String, published: bool) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE rooms SET published = ?2 WHERE room_id = ?1",
                params![room_id, published],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn published_rooms(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT room_id FROM rooms WHERE published = 1")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    pub async fn event(&self, event_id: String) -> Result<Option<StoredEvent>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {EVENT_COLS} FROM events WHERE event_id = ?1"),
                [event_id],
                event_row,
            )
            .optional()?)
        })
        .await
    }

    pub async fn events(&self, event_ids: Vec<String>) -> Result<Vec<StoredEvent>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!("SELECT {EVENT_COLS} FROM events WHERE event_id = ?1"))?;
            let mut out = Vec::with_capacity(event_ids.len());
            for id in event_ids {
                if let Some(e) = st.query_row([id], event_row).optional()? {
                    out.push(e);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn event_by_txn(&self, sender: String, device: String, txn_id: String) -> Result<Option<String>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT event_id FROM events WHERE sender = ?1 AND txn_device = ?2 AND txn_id = ?3",
                params![sender, device, txn_id],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// The room's forward extremities and the greatest depth among them.
    /// The room's forward extremities, deepest (then newest) first, and the
    /// greatest depth among them.
    pub async fn forward_extremities(&self, room_id: String) -> Result<(Vec<OwnedEventId>, u64)> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT f.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_id = f.event_id \
                 WHERE f.room_id = ?1 ORDER BY e.depth DESC, e.stream_pos DESC",
            )?;
            let rows = st.query_map([room_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut ids = Vec::new();
            let mut depth = 0;
            for row in rows {
                let (id, d) = row?;
                ids.push(OwnedEventId::try_from(id).map_err(|e| StoreError::Corrupt(e.to_string()))?);
                depth = depth.max(d as u64);
            }
            Ok((ids, depth))
        })
        .await
    }

    pub async fn current_state_ids(&self, room_id: String) -> Result<StateMap> {
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT type, state_key, event_id FROM current_state WHERE room_id = ?1")?;
            let rows = st.query_map([room_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            let mut map = StateMap::new();
            for row in rows {
                let (t, k, e) = row?;
                map.insert(
                    (t.into(), k),
                    OwnedEventId::try_from(e).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                );
            }
            Ok(map)
        })
        .await
    }

    /// The current state entries of a room for the given (type, state_key) keys.
    pub async fn current_state_ids_for(&self, room_id: String, keys: Vec<(String, String)>) -> Result<StateMap> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT event_id FROM current_state WHERE room_id = ?1 AND type = ?2 AND state_key = ?3",
            )?;
            let mut map = StateMap::new();
            for (t, k) in keys {
                if let Some(e) = st
                    .query_row(params![room_id, t, k], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    let e = OwnedEventId::try_from(e).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    map.insert((t.into(), k), e);
                }
            }
            Ok(map)
        })
        .await
    }

    pub async fn current_state_event(
        &self,
        room_id: String,
        kind: String,
        state_key: String,
    ) -> Result<Option<StoredEvent>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {EVENT_COLS} FROM events WHERE event_id = \
                     (SELECT event_id FROM current_state WHERE room_id = ?1 AND type = ?2 AND state_key = ?3)"
                ),
                params![room_id, kind, state_key],
                event_row,
            )
            .optional()?)
        })
        .await
    }

    /// The user's current membership in every room they have a membership event in.
    pub async fn memberships(&self, user_id: String) -> Result<Vec<Membership>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT room_id, membership, event_id, stream_pos FROM current_state \
                 WHERE type = 'm.room.member' AND state_key = ?1",
            )?;
            let rows = st.query_map([user_id], |r| {
                Ok(Membership {
                    room_id: r.get(0)?,
                    membership: r.get(1)?,
                    event_id: r.get(2)?,
                    stream_pos: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Current members of a room with their membership.
    pub async fn room_members(&self, room_id: String) -> Result<Vec<(String, String)>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT state_key, membership FROM current_state WHERE room_id = ?1 AND type = 'm.room.member'",
            )?;
            let rows = st.query_map([room_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Whether the two users are both joined to at least one common room.
    pub async fn share_a_room(&self, a: String, b: String) -> Result<bool> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM current_state x JOIN current_state y ON x.room_id = y.room_id \
                 WHERE x.type = 'm.room.member' AND y.type = 'm.room.member' AND x.state_key = ?1 AND y.state_key = ?2 \
                 AND x.membership = 'join' AND y.membership = 'join')",
                params![a, b],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Rooms among `room_ids` that have an event with position in (since, upto].
    pub async fn rooms_with_events(&self, since: i64, upto: i64) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st =
                c.prepare_cached("SELECT DISTINCT room_id FROM events WHERE stream_pos > ?1 AND stream_pos <= ?2")?;
            let rows = st.query_map(params![since, upto], |r| r.get(0))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Events of a room strictly after (forward) or strictly before
    /// (backward) `from`, not past `bound`, at most `limit`, in the order walked.
    pub async fn room_events(
        &self,
        room_id: String,
        from: i64,
        bound: Option<i64>,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        self.read(move |c| {
            let sql = match dir {
                Direction::Forward => format!(
                    "SELECT {EVENT_COLS} FROM events WHERE room_id = ?1 AND stream_pos > ?2 AND stream_pos <= ?3 \
                     ORDER BY stream_pos ASC LIMIT ?4"
                ),
                Direction::Backward => format!(
                    "SELECT {EVENT_COLS} FROM events WHERE room_id = ?1 AND stream_pos < ?2 AND stream_pos > ?3 \
                     ORDER BY stream_pos DESC LIMIT ?4"
                ),
            };
            let bound = bound.unwrap_or(match dir {
                Direction::Forward => i64::MAX,
                // Outliers (negative positions) are not in the timeline.
                Direction::Backward => 0,
            });
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params![room_id, from, bound, limit as i64], event_row)?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// The last event of the room at or before a position, for the state at a sync token.
    pub async fn last_event_at(&self, room_id: String, pos: i64) -> Result<Option<StoredEvent>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {EVENT_COLS} FROM events WHERE room_id = ?1 AND stream_pos <= ?2 AND stream_pos > 0 ORDER BY stream_pos DESC LIMIT 1"),
                params![room_id, pos],
                event_row,
            )
            .optional()?)
        })
        .await
    }

    /// The `limit` events closest to a timestamp in the given direction,
    /// closest first.
    pub async fn events_at_ts(
        &self,
        room_id: String,
        ts: i64,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        self.read(move |c| {
            let sql = match dir {
                Direction::Forward => format!(
                    "SELECT {EVENT_COLS} FROM events WHERE room_id = ?1 AND origin_server_ts >= ?2 AND stream_pos > 0 ORDER BY origin_server_ts ASC, stream_pos ASC LIMIT ?3"
                ),
                Direction::Backward => format!(
                    "SELECT {EVENT_COLS} FROM events WHERE room_id = ?1 AND origin_server_ts <= ?2 AND stream_pos > 0 ORDER BY origin_server_ts DESC, stream_pos DESC LIMIT ?3"
                ),
            };
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params![room_id, ts, limit as i64], event_row)?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Events relating to `parent`, newest first or oldest first.
    pub async fn relations(
        &self,
        parent: String,
        rel_type: Option<String>,
        event_type: Option<String>,
        from: Option<i64>,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        self.read(move |c| {
            let (cmp, order, start) = match dir {
                Direction::Forward => (">", "ASC", from.unwrap_or(i64::MIN)),
                Direction::Backward => ("<", "DESC", from.unwrap_or(i64::MAX)),
            };
            let sql = format!(
                "SELECT {EVENT_COLS} FROM events WHERE relates_to = ?1 AND (rel_type = ?2 OR ?2 IS NULL) \
                 AND (type = ?3 OR ?3 IS NULL) AND stream_pos {cmp} ?4 ORDER BY stream_pos {order} LIMIT ?5"
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params![parent, rel_type, event_type, start, limit as i64], event_row)?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Every relation to `parent` except annotations (reactions), oldest
    /// first: (rel_type, sender, event_id), for bundled aggregations.
    pub async fn relation_rows(&self, parent: String) -> Result<Vec<(String, String, String)>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT rel_type, sender, event_id FROM events WHERE relates_to = ?1 AND rel_type != 'm.annotation' \
                 ORDER BY stream_pos ASC",
            )?;
            let rows = st.query_map([parent], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Thread roots of a room (events with at least one `m.thread` child), newest activity first.
    pub async fn thread_roots(
        &self,
        room_id: String,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(StoredEvent, i64)>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {cols}, t.latest FROM events e JOIN \
                 (SELECT relates_to, MAX(stream_pos) AS latest FROM events WHERE room_id = ?1 AND rel_type = 'm.thread' GROUP BY relates_to) t \
                 ON t.relates_to = e.event_id WHERE t.latest < ?2 ORDER BY t.latest DESC LIMIT ?3",
                cols = EVENT_COLS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ")
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params![room_id, before.unwrap_or(i64::MAX), limit as i64], |r| Ok((event_row(r)?, r.get(9)?)))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Replaces an event's stored JSON by its redacted form.
    pub async fn redact_event(&self, event_id: String, redacted_json: String, redacted_by: String) -> Result<()> {
        self.write(move |tx, _| {
            crate::search::unindex_event(tx, &event_id)?;
            tx.execute(
                "UPDATE events SET json = ?2, redacted_by = ?3, rel_type = NULL, relates_to = NULL WHERE event_id = ?1",
                params![event_id, redacted_json, redacted_by],
            )?;
            Ok(())
        })
        .await
    }

    /// Events that attach a local media, so access can follow their rooms.
    pub async fn media_refs(&self, media_id: String) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT event_id FROM media_refs WHERE media_id = ?1 LIMIT 100")?;
            let rows = st.query_map([media_id], |r| r.get(0))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    pub async fn forget_room(&self, user_id: String, room_id: String) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "INSERT INTO forgotten_rooms (user_id, room_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![user_id, room_id],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn forgotten_rooms(&self, user_id: String) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT room_id FROM forgotten_rooms WHERE user_id = ?1")?;
            let rows = st.query_map([user_id], |r| r.get(0))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// For each room, the position of its latest event at or before `upto`,
    /// and of its latest event of one of `types` (the events that move a
    /// room up a room list), in one read. Rooms without events are left out.
    pub async fn latest_positions(
        &self,
        room_ids: Vec<String>,
        types: &'static [&'static str],
        upto: i64,
    ) -> Result<Vec<RoomPositions>> {
        self.read(move |c| {
            let mut latest =
                c.prepare_cached("SELECT MAX(stream_pos) FROM events WHERE room_id = ?1 AND stream_pos <= ?2")?;
            let placeholders = (0..types.len())
                .map(|i| format!("?{}", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let mut bump = c.prepare_cached(&format!(
                "SELECT stream_pos FROM events WHERE room_id = ?1 AND stream_pos <= ?2 AND type IN ({placeholders}) \
                 ORDER BY stream_pos DESC LIMIT 1"
            ))?;
            let mut out = Vec::with_capacity(room_ids.len());
            for room_id in room_ids {
                let Some(last) = latest.query_row(params![room_id, upto], |r| r.get::<_, Option<i64>>(0))? else {
                    continue;
                };
                let mut args: Vec<&dyn crate::db::ToValue> = vec![&room_id, &upto];
                args.extend(types.iter().map(|t| t as &dyn crate::db::ToValue));
                let bumped = bump.query_row(args.as_slice(), |r| r.get(0)).optional()?;
                out.push(RoomPositions { room_id, last, bumped });
            }
            Ok(out)
        })
        .await
    }
}

pub(crate) fn insert_room(tx: &Connection<'_>, room_id: &str, r: &crate::NewRoom) -> Result<()> {
    tx.execute(
        "INSERT INTO rooms (room_id, room_version, creator) VALUES (?1, ?2, ?3)",
        params![room_id, r.room_version, r.creator],
    )
    .map_err(exists_or_db)?;
    Ok(())
}

/// The extremities a local event built now extends: the deepest (then
/// newest) [`LOCAL_PREV_EVENTS`](missive_core::limits::LOCAL_PREV_EVENTS),
/// in the order [`Store::forward_extremities`] gives them.
pub(crate) fn extremities(tx: &Connection<'_>, room_id: &str) -> Result<Vec<String>> {
    Ok(tx
        .query_map(
            "SELECT f.event_id FROM forward_extremities f JOIN events e ON e.event_id = f.event_id \
             WHERE f.room_id = ?1 ORDER BY e.depth DESC, e.stream_pos DESC",
            [room_id],
            |r| r.get(0),
        )?
        .take(missive_core::limits::LOCAL_PREV_EVENTS)
        .collect::<crate::db::Result<_>>()?)
}

/// The state group of the room's current state and its chain length. Rooms
/// from before federation have no row: their latest event's group is it.
pub(crate) fn current_group(tx: &Connection<'_>, room_id: &str) -> Result<Option<(i64, i64)>> {
    let explicit = tx
        .query_row(
            "SELECT g.id, g.chain_len FROM room_current_group r JOIN state_groups g ON g.id = r.state_group \
             WHERE r.room_id = ?1",
            [room_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if explicit.is_some() {
        return Ok(explicit);
    }
    Ok(tx
        .query_row(
            "SELECT g.id, g.chain_len FROM events e JOIN state_groups g ON g.id = e.state_group \
             WHERE e.room_id = ?1 AND e.stream_pos > 0 ORDER BY e.stream_pos DESC LIMIT 1",
            [room_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

pub(crate) fn set_current_group(tx: &Connection<'_>, room_id: &str, group: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO room_current_group (room_id, state_group) VALUES (?1, ?2) \
         ON CONFLICT (room_id) DO UPDATE SET state_group = excluded.state_group",
        params![room_id, group],
    )?;
    Ok(())
}

/// A new state group: `base` with `changes` applied, as a delta on it or,
/// when the chain is long (or `snapshot`), as a full copy.
pub(crate) fn write_group(
    tx: &Connection<'_>,
    room_id: &str,
    base: Option<(i64, i64)>,
    changes: &[(String, String, String)],
    snapshot: bool,
) -> Result<i64> {
    let snapshot = snapshot || base.is_none_or(|(_, len)| len >= MAX_CHAIN);
    let (prev_id, len) = match base {
        Some((g, len)) if !snapshot => (Some(g), len + 1),
        _ => (None, 0),
    };
    let g: i64 = tx.query_row(
        "INSERT INTO state_groups (room_id, prev_id, chain_len) VALUES (?1, ?2, ?3) RETURNING id",
        params![room_id, prev_id, len],
        |r| r.get(0),
    )?;
    let mut ins = tx.prepare_cached(
        "INSERT INTO state_group_entries (group_id, type, state_key, event_id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    if snapshot && let Some((pg, _)) = base {
        for ((t, k), e) in load_state_group(tx, pg)? {
            let t = t.to_string();
            if !changes.iter().any(|(ct, ck, _)| *ct == t && *ck == k) {
                ins.execute(params![g, t, k, e.as_str()])?;
            }
        }
    }
    for (t, k, e) in changes {
        ins.execute(params![g, t, k, e])?;
    }
    Ok(g)
}

/// A state group holding exactly `state`: the current group when they are
/// equal, a delta on it when `state` only adds to or replaces its entries,
/// otherwise a full snapshot.
pub(crate) fn group_for_state(tx: &Connection<'_>, room_id: &str, state: &StateMap) -> Result<i64> {
    let base = current_group(tx, room_id)?;
    let Some((bg, _)) = base else {
        let all: Vec<_> = state
            .iter()
            .map(|((t, k), e)| (t.to_string(), k.clone(), e.to_string()))
            .collect();
        return write_group(tx, room_id, None, &all, true);
    };
    let base_map = load_state_group(tx, bg)?;
    let removed = base_map.keys().any(|k| !state.contains_key(k));
    if removed {
        let all: Vec<_> = state
            .iter()
            .map(|((t, k), e)| (t.to_string(), k.clone(), e.to_string()))
            .collect();
        return write_group(tx, room_id, None, &all, true);
    }
    let changes: Vec<_> = state
        .iter()
        .filter(|(k, e)| base_map.get(*k) != Some(*e))
        .map(|((t, k), e)| (t.to_string(), k.clone(), e.to_string()))
        .collect();
    if changes.is_empty() {
        return Ok(bg);
    }
    write_group(tx, room_id, base, &changes, false)
}

pub(crate) fn insert_event(tx: &Connection<'_>, pos: i64, ev: &NewRoomEvent, group: i64) -> Result<()> {
    let pdu = &ev.pdu;
    let (txn_device, txn_id) = match &ev.txn {
        Some((d, t)) => (Some(d.as_str()), Some(t.as_str())),
        None => (None, None),
    };
    tx.execute(
        "INSERT INTO events (stream_pos, event_id, room_id, type, state_key, sender, depth, origin_server_ts, json, \
         unsigned, state_group, rel_type, relates_to, txn_device, txn_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            pos,
            pdu.event_id.as_str(),
            pdu.room_id.as_str(),
            pdu.kind.to_string(),
            pdu.state_key,
            pdu.sender.as_str(),
            pdu.depth as i64,
            u64::from(pdu.origin_server_ts.0) as i64,
            pdu.json.get(),
            ev.unsigned.as_ref().map(|u| u.to_string()),
            group,
            ev.rel_type,
            ev.relates_to,
            txn_device,
            txn_id,
        ],
    )
    .map_err(exists_or_db)?;
    for media_id in &ev.media_refs {
        tx.execute(
            "INSERT INTO media_refs (media_id, event_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![media_id, pdu.event_id.as_str()],
        )?;
    }
    Ok(())
}

/// The event replaces its `prev_events` among the room's forward extremities.
pub(crate) fn advance_extremities(tx: &Connection<'_>, pdu: &Pdu) -> Result<()> {
    let room_id = pdu.room_id.as_str();
    for p in &pdu.prev_events {
        tx.execute(
            "DELETE FROM forward_extremities WHERE room_id = ?1 AND event_id = ?2",
            params![room_id, p.as_str()],
        )?;
    }
    tx.execute(
        "INSERT INTO forward_extremities (room_id, event_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![room_id, pdu.event_id.as_str()],
    )?;
    Ok(())
}

pub(crate) fn set_current(
    tx: &Connection<'_>,
    room_id: &str,
    kind: &str,
    state_key: &str,
    event_id: &str,
    membership: Option<String>,
    pos: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO current_state (room_id, type, state_key, event_id, membership, stream_pos) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (room_id, type, state_key) DO UPDATE SET \
         event_id = excluded.event_id, membership = excluded.membership, stream_pos = excluded.stream_pos",
        params![room_id, kind, state_key, event_id, membership, pos],
    )?;
    if kind == "m.room.member" {
        tx.execute(
            "DELETE FROM remote_invites WHERE room_id = ?1 AND user_id = ?2",
            params![room_id, state_key],
        )?;
    }
    if membership.as_deref() == Some("join") {
        tx.execute(
            "DELETE FROM forgotten_rooms WHERE user_id = ?1 AND room_id = ?2",
            params![state_key, room_id],
        )?;
    }
    Ok(())
}

/// A unique violation means the row (room, event) is there already.
fn exists_or_db(e: crate::db::DbError) -> StoreError {
    if e.is_unique_violation() {
        StoreError::Exists
    } else {
        e.into()
    }
}
