//! Federation state: events from other servers (in the timeline or as
//! outliers), rejected events, and the per-destination outgoing queues.

use std::collections::HashMap;

use missive_core::{auth::StateMap, pdu::Pdu};

use crate::{
    NewRoomEvent, Result, StoreError,
    db::{Connection, OptionalExtension, params},
    events::{advance_extremities, group_for_state, insert_event, set_current, set_current_group},
    store::Store,
};

/// At most this many entries wait for one destination; past it the oldest
/// PDUs go (the destination fetches what it misses with `get_missing_events`).
const MAX_QUEUE: i64 = 10_000;

/// An event from another server that passed its checks.
#[derive(Clone, Debug)]
pub struct RemoteAppend {
    pub event: NewRoomEvent,
    /// The room state before the event (resolved over its `prev_events`).
    pub state_before: StateMap,
    /// The room's state after the event joins the forward extremities,
    /// when it joins them; `None` for a soft-failed event, which is kept
    /// as an outlier and changes nothing.
    pub current: Option<StateMap>,
}

/// One entry of a destination's queue.
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    pub id: i64,
    /// A PDU's JSON, or an EDU's.
    pub pdu: Option<String>,
    pub edu: Option<String>,
}

/// The lowest position below every outlier: outliers take negative
/// positions so that no timeline or sync query ever returns them.
fn next_outlier_pos(tx: &Connection<'_>) -> Result<i64> {
    let min: Option<i64> = tx.query_row("SELECT MIN(stream_pos) FROM events", [], |r| r.get(0))?;
    Ok(min.unwrap_or(0).min(0) - 1)
}

/// An empty state group of the room: the state of outliers, so that a
/// visibility check on one finds no membership and shows it to nobody.
fn empty_group(tx: &Connection<'_>, room_id: &str) -> Result<i64> {
    if let Some(g) = tx
        .query_row(
            "SELECT g.id FROM state_groups g WHERE g.room_id = ?1 AND g.prev_id IS NULL AND g.chain_len = -1",
            [room_id],
            |r| r.get(0),
        )
        .optional()?
    {
        return Ok(g);
    }
    Ok(tx.query_row(
        "INSERT INTO state_groups (room_id, prev_id, chain_len) VALUES (?1, NULL, -1) RETURNING id",
        [room_id],
        |r| r.get(0),
    )?)
}

fn insert_outlier(tx: &Connection<'_>, pdu: &Pdu, groups: &mut HashMap<String, i64>) -> Result<bool> {
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM events WHERE event_id = ?1)",
        [pdu.event_id.as_str()],
        |r| r.get(0),
    )?;
    if exists {
        return Ok(false);
    }
    let group = match groups.get(pdu.room_id.as_str()) {
        Some(g) => *g,
        None => {
            let g = empty_group(tx, pdu.room_id.as_str())?;
            groups.insert(pdu.room_id.to_string(), g);
            g
        }
    };
    let pos = next_outlier_pos(tx)?;
    let ev = NewRoomEvent {
        pdu: pdu.clone(),
        unsigned: None,
        txn: None,
        rel_type: None,
        relates_to: None,
        new_room: None,
        media_refs: vec![],
        federate_to: vec![],
    };
    insert_event(tx, pos, &ev, group)?;
    Ok(true)
}

/// Creates the room's row unless this server knows the room already.
fn ensure_room(tx: &Connection<'_>, room_id: &str, r: &crate::NewRoom) -> Result<()> {
    tx.execute(
        "INSERT INTO rooms (room_id, room_version, creator) VALUES (?1, ?2, ?3) ON CONFLICT (room_id) DO NOTHING",
        params![room_id, r.room_version, r.creator],
    )?;
    Ok(())
}

