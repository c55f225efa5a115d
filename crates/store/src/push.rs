//! Push: the notifications users' push rules asked for, and their pushers.
//!
//! A notification row is an event a user's push rules said to notify them
//! about. `event_pos` is the event's own stream position (read receipts are
//! compared with it); `stream_pos` is the position the row was recorded at,
//! so that a `/sync` sees the counts change. Whether a notification is read
//! is not stored: it follows from the user's read receipts (`m.read` or
//! `m.read.private`, unthreaded or in the notification's thread) and their
//! own later events, so it never goes stale and a receipt costs no extra
//! write.

use std::collections::HashMap;

use crate::db::params;
use serde_json::Value;

use crate::{Result, StoreError, store::Store};

/// Notifications older than this are pruned.
const KEEP_MS: i64 = 30 * 24 * 3600 * 1000;

/// SQL for the stream position up to which the user `n.user_id` has read
/// `n.room_id`, for a notification `n` of thread `n.thread_id`, as of the
/// position in the parameter `upto`: their latest read receipt (unthreaded
/// or in that thread), or their own latest event in the room (what one
/// sends, a join included, one has read up to), whichever is later.
fn read_upto(c: &crate::db::Conn<'_>, upto: &str) -> String {
    c.greatest(
        &format!(
            "COALESCE((SELECT MAX(e.stream_pos) FROM receipts r JOIN events e ON e.event_id = r.event_id \
         WHERE r.room_id = n.room_id AND r.user_id = n.user_id AND r.receipt_type IN ('m.read', 'm.read.private') \
         AND (r.thread_id = 'unthreaded' OR r.thread_id = n.thread_id) AND r.stream_pos <= {upto}), 0)"
        ),
        &format!(
            "COALESCE((SELECT MAX(o.stream_pos) FROM events o WHERE o.room_id = n.room_id AND o.sender = n.user_id \
         AND o.stream_pos <= {upto}), 0)"
        ),
    )
}

/// A notification to record.
#[derive(Clone, Debug)]
pub struct NewNotification {
    pub user_id: String,
    pub room_id: String,
    pub event_id: String,
    /// The event's stream position.
    pub event_pos: i64,
    /// `main`, or the thread root's event ID for an event in a thread.
    pub thread_id: String,
    /// The push rule actions, as JSON.
    pub actions: Value,
    pub highlight: bool,
}

/// A recorded notification, for `/notifications`.
#[derive(Clone, Debug)]
pub struct NotificationRow {
    /// Its place in the user's notifications, the pagination token.
    pub id: i64,
    pub room_id: String,
    pub event_id: String,
    pub actions: Value,
    pub highlight: bool,
    pub read: bool,
    pub ts: i64,
}

/// A pusher: where to send a user's notifications.
#[derive(Clone, Debug)]
pub struct PusherRow {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    /// `http` (the only kind the server delivers to).
    pub kind: String,
    /// The pusher as `GET /pushers` shows it.
    pub json: Value,
    /// When the pushkey was last set, in seconds.
    pub pushkey_ts: i64,
    /// The device whose access token set it.
    pub device_id: Option<String>,
}

fn pusher_row(r: &crate::db::Row) -> crate::db::Result<PusherRow> {
    let json: String = r.get(4)?;
    Ok(PusherRow {
        user_id: r.get(0)?,
        app_id: r.get(1)?,
        pushkey: r.get(2)?,
        kind: r.get(3)?,
        json: serde_json::from_str(&json).unwrap_or_default(),
        pushkey_ts: r.get(5)?,
        device_id: r.get(6)?,
    })
}

const PUSHER_COLS: &str = "user_id, app_id, pushkey, kind, json, pushkey_ts, device_id";

impl Store {
    /// The `m.push_rules` global account data of each of these users who has set it.
    pub async fn push_rules_of(&self, users: Vec<String>) -> Result<HashMap<String, Value>> {
        self.global_account_data_of(users, "m.push_rules").await
    }

