//! Server-side full-text search over room events (`POST /search`).
//!
//! An FTS5 table, `event_search`, holds the searchable text of every event
//! whose content has a `body`, `name` or `topic` string (the spec's
//! `content.body`, `content.name`, `content.topic` keys); its rowid is the
//! event's stream position. It is filled in the transaction that appends the
//! event and emptied for an event when the event is redacted. The table is
//! contentless: the text is already in `events.json`, the index only answers
//! which rows match and how well. Encrypted events have no plaintext and are
//! never indexed.
//!
//! Which rooms a user may search and which results they may see are the
//! caller's business: queries here take the rooms to look in.

use missive_core::pdu::Pdu;
use crate::db::{Connection, params};
use serde_json::Value;

use crate::{
    Result, StoredEvent,
    events::{EVENT_COLS, event_row},
    store::Store,
};

/// The content fields the index holds, in their column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchKey {
    Body,
    Name,
    Topic,
}

impl SearchKey {
    fn column(self) -> &'static str {
        match self {
            SearchKey::Body => "body",
            SearchKey::Name => "name",
            SearchKey::Topic => "topic",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SearchOrder {
    /// Best match first (FTS5's BM25), newest first among equals.
    #[default]
    Rank,
    /// Newest first.
    Recent,
}

/// What to look for, and where. The caller decides `rooms` (those the user
/// may search); the other clauses are the client's filter.
#[derive(Clone, Debug, Default)]
pub struct SearchQuery {
    pub term: String,
    /// Fields to match in; empty means all of them.
    pub keys: Vec<SearchKey>,
    pub rooms: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    /// Event type patterns; a trailing `*` matches any suffix.
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub order: SearchOrder,
}

/// Where a page of results starts: an offset into the ranked list, or (for
/// newest-first results) the stream position the page stays below, which
/// does not shift when new events arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchFrom {
    Start,
    Offset(i64),
    Before(i64),
}

#[derive(Clone, Debug)]
pub struct SearchHit {
    pub event: StoredEvent,
    /// Higher is a better match.
    pub rank: f64,
}

/// How many matches share a state group (so have the same visibility), with
/// one of them to check that visibility on.
#[derive(Clone, Debug)]
pub struct SearchGroupCount {
    pub room_id: String,
    pub event_id: String,
    pub count: i64,
}

/// The words of a search term: runs of letters and digits, lowercased.
pub fn search_words(term: &str) -> Vec<String> {
    term.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The FTS5 query for a term: every word must occur (as a word or a word's
/// beginning) in one of the chosen fields. Each word is quoted, so nothing
/// the user types is FTS5 syntax. `None` when the term has no words.
pub fn match_expression(term: &str, keys: &[SearchKey]) -> Option<String> {
    let words = search_words(term);
    if words.is_empty() {
        return None;
    }
    let words: Vec<String> = words
        .iter()
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect();
    let mut cols: Vec<&str> = keys.iter().map(|k| k.column()).collect();
    cols.sort_unstable();
    cols.dedup();
    if cols.is_empty() {
        cols = vec!["body", "name", "topic"];
    }
    Some(format!("{{{}}} : ({})", cols.join(" "), words.join(" AND ")))
}

/// The searchable text of an event's content: `body`, `name`, `topic`.
fn searchable_text(kind: &str, content: &str) -> Option<[Option<String>; 3]> {
    if kind == "m.room.encrypted" {
        return None;
    }
    let content: Value = serde_json::from_str(content).ok()?;
    let field = |k: &str| content.get(k).and_then(Value::as_str).map(str::to_owned);
    let text = [field("body"), field("name"), field("topic")];
    text.iter().any(Option::is_some).then_some(text)
}

/// Indexes a new event, in the transaction that appends it at `pos`.
pub(crate) fn index_event(tx: &Connection<'_>, pos: i64, pdu: &Pdu) -> Result<()> {
    if let Some([body, name, topic]) = searchable_text(&pdu.kind.to_string(), pdu.content.get()) {
        tx.prepare_cached("INSERT INTO event_search (rowid, body, name, topic) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![pos, body, name, topic])?;
    }
    Ok(())
}

/// Drops a redacted event from the index, in the redaction's transaction.
pub(crate) fn unindex_event(tx: &Connection<'_>, event_id: &str) -> Result<()> {
    tx.prepare_cached("DELETE FROM event_search WHERE rowid = (SELECT stream_pos FROM events WHERE event_id = ?1)")?
        .execute([event_id])?;
    Ok(())
}

/// Indexes the events stored before the index existed, once; the caller
/// holds the transaction.
pub(crate) fn backfill(tx: &Connection<'_>) -> Result<()> {
    let done: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM search_backfill)", [], |r| r.get(0))?;
    if done {
        return Ok(());
    }
    let mut st = tx.prepare("SELECT stream_pos, type, json_extract(json, '$.content') FROM events")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    let mut ins = tx.prepare("INSERT INTO event_search (rowid, body, name, topic) VALUES (?1, ?2, ?3, ?4)")?;
    for row in rows {
        let (pos, kind, content) = row?;
        if let Some([body, name, topic]) = content.and_then(|c| searchable_text(&kind, &c)) {
            ins.execute(params![pos, body, name, topic])?;
        }
    }
    tx.execute("INSERT INTO search_backfill (id) VALUES (0)", [])?;
    Ok(())
}

/// The `WHERE` clause shared by result and count queries; parameters are
/// ?1 match, ?2 rooms, ?3 senders, ?4 not_senders, ?5 types, ?6 not_types.
const WHERE: &str = "event_search MATCH ?1 \
     AND e.room_id IN (SELECT value FROM json_each(?2)) \
     AND (?3 IS NULL OR e.sender IN (SELECT value FROM json_each(?3))) \
     AND e.sender NOT IN (SELECT value FROM json_each(?4)) \
     AND (?5 IS NULL OR EXISTS (SELECT 1 FROM json_each(?5) t WHERE e.type = t.value \
          OR (substr(t.value, -1) = '*' AND substr(e.type, 1, length(t.value) - 1) = substr(t.value, 1, length(t.value) - 1)))) \
     AND NOT EXISTS (SELECT 1 FROM json_each(?6) t WHERE e.type = t.value \
          OR (substr(t.value, -1) = '*' AND substr(e.type, 1, length(t.value) - 1) = substr(t.value, 1, length(t.value) - 1)))";

struct Bound {
    expr: String,
    rooms: String,
    senders: Option<String>,
    not_senders: String,
    types: Option<String>,
    not_types: String,
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn bind(q: &SearchQuery) -> Option<Bound> {
    Some(Bound {
        expr: match_expression(&q.term, &q.keys)?,
        rooms: json_list(&q.rooms),
        senders: q.senders.as_deref().map(json_list),
        not_senders: json_list(&q.not_senders),
        types: q.types.as_deref().map(json_list),
        not_types: json_list(&q.not_types),
    })
}

impl Store {
    /// One page of matches, in the query's order, before any visibility check.
    pub async fn search_events(&self, q: SearchQuery, from: SearchFrom, limit: usize) -> Result<Vec<SearchHit>> {
        let Some(b) = bind(&q) else {
            return Ok(vec![]);
        };
        if q.rooms.is_empty() {
            return Ok(vec![]);
        }
        self.read(move |c| {
            let cols = EVENT_COLS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
            let (before, offset) = match from {
                SearchFrom::Start => (i64::MAX, 0),
                SearchFrom::Offset(o) => (i64::MAX, o.max(0)),
                SearchFrom::Before(p) => (p, 0),
            };
            let order = match q.order {
                SearchOrder::Rank => "bm25(event_search) ASC, e.stream_pos DESC",
                SearchOrder::Recent => "e.stream_pos DESC",
            };
            let sql = format!(
                "SELECT {cols}, bm25(event_search) FROM event_search JOIN events e ON e.stream_pos = event_search.rowid \
                 WHERE {WHERE} AND e.stream_pos < ?7 ORDER BY {order} LIMIT ?8 OFFSET ?9"
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(
                params![
                    b.expr,
                    b.rooms,
                    b.senders,
                    b.not_senders,
                    b.types,
                    b.not_types,
                    before,
                    limit as i64,
                    offset
                ],
                |r| {
                    Ok(SearchHit {
                        event: event_row(r)?,
                        rank: -r.get::<_, f64>(9)?,
                    })
                },
            )?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Every match counted by state group, for a total that counts only
    /// what the user may see.
    pub async fn search_counts(&self, q: SearchQuery) -> Result<Vec<SearchGroupCount>> {
        let Some(b) = bind(&q) else {
            return Ok(vec![]);
        };
        if q.rooms.is_empty() {
            return Ok(vec![]);
        }
        self.read(move |c| {
            let sql = format!(
                "SELECT e.room_id, MIN(e.event_id), COUNT(*) FROM event_search JOIN events e ON e.stream_pos = event_search.rowid \
                 WHERE {WHERE} GROUP BY e.room_id, e.state_group"
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(
                params![b.expr, b.rooms, b.senders, b.not_senders, b.types, b.not_types],
                |r| {
                    Ok(SearchGroupCount {
                        room_id: r.get(0)?,
                        event_id: r.get(1)?,
                        count: r.get(2)?,
                    })
                },
            )?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Rooms the user has been joined to at some point: the rooms they may search.
    pub async fn rooms_ever_joined(&self, user_id: String) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT room_id FROM events WHERE type = 'm.room.member' AND state_key = ?1 \
                 AND json_extract(json, '$.content.membership') = 'join'",
            )?;
            let rows = st.query_map([user_id], |r| r.get(0))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use missive_core::pdu::Pdu;
    use ruma::{OwnedEventId, OwnedRoomId};
    use serde_json::json;

    use super::*;
    use crate::{NewRoom, NewRoomEvent, e2ee::tests::scratch};

    const ROOM: &str = "!room:x";

    fn pdu(n: u32, kind: &str, state_key: Option<&str>, content: Value) -> Pdu {
        let mut ev = json!({
            "room_id": ROOM,
            "sender": "@alice:x",
            "origin_server_ts": 1000 + n,
            "type": kind,
            "content": content,
            "prev_events": [],
            "auth_events": [],
            "depth": n,
        });
        if let Some(sk) = state_key {
            ev["state_key"] = sk.into();
        }
        Pdu::from_json(
            OwnedEventId::try_from(format!("$e{n}")).unwrap(),
            Some(&OwnedRoomId::try_from(ROOM).unwrap()),
            serde_json::value::to_raw_value(&ev).unwrap(),
        )
        .unwrap()
    }

    async fn append(store: &Store, pdu: Pdu, new_room: bool) {
        store
            .append_event(NewRoomEvent {
                pdu,
                unsigned: None,
                txn: None,
                rel_type: None,
                relates_to: None,
                media_refs: vec![],
                new_room: new_room.then(|| NewRoom {
                    room_version: "10".into(),
                    creator: "@alice:x".into(),
                }),
            })
            .await
            .unwrap();
    }

    fn query(term: &str) -> SearchQuery {
        SearchQuery {
            term: term.into(),
            rooms: vec![ROOM.into()],
            ..Default::default()
        }
    }

    async fn ids(store: &Store, q: SearchQuery) -> Vec<String> {
        store
            .search_events(q, SearchFrom::Start, 50)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.event.pdu.event_id.to_string())
            .collect()
    }

    #[test]
    fn bundled_sqlite_has_fts5() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE VIRTUAL TABLE t USING fts5(a, content='', contentless_delete=1, \
             tokenize='unicode61 remove_diacritics 2')",
        )
        .unwrap();
        c.execute("INSERT INTO t (rowid, a) VALUES (1, 'Réunion budgétaire')", [])
            .unwrap();
        let count = |q: &str| -> i64 {
            c.query_row("SELECT COUNT(*) FROM t WHERE t MATCH ?1", [q], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count("reunion"), 1);
        assert_eq!(count("{a} : (\"budg\"*)"), 1);
        c.execute("DELETE FROM t WHERE rowid = 1", []).unwrap();
        assert_eq!(count("reunion"), 0);
    }

    #[test]
    fn match_expression_quotes_words_and_scopes_columns() {
        assert_eq!(match_expression("  ", &[]), None);
        assert_eq!(
            match_expression("Hello, \"world\" OR", &[SearchKey::Body]),
            Some("{body} : (\"hello\"* AND \"world\"* AND \"or\"*)".into())
        );
        assert_eq!(match_expression("x", &[]), Some("{body name topic} : (\"x\"*)".into()));
    }

    #[tokio::test]
    async fn events_are_indexed_ranked_and_forgotten_on_redaction() {
        let s = scratch();
        let store = &s.store;
        append(
            store,
            pdu(1, "m.room.create", Some(""), json!({"creator": "@alice:x"})),
            true,
        )
        .await;
        append(
            store,
            pdu(2, "m.room.name", Some(""), json!({"name": "Budget committee"})),
            false,
        )
        .await;
        append(
            store,
            pdu(3, "m.room.topic", Some(""), json!({"topic": "Quarterly budget"})),
            false,
        )
        .await;
        append(
            store,
            pdu(
                4,
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": "Réunion budgétaire demain"}),
            ),
            false,
        )
        .await;
        append(
            store,
            pdu(
                5,
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": "budget budget budget"}),
            ),
            false,
        )
        .await;
        append(
            store,
            pdu(
                6,
                "m.room.encrypted",
                None,
                json!({"algorithm": "m.megolm.v1.aes-sha2", "body": "budget"}),
            ),
            false,
        )
        .await;
        append(
            store,
            pdu(
                7,
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": "lunch?"}),
            ),
            false,
        )
        .await;

        // Diacritics fold, prefixes match, words are ANDed.
        assert_eq!(ids(store, query("reunion")).await, ["$e4"]);
        assert_eq!(ids(store, query("budg dem")).await, ["$e4"]);
        // Every field by default, newest first when asked; encrypted never.
        let recent = SearchQuery {
            order: SearchOrder::Recent,
            ..query("budget")
        };
        // "budget" is a prefix of "budgétaire" once diacritics fold.
        assert_eq!(ids(store, recent.clone()).await, ["$e5", "$e4", "$e3", "$e2"]);
        assert_eq!(ids(store, query("budgets")).await, Vec::<String>::new());
        // By rank, the message repeating the word comes first.
        let ranked = store
            .search_events(query("budget"), SearchFrom::Start, 10)
            .await
            .unwrap();
        assert_eq!(ranked[0].event.pdu.event_id.as_str(), "$e5");
        assert!(ranked.windows(2).all(|w| w[0].rank >= w[1].rank));
        // Keys restrict the fields.
        let topic_only = SearchQuery {
            keys: vec![SearchKey::Topic],
            ..query("budget")
        };
        assert_eq!(ids(store, topic_only).await, ["$e3"]);
        // Filters: types with wildcards, senders, rooms.
        let types = SearchQuery {
            types: Some(vec!["m.room.n*".into()]),
            ..query("budget")
        };
        assert_eq!(ids(store, types).await, ["$e2"]);
        let not_types = SearchQuery {
            not_types: vec!["m.room.message".into()],
            ..recent.clone()
        };
        assert_eq!(ids(store, not_types).await, ["$e3", "$e2"]);
        let others = SearchQuery {
            senders: Some(vec!["@bob:x".into()]),
            ..query("budget")
        };
        assert!(ids(store, others).await.is_empty());
        let elsewhere = SearchQuery {
            rooms: vec!["!other:x".into()],
            ..query("budget")
        };
        assert!(ids(store, elsewhere).await.is_empty());
        // Paging newest-first below a position.
        let page = store
            .search_events(recent.clone(), SearchFrom::Before(5), 10)
            .await
            .unwrap();
        assert_eq!(page.len(), 3);
        let page = store
            .search_events(query("budget"), SearchFrom::Offset(3), 10)
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        // Counts by state group add up.
        let counts = store.search_counts(query("budget")).await.unwrap();
        assert_eq!(counts.iter().map(|c| c.count).sum::<i64>(), 4);
        // FTS5 syntax in the term is only text.
        assert!(ids(store, query("budget\" OR NEAR(x")).await.is_empty());

        // A database from before the index is indexed once on opening.
        store
            .write(|tx, _| {
                tx.execute_batch("DELETE FROM event_search; DELETE FROM search_backfill;")?;
                backfill(tx)?;
                backfill(tx)
            })
            .await
            .unwrap();
        assert_eq!(ids(store, recent.clone()).await, ["$e5", "$e4", "$e3", "$e2"]);

        store
            .redact_event("$e5".into(), "{}".into(), "$r".into())
            .await
            .unwrap();
        assert_eq!(ids(store, recent).await, ["$e4", "$e3", "$e2"]);
    }
}
