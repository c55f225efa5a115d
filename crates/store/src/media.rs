//! The content repository's metadata: one row per local media ID. The bytes
//! themselves live outside the database, in the server's media backend,
//! under their SHA-256; a row reserved by `/media/v1/create` has no content
//! (`sha256` is NULL) until its upload, and lapses at `expires_ts`.

use crate::db::{OptionalExtension, params};

use crate::{Result, StoreError, store::Store};

/// A media ID's metadata.
#[derive(Clone, Debug)]
pub struct MediaRow {
    pub media_id: String,
    pub uploader: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    /// `None` while an asynchronous upload is pending.
    pub size: Option<i64>,
    /// Hex SHA-256 of the content, its key in the media backend; `None` while pending.
    pub sha256: Option<String>,
    pub created_ts: i64,
    /// When a pending upload lapses; `None` once uploaded.
    pub expires_ts: Option<i64>,
    /// Quarantined media are never served.
    pub quarantined: bool,
}

/// The content of an upload, as stored once its bytes are durable.
#[derive(Clone, Debug)]
pub struct MediaContent {
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: i64,
    pub sha256: String,
}

/// What became of an asynchronous upload's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompleteUpload {
    Done,
    /// No such media ID, or its reservation lapsed.
    NotFound,
    /// Someone else reserved this media ID.
    NotOwner,
    /// The content was already uploaded.
    AlreadyUploaded,
}

fn media_row(r: &crate::db::Row) -> crate::db::Result<MediaRow> {
    Ok(MediaRow {
        media_id: r.get(0)?,
        uploader: r.get(1)?,
        content_type: r.get(2)?,
        filename: r.get(3)?,
        size: r.get(4)?,
        sha256: r.get(5)?,
        created_ts: r.get(6)?,
        expires_ts: r.get(7)?,
        quarantined: r.get(8)?,
    })
}

const MEDIA_COLUMNS: &str =
    "media_id, uploader, content_type, filename, size, sha256, created_ts, expires_ts, quarantined";

impl Store {
    /// Records a media ID with its (already durable) content.
    /// `StoreError::Exists` if the ID is taken.
    pub async fn insert_media(
        &self,
        media_id: String,
        uploader: String,
        content: MediaContent,
        created_ts: i64,
    ) -> Result<()> {
        self.write(move |tx, _| {
            let n = tx.execute(
                "INSERT INTO media (media_id, uploader, content_type, filename, size, sha256, created_ts) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                params![
                    media_id,
                    uploader,
                    content.content_type,
                    content.filename,
                    content.size,
                    content.sha256,
                    created_ts
                ],
            )?;
            if n == 0 { Err(StoreError::Exists) } else { Ok(()) }
        })
        .await
    }

    /// Reserves a media ID for a later upload, unless the user already has
    /// `max_pending` reservations that have not lapsed (then `Ok(false)`).
    /// Lapsed reservations of every user are dropped on the way.
    pub async fn reserve_media(
        &self,
        media_id: String,
        uploader: String,
        now: i64,
        expires_ts: i64,
        max_pending: i64,
    ) -> Result<bool> {
        self.write(move |tx, _| {
            tx.execute("DELETE FROM media WHERE sha256 IS NULL AND expires_ts <= ?1", [now])?;
            let pending: i64 = tx.query_row(
                "SELECT COUNT(*) FROM media WHERE uploader = ?1 AND sha256 IS NULL",
                [&uploader],
                |r| r.get(0),
            )?;
            if pending >= max_pending {
                return Ok(false);
            }
            let n = tx.execute(
                "INSERT INTO media (media_id, uploader, created_ts, expires_ts) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![media_id, uploader, now, expires_ts],
            )?;
            if n == 0 { Err(StoreError::Exists) } else { Ok(true) }
        })
        .await
    }

    /// Gives a reserved media ID its (already durable) content, once, and
    /// only for the user who reserved it before the reservation lapsed.
    pub async fn complete_media(
        &self,
        media_id: String,
        uploader: String,
        content: MediaContent,
        now: i64,
    ) -> Result<CompleteUpload> {
        self.write(move |tx, _| {
            let row: Option<(String, Option<String>, Option<i64>)> = tx
                .query_row(
                    "SELECT uploader, sha256, expires_ts FROM media WHERE media_id = ?1",
                    [&media_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((owner, sha256, expires_ts)) = row else {
                return Ok(CompleteUpload::NotFound);
            };
            if owner != uploader {
                return Ok(CompleteUpload::NotOwner);
            }
            if sha256.is_some() {
                return Ok(CompleteUpload::AlreadyUploaded);
            }
            if expires_ts.is_some_and(|e| e <= now) {
                return Ok(CompleteUpload::NotFound);
            }
            tx.execute(
                "UPDATE media SET content_type = ?2, filename = ?3, size = ?4, sha256 = ?5, expires_ts = NULL \
                 WHERE media_id = ?1",
                params![
                    media_id,
                    content.content_type,
                    content.filename,
                    content.size,
                    content.sha256
                ],
            )?;
            Ok(CompleteUpload::Done)
        })
        .await
    }

    pub async fn media(&self, media_id: String) -> Result<Option<MediaRow>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {MEDIA_COLUMNS} FROM media WHERE media_id = ?1"),
                [media_id],
                media_row,
            )
            .optional()?)
        })
        .await
    }

    /// Quarantines (or releases) a media ID; returns whether it exists.
    pub async fn set_media_quarantined(&self, media_id: String, quarantined: bool) -> Result<bool> {
        self.write(move |tx, _| {
            Ok(tx.execute(
                "UPDATE media SET quarantined = ?2 WHERE media_id = ?1",
                params![media_id, quarantined],
            )? > 0)
        })
        .await
    }
}
