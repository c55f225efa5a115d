//! One connection type over both backends, so that every query of the store
//! is written once. SQL is written in the dialect both engines share:
//! numbered parameters `?1`, `ON CONFLICT … DO NOTHING/UPDATE` (never
//! `INSERT OR …`), `RETURNING` instead of `last_insert_rowid()`, integers for
//! booleans, `CAST(… AS BIGINT)` around aggregates PostgreSQL would widen, and
//! [`Conn::json_text`] where a JSON field is read in SQL. PostgreSQL types a
//! parameter where it first meets it: an optional filter is written
//! `(col = ?2 OR ?2 IS NULL)`, column first. For PostgreSQL the
//! parameters are renumbered `$n`, and values are converted to whatever type
//! the server inferred for each parameter and column.

use std::{cell::RefCell, collections::HashMap, error::Error as StdError, mem::ManuallyDrop};

use bytes::BytesMut;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("query returned no rows")]
    NoRows,
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("column {0}: {1}")]
    Conversion(usize, String),
    /// A text value holding NUL, which PostgreSQL cannot store: refused on
    /// both engines, so that they answer alike.
    #[error("text holds a NUL character")]
    InvalidText,
}

/// Refuses text values holding NUL (see [`DbError::InvalidText`]).
fn check_text(values: &[Value]) -> Result<()> {
    if values.iter().any(|v| matches!(v, Value::Text(t) if t.contains('\0'))) {
        return Err(DbError::InvalidText);
    }
    Ok(())
}

/// The server's own message (and where it points), not just "db error".
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{} ({}){}{}",
            d.message(),
            d.code().code(),
            d.detail().map(|x| format!(": {x}")).unwrap_or_default(),
            d.where_().map(|x| format!(" at {x}")).unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => DbError::NoRows,
            e => DbError::Sqlite(e),
        }
    }
}

impl DbError {
    /// A UNIQUE or PRIMARY KEY constraint refused the row.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => f.code == rusqlite::ErrorCode::ConstraintViolation,
            DbError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }

    /// The connection itself failed (not the statement): it is replaced.
    pub(crate) fn is_connection_lost(&self) -> bool {
        matches!(self, DbError::Postgres(e) if e.is_closed() || e.code().is_none() && e.as_db_error().is_none())
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

pub trait OptionalExtension<T> {
    /// `Ok(None)` instead of [`DbError::NoRows`].
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(DbError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A value going to or coming from either engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

pub trait ToValue {
    fn to_value(&self) -> Value;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i64, i32, i16, u32, u16, u8, usize, u64);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, |v| v.to_value())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

pub trait FromValue: Sized {
    fn from_value(v: Value) -> std::result::Result<Self, String>;
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value) -> std::result::Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(i).map_err(|e| e.to_string()),
                    other => Err(format!("expected an integer, got {other:?}")),
                }
            }
        }
    )*};
}
int_from_value!(i64, i32, u32, u64, usize);

impl FromValue for bool {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i != 0),
            other => Err(format!("expected a boolean, got {other:?}")),
        }
    }
}
impl FromValue for f64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, got {other:?}")),
        }
    }
}
impl FromValue for String {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, got {other:?}")),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b),
            Value::Text(s) => Ok(s.into_bytes()),
            other => Err(format!("expected bytes, got {other:?}")),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}
impl FromValue for Value {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(v)
    }
}

/// Parameters of a statement: `params![…]`, an array of one type, `[]`, or
/// [`params_from_iter`].
pub trait Params {
    fn into_values(self) -> Vec<Value>;
}

impl Params for &[&dyn ToValue] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
impl Params for [&dyn ToValue; 0] {
    fn into_values(self) -> Vec<Value> {
        Vec::new()
    }
}
macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn into_values(self) -> Vec<Value> {
                self.iter().map(|v| v.to_value()).collect()
            }
        }
        impl<T: ToValue> Params for &[T; $n] {
            fn into_values(self) -> Vec<Value> {
                self.iter().map(|v| v.to_value()).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

pub struct ParamsFromIter(Vec<Value>);

impl Params for ParamsFromIter {
    fn into_values(self) -> Vec<Value> {
        self.0
    }
}

pub fn params_from_iter<I>(iter: I) -> ParamsFromIter
where
    I: IntoIterator,
    I::Item: ToValue,
{
    ParamsFromIter(iter.into_iter().map(|v| v.to_value()).collect())
}

#[macro_export]
macro_rules! params {
    () => { [] as [&dyn $crate::db::ToValue; 0] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::db::ToValue),+] as &[&dyn $crate::db::ToValue] };
}
pub use crate::params;

