//! Room aliases, account data, receipts and filters.

use crate::db::{OptionalExtension, params};

use crate::{AccountDataRow, ReceiptRow, Result, StoreError, store::Store};

impl Store {
    pub async fn set_alias(&self, alias: String, room_id: String, creator: String) -> Result<()> {
        self.write(move |tx, _| {
            let n = tx.execute(
                "INSERT INTO room_aliases (alias, room_id, creator) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![alias, room_id, creator],
            )?;
            if n == 0 { Err(StoreError::Exists) } else { Ok(()) }
        })
        .await
    }

    /// The room and creator of an alias.
    pub async fn alias(&self, alias: String) -> Result<Option<(String, String)>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT room_id, creator FROM room_aliases WHERE alias = ?1",
                [alias],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
        .await
    }

    pub async fn delete_alias(&self, alias: String) -> Result<bool> {
        self.write(move |tx, _| Ok(tx.execute("DELETE FROM room_aliases WHERE alias = ?1", [alias])? > 0))
            .await
    }

    pub async fn room_aliases(&self, room_id: String) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT alias FROM room_aliases WHERE room_id = ?1 ORDER BY alias")?;
            let rows = st.query_map([room_id], |r| r.get(0))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Sets global (`room_id` empty) or per-room account data; returns its position.
    pub async fn set_account_data(
        &self,
        user_id: String,
        room_id: String,
        kind: String,
        content: serde_json::Value,
    ) -> Result<i64> {
        self.write(move |tx, pos| {
            let p = pos.take();
            tx.execute(
                "INSERT INTO account_data (user_id, room_id, type, content, stream_pos) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, stream_pos = excluded.stream_pos",
                params![user_id, room_id, kind, content.to_string(), p],
            )?;
            Ok(p)
        })
        .await
    }

    pub async fn account_data(
        &self,
        user_id: String,
        room_id: String,
        kind: String,
    ) -> Result<Option<serde_json::Value>> {
        self.read(move |c| {
            let s: Option<String> = c
                .query_row(
                    "SELECT content FROM account_data WHERE user_id = ?1 AND room_id = ?2 AND type = ?3",
                    params![user_id, room_id, kind],
                    |r| r.get(0),
                )
                .optional()?;
            s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()
        })
        .await
    }

    /// Account data changed in (since, upto], all rooms and global.
    pub async fn account_data_since(&self, user_id: String, since: i64, upto: i64) -> Result<Vec<AccountDataRow>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT room_id, type, content, stream_pos FROM account_data WHERE user_id = ?1 AND stream_pos > ?2 AND stream_pos <= ?3",
            )?;
            let rows = st.query_map(params![user_id, since, upto], |r| {
                let s: String = r.get(2)?;
                Ok(AccountDataRow {
                    room_id: r.get(0)?,
                    kind: r.get(1)?,
                    content: serde_json::from_str(&s).unwrap_or_default(),
                    stream_pos: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Sets a receipt, replacing the user's previous one of that type and thread.
    /// Returns its position.
    pub async fn set_receipt(
        &self,
        room_id: String,
        receipt_type: String,
        user_id: String,
        thread_id: String,
        event_id: String,
        ts: i64,
    ) -> Result<i64> {
        self.write(move |tx, pos| {
            let p = pos.take();
            tx.execute(
                "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_pos) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream_pos = excluded.stream_pos",
                params![room_id, receipt_type, user_id, thread_id, event_id, ts, p],
            )?;
            Ok(p)
        })
        .await
    }

    /// Receipts of a room changed in (since, upto].
    pub async fn receipts_since(&self, room_id: String, since: i64, upto: i64) -> Result<Vec<ReceiptRow>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT receipt_type, user_id, thread_id, event_id, ts, stream_pos FROM receipts \
                 WHERE room_id = ?1 AND stream_pos > ?2 AND stream_pos <= ?3",
            )?;
            let rows = st.query_map(params![room_id, since, upto], |r| {
                Ok(ReceiptRow {
                    receipt_type: r.get(0)?,
                    user_id: r.get(1)?,
                    thread_id: r.get(2)?,
                    event_id: r.get(3)?,
                    ts: r.get(4)?,
                    stream_pos: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    pub async fn create_filter(&self, user_id: String, json: String) -> Result<i64> {
        self.write(move |tx, _| {
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = ?1",
                [&user_id],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO filters (user_id, filter_id, json) VALUES (?1, ?2, ?3)",
                params![user_id, next, json],
            )?;
            Ok(next)
        })
        .await
    }

    pub async fn filter(&self, user_id: String, filter_id: i64) -> Result<Option<String>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT json FROM filters WHERE user_id = ?1 AND filter_id = ?2",
                params![user_id, filter_id],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }
}
