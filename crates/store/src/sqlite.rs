//! The SQLite backend: one writer connection (SQLite allows one writer at a
//! time anyway) and a few readers in WAL mode, driven from blocking threads.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
};

use missive_core::auth::StateMap;
use rusqlite::{Connection, OpenFlags, Transaction};

use crate::{Result, StoreError};

const READERS: usize = 4;

#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    writer: Mutex<Writer>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    upto: AtomicI64,
    pub(crate) state_cache: Mutex<HashMap<i64, Arc<StateMap>>>,
}

struct Writer {
    conn: Connection,
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

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database file and applies the schema.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        configure(&conn)?;
        // WAL with synchronous=NORMAL can lose the last commits on power loss
        // but not on a process crash; acknowledged writes must survive a
        // power cut too, so commits are fully synced.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(include_str!("schema.sql"))?;
        crate::search::backfill(&conn)?;
        let max: i64 = conn
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
                |r| r.get::<_, Option<i64>>(0),
            )?
            .unwrap_or(0);
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r =
                Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
            configure(&r)?;
            readers.push(Mutex::new(r));
        }
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Mutex::new(Writer {
                    conn,
                    next_pos: max + 1,
                }),
                readers,
                next_reader: AtomicUsize::new(0),
                upto: AtomicI64::new(max),
                state_cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Every stream position up to this one is committed; sync reads up to it.
    pub fn persisted_upto(&self) -> i64 {
        self.inner.upto.load(Ordering::Acquire)
    }

    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let start = inner.next_reader.fetch_add(1, Ordering::Relaxed);
            for i in 0..READERS {
                if let Ok(c) = inner.readers[(start + i) % READERS].try_lock() {
                    return f(&c);
                }
            }
            let c = inner.readers[start % READERS]
                .lock()
                .map_err(|_| StoreError::Task("reader lock poisoned".into()))?;
            f(&c)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in one write transaction. Positions it takes become visible
    /// to readers of [`persisted_upto`](Self::persisted_upto) only after commit.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction, &mut Positions) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Task("writer lock poisoned".into()))?;
            let mut positions = Positions { next: w.next_pos };
            let tx = w.conn.transaction()?;
            let out = f(&tx, &mut positions)?;
            tx.commit()?;
            if positions.next != w.next_pos {
                w.next_pos = positions.next;
                // Commits are serialised by the writer lock, so everything
                // below the next position is now durable.
                inner.upto.store(positions.next - 1, Ordering::Release);
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
