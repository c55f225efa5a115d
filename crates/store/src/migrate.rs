//! Moving a server's database from SQLite to PostgreSQL
//! (`missive admin migrate-db`). Every table is copied, columns by name, in
//! one PostgreSQL transaction, so that a failed copy leaves the target as it
//! was; the search index is rebuilt rather than copied, since each engine
//! keeps its own kind. Only a fresh target is accepted: merging two servers'
//! data would collide on stream positions and identifiers.
//!
//! Blocking: the PostgreSQL client runs its own runtime, so this must not be
//! called on a thread that drives tokio tasks.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use rusqlite::{OpenFlags, types::ValueRef};

use crate::{
    Store, StoreError,
    db::{Conn, DbError, PgClient, Value, params_from_iter},
    store::{apply_pg_schema, sqlite_max_position},
};

/// Statements carry at most this many parameters (PostgreSQL's limit is 65535).
const MAX_PARAMS: usize = 20_000;
const MAX_ROWS: usize = 1_000;
/// Flushing a batch at this size bounds memory when rows are large.
const MAX_BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("no SQLite database at {0}")]
    NoSource(PathBuf),
    #[error(
        "the PostgreSQL database is not empty ({0}); migrate-db copies only into a fresh database, \
         and wrote nothing"
    )]
    NotEmpty(String),
    #[error("the PostgreSQL schema does not match the SQLite one: {0}")]
    Schema(String),
    #[error("copying table {table}")]
    Copy {
        table: String,
        #[source]
        source: StoreError,
    },
    #[error("row counts differ after the copy: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DbError> for MigrateError {
    fn from(e: DbError) -> Self {
        MigrateError::Store(StoreError::Db(e))
    }
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::from(e).into()
    }
}

pub type Result<T, E = MigrateError> = std::result::Result<T, E>;

/// The rows of one table, the same on both sides once the copy is verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCount {
    pub table: String,
    pub rows: u64,
}

/// A PostgreSQL column: its type decides how an SQLite value is sent.
struct PgColumn {
    data_type: String,
    identity: bool,
}

