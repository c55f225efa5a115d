//! The [`Store`] and its two backends. SQLite (the embedded default): one
//! writer connection, since SQLite allows one writer at a time anyway, and a
//! few readers in WAL mode. PostgreSQL: per process one writer connection
//! and a few readers; write transactions of all processes are serialised on
//! the stream counter's row, so that positions are handed out and committed
//! in the same order everywhere and no reader ever sees a gap. Every commit
//! that took positions announces the new counter with `NOTIFY`, which is how
//! the other processes learn what they may now read.

use std::{
    cell::RefCell,
    path::Path,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use postgres::fallible_iterator::FallibleIterator;
use rusqlite::OpenFlags;

use crate::{
    Result, StoreError,
    db::{Conn, DbError, PgClient},
};

const READERS: usize = 4;
/// Rooms one process may hold leases on at once (a connection each).
const LEASES: usize = 16;
/// The channel on which commits announce the stream counter.
const CHANNEL: &str = "missive_stream";
/// The channel on which processes share what is not stored (typing, presence).
const EPHEMERAL: &str = "missive_ephemeral";

#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    backend: Backend,
    next_reader: AtomicUsize,
    upto: AtomicI64,
    /// Sends `upto` at each commit of another process (PostgreSQL).
    others_committed: tokio::sync::watch::Sender<i64>,
    /// This process's own recent commits, whose notifications come back
    /// through the listener like everyone's (PostgreSQL).
    own_commits: Mutex<std::collections::VecDeque<i64>>,
    /// Messages other processes published (PostgreSQL).
    messages: tokio::sync::broadcast::Sender<String>,
    /// Connections that hold room leases, idle ones kept for the next.
    lease_conns: Mutex<Vec<PgClient>>,
    lease_slots: Arc<tokio::sync::Semaphore>,
    pub(crate) state_cache: Mutex<crate::state_cache::StateCache>,
    pub(crate) chain_cache: Mutex<crate::state_cache::ChainCache>,
}

// One per store: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Sqlite {
        writer: Mutex<SqliteWriter>,
        readers: Vec<Mutex<rusqlite::Connection>>,
    },
    Postgres {
        url: String,
        writer: Mutex<Option<PgClient>>,
        readers: Vec<Mutex<Option<PgClient>>>,
    },
}

struct SqliteWriter {
    conn: rusqlite::Connection,
    next_pos: i64,
}

/// Hands out stream positions inside a write transaction. Positions taken
/// by a transaction that rolls back are handed out again.
pub struct Positions {
    next: i64,
}

impl Positions {
    pub fn take(&mut self) -> i64 {
        let p = self.next;
        self.next += 1;
        p
    }
}

fn configure(conn: &rusqlite::Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(30)).map_err(DbError::from)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(DbError::from)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(DbError::from)?;
    Ok(())
}

/// The highest stream position stored in SQLite (the counter resumes after it).
pub(crate) fn sqlite_max_position(conn: &rusqlite::Connection) -> Result<i64> {
    let max: Option<i64> = conn
        .query_row(
            "SELECT MAX(p) FROM (SELECT MAX(stream_pos) AS p FROM events \
             UNION ALL SELECT MAX(stream_pos) FROM account_data \
             UNION ALL SELECT MAX(stream_pos) FROM receipts \
             UNION ALL SELECT MAX(stream_pos) FROM current_state \
             UNION ALL SELECT MAX(stream_pos) FROM device_list_changes \
             UNION ALL SELECT MAX(stream_pos) FROM to_device \
             UNION ALL SELECT MAX(stream_pos) FROM push_notifications \
             UNION ALL SELECT MAX(pos) FROM stream_watermark)",
            [],
            |r| r.get(0),
        )
        .map_err(DbError::from)?;
    Ok(max.unwrap_or(0))
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| StoreError::Task("connection lock poisoned".into()))
}