fn membership_of(tx: &Connection<'_>, event_id: &str) -> Result<Option<String>> {
    let json: Option<String> = tx
        .query_row("SELECT json FROM events WHERE event_id = ?1", [event_id], |r| r.get(0))
        .optional()?;
    Ok(json.and_then(|j| {
        let v: serde_json::Value = serde_json::from_str(&j).ok()?;
        v.get("content")?.get("membership")?.as_str().map(str::to_owned)
    }))
}

/// Makes `state` the room's current state, row by row where it differs.
fn replace_current(tx: &Connection<'_>, room_id: &str, state: &StateMap, pos: i64) -> Result<()> {
    let rows: HashMap<(String, String), String> = tx
        .query_map(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?1",
            [room_id],
            |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)),
        )?
        .collect::<crate::db::Result<_>>()?;
    for (t, k) in rows.keys() {
        if !state.contains_key(&(t.as_str().into(), k.clone())) {
            tx.execute(
                "DELETE FROM current_state WHERE room_id = ?1 AND type = ?2 AND state_key = ?3",
                params![room_id, t, k],
            )?;
        }
    }
    for ((t, k), e) in state {
        let t = t.to_string();
        if rows.get(&(t.clone(), k.clone())).is_some_and(|row| row == e.as_str()) {
            continue;
        }
        let membership = if t == "m.room.member" {
            membership_of(tx, e.as_str())?
        } else {
            None
        };
        set_current(tx, room_id, &t, k, e.as_str(), membership, pos)?;
    }
    Ok(())
}

impl Store {
    /// Stores events from another server outside the timeline (the room
    /// state and auth chain received when joining, auth events fetched to
    /// check an event). Events already stored are left alone.
    pub async fn store_outliers(&self, pdus: Vec<Pdu>, new_room: Option<crate::NewRoom>) -> Result<usize> {
        self.write(move |tx, _| {
            if let (Some(r), Some(first)) = (&new_room, pdus.first()) {
                ensure_room(tx, first.room_id.as_str(), r)?;
            }
            let mut n = 0;
            let mut groups = HashMap::new();
            for pdu in &pdus {
                if insert_outlier(tx, pdu, &mut groups)? {
                    n += 1;
                }
            }
            Ok(n)
        })
        .await
    }