/// Copies the SQLite database at `sqlite_path` into the empty PostgreSQL
/// database `pg_url`, calling `progress(table, rows so far)` as it goes;
/// returns the verified row count of every table copied.
pub fn sqlite_to_postgres(
    sqlite_path: &Path,
    pg_url: &str,
    mut progress: impl FnMut(&str, u64),
) -> Result<Vec<TableCount>> {
    // Store::open would create a database where there is none.
    if !sqlite_path.is_file() {
        return Err(MigrateError::NoSource(sqlite_path.to_owned()));
    }
    // Opening it as the server does brings an older database's schema up to
    // date and replays its write-ahead log.
    drop(Store::open(sqlite_path)?);
    let mut src = rusqlite::Connection::open_with_flags(
        sqlite_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // One snapshot for the copy and the counts, should anything still write.
    let src = src.transaction()?;
    let tables = sqlite_tables(&src)?;

    let mut client = PgClient::connect(pg_url)?;
    // Refused before the schema is applied, so that a database of another
    // server is not touched at all.
    refuse_non_empty(&Conn::Pg(RefCell::new(&mut client)), &tables)?;
    apply_pg_schema(&mut client)?;

    let conn = Conn::Pg(RefCell::new(&mut client));
    let pg_columns = pg_columns(&conn)?;
    let mut plan = Vec::with_capacity(tables.len());
    for table in &tables {
        let columns = sqlite_columns(&src, table)?;
        let target = pg_columns
            .get(table)
            .ok_or_else(|| MigrateError::Schema(format!("PostgreSQL has no table {table}")))?;
        let mut types = Vec::with_capacity(columns.len());
        for c in &columns {
            let col = target
                .get(c)
                .ok_or_else(|| MigrateError::Schema(format!("PostgreSQL has no column {table}.{c}")))?;
            types.push(col.data_type.clone());
        }
        let identity = target.get("id").is_some_and(|c| c.identity);
        plan.push((table.clone(), columns, types, identity));
    }

    conn.execute_batch("BEGIN")?;
    let copied = (|| -> Result<Vec<u64>> {
        // Holding the counter's row stops a server that started on the target
        // meanwhile from writing until the copy is committed; the second
        // look then sees whatever it wrote before.
        conn.query_row("SELECT pos FROM stream_counter WHERE id = 0 FOR UPDATE", [], |_| Ok(()))?;
        refuse_non_empty(&conn, &tables)?;
        let mut copied = Vec::with_capacity(plan.len());
        for (table, columns, types, identity) in &plan {
            let n = copy_table(&src, &conn, table, columns, types, &mut progress).map_err(|e| match e {
                MigrateError::Store(source) => MigrateError::Copy {
                    table: table.clone(),
                    source,
                },
                e => e,
            })?;
            if *identity {
                // Rows came with their ids: new ones continue after them.
                conn.query_row(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{}', 'id'), \
                         COALESCE((SELECT MAX(id) FROM {}), 0) + 1, false)",
                        quote_ident(table).replace('\'', "''"),
                        quote_ident(table)
                    ),
                    [],
                    |_| Ok(()),
                )?;
            }
            copied.push(n);
        }
        let max = sqlite_max_position(&src)?;
        conn.execute("UPDATE stream_counter SET pos = ?1 WHERE id = 0", [max])?;
        conn.execute_batch("DELETE FROM event_search; DELETE FROM search_backfill;")?;
        crate::search::backfill(&conn)?;
        Ok(copied)
    })();
    let copied = match copied {
        Ok(c) => {
            conn.execute_batch("COMMIT")?;
            c
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    };

    let mut counts = Vec::with_capacity(plan.len());
    let mut wrong = Vec::new();
    for ((table, ..), copied) in plan.iter().zip(copied) {
        let sql = format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {}", quote_ident(table));
        let source: i64 = src.query_row(&sql, [], |r| r.get(0))?;
        let target: i64 = conn.query_row(&sql, [], |r| r.get(0))?;
        if source != target || copied != source as u64 {
            wrong.push(format!(
                "{table}: {source} in SQLite, {copied} copied, {target} in PostgreSQL"
            ));
        }
        counts.push(TableCount {
            table: table.clone(),
            rows: target as u64,
        });
    }
    if !wrong.is_empty() {
        return Err(MigrateError::Mismatch(wrong.join("; ")));
    }
    Ok(counts)
}

/// The tables to copy: all but SQLite's own, the full-text index (FTS5 and
/// its shadow tables), the mark that the index was filled, and the record of
/// migrations (both databases are at this release's version already).
fn sqlite_tables(src: &rusqlite::Connection) -> Result<Vec<String>> {
    let mut st = src.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT GLOB 'sqlite_*' AND name <> 'event_search' AND name NOT GLOB 'event_search_*' \
         AND name <> 'search_backfill' AND name <> 'schema_migrations' ORDER BY name",
    )?;
    let names = st.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<_, _>>()?;
    Ok(names)
}

fn sqlite_columns(src: &rusqlite::Connection, table: &str) -> Result<Vec<String>> {
    let mut st = src.prepare(&format!("SELECT name FROM pragma_table_info({})", quote_literal(table)))?;
    let names = st.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<_, _>>()?;
    Ok(names)
}

/// The columns of every table of the current schema, by table and name.
fn pg_columns(conn: &Conn<'_>) -> Result<HashMap<String, HashMap<String, PgColumn>>> {
    let rows = conn.query_map(
        "SELECT CAST(table_name AS text), CAST(column_name AS text), CAST(data_type AS text), \
         CAST(is_identity AS text) FROM information_schema.columns WHERE table_schema = current_schema()",
        [],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        },
    )?;
    let mut out: HashMap<String, HashMap<String, PgColumn>> = HashMap::new();
    for row in rows {
        let (table, column, data_type, identity) = row?;
        out.entry(table).or_default().insert(
            column,
            PgColumn {
                data_type,
                identity: identity == "YES",
            },
        );
    }
    Ok(out)
}

/// Fails unless every table to copy that exists is empty and no stream
/// position was handed out.
fn refuse_non_empty(conn: &Conn<'_>, tables: &[String]) -> Result<()> {
    let existing: HashSet<String> = conn
        .query_map(
            "SELECT CAST(c.relname AS text) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')",
            [],
            |r| r.get::<_, String>(0),
        )?
        .collect::<Result<_, _>>()?;
    let mut reasons = Vec::new();
    let mut full = Vec::new();
    for table in tables.iter().filter(|t| existing.contains(*t)) {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", quote_ident(table));
        if conn.query_row(&sql, [], |r| r.get::<_, bool>(0))? {
            full.push(table.as_str());
        }
    }
    if !full.is_empty() {
        reasons.push(format!("rows in {}", full.join(", ")));
    }
    if existing.contains("stream_counter") {
        let pos: Option<i64> = conn
            .query_map("SELECT pos FROM stream_counter WHERE id = 0", [], |r| r.get(0))?
            .next()
            .transpose()?;
        if let Some(pos) = pos.filter(|p| *p > 0) {
            reasons.push(format!("stream position {pos}"));
        }
    }
    if !reasons.is_empty() {
        return Err(MigrateError::NotEmpty(reasons.join("; ")));
    }
    Ok(())
}