/// The connection in `slot`, connecting first when there is none or it broke.
fn pg_conn<'a>(slot: &'a mut Option<PgClient>, url: &str) -> Result<&'a mut PgClient> {
    if slot.as_ref().is_none_or(|c| c.is_closed()) {
        *slot = Some(PgClient::connect(url)?);
    }
    Ok(slot.as_mut().expect("just connected"))
}

/// Forgets a connection whose failure was the connection's, not the query's.
fn drop_if_lost<T>(slot: &mut Option<PgClient>, r: &Result<T>) {
    if let Err(StoreError::Db(e)) = r
        && e.is_connection_lost()
    {
        *slot = None;
    }
}

impl Store {
    /// Opens the database a URL names: `sqlite://PATH` or `postgres://…`
    /// (also `postgresql://…`).
    pub fn open_url(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            Self::open(Path::new(path))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url)
        } else {
            Err(StoreError::Task(format!(
                "unsupported database URL {url:?}: use sqlite://PATH or postgres://…"
            )))
        }
    }

    /// Opens (creating if needed) an SQLite database file and applies the schema.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = rusqlite::Connection::open(path).map_err(DbError::from)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(DbError::from)?;
        configure(&conn)?;
        // WAL with synchronous=NORMAL can lose the last commits on power loss
        // but not on a process crash; acknowledged writes must survive a
        // power cut too, so commits are fully synced.
        conn.pragma_update(None, "synchronous", "FULL").map_err(DbError::from)?;
        crate::migrations::apply_sqlite(&conn)?;
        {
            let tx = conn.unchecked_transaction().map_err(DbError::from)?;
            crate::search::backfill(&Conn::Sqlite(&tx))?;
            tx.commit().map_err(DbError::from)?;
        }
        let max = sqlite_max_position(&conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = rusqlite::Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(DbError::from)?;
            configure(&r)?;
            readers.push(Mutex::new(r));
        }
        let backend = Backend::Sqlite {
            writer: Mutex::new(SqliteWriter {
                conn,
                next_pos: max + 1,
            }),
            readers,
        };
        Ok(Self::with_backend(backend, max))
    }

    /// Connects to PostgreSQL and applies the schema (once, whichever
    /// process of several gets there first).
    pub fn open_postgres(url: &str) -> Result<Self> {
        let mut client = PgClient::connect(url)?;
        apply_pg_schema(&mut client)?;
        let max = {
            let conn = Conn::Pg(RefCell::new(&mut client));
            conn.query_row("SELECT pos FROM stream_counter WHERE id = 0", [], |r| {
                r.get::<_, i64>(0)
            })?
        };
        let backend = Backend::Postgres {
            url: url.to_owned(),
            writer: Mutex::new(Some(client)),
            readers: (0..READERS).map(|_| Mutex::new(None)).collect(),
        };
        let store = Self::with_backend(backend, max);
        spawn_listener(Arc::downgrade(&store.inner), url.to_owned());
        Ok(store)
    }

    fn with_backend(backend: Backend, upto: i64) -> Self {
        Store {
            inner: Arc::new(Inner {
                backend,
                next_reader: AtomicUsize::new(0),
                upto: AtomicI64::new(upto),
                others_committed: tokio::sync::watch::channel(upto).0,
                own_commits: Mutex::new(std::collections::VecDeque::new()),
                messages: tokio::sync::broadcast::channel(1024).0,
                lease_conns: Mutex::new(Vec::new()),
                lease_slots: Arc::new(tokio::sync::Semaphore::new(LEASES)),
                state_cache: Mutex::new(crate::state_cache::StateCache::new(
                    crate::state_cache::DEFAULT_STATE_CACHE_BYTES,
                )),
                chain_cache: Mutex::new(Default::default()),
            }),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.inner.backend, Backend::Postgres { .. })
    }

    /// Every stream position up to this one is committed; sync reads up to it.
    pub fn persisted_upto(&self) -> i64 {
        self.inner.upto.load(Ordering::Acquire)
    }

    /// Follows the commits of other processes on the same database
    /// (PostgreSQL), as [`persisted_upto`](Self::persisted_upto) moves with them.
    pub fn subscribe_other_commits(&self) -> tokio::sync::watch::Receiver<i64> {
        self.inner.others_committed.subscribe()
    }

    /// Tells every process on this database (itself included) `payload`:
    /// for state that lives in memory, such as typing. Nothing to do on
    /// SQLite, where there is one process.
    pub async fn publish(&self, payload: String) -> Result<()> {
        if !self.is_postgres() {
            return Ok(());
        }
        self.read(move |c| {
            c.execute(&format!("SELECT pg_notify('{EPHEMERAL}', ?1)"), [payload])?;
            Ok(())
        })
        .await
    }

    /// Holds a room against the other processes on this database until the
    /// lease is dropped (PostgreSQL; `None` on SQLite, where the process's
    /// own lock is enough). A room's events are built on its latest event,
    /// so building and appending one must not interleave with another
    /// process doing the same. The lease is a session advisory lock: it
    /// goes with the process if the process dies.
    pub async fn lease_room(&self, room_id: &str) -> Result<Option<RoomLease>> {
        let Backend::Postgres { url, .. } = &self.inner.backend else {
            return Ok(None);
        };
        let permit = self
            .inner
            .lease_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let inner = self.inner.clone();
        let url = url.clone();
        let room = room_id.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> Result<PgClient> {
            let idle = lock(&inner.lease_conns)?.pop();
            let mut slot = idle;
            let conn = pg_conn(&mut slot, &url)?;
            Conn::Pg(RefCell::new(conn)).execute("SELECT pg_advisory_lock(7247002, hashtext(?1))", [&room])?;
            Ok(slot.expect("connected"))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(Some(RoomLease {
            inner: self.inner.clone(),
            conn: Some(conn),
            room: room_id.to_owned(),
            _permit: permit,
        }))
    }

    /// Like [`lease_room`](Self::lease_room) for work that another process
    /// may as well do (a federation destination's queue): `Ok(None)` at
    /// once when another process holds the key or every lease slot is in
    /// use, instead of waiting, so that such work never holds up a send.
    /// On SQLite the lease is always granted (one process).
    pub async fn try_lease(&self, key: &str) -> Result<Option<Lease>> {
        let Backend::Postgres { url, .. } = &self.inner.backend else {
            return Ok(Some(Lease { _held: None }));
        };
        let Ok(permit) = self.inner.lease_slots.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let inner = self.inner.clone();
        let url = url.clone();
        let key_owned = key.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> Result<Option<PgClient>> {
            let mut slot = lock(&inner.lease_conns)?.pop();
            let conn = pg_conn(&mut slot, &url)?;
            let got: bool = Conn::Pg(RefCell::new(conn)).query_row(
                "SELECT pg_try_advisory_lock(7247002, hashtext(?1))",
                [&key_owned],
                |r| r.get(0),
            )?;
            let conn = slot.expect("connected");
            if got {
                return Ok(Some(conn));
            }
            lock(&inner.lease_conns)?.push(conn);
            Ok(None)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(conn.map(|conn| Lease {
            _held: Some(RoomLease {
                inner: self.inner.clone(),
                conn: Some(conn),
                room: key.to_owned(),
                _permit: permit,
            }),
        }))
    }

    /// What processes [`publish`](Self::publish), as they publish it.
    pub fn subscribe_messages(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.messages.subscribe()
    }

    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Conn<'_>) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read_blocking(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in one write transaction. Positions it takes become visible
    /// to readers of [`persisted_upto`](Self::persisted_upto) only after commit.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Conn<'_>, &mut Positions) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.write_blocking(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f`, which takes no stream position, as a write outside the
    /// order of positioned writes: on PostgreSQL it does not queue on the
    /// stream counter behind every send of every process. Each statement
    /// commits on its own there (a pooled connection in autocommit): for
    /// writes whose statements stand alone, never in a transaction.
    pub(crate) async fn write_unordered<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Conn<'_>) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || match &inner.backend {
            // SQLite has one writer whatever the write.
            Backend::Sqlite { .. } => inner.write_blocking(|c, _| f(c)),
            Backend::Postgres { .. } => inner.read_blocking(f),
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// A room held against other processes; see [`Store::lease_room`].
/// A lease from [`Store::try_lease`], held until dropped.
pub struct Lease {
    _held: Option<RoomLease>,
}

pub struct RoomLease {
    inner: Arc<Inner>,
    conn: Option<PgClient>,
    room: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for RoomLease {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let inner = self.inner.clone();
        let room = std::mem::take(&mut self.room);
        let release = move || {
            let unlocked =
                Conn::Pg(RefCell::new(&mut conn)).execute("SELECT pg_advisory_unlock(7247002, hashtext(?1))", [&room]);
            match unlocked {
                Ok(_) => {
                    if let Ok(mut idle) = inner.lease_conns.lock() {
                        idle.push(conn);
                    }
                }
                // Dropping the connection ends its session, and the lock with it.
                Err(e) => tracing::warn!(error = %e, "could not release a room lease; closing its connection"),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(release);
            }
            Err(_) => release(),
        }
    }
}

impl Inner {
    fn read_blocking<T>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T>) -> Result<T> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            Backend::Sqlite { readers, .. } => {
                for i in 0..READERS {
                    if let Ok(c) = readers[(start + i) % READERS].try_lock() {
                        return f(&Conn::Sqlite(&c));
                    }
                }
                let c = lock(&readers[start % READERS])?;
                f(&Conn::Sqlite(&c))
            }
            Backend::Postgres { url, readers, .. } => {
                let mut guard = None;
                for i in 0..READERS {
                    if let Ok(c) = readers[(start + i) % READERS].try_lock() {
                        guard = Some(c);
                        break;
                    }
                }
                let mut slot = match guard {
                    Some(g) => g,
                    None => lock(&readers[start % READERS])?,
                };
                let r = pg_conn(&mut slot, url).and_then(|c| f(&Conn::Pg(RefCell::new(c))));
                drop_if_lost(&mut slot, &r);
                r
            }
        }
    }

    fn write_blocking<T>(&self, f: impl FnOnce(&Conn<'_>, &mut Positions) -> Result<T>) -> Result<T> {
        match &self.backend {
            Backend::Sqlite { writer, .. } => {
                let mut w = lock(writer)?;
                let mut positions = Positions { next: w.next_pos };
                let tx = w.conn.transaction().map_err(DbError::from)?;
                let out = f(&Conn::Sqlite(&tx), &mut positions)?;
                tx.commit().map_err(DbError::from)?;
                if positions.next != w.next_pos {
                    w.next_pos = positions.next;
                    // Commits are serialised by the writer lock, so everything
                    // below the next position is now durable.
                    self.advance(positions.next - 1);
                }
                Ok(out)
            }
            Backend::Postgres { url, writer, .. } => {
                let mut slot = lock(writer)?;
                let r = pg_conn(&mut slot, url).and_then(|c| pg_transaction(c, f));
                drop_if_lost(&mut slot, &r);
                let (out, upto) = r?;
                if let Some(upto) = upto {
                    if let Ok(mut own) = self.own_commits.lock() {
                        if own.len() >= OWN_COMMITS_KEPT {
                            own.pop_front();
                        }
                        own.push_back(upto);
                    }
                    self.advance(upto);
                }
                Ok(out)
            }
        }
    }

    /// Moves the readable position; whether it moved.
    fn advance(&self, upto: i64) -> bool {
        upto > self.upto.fetch_max(upto, Ordering::AcqRel)
    }

    /// Moves the readable position to a commit announced through the
    /// listener, and tells whoever follows other processes' commits. This
    /// process's own commits wake its syncs where they are made; every
    /// other one wakes them here, even when one of this process's own
    /// later commits already moved the position past it (its waker may not
    /// have run yet, or at all on a failed request).
    fn advance_from_elsewhere(&self, upto: i64) {
        self.advance(upto);
        let own = self.own_commits.lock().ok().and_then(|mut own| {
            let i = own.iter().position(|p| *p == upto)?;
            own.remove(i)
        });
        if own.is_none() {
            let readable = self.upto.load(Ordering::Acquire);
            self.others_committed.send_replace(readable);
        }
    }
}