/// One result row, read out of the engine's row.
#[derive(Clone)]
pub struct Row {
    values: Vec<Value>,
}

pub trait RowIndex {
    fn index(self) -> usize;
}
impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

impl Row {
    pub fn get<I: RowIndex, T: FromValue>(&self, idx: I) -> Result<T> {
        let i = idx.index();
        let v = self
            .values
            .get(i)
            .cloned()
            .ok_or_else(|| DbError::Conversion(i, "no such column".into()))?;
        T::from_value(v).map_err(|e| DbError::Conversion(i, e))
    }
}

/// A PostgreSQL connection and its prepared statements.
pub struct PgClient {
    client: ManuallyDrop<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
}

impl Drop for PgClient {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and never used again.
        let client = unsafe { ManuallyDrop::take(&mut self.client) };
        // Closing blocks on the client's own runtime, which tokio forbids on
        // a thread that drives async tasks: close it on a thread of its own.
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("missive-pg-close".into())
                .spawn(move || drop(client));
        } else {
            drop(client);
        }
    }
}

impl PgClient {
    pub fn connect(url: &str) -> Result<Self> {
        let mut client = postgres::Client::connect(url, postgres::NoTls)?;
        // The schema's "already exists, skipping" notices are not news.
        client.batch_execute("SET client_min_messages TO warning")?;
        Ok(PgClient {
            client: ManuallyDrop::new(client),
            statements: HashMap::new(),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let st = self.client.prepare(&to_postgres(sql))?;
        if self.statements.len() > 500 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), st.clone());
        Ok(st)
    }

    fn run(&mut self, sql: &str, values: &[Value]) -> Result<Vec<postgres::Row>> {
        let st = self.statement(sql)?;
        let params: Vec<PgParam<'_>> = values.iter().map(PgParam).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        Ok(self.client.query(&st, &refs)?)
    }

    fn run_execute(&mut self, sql: &str, values: &[Value]) -> Result<usize> {
        let st = self.statement(sql)?;
        let params: Vec<PgParam<'_>> = values.iter().map(PgParam).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        Ok(self.client.execute(&st, &refs)? as usize)
    }

    pub fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.client.batch_execute(sql)?)
    }
}

/// `?N` becomes `$N` and a bare `?` the next number; text in quotes is left alone.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1;
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        match quote {
            Some(q) => {
                out.push(ch);
                if ch == q {
                    quote = None;
                }
            }
            None if ch == '\'' || ch == '"' => {
                quote = Some(ch);
                out.push(ch);
            }
            None if ch == '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push('$');
                if digits.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    out.push_str(&digits);
                }
            }
            None => out.push(ch),
        }
    }
    out
}

fn pg_row(row: &postgres::Row) -> Result<Row> {
    let mut values = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let v: PgValue = row.try_get(i).map_err(|e| DbError::Conversion(i, e.to_string()))?;
        values.push(v.0);
    }
    Ok(Row { values })
}

fn sqlite_row(row: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        values.push(match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Int(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        });
    }
    Ok(Row { values })
}

fn sqlite_value(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Real(f) => rusqlite::types::Value::Real(*f),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
        Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

fn sqlite_params(values: &[Value]) -> rusqlite::ParamsFromIter<Vec<rusqlite::types::Value>> {
    rusqlite::params_from_iter(values.iter().map(sqlite_value).collect::<Vec<_>>())
}

/// A connection (or a transaction on one) of either engine.
pub enum Conn<'a> {
    Sqlite(&'a rusqlite::Connection),
    Pg(RefCell<&'a mut PgClient>),
}

pub type Connection<'a> = Conn<'a>;
pub type Transaction<'a> = Conn<'a>;

impl<'a> Conn<'a> {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Conn::Pg(_))
    }

    /// The larger of two SQL expressions.
    pub fn greatest(&self, a: &str, b: &str) -> String {
        match self {
            Conn::Sqlite(_) => format!("MAX({a}, {b})"),
            Conn::Pg(_) => format!("GREATEST({a}, {b})"),
        }
    }

    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        let values = params.into_values();
        check_text(&values)?;
        match self {
            Conn::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(sqlite_params(&values))?),
            Conn::Pg(c) => c.borrow_mut().run_execute(sql, &values),
        }
    }

    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Pg(c) => c.borrow_mut().batch(sql),
        }
    }

    pub fn query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row) -> Result<T>,
    {
        let values = params.into_values();
        check_text(&values)?;
        let row = match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.column_count();
                let mut rows = st.query(sqlite_params(&values))?;
                match rows.next()? {
                    Some(r) => sqlite_row(r, n)?,
                    None => return Err(DbError::NoRows),
                }
            }
            Conn::Pg(c) => {
                let rows = c.borrow_mut().run(sql, &values)?;
                match rows.first() {
                    Some(r) => pg_row(r)?,
                    None => return Err(DbError::NoRows),
                }
            }
        };
        f(&row)
    }

    /// Every row of the query, each through `f`, collected by the caller.
    pub fn query_map<T, P, F>(&self, sql: &str, params: P, mut f: F) -> Result<std::vec::IntoIter<Result<T>>>
    where
        P: Params,
        F: FnMut(&Row) -> Result<T>,
    {
        let values = params.into_values();
        check_text(&values)?;
        let rows: Vec<Row> = match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.column_count();
                let mut rows = st.query(sqlite_params(&values))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(sqlite_row(r, n)?);
                }
                out
            }
            Conn::Pg(c) => {
                let rows = c.borrow_mut().run(sql, &values)?;
                rows.iter().map(pg_row).collect::<Result<_>>()?
            }
        };
        Ok(rows.iter().map(&mut f).collect::<Vec<_>>().into_iter())
    }

    /// A statement to run several times (both engines cache prepared statements anyway).
    pub fn prepare_cached<'s>(&'s self, sql: &str) -> Result<Stmt<'s, 'a>> {
        Ok(Stmt {
            conn: self,
            sql: sql.to_owned(),
        })
    }

    pub fn prepare<'s>(&'s self, sql: &str) -> Result<Stmt<'s, 'a>> {
        self.prepare_cached(sql)
    }
}