/// Copies one table in multi-row `INSERT`s; returns the rows inserted.
fn copy_table(
    src: &rusqlite::Connection,
    conn: &Conn<'_>,
    table: &str,
    columns: &[String],
    types: &[String],
    progress: &mut impl FnMut(&str, u64),
) -> Result<u64> {
    let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let names = names.join(", ");
    let per_batch = (MAX_PARAMS / columns.len().max(1)).clamp(1, MAX_ROWS);
    let mut st = src.prepare(&format!("SELECT {names} FROM {}", quote_ident(table)))?;
    let mut rows = st.query([])?;
    let mut batch: Vec<Value> = Vec::with_capacity(per_batch * columns.len());
    let mut bytes = 0;
    let mut copied = 0u64;
    let flush = |batch: &mut Vec<Value>| -> Result<u64> {
        let n = batch.len() / columns.len().max(1);
        if n == 0 {
            return Ok(0);
        }
        let mut sql = format!("INSERT INTO {} ({names}) VALUES ", quote_ident(table));
        for r in 0..n {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..columns.len() {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("?{}", r * columns.len() + c + 1));
            }
            sql.push(')');
        }
        let inserted = conn.execute(&sql, params_from_iter(batch.drain(..)))?;
        Ok(inserted as u64)
    };
    while let Some(row) = rows.next()? {
        for (i, ty) in types.iter().enumerate() {
            let v = fit(row.get_ref(i)?, ty).map_err(|e| DbError::Conversion(i, format!("{}: {e}", columns[i])))?;
            bytes += match &v {
                Value::Text(s) => s.len(),
                Value::Blob(b) => b.len(),
                _ => 8,
            };
            batch.push(v);
        }
        if batch.len() >= per_batch * columns.len() || bytes >= MAX_BATCH_BYTES {
            copied += flush(&mut batch)?;
            bytes = 0;
            progress(table, copied);
        }
    }
    copied += flush(&mut batch)?;
    progress(table, copied);
    Ok(copied)
}

/// An SQLite value as the PostgreSQL column's type takes it. SQLite keeps
/// whatever was stored, whatever the column's declared type; the few
/// mismatches that carry no loss are mended here.
fn fit(v: ValueRef<'_>, data_type: &str) -> Result<Value, String> {
    let integer = matches!(data_type, "bigint" | "integer" | "smallint");
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) if integer => {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Value::Int(f as i64)
            } else {
                return Err(format!("{f} in an integer column"));
            }
        }
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) if integer => {
            let s = String::from_utf8_lossy(t);
            Value::Int(s.trim().parse().map_err(|_| format!("{s:?} in an integer column"))?)
        }
        ValueRef::Text(t) if data_type == "bytea" => Value::Blob(t.to_vec()),
        ValueRef::Text(t) => {
            Value::Text(String::from_utf8(t.to_vec()).map_err(|_| "text that is not UTF-8".to_owned())?)
        }
        ValueRef::Blob(b) if data_type == "text" => {
            Value::Text(String::from_utf8(b.to_vec()).map_err(|_| "bytes that are not UTF-8 in a text column")?)
        }
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    })
}

/// An identifier quoted for either engine.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use rusqlite::types::ValueRef;

    use super::{Value, fit};

    #[test]
    fn lossless_mismatches_are_mended_and_others_refused() {
        assert_eq!(fit(ValueRef::Real(42.0), "bigint"), Ok(Value::Int(42)));
        assert!(fit(ValueRef::Real(4.5), "bigint").is_err());
        assert_eq!(fit(ValueRef::Text(b" 7"), "bigint"), Ok(Value::Int(7)));
        assert_eq!(fit(ValueRef::Blob(b"abc"), "text"), Ok(Value::Text("abc".into())));
        assert!(fit(ValueRef::Blob(&[0xff]), "text").is_err());
        assert_eq!(fit(ValueRef::Text(b"ab"), "bytea"), Ok(Value::Blob(b"ab".to_vec())));
        assert_eq!(fit(ValueRef::Null, "text"), Ok(Value::Null));
    }
}