    /// Appends an event from another server. An event already stored as an
    /// outlier is moved into the timeline. Returns its position (negative
    /// when it stays an outlier).
    pub async fn append_remote_event(&self, append: RemoteAppend) -> Result<i64> {
        self.write(move |tx, positions| {
            let pdu = &append.event.pdu;
            let room_id = pdu.room_id.as_str();
            if let Some(r) = &append.event.new_room {
                ensure_room(tx, room_id, r)?;
            }
            let Some(current) = &append.current else {
                // Soft-failed: kept, but neither in the timeline nor in the state.
                insert_outlier(tx, pdu, &mut HashMap::new())?;
                return tx
                    .query_row(
                        "SELECT stream_pos FROM events WHERE event_id = ?1",
                        [pdu.event_id.as_str()],
                        |r| r.get(0),
                    )
                    .map_err(Into::into);
            };
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT stream_pos FROM events WHERE event_id = ?1",
                    [pdu.event_id.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            match existing {
                Some(p) if p > 0 => return Err(StoreError::Exists),
                Some(p) => {
                    tx.execute("DELETE FROM events WHERE stream_pos = ?1", [p])?;
                }
                None => {}
            }
            let mut after = append.state_before.clone();
            if let Some(sk) = &pdu.state_key {
                after.insert((pdu.kind.to_string().into(), sk.clone()), pdu.event_id.clone());
            }
            let group = group_for_state(tx, room_id, &after)?;
            let pos = positions.take();
            insert_event(tx, pos, &append.event, group)?;
            crate::search::index_event(tx, pos, pdu)?;
            advance_extremities(tx, pdu)?;
            // The current state is the state after this event when it is the
            // only extremity, else the resolution the caller did.
            set_current_group(tx, room_id, group)?;
            if *current != after {
                let g = group_for_state(tx, room_id, current)?;
                set_current_group(tx, room_id, g)?;
            }
            replace_current(tx, room_id, current, pos)?;
            crate::federation::queue_pdu(tx, pdu.event_id.as_str(), &append.event.federate_to)?;
            Ok(pos)
        })
        .await
    }

    /// History from before this server joined a room, fetched from a
    /// server in it: timeline events placed before the join (which the
    /// caller appends next), all with the state at the join. They change
    /// neither the forward extremities nor the current state. Events
    /// already stored are left alone.
    pub async fn append_history(&self, events: Vec<NewRoomEvent>, state: StateMap) -> Result<usize> {
        self.write(move |tx, positions| {
            let Some(first) = events.first() else {
                return Ok(0);
            };
            let group = group_for_state(tx, first.pdu.room_id.as_str(), &state)?;
            let mut n = 0;
            for ev in &events {
                let exists: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM events WHERE event_id = ?1)",
                    [ev.pdu.event_id.as_str()],
                    |r| r.get(0),
                )?;
                if exists {
                    continue;
                }
                let pos = positions.take();
                insert_event(tx, pos, ev, group)?;
                crate::search::index_event(tx, pos, &ev.pdu)?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    /// A local user's membership in a room this server is not in: an
    /// invite received from another server (with the room's stripped
    /// state, for the client), or its rejection. The event is kept as an
    /// outlier; the membership row gets a new position so /sync shows it.
    pub async fn set_remote_membership(
        &self,
        pdu: Pdu,
        room_version: String,
        invite_state: Option<String>,
    ) -> Result<i64> {
        self.write(move |tx, positions| {
            let room_id = pdu.room_id.as_str();
            let user = pdu.state_key.clone().unwrap_or_default();
            let room = crate::NewRoom {
                room_version: room_version.clone(),
                creator: pdu.sender.to_string(),
            };
            ensure_room(tx, room_id, &room)?;
            insert_outlier(tx, &pdu, &mut HashMap::new())?;
            let pos = positions.take();
            set_current(
                tx,
                room_id,
                "m.room.member",
                &user,
                pdu.event_id.as_str(),
                pdu.membership(),
                pos,
            )?;
            // (`set_current` dropped any earlier invite state of the user.)
            if let Some(state) = invite_state {
                tx.execute(
                    "INSERT INTO remote_invites (room_id, user_id, event_id, room_version, json, invite_state, stream_pos) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (room_id, user_id) DO UPDATE SET \
                     event_id = excluded.event_id, json = excluded.json, invite_state = excluded.invite_state, \
                     stream_pos = excluded.stream_pos",
                    params![room_id, user, pdu.event_id.as_str(), room_version, pdu.json.get(), state, pos],
                )?;
            }
            Ok(pos)
        })
        .await
    }

    /// The stripped state sent with an invite from another server.
    pub async fn remote_invite_state(&self, room_id: String, user_id: String) -> Result<Option<String>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT invite_state FROM remote_invites WHERE room_id = ?1 AND user_id = ?2",
                params![room_id, user_id],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// Queues already stored PDUs for one destination (a server that just
    /// joined and cannot have seen them).
    pub async fn queue_pdus_for(&self, destination: String, event_ids: Vec<String>) -> Result<()> {
        if event_ids.is_empty() {
            return Ok(());
        }
        self.write_unordered(move |c| {
            for id in &event_ids {
                queue_pdu(c, id, std::slice::from_ref(&destination))?;
            }
            Ok(())
        })
        .await
    }

    pub async fn mark_rejected(&self, event_id: String, room_id: String, reason: String, ts: i64) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "INSERT INTO rejected_events (event_id, room_id, reason, ts) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (event_id) DO NOTHING",
                params![event_id, room_id, reason, ts],
            )?;
            Ok(())
        })
        .await
    }

    /// Why the event was rejected, if it was.
    pub async fn rejection(&self, event_id: String) -> Result<Option<String>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT reason FROM rejected_events WHERE event_id = ?1",
                [event_id],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// The user IDs joined to a room (for the servers in it).
    pub async fn joined_members(&self, room_id: String) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT state_key FROM current_state WHERE room_id = ?1 AND type = 'm.room.member' AND membership = 'join'",
            )?;
            let rows = st.query_map([room_id], |r| r.get(0))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Queues an EDU for each destination; `expires_ts` drops it unsent
    /// when it is stale by then (typing, presence).
    pub async fn queue_edu(&self, destinations: Vec<String>, edu: String, expires_ts: Option<i64>) -> Result<()> {
        self.write(move |tx, _| {
            for d in &destinations {
                tx.execute(
                    "INSERT INTO federation_outbox (destination, edu, expires_ts) VALUES (?1, ?2, ?3)",
                    params![d, edu, expires_ts],
                )?;
                cap_queue(tx, d)?;
            }
            Ok(())
        })
        .await
    }

    /// Destinations with something queued and not waiting for a retry.
    pub async fn outbox_due(&self, now: i64) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT o.destination FROM federation_outbox o \
                 LEFT JOIN federation_destinations d ON d.destination = o.destination \
                 WHERE d.retry_after_ts IS NULL OR d.retry_after_ts <= ?1",
            )?;
            let rows = st.query_map([now], |r| r.get(0))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// The oldest queued entries for a destination: at most 50 PDUs and 100
    /// EDUs, as one transaction may carry. Expired EDUs are dropped.
    pub async fn outbox_batch(&self, destination: String, now: i64) -> Result<Vec<OutboxEntry>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT o.id, e.json, o.edu, o.expires_ts, o.event_id FROM federation_outbox o \
                 LEFT JOIN events e ON e.event_id = o.event_id \
                 WHERE o.destination = ?1 ORDER BY o.id LIMIT 400",
            )?;
            let rows = st.query_map([&destination], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })?;
            let (mut pdus, mut edus) = (0, 0);
            let mut out = vec![];
            for row in rows {
                let (id, pdu, edu, expires, event_id) = row?;
                if expires.is_some_and(|e| e < now) || (event_id.is_some() && pdu.is_none()) {
                    // Stale, or an event since purged: acknowledged with the batch.
                    out.push(OutboxEntry {
                        id,
                        pdu: None,
                        edu: None,
                    });
                    continue;
                }
                if pdu.is_some() {
                    if pdus == 50 {
                        break;
                    }
                    pdus += 1;
                } else {
                    if edus == 100 {
                        break;
                    }
                    edus += 1;
                }
                out.push(OutboxEntry { id, pdu, edu });
            }
            Ok(out)
        })
        .await
    }

    /// The destination took the entries: drop them and forget its failures.
    pub async fn outbox_sent(&self, destination: String, ids: Vec<i64>) -> Result<()> {
        self.write(move |tx, _| {
            let mut del = tx.prepare_cached("DELETE FROM federation_outbox WHERE id = ?1")?;
            for id in ids {
                del.execute([id])?;
            }
            tx.execute(
                "DELETE FROM federation_destinations WHERE destination = ?1",
                [&destination],
            )?;
            Ok(())
        })
        .await
    }

    /// The destination could not be reached: back off exponentially, from
    /// 5 s up to an hour. Returns the number of failures in a row.
    pub async fn outbox_failed(&self, destination: String, now: i64) -> Result<i64> {
        self.write(move |tx, _| {
            let failures: i64 = tx
                .query_row(
                    "SELECT failures FROM federation_destinations WHERE destination = ?1",
                    [&destination],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0)
                + 1;
            let delay = (5_000i64 << (failures - 1).min(10)).min(3_600_000);
            tx.execute(
                "INSERT INTO federation_destinations (destination, failures, retry_after_ts) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (destination) DO UPDATE SET failures = excluded.failures, retry_after_ts = excluded.retry_after_ts",
                params![destination, failures, now + delay],
            )?;
            Ok(failures)
        })
        .await
    }

    /// Makes every destination due now (after a restart, or when told a
    /// server is back).
    pub async fn outbox_retry_now(&self, destination: Option<String>) -> Result<()> {
        self.write(move |tx, _| {
            match destination {
                Some(d) => tx.execute(
                    "UPDATE federation_destinations SET retry_after_ts = 0 WHERE destination = ?1",
                    [d],
                )?,
                None => tx.execute("UPDATE federation_destinations SET retry_after_ts = 0", [])?,
            };
            Ok(())
        })
        .await
    }
}

