//! Server-side full-text search over room events (`POST /search`).
//!
//! A table, `event_search`, holds the searchable text of every event whose
//! content has a `body`, `name` or `topic` string (the spec's
//! `content.body`, `content.name`, `content.topic` keys), keyed by the
//! event's stream position. It is filled in the transaction that appends the
//! event and emptied for an event when the event is redacted. Encrypted
//! events have no plaintext and are never indexed.
//!
//! On SQLite it is a contentless FTS5 table (the text is already in
//! `events.json`, the index only answers which rows match and how well),
//! whose tokenizer folds diacritics; results are ranked by BM25. On
//! PostgreSQL each event has one `tsvector`, built here rather than by the
//! server's parser so that words are exactly those of [`search_words`] on
//! both engines: the words of the text, lowercased and with diacritics folded
//! as SQLite's `remove_diacritics 2` folds them (the `unaccent` extension may
//! not be installed), `body` weighted A, `name` B, `topic` C so that a query
//! can be held to some of the fields. Results are ranked by `ts_rank`.
//!
//! Which rooms a user may search and which results they may see are the
//! caller's business: queries here take the rooms to look in.

use std::collections::BTreeMap;

use crate::db::{Connection, params};
use missive_core::pdu::Pdu;
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

    /// The weight the field's words carry in the PostgreSQL `tsvector`.
    fn weight(self) -> char {
        match self {
            SearchKey::Body => 'A',
            SearchKey::Name => 'B',
            SearchKey::Topic => 'C',
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SearchOrder {
    /// Best match first (BM25 on SQLite, `ts_rank` on PostgreSQL), newest
    /// first among equals.
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

/// Lowercase Latin letters with diacritics, by the letter they fold to: those
/// SQLite's `unicode61` tokenizer folds with `remove_diacritics 2`.
const LATIN_FOLDS: &[(char, &str)] = &[
    ('a', "àáâãäåāăąǎǟǻȁȃȧḁạảấầẩẫậắằẳẵặ"),
    ('b', "ḃḅḇ"),
    ('c', "çćĉċčḉ"),
    ('d', "ďḋḍḏḑḓ"),
    ('e', "èéêëēĕėęěȅȇȩḕḗḙḛḝẹẻẽếềểễệ"),
    ('f', "ḟ"),
    ('g', "ĝğġģǧǵḡ"),
    ('h', "ĥȟḣḥḧḩḫẖ"),
    ('i', "ìíîïĩīĭįǐȉȋḭḯỉị"),
    ('j', "ĵǰ"),
    ('k', "ķǩḱḳḵ"),
    ('l', "ĺļľḷḹḻḽ"),
    ('m', "ḿṁṃ"),
    ('n', "ñńņňǹṅṇṉṋ"),
    ('o', "òóôõöōŏőơǒǫǭȍȏȫȭȯȱṍṏṑṓọỏốồổỗộớờởỡợ"),
    ('p', "ṕṗ"),
    ('r', "ŕŗřȑȓṙṛṝṟ"),
    ('s', "śŝşšșṡṣṥṧṩſẛ"),
    ('t', "ţťțṫṭṯṱẗ"),
    ('u', "ùúûüũūŭůűųưǔǖǘǚǜȕȗṳṵṷṹṻụủứừửữự"),
    ('v', "ṽṿ"),
    ('w', "ŵẁẃẅẇẉẘ"),
    ('x', "ẋẍ"),
    ('y', "ýÿŷȳẏẙỳỵỷỹ"),
    ('z', "źżžẑẓẕ"),
];

/// Letters SQLite's tokenizer folds beyond lowercasing, and what to.
const OTHER_FOLDS: &[(char, char)] = &[
    ('µ', 'μ'),
    ('ς', 'σ'),
    ('ϐ', 'β'),
    ('ϑ', 'θ'),
    ('ϕ', 'φ'),
    ('ϖ', 'π'),
    ('ϰ', 'κ'),
    ('ϱ', 'ρ'),
    ('ϵ', 'ε'),
    ('\u{1fbe}', 'ι'),
];

/// The combining marks of those letters' decompositions, which the tokenizer
/// drops (text in decomposed form folds as the composed form does).
const COMBINING_MARKS: &[char] = &[
    '\u{300}', '\u{301}', '\u{302}', '\u{303}', '\u{304}', '\u{306}', '\u{307}', '\u{308}', '\u{309}', '\u{30a}',
    '\u{30b}', '\u{30c}', '\u{30f}', '\u{311}', '\u{31b}', '\u{323}', '\u{324}', '\u{325}', '\u{326}', '\u{327}',
    '\u{328}', '\u{32d}', '\u{32e}', '\u{330}', '\u{331}',
];

/// Lowercased text with its diacritics folded: "Réunion" becomes "reunion".
fn fold_diacritics(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter(|c| !COMBINING_MARKS.contains(c))
        .map(|c| {
            if c.is_ascii() {
                return c;
            }
            LATIN_FOLDS
                .iter()
                .find(|(_, accented)| accented.contains(c))
                .map(|(base, _)| *base)
                .or_else(|| OTHER_FOLDS.iter().find(|(from, _)| *from == c).map(|(_, to)| *to))
                .unwrap_or(c)
        })
        .collect()
}

/// The longest lexeme PostgreSQL stores, in bytes.
const PG_MAX_LEXEME: usize = 2046;
/// The highest word position a `tsvector` records.
const PG_MAX_POSITION: usize = 16383;
/// Positions kept per word and field (a `tsvector` keeps 256 per word).
const PG_MAX_POSITIONS: usize = 64;

/// The words PostgreSQL indexes and looks for: [`search_words`] of the
/// folded text, each cut to the longest lexeme PostgreSQL accepts.
fn pg_words(text: &str) -> Vec<String> {
    search_words(&fold_diacritics(text))
        .into_iter()
        .map(|mut w| {
            if w.len() > PG_MAX_LEXEME {
                let mut end = PG_MAX_LEXEME;
                while !w.is_char_boundary(end) {
                    end -= 1;
                }
                w.truncate(end);
            }
            w
        })
        .collect()
}

/// A lexeme quoted for the text form of a `tsvector` or `tsquery`.
fn pg_quote(word: &str) -> String {
    format!("'{}'", word.replace('\\', "\\\\").replace('\'', "''"))
}

/// The text form of the `tsvector` of an event's `[body, name, topic]`: each
/// word with its positions, weighted by field. Positions run on across the
/// fields, and where they reach the limit each field stops at its own last
/// position, so that no word loses a field it occurs in.
fn pg_document(text: &[Option<String>; 3]) -> String {
    let mut words: BTreeMap<String, Vec<(usize, char)>> = BTreeMap::new();
    let mut pos = 0;
    let keys = [SearchKey::Body, SearchKey::Name, SearchKey::Topic];
    for (i, (field, key)) in text.iter().zip(keys).enumerate() {
        let last = PG_MAX_POSITION - 2 + i;
        for word in pg_words(field.as_deref().unwrap_or_default()) {
            pos += 1;
            let entry = (pos.min(last), key.weight());
            let seen = words.entry(word).or_default();
            if seen.last() != Some(&entry) && seen.iter().filter(|(_, w)| *w == entry.1).count() < PG_MAX_POSITIONS {
                seen.push(entry);
            }
        }
    }
    words
        .iter()
        .map(|(word, positions)| {
            let positions: Vec<String> = positions.iter().map(|(p, w)| format!("{p}{w}")).collect();
            format!("{}:{}", pg_quote(word), positions.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text form of the PostgreSQL `tsquery` for a term, as
/// [`match_expression`] for FTS5: every word must occur, as a word or a
/// word's beginning, in one of the chosen fields (the weights they carry).
/// Each word is a quoted lexeme, so nothing the user types is `tsquery`
/// syntax. `None` when the term has no words.
fn pg_tsquery(term: &str, keys: &[SearchKey]) -> Option<String> {
    let words = pg_words(term);
    if words.is_empty() {
        return None;
    }
    let mut weights: Vec<char> = keys.iter().map(|k| k.weight()).collect();
    weights.sort_unstable();
    weights.dedup();
    if weights.is_empty() {
        weights = vec!['A', 'B', 'C'];
    }
    let weights: String = weights.into_iter().collect();
    let words: Vec<String> = words.iter().map(|w| format!("{}:*{weights}", pg_quote(w))).collect();
    Some(words.join(" & "))
}

/// The searchable text of an event's content: `body`, `name`, `topic`.
fn searchable_text(kind: &str, content: &str) -> Option<[Option<String>; 3]> {
    if kind == "m.room.encrypted" {
        return None;
    }
    let content: Value = serde_json::from_str(content).ok()?;
    // NUL separates words as a space would; no engine indexes it.
    let field = |k: &str| content.get(k).and_then(Value::as_str).map(|s| s.replace('\0', " "));
    let text = [field("body"), field("name"), field("topic")];
    text.iter().any(Option::is_some).then_some(text)
}

/// Inserts one event's text at `pos`.
fn insert(tx: &Connection<'_>, pos: i64, text: [Option<String>; 3]) -> Result<()> {
    if tx.is_postgres() {
        tx.prepare_cached("INSERT INTO event_search (stream_pos, doc) VALUES (?1, CAST(?2::text AS tsvector))")?
            .execute(params![pos, pg_document(&text)])?;
    } else {
        let [body, name, topic] = text;
        tx.prepare_cached("INSERT INTO event_search (rowid, body, name, topic) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![pos, body, name, topic])?;
    }
    Ok(())
}

/// Indexes a new event, in the transaction that appends it at `pos`.
pub(crate) fn index_event(tx: &Connection<'_>, pos: i64, pdu: &Pdu) -> Result<()> {
    if let Some(text) = searchable_text(&pdu.kind.to_string(), pdu.content.get()) {
        insert(tx, pos, text)?;
    }
    Ok(())
}

/// Drops a redacted event from the index, in the redaction's transaction.
pub(crate) fn unindex_event(tx: &Connection<'_>, event_id: &str) -> Result<()> {
    let key = if tx.is_postgres() { "stream_pos" } else { "rowid" };
    tx.prepare_cached(&format!(
        "DELETE FROM event_search WHERE {key} = (SELECT stream_pos FROM events WHERE event_id = ?1)"
    ))?
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
    let mut st = tx.prepare("SELECT stream_pos, type, json FROM events")?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
    })?;
    for row in rows {
        let (pos, kind, json) = row?;
        if let Some(text) = crate::event_json::content(&json).and_then(|c| searchable_text(&kind, &c)) {
            insert(tx, pos, text)?;
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

/// [`WHERE`] for PostgreSQL, with the same parameters: ?1 is the text of a
/// `tsquery`, the lists are JSON arrays.
const PG_WHERE: &str = "s.doc @@ CAST(?1::text AS tsquery) \
     AND e.room_id IN (SELECT jsonb_array_elements_text(?2::jsonb)) \
     AND (?3::jsonb IS NULL OR e.sender IN (SELECT jsonb_array_elements_text(?3::jsonb))) \
     AND e.sender NOT IN (SELECT jsonb_array_elements_text(?4::jsonb)) \
     AND (?5::jsonb IS NULL OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(?5::jsonb) t(v) WHERE e.type = t.v \
          OR (right(t.v, 1) = '*' AND starts_with(e.type, left(t.v, -1))))) \
     AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(?6::jsonb) t(v) WHERE e.type = t.v \
          OR (right(t.v, 1) = '*' AND starts_with(e.type, left(t.v, -1))))";

/// The tables both queries read, joined, as `WHERE` / `PG_WHERE` name them.
const FROM: &str = "event_search JOIN events e ON e.stream_pos = event_search.rowid";
const PG_FROM: &str = "event_search s JOIN events e ON e.stream_pos = s.stream_pos";

/// `ts_rank` counting every field alike (as BM25 does by default), scaled
/// down for long documents.
const PG_RANK: &str = "ts_rank(CAST('{1,1,1,1}' AS real[]), s.doc, CAST(?1::text AS tsquery), 1)";

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

fn bind(q: &SearchQuery, postgres: bool) -> Option<Bound> {
    // A type holding NUL names no event (none is stored with one), and
    // PostgreSQL's JSON functions refuse it: it is left out of the lists.
    let usable = |v: &[String]| -> Vec<String> { v.iter().filter(|t| !t.contains('\0')).cloned().collect() };
    let types = q.types.as_deref().map(usable);
    if types.as_ref().is_some_and(|t| t.is_empty()) && q.types.as_ref().is_some_and(|t| !t.is_empty()) {
        return None;
    }
    Some(Bound {
        expr: if postgres {
            pg_tsquery(&q.term, &q.keys)?
        } else {
            match_expression(&q.term, &q.keys)?
        },
        rooms: json_list(&q.rooms),
        senders: q.senders.as_deref().map(json_list),
        not_senders: json_list(&q.not_senders),
        types: types.as_deref().map(json_list),
        not_types: json_list(&usable(&q.not_types)),
    })
}

impl Store {
    /// One page of matches, in the query's order, before any visibility check.
    pub async fn search_events(&self, q: SearchQuery, from: SearchFrom, limit: usize) -> Result<Vec<SearchHit>> {
        let Some(b) = bind(&q, self.is_postgres()) else {
            return Ok(vec![]);
        };
        if q.rooms.is_empty() {
            return Ok(vec![]);
        }
        self.read(move |c| {
            let cols = EVENT_COLS
                .split(", ")
                .map(|c| format!("e.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let (before, offset) = match from {
                SearchFrom::Start => (i64::MAX, 0),
                SearchFrom::Offset(o) => (i64::MAX, o.max(0)),
                SearchFrom::Before(p) => (p, 0),
            };
            let sql = if c.is_postgres() {
                let order = match q.order {
                    SearchOrder::Rank => "rank DESC, e.stream_pos DESC",
                    SearchOrder::Recent => "e.stream_pos DESC",
                };
                format!(
                    "SELECT {cols}, CAST({PG_RANK} AS DOUBLE PRECISION) AS rank FROM {PG_FROM} \
                     WHERE {PG_WHERE} AND e.stream_pos < ?7 ORDER BY {order} LIMIT ?8 OFFSET ?9"
                )
            } else {
                let order = match q.order {
                    SearchOrder::Rank => "bm25(event_search) ASC, e.stream_pos DESC",
                    SearchOrder::Recent => "e.stream_pos DESC",
                };
                format!(
                    "SELECT {cols}, -bm25(event_search) FROM {FROM} \
                     WHERE {WHERE} AND e.stream_pos < ?7 ORDER BY {order} LIMIT ?8 OFFSET ?9"
                )
            };
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
                        rank: r.get::<_, f64>(9)?,
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
        let Some(b) = bind(&q, self.is_postgres()) else {
            return Ok(vec![]);
        };
        if q.rooms.is_empty() {
            return Ok(vec![]);
        }
        self.read(move |c| {
            let (from, filter) = if c.is_postgres() {
                (PG_FROM, PG_WHERE)
            } else {
                (FROM, WHERE)
            };
            let sql = format!(
                "SELECT e.room_id, MIN(e.event_id), CAST(COUNT(*) AS BIGINT) FROM {from} \
                 WHERE {filter} GROUP BY e.room_id, e.state_group"
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
            let mut st =
                c.prepare_cached("SELECT room_id, json FROM events WHERE type = 'm.room.member' AND state_key = ?1")?;
            let mut rooms = std::collections::BTreeSet::new();
            for row in st.query_map([user_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
                let (room, json) = row?;
                if crate::event_json::content_str(&json, "membership").as_deref() == Some("join") {
                    rooms.insert(room);
                }
            }
            Ok(rooms.into_iter().collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use missive_core::pdu::Pdu;
    use ruma::{OwnedEventId, OwnedRoomId};
    use serde_json::json;

    use super::*;
    use crate::{NewRoom, NewRoomEvent, e2ee::tests::scratch};

    const ROOM: &str = "!room:x";

    /// A store on a database of its own on a PostgreSQL server, dropped with
    /// it: the server `MISSIVE_TEST_POSTGRES` names (`postgres://…`), or the
    /// local one for any other value. `None`, saying so, when it is unset.
    struct PgScratch {
        store: Option<Store>,
        server: String,
        name: String,
    }

    impl PgScratch {
        fn new() -> Option<PgScratch> {
            let Some(var) = std::env::var("MISSIVE_TEST_POSTGRES").ok().filter(|v| !v.is_empty()) else {
                println!("MISSIVE_TEST_POSTGRES is unset: skipping this PostgreSQL test");
                return None;
            };
            let server = if var.starts_with("postgres://") || var.starts_with("postgresql://") {
                var.trim_end_matches('/').to_owned()
            } else {
                "postgres://postgres@127.0.0.1".to_owned()
            };
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "missive_search_test_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let (admin_server, url) = (server.clone(), format!("{server}/{name}"));
            let statements = [
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                // C collation: text sorts by bytes, as in SQLite.
                format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"),
            ];
            // The synchronous client runs a runtime of its own: keep it off the test's.
            let store = std::thread::spawn(move || {
                pg_admin(&admin_server, &statements);
                Store::open_postgres(&url).expect("open the test database")
            })
            .join()
            .expect("create the test database");
            Some(PgScratch {
                store: Some(store),
                server,
                name,
            })
        }

        fn store(&self) -> &Store {
            self.store.as_ref().expect("open until dropped")
        }
    }

    impl Drop for PgScratch {
        fn drop(&mut self) {
            let store = self.store.take();
            let server = self.server.clone();
            let drop_db = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            // Closing the store's connections also needs a thread of its own.
            let _ = std::thread::spawn(move || {
                drop(store);
                pg_admin(&server, &[drop_db]);
            })
            .join();
        }
    }

    fn pg_admin(server: &str, statements: &[String]) {
        let mut c = postgres::Client::connect(&format!("{server}/postgres"), postgres::NoTls)
            .expect("connect to MISSIVE_TEST_POSTGRES");
        for s in statements {
            c.batch_execute(s).expect("database admin statement");
        }
    }

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

    async fn append(store: &Store, mut pdu: Pdu, new_room: bool) {
        // The store appends an event only on the room's latest one.
        if !new_room {
            pdu.prev_events = store.forward_extremities(ROOM.into()).await.unwrap().0;
        }
        store
            .append_event(NewRoomEvent {
                pdu,
                unsigned: None,
                txn: None,
                rel_type: None,
                relates_to: None,
                media_refs: vec![],
                federate_to: vec![],
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

    #[test]
    fn diacritics_fold_as_sqlite_folds_them() {
        assert_eq!(
            fold_diacritics("Réunion BUDGÉTAIRE à Łódź"),
            "reunion budgetaire a łodz"
        );
        // Decomposed text folds as composed text does.
        assert_eq!(fold_diacritics("Cafe\u{301} Ǹ\u{327}"), "cafe n");
        assert_eq!(fold_diacritics("Tiếng Việt ſ ς"), "tieng viet s σ");
        // Only Latin letters lose their accents, as in SQLite's tokenizer.
        assert_eq!(fold_diacritics("Ωμέγα ø ß"), "ωμέγα ø ß");
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE VIRTUAL TABLE t USING fts5(a, tokenize='unicode61 remove_diacritics 2'); \
             CREATE VIRTUAL TABLE v USING fts5vocab(t, row);",
        )
        .unwrap();
        let text: String = LATIN_FOLDS
            .iter()
            .flat_map(|(_, s)| s.chars())
            .chain(['Å', 'Ÿ', 'µ'])
            .collect();
        for ch in text.chars().flat_map(|c| [c, c.to_uppercase().next().unwrap()]) {
            c.execute("DELETE FROM t", []).unwrap();
            c.execute("INSERT INTO t (a) VALUES (?1)", [format!("x{ch}x")]).unwrap();
            let sqlite: String = c.query_row("SELECT term FROM v", [], |r| r.get(0)).unwrap();
            assert_eq!(fold_diacritics(&format!("x{ch}x")), sqlite, "{ch}");
        }
    }

    #[test]
    fn pg_tsquery_quotes_words_and_scopes_weights() {
        assert_eq!(pg_tsquery(" !& ", &[]), None);
        assert_eq!(
            pg_tsquery("Réunion & !'x' | y:*", &[SearchKey::Topic, SearchKey::Body]),
            Some("'reunion':*AC & 'x':*AC & 'y':*AC".into())
        );
        assert_eq!(pg_tsquery("x", &[]), Some("'x':*ABC".into()));
        assert_eq!(pg_quote("o'b\\"), "'o''b\\\\'");
    }

    #[test]
    fn pg_document_weights_words_by_field() {
        assert_eq!(
            pg_document(&[Some("Budget, budget!".into()), None, Some("Le budget".into())]),
            "'budget':1A,2A,4C 'le':3C"
        );
        // Past the last position each field keeps a position of its own,
        // and a word keeps a few positions per field.
        let long = "w ".repeat(PG_MAX_POSITION + 10);
        let doc = pg_document(&[Some(long), Some("w".into()), Some("w v".into())]);
        let body: Vec<String> = (1..=PG_MAX_POSITIONS).map(|p| format!("{p}A")).collect();
        assert_eq!(doc, format!("'v':16383C 'w':{},16382B,16383C", body.join(",")));
        // Words are cut to the longest lexeme, on a character's boundary.
        let huge = format!("x{}", "ж".repeat(PG_MAX_LEXEME));
        assert_eq!(pg_words(&huge)[0].len(), PG_MAX_LEXEME - 1);
    }

    #[tokio::test]
    async fn events_are_indexed_ranked_and_forgotten_on_redaction() {
        let s = scratch();
        events_are_indexed_ranked_and_forgotten(&s.store).await;
    }

    #[tokio::test]
    async fn events_are_indexed_ranked_and_forgotten_on_redaction_postgres() {
        let Some(s) = PgScratch::new() else { return };
        events_are_indexed_ranked_and_forgotten(s.store()).await;
    }

    async fn events_are_indexed_ranked_and_forgotten(store: &Store) {
        append(
            store,
            pdu(1, "m.room.create", Some(""), json!({"creator": "@alice:x"})),
            true,
        )
        .await;
        let text = |body: &str| json!({"msgtype": "m.text", "body": body});
        let events = [
            (
                2,
                "m.room.name",
                Some(""),
                json!({"name": "Budget committee", "topic": "To be named"}),
            ),
            (3, "m.room.topic", Some(""), json!({"topic": "Quarterly budget"})),
            (4, "m.room.message", None, text("Réunion budgétaire demain")),
            (5, "m.room.message", None, text("budget budget budget")),
            (
                6,
                "m.room.encrypted",
                None,
                json!({"algorithm": "m.megolm.v1.aes-sha2", "body": "budget"}),
            ),
            (7, "m.room.message", None, text("lunch?")),
            (8, "m.room.message", None, text("Cafe\u{301} NOIR, L'ÉTÉ")),
        ];
        for (n, kind, state_key, content) in events {
            append(store, pdu(n, kind, state_key, content), false).await;
        }

        // Diacritics fold, prefixes match, words are ANDed.
        assert_eq!(ids(store, query("café noir")).await, ["$e8"]);
        assert_eq!(ids(store, query("l'ete CAFE")).await, ["$e8"]);
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
        // FTS5 and tsquery syntax in the term is only text.
        assert!(ids(store, query("budget\" OR NEAR(x")).await.is_empty());
        assert!(ids(store, query("budget | !x:* & 'y'")).await.is_empty());
        assert_eq!(ids(store, query("'budget':* | (\\")).await.len(), 4);
        // Every word in one of the chosen fields, not necessarily the same one.
        let name_topic = SearchQuery {
            keys: vec![SearchKey::Name, SearchKey::Topic],
            ..query("named committee")
        };
        assert_eq!(ids(store, name_topic.clone()).await, ["$e2"]);
        let name_body = SearchQuery {
            keys: vec![SearchKey::Name, SearchKey::Body],
            ..name_topic
        };
        assert!(ids(store, name_body).await.is_empty());

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