    /// One type of global account data of each of these users who has it.
    pub async fn global_account_data_of(
        &self,
        users: Vec<String>,
        kind: &'static str,
    ) -> Result<HashMap<String, Value>> {
        self.read(move |c| {
            let mut st =
                c.prepare_cached("SELECT content FROM account_data WHERE user_id = ?1 AND room_id = '' AND type = ?2")?;
            let mut out = HashMap::new();
            for u in users {
                let mut rows = st.query(params![&u, kind])?;
                if let Some(row) = rows.next()? {
                    let s: String = row.get(0)?;
                    let v = serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    out.insert(u, v);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Records notifications at one new stream position, which it returns,
    /// and prunes those older than thirty days.
    pub async fn add_notifications(&self, rows: Vec<NewNotification>) -> Result<Option<i64>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let now = crate::store::now_ms();
        self.write(move |tx, pos| {
            let p = pos.take();
            let mut ins = tx.prepare_cached(
                "INSERT INTO push_notifications (user_id, room_id, event_id, event_pos, thread_id, stream_pos, actions, highlight, ts) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for n in &rows {
                ins.execute(params![
                    n.user_id,
                    n.room_id,
                    n.event_id,
                    n.event_pos,
                    n.thread_id,
                    p,
                    n.actions.to_string(),
                    n.highlight,
                    now
                ])?;
            }
            // The rows just added outlive the pruned ones and hold a higher
            // position, so the counter never goes back after a restart.
            tx.execute("DELETE FROM push_notifications WHERE ts < ?1", [now - KEEP_MS])?;
            Ok(Some(p))
        })
        .await
    }

    /// Unread notifications and highlights of a user in a room, as of a
    /// stream position: those recorded by then for events after the user's
    /// read receipts.
    pub async fn unread_notification_counts(&self, user_id: String, room_id: String, upto: i64) -> Result<(u64, u64)> {
        self.read(move |c| {
            let sql = format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(n.highlight), 0) AS BIGINT) FROM push_notifications n \
                 WHERE n.user_id = ?1 AND n.room_id = ?2 AND n.stream_pos <= ?3 AND n.event_pos > {}",
                read_upto(c, "?3")
            );
            let mut st = c.prepare_cached(&sql)?;
            let (n, h): (i64, i64) = st.query_row(params![user_id, room_id, upto], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok((n.max(0) as u64, h.max(0) as u64))
        })
        .await
    }

    /// A user's unread notifications across the rooms they are joined to,
    /// for the badge count a push gateway shows.
    pub async fn unread_notification_total(&self, user_id: String) -> Result<u64> {
        self.read(move |c| {
            let sql = format!(
                "SELECT COUNT(*) FROM push_notifications n WHERE n.user_id = ?1 AND n.event_pos > {} \
                 AND EXISTS (SELECT 1 FROM current_state m WHERE m.room_id = n.room_id AND m.type = 'm.room.member' \
                 AND m.state_key = n.user_id AND m.membership = 'join')",
                read_upto(c, "?2")
            );
            let mut st = c.prepare_cached(&sql)?;
            let n: i64 = st.query_row(params![user_id, i64::MAX], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    /// Whether notifications of the user in the room were recorded in (since, upto].
    pub async fn notifications_changed(&self, user_id: String, room_id: String, since: i64, upto: i64) -> Result<bool> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM push_notifications WHERE user_id = ?1 AND room_id = ?2 \
                 AND stream_pos > ?3 AND stream_pos <= ?4)",
            )?;
            Ok(st.query_row(params![user_id, room_id, since, upto], |r| r.get(0))?)
        })
        .await
    }

    /// A user's notifications, newest first, before the one with ID `before`.
    pub async fn notifications(
        &self,
        user_id: String,
        before: Option<i64>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<Vec<NotificationRow>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT n.id, n.room_id, n.event_id, n.actions, n.highlight, n.ts, n.event_pos <= {} \
                 FROM push_notifications n WHERE n.user_id = ?1 AND n.id < ?2 AND (?3 = 0 OR n.highlight = 1) \
                 ORDER BY n.id DESC LIMIT ?4",
                read_upto(c, "?5")
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(
                params![
                    user_id,
                    before.unwrap_or(i64::MAX),
                    only_highlight,
                    limit as i64,
                    i64::MAX
                ],
                |r| {
                    let actions: String = r.get(3)?;
                    Ok(NotificationRow {
                        id: r.get(0)?,
                        room_id: r.get(1)?,
                        event_id: r.get(2)?,
                        actions: serde_json::from_str(&actions).unwrap_or_default(),
                        highlight: r.get(4)?,
                        ts: r.get(5)?,
                        read: r.get(6)?,
                    })
                },
            )?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Creates or replaces a pusher. Unless `append`, the same app ID and
    /// pushkey of other users stop being pushed to (the device changed hands).
    pub async fn set_pusher(&self, p: PusherRow, append: bool) -> Result<()> {
        self.write(move |tx, _| {
            if !append {
                tx.execute(
                    "DELETE FROM pushers WHERE app_id = ?1 AND pushkey = ?2 AND user_id != ?3",
                    params![p.app_id, p.pushkey, p.user_id],
                )?;
            }
            tx.execute(
                &format!(
                    "INSERT INTO pushers ({PUSHER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind, json = excluded.json, \
                     pushkey_ts = excluded.pushkey_ts, device_id = excluded.device_id"
                ),
                params![
                    p.user_id,
                    p.app_id,
                    p.pushkey,
                    p.kind,
                    p.json.to_string(),
                    p.pushkey_ts,
                    p.device_id
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes a user's pusher; whether there was one.
    pub async fn delete_pusher(&self, user_id: String, app_id: String, pushkey: String) -> Result<bool> {
        self.write(move |tx, _| {
            Ok(tx.execute(
                "DELETE FROM pushers WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3",
                params![user_id, app_id, pushkey],
            )? > 0)
        })
        .await
    }

    /// A user's pushers, oldest first.
    pub async fn pushers(&self, user_id: String) -> Result<Vec<PusherRow>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {PUSHER_COLS} FROM pushers WHERE user_id = ?1 ORDER BY pushkey_ts, app_id, pushkey"
            ))?;
            let rows = st.query_map([user_id], pusher_row)?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::e2ee::tests::scratch;

    fn note(user: &str, room: &str, event: &str, pos: i64, highlight: bool) -> NewNotification {
        NewNotification {
            user_id: user.into(),
            room_id: room.into(),
            event_id: event.into(),
            event_pos: pos,
            thread_id: "main".into(),
            actions: json!(["notify"]),
            highlight,
        }
    }

    #[tokio::test]
    async fn counts_follow_positions_and_pagination() {
        let s = scratch();
        let store = &s.store;
        let (u, r) = ("@u:x".to_string(), "!r:x".to_string());
        assert_eq!(store.add_notifications(vec![]).await.unwrap(), None);
        let p1 = store
            .add_notifications(vec![
                note("@u:x", "!r:x", "$a", 1, false),
                note("@v:x", "!r:x", "$a", 1, false),
            ])
            .await
            .unwrap()
            .unwrap();
        let p2 = store
            .add_notifications(vec![note("@u:x", "!r:x", "$b", 2, true)])
            .await
            .unwrap()
            .unwrap();
        assert!(p2 > p1);
        // Counts only see what was recorded by the position asked about.
        assert_eq!(
            store
                .unread_notification_counts(u.clone(), r.clone(), p1)
                .await
                .unwrap(),
            (1, 0)
        );
        assert_eq!(
            store
                .unread_notification_counts(u.clone(), r.clone(), p2)
                .await
                .unwrap(),
            (2, 1)
        );
        assert!(store.notifications_changed(u.clone(), r.clone(), p1, p2).await.unwrap());
        assert!(!store.notifications_changed(u.clone(), r.clone(), p2, p2).await.unwrap());
        let all = store.notifications(u.clone(), None, 10, false).await.unwrap();
        assert_eq!(
            all.iter().map(|n| n.event_id.as_str()).collect::<Vec<_>>(),
            ["$b", "$a"]
        );
        assert!(all.iter().all(|n| !n.read));
        let older = store
            .notifications(u.clone(), Some(all[0].id), 10, false)
            .await
            .unwrap();
        assert_eq!(older.len(), 1);
        let highlights = store.notifications(u.clone(), None, 10, true).await.unwrap();
        assert_eq!(highlights.len(), 1);
        assert!(highlights[0].highlight);
    }

    #[tokio::test]
    async fn pushers_are_per_user_unless_appended() {
        let s = scratch();
        let store = &s.store;
        let pusher = |user: &str| PusherRow {
            user_id: user.into(),
            app_id: "app".into(),
            pushkey: "key".into(),
            kind: "http".into(),
            json: json!({ "pushkey": "key" }),
            pushkey_ts: 1,
            device_id: None,
        };
        store.set_pusher(pusher("@a:x"), false).await.unwrap();
        store.set_pusher(pusher("@b:x"), true).await.unwrap();
        assert_eq!(store.pushers("@a:x".into()).await.unwrap().len(), 1);
        // Without append, the pushkey leaves the other user.
        store.set_pusher(pusher("@b:x"), false).await.unwrap();
        assert!(store.pushers("@a:x".into()).await.unwrap().is_empty());
        assert!(
            store
                .delete_pusher("@b:x".into(), "app".into(), "key".into())
                .await
                .unwrap()
        );
        assert!(store.pushers("@b:x".into()).await.unwrap().is_empty());
    }
}