/// Queues a PDU for each destination, in the transaction that stores it.
pub(crate) fn queue_pdu(tx: &Connection<'_>, event_id: &str, destinations: &[String]) -> Result<()> {
    for d in destinations {
        tx.execute(
            "INSERT INTO federation_outbox (destination, event_id) VALUES (?1, ?2)",
            params![d, event_id],
        )?;
        cap_queue(tx, d)?;
    }
    Ok(())
}

fn cap_queue(tx: &Connection<'_>, destination: &str) -> Result<()> {
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM federation_outbox WHERE destination = ?1",
        [destination],
        |r| r.get(0),
    )?;
    if n > MAX_QUEUE {
        tx.execute(
            "DELETE FROM federation_outbox WHERE id IN (SELECT id FROM federation_outbox WHERE destination = ?1 \
             ORDER BY id LIMIT ?2)",
            params![destination, n - MAX_QUEUE],
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// EDUs and queries (device lists of remote users, who to tell about a
// local user's changes).
// ---------------------------------------------------------------------------

impl Store {
    /// Every user joined to a room `user` is joined to (`user` included):
    /// the servers to tell about their device, key and presence changes.
    pub async fn users_sharing_room(&self, user: String) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT y.state_key FROM current_state x JOIN current_state y ON x.room_id = y.room_id \
                 WHERE x.type = 'm.room.member' AND x.state_key = ?1 AND x.membership = 'join' \
                 AND y.type = 'm.room.member' AND y.membership = 'join'",
            )?;
            let rows = st.query_map([user], |r| r.get(0))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// A remote user's devices or keys changed (their server told us): local
    /// users sharing a room with them see it in `device_lists.changed` and
    /// query the keys again, as remote device lists are not cached here.
    pub async fn remote_device_list_changed(&self, user: String) -> Result<i64> {
        self.write(move |tx, positions| Ok(crate::e2ee::record_device_change(tx, positions, &user, None)?))
            .await
    }

    /// The position of the user's latest device-list change (0 if none): the
    /// `stream_id` other servers correlate device-list updates with.
    pub async fn device_list_stream_id(&self, user: String) -> Result<i64> {
        self.read(move |c| {
            let max: Option<i64> = c.query_row(
                "SELECT MAX(stream_pos) FROM device_list_changes WHERE user_id = ?1",
                [user],
                |r| r.get(0),
            )?;
            Ok(max.unwrap_or(0))
        })
        .await
    }
}

/// OpenID tokens (`/user/{userId}/openid/request_token`), by their hash.
impl Store {
    pub async fn insert_openid_token(&self, token_hash: Vec<u8>, user_id: String, expires_ts: i64) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "DELETE FROM openid_tokens WHERE expires_ts < ?1",
                [expires_ts - 2 * 3_600_000],
            )?;
            tx.execute(
                "INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES (?1, ?2, ?3)",
                params![token_hash, user_id, expires_ts],
            )?;
            Ok(())
        })
        .await
    }

    /// The user an unexpired OpenID token stands for.
    pub async fn openid_user(&self, token_hash: Vec<u8>, now: i64) -> Result<Option<String>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT user_id FROM openid_tokens WHERE token_hash = ?1 AND expires_ts > ?2",
                params![token_hash, now],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }
}
