//! The user directory, what the room directory and space hierarchy show of a
//! room, and content reports.

use crate::db::{OptionalExtension, params};
use serde_json::Value;

use crate::{
    Result,
    store::{Store, now_ms},
};

/// A local user as the user directory shows them.
#[derive(Clone, Debug)]
pub struct DirectoryUser {
    pub user_id: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

/// What a report is about.
#[derive(Clone, Debug)]
pub enum ReportTarget {
    Event { room_id: String, event_id: String },
    Room { room_id: String },
    User { user_id: String },
}

#[derive(Clone, Debug)]
pub struct NewReport {
    pub reporter: String,
    pub target: ReportTarget,
    pub reason: Option<String>,
    /// From -100 (most offensive) to 0; dropped from the spec in v1.18 but
    /// kept when older clients send it.
    pub score: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct ReportRow {
    pub id: i64,
    pub received_ts: i64,
    pub report: NewReport,
}

impl Store {
    /// Active local users `searcher` may find: those sharing a joined room
    /// with them or joined to a room anyone may join, or everyone when
    /// `all_users`. Deactivated accounts never appear.
    pub async fn directory_users(&self, searcher: String, all_users: bool) -> Result<Vec<DirectoryUser>> {
        self.read(move |c| {
            // The rooms anyone may join, read in Rust from their join rules.
            let mut st = c.prepare_cached(
                "SELECT s.room_id, e.json FROM current_state s JOIN events e ON e.event_id = s.event_id \
                 WHERE s.type = 'm.room.join_rules' AND s.state_key = ''",
            )?;
            let rules: Vec<(String, String)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<crate::db::Result<_>>()?;
            let public: Vec<String> = rules
                .into_iter()
                .filter(|(_, json)| crate::event_json::content_str(json, "join_rule").as_deref() == Some("public"))
                .map(|(room, _)| room)
                .collect();
            let mut st = c.prepare_cached(
                "SELECT u.user_id, u.displayname, u.avatar_url, \
                 EXISTS (SELECT 1 FROM current_state m WHERE m.type = 'm.room.member' AND m.state_key = u.user_id \
                   AND m.membership = 'join' AND m.room_id IN (SELECT room_id FROM current_state \
                   WHERE type = 'm.room.member' AND state_key = ?1 AND membership = 'join')) \
                 FROM users u WHERE u.deactivated = 0",
            )?;
            let users: Vec<(DirectoryUser, bool)> = st
                .query_map([&searcher], |r| {
                    Ok((
                        DirectoryUser {
                            user_id: r.get(0)?,
                            displayname: r.get(1)?,
                            avatar_url: r.get(2)?,
                        },
                        r.get(3)?,
                    ))
                })?
                .collect::<crate::db::Result<_>>()?;
            if all_users {
                return Ok(users.into_iter().map(|(u, _)| u).collect());
            }
            // Those in a public room, by room.
            let mut in_public = std::collections::HashSet::new();
            let mut st = c.prepare_cached(
                "SELECT state_key FROM current_state WHERE room_id = ?1 AND type = 'm.room.member' AND membership = 'join'",
            )?;
            for room in &public {
                for u in st.query_map([room], |r| r.get::<_, String>(0))? {
                    in_public.insert(u?);
                }
            }
            Ok(users
                .into_iter()
                .filter(|(u, shares)| *shares || in_public.contains(&u.user_id))
                .map(|(u, _)| u)
                .collect())
        })
        .await
    }