/// A statement bound to a connection, in the manner of `rusqlite::Statement`.
pub struct Stmt<'s, 'a> {
    conn: &'s Conn<'a>,
    sql: String,
}

impl Stmt<'_, '_> {
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        self.conn.execute(&self.sql, params)
    }

    pub fn query_row<T, P: Params, F: FnOnce(&Row) -> Result<T>>(&mut self, params: P, f: F) -> Result<T> {
        self.conn.query_row(&self.sql, params, f)
    }

    pub fn query_map<T, P: Params, F: FnMut(&Row) -> Result<T>>(
        &mut self,
        params: P,
        f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        self.conn.query_map(&self.sql, params, f)
    }

    /// The rows themselves, to walk with `next()`.
    pub fn query<P: Params>(&mut self, params: P) -> Result<Rows> {
        Ok(Rows(self.conn.query_map(&self.sql, params, |r| Ok(r.clone()))?))
    }
}

pub struct Rows(std::vec::IntoIter<Result<Row>>);

impl Rows {
    // Named as rusqlite names it; it is fallible, so not an Iterator.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row>> {
        self.0.next().transpose()
    }
}

type BoxError = Box<dyn StdError + Sync + Send>;

/// A parameter sent as whatever type PostgreSQL inferred for it.
#[derive(Debug)]
struct PgParam<'v>(&'v Value);

impl ToSql for PgParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::OID => u32::try_from(*i)?.to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    i.to_string().as_str().to_sql(&Type::TEXT, out)
                }
                ref t => Err(format!("an integer cannot be sent as {t}").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                ref t => Err(format!("a float cannot be sent as {t}").into()),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.as_str().to_sql(&Type::TEXT, out)
                }
                Type::JSON => s.as_str().to_sql(&Type::TEXT, out),
                Type::JSONB => {
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                ref t => Err(format!("text cannot be sent as {t}").into()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.as_slice().to_sql(ty, out),
                ref t => Err(format!("bytes cannot be sent as {t}").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A column of any type PostgreSQL sends, as a [`Value`].
struct PgValue(Value);

impl<'r> FromSql<'r> for PgValue {
    fn from_sql(ty: &Type, raw: &'r [u8]) -> std::result::Result<Self, BoxError> {
        Ok(PgValue(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
                Value::Text(<&str>::from_sql(&Type::TEXT, raw)?.to_owned())
            }
            Type::JSONB => Value::Text(std::str::from_utf8(raw.get(1..).unwrap_or_default())?.to_owned()),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            ref t => return Err(format!("unsupported column type {t}").into()),
        }))
    }

    fn from_sql_null(_: &Type) -> std::result::Result<Self, BoxError> {
        Ok(PgValue(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::to_postgres;

    #[test]
    fn parameters_are_renumbered_outside_quotes() {
        assert_eq!(
            to_postgres("SELECT ?1, ?, '?', \"a?\" FROM t WHERE x = ?12 AND y = ?"),
            "SELECT $1, $1, '?', \"a?\" FROM t WHERE x = $12 AND y = $2"
        );
    }
}