/// How many of its own commits a process remembers, to tell their
/// notifications from other processes' (they come back in commit order,
/// long before this many more).
const OWN_COMMITS_KEPT: usize = 4096;

/// One write transaction on PostgreSQL; returns the counter it committed
/// when it took positions.
fn pg_transaction<T>(
    client: &mut PgClient,
    f: impl FnOnce(&Conn<'_>, &mut Positions) -> Result<T>,
) -> Result<(T, Option<i64>)> {
    let conn = Conn::Pg(RefCell::new(client));
    conn.execute_batch("BEGIN")?;
    let body = (|| {
        // The row lock orders every writer of every process; it is held to
        // the commit, so positions commit in the order they are taken.
        let pos: i64 = conn.query_row("SELECT pos FROM stream_counter WHERE id = 0 FOR UPDATE", [], |r| {
            r.get(0)
        })?;
        let mut positions = Positions { next: pos + 1 };
        let out = f(&conn, &mut positions)?;
        let upto = positions.next - 1;
        if upto != pos {
            // A trigger sends NOTIFY, delivered to listeners at commit.
            conn.execute("UPDATE stream_counter SET pos = ?1 WHERE id = 0", [upto])?;
        }
        conn.execute_batch("COMMIT")?;
        Ok((out, (upto != pos).then_some(upto)))
    })();
    if body.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    body
}

/// Applies the PostgreSQL migrations and indexes the events stored before
/// the search index existed, under a lock so that one process of several
/// does it.
pub(crate) fn apply_pg_schema(client: &mut PgClient) -> Result<()> {
    client.batch("SELECT pg_advisory_lock(7247001)")?;
    let applied = crate::migrations::apply_postgres(client).and_then(|()| {
        let conn = Conn::Pg(RefCell::new(&mut *client));
        conn.execute_batch("BEGIN")?;
        let r = crate::search::backfill(&conn);
        conn.execute_batch(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
        r
    });
    client.batch("SELECT pg_advisory_unlock(7247001)")?;
    applied
}

/// Follows other processes' commits: `LISTEN`, and a look at the counter
/// every few seconds in case a notification was lost with a connection.
fn spawn_listener(inner: Weak<Inner>, url: String) {
    let spawned = std::thread::Builder::new()
        .name("missive-pg-listen".into())
        .spawn(move || {
            while inner.strong_count() > 0 {
                if let Err(e) = listen(&inner, &url) {
                    tracing::warn!(error = %e, "PostgreSQL listener lost its connection; reconnecting");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the PostgreSQL listener");
    }
}

fn listen(weak: &Weak<Inner>, url: &str) -> Result<()> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(DbError::from)?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {EPHEMERAL}"))
        .map_err(DbError::from)?;
    loop {
        let pos: i64 = client
            .query_one("SELECT pos FROM stream_counter WHERE id = 0", &[])
            .and_then(|r| r.try_get(0))
            .map_err(DbError::from)?;
        match weak.upgrade() {
            // A look at the counter wakes syncs only if it moved it: idle
            // processes are not woken every two seconds.
            Some(inner) => {
                if inner.advance(pos) {
                    inner.others_committed.send_replace(pos);
                }
            }
            None => return Ok(()),
        }
        let mut notifications = client.notifications();
        let mut iter = notifications.timeout_iter(Duration::from_secs(2));
        while let Some(n) = iter.next().map_err(DbError::from)? {
            let Some(inner) = weak.upgrade() else { return Ok(()) };
            if n.channel() == EPHEMERAL {
                // Nobody listening is fine: no server runs on this store.
                let _ = inner.messages.send(n.payload().to_owned());
            } else if let Ok(pos) = n.payload().parse::<i64>() {
                inner.advance_from_elsewhere(pos);
            }
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