    /// The contents of a room's current state events of the given types
    /// with an empty state key, by type.
    pub async fn room_state_contents(&self, room_id: String, types: Vec<String>) -> Result<Vec<(String, Value)>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT e.json FROM current_state s JOIN events e ON e.event_id = s.event_id \
                     WHERE s.room_id = ?1 AND s.type = ?2 AND s.state_key = ''",
            )?;
            let mut out = vec![];
            for kind in types {
                let json: Option<String> = st.query_row(params![room_id, kind], |r| r.get(0)).optional()?;
                if let Some(json) = json {
                    let content = crate::event_json::content(&json)
                        .and_then(|c| serde_json::from_str(&c).ok())
                        .unwrap_or(Value::Object(Default::default()));
                    out.push((kind, content));
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn joined_member_count(&self, room_id: String) -> Result<u64> {
        self.read(move |c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM current_state WHERE room_id = ?1 AND type = 'm.room.member' AND membership = 'join'",
                [room_id],
                |r| r.get(0),
            )?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    /// Records a report for the server's administrators; returns its ID.
    pub async fn add_report(&self, report: NewReport) -> Result<i64> {
        self.write(move |tx, _| {
            let (kind, room_id, event_id, user_id) = match &report.target {
                ReportTarget::Event { room_id, event_id } => ("event", Some(room_id), Some(event_id), None),
                ReportTarget::Room { room_id } => ("room", Some(room_id), None, None),
                ReportTarget::User { user_id } => ("user", None, None, Some(user_id)),
            };
            Ok(tx.query_row(
                "INSERT INTO reports (reporter, kind, room_id, event_id, user_id, reason, score, received_ts) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
                params![
                    report.reporter,
                    kind,
                    room_id,
                    event_id,
                    user_id,
                    report.reason,
                    report.score,
                    now_ms()
                ],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Reports, newest first, with IDs below `before` (all when `None`).
    pub async fn reports(&self, before: Option<i64>, limit: usize) -> Result<Vec<ReportRow>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, received_ts, reporter, kind, room_id, event_id, user_id, reason, score FROM reports \
                 WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![before.unwrap_or(i64::MAX), limit as i64], |r| {
                let kind: String = r.get(3)?;
                let room_id: Option<String> = r.get(4)?;
                let event_id: Option<String> = r.get(5)?;
                let user_id: Option<String> = r.get(6)?;
                let target = match (kind.as_str(), room_id, event_id, user_id) {
                    ("event", Some(room_id), Some(event_id), _) => ReportTarget::Event { room_id, event_id },
                    ("room", Some(room_id), _, _) => ReportTarget::Room { room_id },
                    (_, _, _, Some(user_id)) => ReportTarget::User { user_id },
                    _ => {
                        return Err(crate::db::DbError::Conversion(
                            3,
                            format!("malformed report of kind {kind}"),
                        ));
                    }
                };
                Ok(ReportRow {
                    id: r.get(0)?,
                    received_ts: r.get(1)?,
                    report: NewReport {
                        reporter: r.get(2)?,
                        target,
                        reason: r.get(7)?,
                        score: r.get(8)?,
                    },
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Whether this server knows the user: a local account, or a remote
    /// user with a membership in one of its rooms.
    pub async fn user_known(&self, user_id: String) -> Result<bool> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT 1 FROM users WHERE user_id = ?1 \
                 UNION ALL SELECT 1 FROM current_state WHERE type = 'm.room.member' AND state_key = ?1 LIMIT 1",
                [user_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2ee::tests::scratch;

    #[tokio::test]
    async fn reports_are_kept_newest_first() {
        let s = scratch();
        let store = &s.store;
        for (i, target) in [
            ReportTarget::Event {
                room_id: "!r:x".into(),
                event_id: "$e".into(),
            },
            ReportTarget::Room { room_id: "!r:x".into() },
            ReportTarget::User { user_id: "@u:x".into() },
        ]
        .into_iter()
        .enumerate()
        {
            store
                .add_report(NewReport {
                    reporter: "@a:x".into(),
                    target,
                    reason: Some(format!("r{i}")),
                    score: (i == 0).then_some(-100),
                })
                .await
                .unwrap();
        }
        let rows = store.reports(None, 10).await.unwrap();
        assert_eq!(rows.len(), 3);
        assert!(matches!(rows[0].report.target, ReportTarget::User { .. }));
        assert!(matches!(rows[2].report.target, ReportTarget::Event { .. }));
        assert_eq!(rows[2].report.score, Some(-100));
        assert_eq!(store.reports(Some(rows[1].id), 10).await.unwrap().len(), 1);
    }
}
