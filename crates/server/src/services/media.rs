//! The content repository: uploads (at once, or reserved with `create` and
//! uploaded later), downloads and thumbnails of this server's media, and
//! of other servers' media (fetched over federation and kept here).
//!
//! Metadata lives in the store. The bytes go through a [`MediaBackend`]
//! (a directory under the data directory by default, an S3-compatible
//! object store later), keyed by their SHA-256: identical files are kept
//! once, and two writers of one key always write the same bytes.
//! Thumbnails are cached in the backend too, keyed by the content and the
//! requested size and method.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use missive_store::media::{CompleteUpload, MediaContent, MediaRow};
use ruma::{OwnedMxcUri, ServerName, UserId};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore};

use crate::{
    App, Error, Result,
    services::{
        accounts::{now_ms, random_string},
        thumbnail::{self, Size, ThumbnailError},
    },
};

/// Length of a new media ID (62^24 ≈ 2^143 possibilities).
const MEDIA_ID_LEN: usize = 24;
/// How long a media ID reserved with `create` waits for its upload.
pub const PENDING_UPLOAD_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Reserved media IDs one user may have waiting for their upload.
const MAX_PENDING_UPLOADS: i64 = 10;
/// Longest a download waits for a pending upload, whatever the client asks.
const MAX_DOWNLOAD_WAIT: Duration = Duration::from_secs(60);

/// Where media bytes are kept. Keys are relative `/`-separated paths whose
/// segments are made of `[A-Za-z0-9_-]`, with at most one `.`.
pub trait MediaBackend: Send + Sync + 'static {
    /// Stores `data` under `key`, replacing what was there as a whole.
    /// When it returns `Ok`, the bytes survive a crash or a power cut.
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, io::Result<()>>;
    /// The bytes stored under `key`, `None` if there are none.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>>;
    /// A new, empty file where an upload's bytes are written as they
    /// arrive, and its path for [`put_file`](Self::put_file).
    fn stage(&self) -> io::Result<(PathBuf, std::fs::File)>;
    /// Stores the file `staged` (from [`stage`](Self::stage), written and
    /// closed) under `key`, durably, and removes it from the stage.
    fn put_file<'a>(&'a self, key: &'a str, staged: PathBuf) -> BoxFuture<'a, io::Result<()>>;
}

/// Media in a local directory, one file per key.
pub struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    pub fn new(root: PathBuf) -> FsBackend {
        FsBackend { root }
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        let valid = !key.is_empty()
            && key.split('/').all(|seg| {
                !seg.is_empty()
                    && !seg.starts_with('.')
                    && seg.matches('.').count() <= 1
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad media key {key:?}"),
            ));
        }
        Ok(self.root.join(key))
    }
}

impl MediaBackend for FsBackend {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let path = self.path(key)?;
            tokio::task::spawn_blocking(move || write_durably(&path, &data))
                .await
                .map_err(io::Error::other)?
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>> {
        Box::pin(async move {
            match tokio::fs::read(self.path(key)?).await {
                Ok(b) => Ok(Some(Bytes::from(b))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Under the media root, so that storing is a rename; no key starts
    /// with a dot, so the stage is never mistaken for media.
    fn stage(&self) -> io::Result<(PathBuf, std::fs::File)> {
        let dir = self.root.join(".uploading");
        create_dirs_durably(&dir)?;
        let path = dir.join(format!("{}.part", random_string(16)));
        let file = std::fs::File::create_new(&path)?;
        Ok((path, file))
    }

    fn put_file<'a>(&'a self, key: &'a str, staged: PathBuf) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let path = self.path(key)?;
            tokio::task::spawn_blocking(move || {
                let moved = (|| {
                    std::fs::File::open(&staged)?.sync_all()?;
                    let dir = path
                        .parent()
                        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "media path without a directory"))?;
                    create_dirs_durably(dir)?;
                    std::fs::rename(&staged, &path)?;
                    std::fs::File::open(dir)?.sync_all()
                })();
                if moved.is_err() {
                    let _ = std::fs::remove_file(&staged);
                }
                moved
            })
            .await
            .map_err(io::Error::other)?
        })
    }
}

/// Writes a file atomically (a temporary file renamed over it) and durably
/// (the file, and every directory entry leading to it, synced to disk).
fn write_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "media path without a directory"))?;
    create_dirs_durably(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("media");
    let tmp = dir.join(format!(".{name}.{}.tmp", random_string(12)));
    let written = (|| {
        let mut f = std::fs::File::create_new(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, syncing each parent that gained an entry.
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d);
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for created in missing {
        if let Some(parent) = created.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// The content repository's state in the server.
pub struct Media {
    pub backend: Arc<dyn MediaBackend>,
    /// Woken when a reserved media ID receives its content.
    uploaded: Notify,
    /// Bounds the CPU spent generating thumbnails at once.
    thumbnailers: Semaphore,
}

impl Media {
    pub fn new(backend: Arc<dyn MediaBackend>) -> Media {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Media {
            backend,
            uploaded: Notify::new(),
            thumbnailers: Semaphore::new(cpus),
        }
    }

    /// Media in `<data_dir>/media`.
    pub fn on_disk(data_dir: &Path) -> Media {
        Media::new(Arc::new(FsBackend::new(data_dir.join("media"))))
    }
}

/// An upload: its bytes and what comes with them.
pub struct Upload {
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub data: UploadData,
}

/// Where an upload's bytes come from.
pub enum UploadData {
    /// Already in memory (a fetched preview image, another server's file).
    Bytes(Vec<u8>),
    /// Still arriving from the client: written to the stage as they come,
    /// never held whole in memory.
    Body(axum::body::Body),
}

/// A staged file removed unless it was stored.
struct Staged(Option<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A file to serve.
pub struct Served {
    pub data: Vec<u8>,
    pub content_type: String,
    pub filename: Option<String>,
}

impl Served {
    /// A stored file with its recorded type (`application/octet-stream` when none).
    fn file(data: impl Into<Vec<u8>>, content_type: Option<String>, filename: Option<String>) -> Served {
        Served {
            data: data.into(),
            content_type: content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
            filename,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `aa/bb/aabbcc…`: sharded so that no directory grows too large.
fn sharded(sha256: &str) -> String {
    format!("{}/{}/{sha256}", &sha256[..2], &sha256[2..4])
}

fn content_key(sha256: &str) -> String {
    format!("content/{}", sharded(sha256))
}

fn thumbnail_key(sha256: &str, size: Size) -> String {
    format!(
        "thumbnails/{}/{}x{}-{}",
        sharded(sha256),
        size.width,
        size.height,
        size.method.as_str()
    )
}

/// Media IDs this server hands out are `[A-Za-z0-9]`; anything else names nothing.
fn valid_media_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// What is kept of another server's media besides its bytes.
#[derive(serde::Serialize, serde::Deserialize)]
struct RemoteMedia {
    sha256: String,
    content_type: Option<String>,
    filename: Option<String>,
}

/// `remote/aa/bb/<sha256 of server and media ID>.json`: server names hold
/// characters backend keys may not.
fn remote_meta_key(server: &ServerName, media_id: &str) -> String {
    let id = hex(&Sha256::digest(format!("{server}/{media_id}").as_bytes()));
    format!("remote/{}.json", sharded(&id))
}

fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn not_found() -> Error {
    Error::not_found("Media not found")
}

/// An empty or blank value means none.
fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl App {
    fn mxc(&self, media_id: &str) -> Result<OwnedMxcUri> {
        let uri = OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.server_name));
        uri.validate().map_err(|e| Error::Internal(format!("media URI: {e}")))?;
        Ok(uri)
    }

    /// Stores the bytes durably; their key is their SHA-256 (hex).
    async fn store_content(&self, upload: Upload) -> Result<MediaContent> {
        let max = self.config.max_upload_bytes;
        let too_large = || Error::too_large(format!("Upload larger than this server's limit of {max} bytes"));
        let (sha256, size) = match upload.data {
            UploadData::Bytes(data) => {
                if data.len() > max {
                    return Err(too_large());
                }
                let sha256 = hex(&Sha256::digest(&data));
                let size = data.len() as i64;
                self.media
                    .backend
                    .put(&content_key(&sha256), Bytes::from(data))
                    .await
                    .map_err(|e| Error::Internal(format!("storing media: {e}")))?;
                (sha256, size)
            }
            UploadData::Body(body) => self.store_streamed(body, max).await?,
        };
        Ok(MediaContent {
            content_type: non_empty(upload.content_type),
            filename: non_empty(upload.filename),
            size,
            sha256,
        })
    }

    /// Writes a body to the stage as it arrives, hashing it on the way,
    /// then stores the file under its hash: memory holds one piece at a
    /// time, whatever the file's size.
    async fn store_streamed(&self, mut body: axum::body::Body, max: usize) -> Result<(String, i64)> {
        use http_body_util::BodyExt;
        use tokio::io::AsyncWriteExt;
        let backend = self.media.backend.clone();
        let (path, file) = tokio::task::spawn_blocking(move || backend.stage())
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Internal(format!("staging an upload: {e}")))?;
        let mut staged = Staged(Some(path.clone()));
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = Sha256::new();
        let mut size = 0usize;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| crate::ruma_wrapper::body_error(&e, crate::ruma_wrapper::BodyKind::Upload, max))?;
            let Ok(chunk) = frame.into_data() else { continue };
            size += chunk.len();
            if size > max {
                return Err(Error::too_large(format!(
                    "Upload larger than this server's limit of {max} bytes"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::Internal(format!("staging an upload: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| Error::Internal(format!("staging an upload: {e}")))?;
        drop(file);
        let sha256 = hex(&hasher.finalize());
        self.media
            .backend
            .put_file(&content_key(&sha256), path)
            .await
            .map_err(|e| Error::Internal(format!("storing media: {e}")))?;
        staged.0 = None;
        Ok((sha256, size as i64))
    }

    /// `POST /media/v3/upload`: stores a file under a new media ID.
    pub async fn upload_media(&self, uploader: &UserId, upload: Upload) -> Result<OwnedMxcUri> {
        let content = self.store_content(upload).await?;
        loop {
            let media_id = random_string(MEDIA_ID_LEN);
            match self
                .store
                .insert_media(media_id.clone(), uploader.to_string(), content.clone(), now_ms())
                .await
            {
                Ok(()) => return self.mxc(&media_id),
                Err(missive_store::StoreError::Exists) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `POST /media/v1/create`: reserves a media ID for a later upload by
    /// the same user; returns it with the time its reservation lapses.
    pub async fn reserve_media(&self, uploader: &UserId) -> Result<(OwnedMxcUri, i64)> {
        let now = now_ms();
        let expires = now + PENDING_UPLOAD_LIFETIME.as_millis() as i64;
        loop {
            let media_id = random_string(MEDIA_ID_LEN);
            match self
                .store
                .reserve_media(
                    media_id.clone(),
                    uploader.to_string(),
                    now,
                    expires,
                    MAX_PENDING_UPLOADS,
                )
                .await
            {
                Ok(true) => return Ok((self.mxc(&media_id)?, expires)),
                Ok(false) => {
                    return Err(Error::limit_exceeded(
                        "Too many media IDs waiting for their upload; upload or let them lapse first",
                    ));
                }
                Err(missive_store::StoreError::Exists) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `PUT /media/v3/upload/{serverName}/{mediaId}`: the content of a reserved media ID.
    pub async fn upload_reserved_media(
        &self,
        server_name: &ServerName,
        media_id: &str,
        uploader: &UserId,
        upload: Upload,
    ) -> Result<()> {
        if server_name != self.server_name || !valid_media_id(media_id) {
            return Err(not_found());
        }
        // Refuse early what would be refused anyway, before storing bytes.
        let row = self.store.media(media_id.to_owned()).await?.ok_or_else(not_found)?;
        check_reservation(&row, uploader)?;
        let content = self.store_content(upload).await?;
        let outcome = self
            .store
            .complete_media(media_id.to_owned(), uploader.to_string(), content, now_ms())
            .await?;
        match outcome {
            CompleteUpload::Done => {
                self.media.uploaded.notify_waiters();
                Ok(())
            }
            CompleteUpload::NotFound => Err(not_found()),
            CompleteUpload::NotOwner => Err(not_owner()),
            CompleteUpload::AlreadyUploaded => Err(already_uploaded()),
        }
    }

    /// The metadata of an uploaded local media, waiting up to `timeout` for
    /// a pending upload. Unknown, lapsed and quarantined media are not found.
    async fn uploaded_media(&self, server_name: &ServerName, media_id: &str, timeout: Duration) -> Result<MediaRow> {
        if server_name != self.server_name {
            // Fetching from other servers comes with federation.
            return Err(Error::not_found("Media from other servers is not available yet"));
        }
        if !valid_media_id(media_id) {
            return Err(not_found());
        }
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_DOWNLOAD_WAIT);
        loop {
            // Listen before looking, so an upload in between is not missed.
            let notified = self.media.uploaded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let row = self.store.media(media_id.to_owned()).await?.ok_or_else(not_found)?;
            if row.quarantined {
                return Err(not_found());
            }
            if row.sha256.is_some() {
                return Ok(row);
            }
            if row.expires_ts.is_some_and(|e| e <= now_ms()) {
                return Err(not_found());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::not_yet_uploaded("Content has not yet been uploaded"));
            }
            // Another process sharing the database would not wake us: look again now and then.
            let _ = tokio::time::timeout_at(deadline.min(now + Duration::from_secs(1)), notified).await;
        }
    }

    async fn content_of(&self, row: &MediaRow) -> Result<(String, Bytes)> {
        let sha256 = row.sha256.clone().filter(|s| valid_sha256(s)).ok_or_else(not_found)?;
        let data = self
            .media
            .backend
            .get(&content_key(&sha256))
            .await
            .map_err(|e| Error::Internal(format!("reading media: {e}")))?;
        match data {
            Some(d) => Ok((sha256, d)),
            None => {
                tracing::warn!(media_id = %row.media_id, "media content missing from the backend");
                Err(not_found())
            }
        }
    }

    /// A local media's content, with its content type and upload filename.
    pub async fn download_media(
        &self,
        viewer: Option<&UserId>,
        server_name: &ServerName,
        media_id: &str,
        timeout: Duration,
    ) -> Result<Served> {
        if server_name != self.server_name {
            let (meta, data) = self.remote_media(server_name, media_id, timeout).await?;
            return Ok(Served::file(data, meta.content_type, meta.filename));
        }
        let row = self.uploaded_media(server_name, media_id, timeout).await?;
        self.check_media_access(&row, viewer).await?;
        let (_, data) = self.content_of(&row).await?;
        Ok(Served::file(data, row.content_type, row.filename))
    }

    /// A thumbnail of an image, this server's or another's (whose file is
    /// fetched and kept here, then thumbnailed here), from the cache or made now.
    pub async fn media_thumbnail(
        &self,
        viewer: Option<&UserId>,
        server_name: &ServerName,
        media_id: &str,
        size: Size,
        timeout: Duration,
    ) -> Result<Served> {
        if server_name != self.server_name {
            let (meta, data) = self.remote_media(server_name, media_id, timeout).await?;
            return self
                .thumbnail_of(media_id, &meta.sha256, meta.content_type.as_deref(), Some(data), size)
                .await;
        }
        let row = self.uploaded_media(server_name, media_id, timeout).await?;
        self.check_media_access(&row, viewer).await?;
        let sha256 = row.sha256.clone().filter(|s| valid_sha256(s)).ok_or_else(not_found)?;
        self.thumbnail_of(media_id, &sha256, row.content_type.as_deref(), None, size)
            .await
    }

    /// A thumbnail of the content `sha256` (its bytes read when not given).
    async fn thumbnail_of(
        &self,
        media_id: &str,
        sha256: &str,
        content_type: Option<&str>,
        source: Option<Bytes>,
        size: Size,
    ) -> Result<Served> {
        // Declared non-images are refused without reading them; the rest is
        // judged by its bytes.
        if content_type.is_some_and(|t| !t.trim().to_ascii_lowercase().starts_with("image/")) {
            return Err(cannot_thumbnail());
        }
        let key = thumbnail_key(sha256, size);
        let cached = self.media.backend.get(&key).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading a cached thumbnail");
            None
        });
        if let Some(bytes) = cached {
            let content_type = thumbnail::content_type_of(&bytes);
            return Ok(served_thumbnail(bytes.into(), content_type));
        }
        let source = match source {
            Some(s) => s,
            None => self.content_by_sha(sha256, media_id).await?,
        };
        let thumb = {
            let _permit = self
                .media
                .thumbnailers
                .acquire()
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
            tokio::task::spawn_blocking(move || thumbnail::generate(&source, size))
                .await
                .map_err(|e| Error::Internal(format!("thumbnailer: {e}")))?
        };
        let thumb = match thumb {
            Ok(t) => t,
            Err(ThumbnailError::Unsupported(why)) => {
                tracing::debug!(media_id, why, "no thumbnail");
                return Err(cannot_thumbnail());
            }
            Err(ThumbnailError::TooLarge) => return Err(Error::too_large("Content is too large to thumbnail")),
            Err(e) => return Err(Error::Internal(e.to_string())),
        };
        // The cache is an optimisation: failing to fill it is no reason to fail the request.
        let bytes = Bytes::from(thumb.bytes);
        if let Err(e) = self.media.backend.put(&key, bytes.clone()).await {
            tracing::warn!(error = %e, "caching a thumbnail");
        }
        Ok(served_thumbnail(bytes.into(), thumb.content_type))
    }

    async fn content_by_sha(&self, sha256: &str, media_id: &str) -> Result<Bytes> {
        if !valid_sha256(sha256) {
            return Err(not_found());
        }
        match self
            .media
            .backend
            .get(&content_key(sha256))
            .await
            .map_err(|e| Error::Internal(format!("reading media: {e}")))?
        {
            Some(d) => Ok(d),
            None => {
                tracing::warn!(media_id, "media content missing from the backend");
                Err(not_found())
            }
        }
    }

    /// Another server's media, from the copy kept here or else fetched from
    /// it (`GET /_matrix/federation/v1/media/download`) and kept: the bytes
    /// with the other content (by their SHA-256), the metadata under the
    /// (server, media ID) pair, so that a second download stays here.
    async fn remote_media(
        &self,
        server: &ServerName,
        media_id: &str,
        timeout: Duration,
    ) -> Result<(RemoteMedia, Bytes)> {
        use ruma::api::federation::authenticated_media::{FileOrLocation, get_content};
        if !valid_media_id(media_id) {
            return Err(not_found());
        }
        let meta_key = remote_meta_key(server, media_id);
        let kept = self.media.backend.get(&meta_key).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading remote media metadata");
            None
        });
        if let Some(meta) = kept.and_then(|b| serde_json::from_slice::<RemoteMedia>(&b).ok())
            && valid_sha256(&meta.sha256)
            && let Ok(Some(data)) = self.media.backend.get(&content_key(&meta.sha256)).await
        {
            return Ok((meta, data));
        }
        // Media of a server this one does not talk to does not exist here.
        if !self.federation_enabled() || !self.server_allowed(server) {
            return Err(not_found());
        }
        let mut req = get_content::v1::Request::new(media_id.to_owned());
        req.timeout_ms = timeout.min(MAX_DOWNLOAD_WAIT);
        let resp = self.federation_request(server, req).await?;
        let content = match resp.content {
            FileOrLocation::File(c) => c,
            // A `Location` is not followed: that would have this server
            // fetch any URL another server names, inside its network too.
            _ => {
                return Err(Error::Matrix {
                    status: http::StatusCode::BAD_GATEWAY,
                    errcode: "M_UNKNOWN",
                    message: "The media's server answered with a redirect, which is not followed".into(),
                    extra: None,
                });
            }
        };
        if content.file.len() > self.config.max_upload_bytes {
            return Err(Error::too_large(
                "The remote media is larger than this server's upload limit",
            ));
        }
        let filename = content.content_disposition.as_ref().and_then(|d| d.filename.clone());
        let stored = self
            .store_content(Upload {
                content_type: content.content_type,
                filename,
                data: UploadData::Bytes(content.file),
            })
            .await?;
        let meta = RemoteMedia {
            sha256: stored.sha256,
            content_type: stored.content_type,
            filename: stored.filename,
        };
        let json = serde_json::to_vec(&meta).map_err(|e| Error::Internal(e.to_string()))?;
        if let Err(e) = self.media.backend.put(&meta_key, Bytes::from(json)).await {
            tracing::warn!(error = %e, "keeping remote media metadata");
        }
        let data = self.content_by_sha(&meta.sha256, media_id).await?;
        Ok((meta, data))
    }

    /// `GET /_matrix/federation/v1/media/download/{mediaId}`: a local media
    /// for another server.
    pub async fn media_for_server(&self, origin: &ServerName, media_id: &str, timeout: Duration) -> Result<Served> {
        let row = self.uploaded_media(&self.server_name, media_id, timeout).await?;
        self.check_server_media_access(&row, origin).await?;
        let (_, data) = self.content_of(&row).await?;
        Ok(Served::file(data, row.content_type, row.filename))
    }

    /// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`.
    pub async fn media_thumbnail_for_server(
        &self,
        origin: &ServerName,
        media_id: &str,
        size: Size,
        timeout: Duration,
    ) -> Result<Served> {
        let row = self.uploaded_media(&self.server_name, media_id, timeout).await?;
        self.check_server_media_access(&row, origin).await?;
        let sha256 = row.sha256.clone().filter(|s| valid_sha256(s)).ok_or_else(not_found)?;
        self.thumbnail_of(media_id, &sha256, row.content_type.as_deref(), None, size)
            .await
    }

    /// Media attached to room events go to a server that may see one of
    /// those events; the others, to any server (as to any user).
    async fn check_server_media_access(&self, row: &MediaRow, origin: &ServerName) -> Result<()> {
        let refs = self.store.media_refs(row.media_id.clone()).await?;
        if refs.is_empty() {
            return Ok(());
        }
        for ev in self.store.events(refs).await? {
            if self.check_server_reads_room(&ev.pdu.room_id, origin).await.is_ok()
                && self.server_can_see_event(origin, &ev).await?
            {
                return Ok(());
            }
        }
        Err(not_found())
    }

    /// Media attached to room events follow those rooms: besides its
    /// uploader, only a user who may see one of the events attaching it gets
    /// it. Media attached to no event (avatars, encrypted files whose event
    /// the server cannot read) are served to any authenticated user. Refusals
    /// look like an unknown media, so nothing leaks.
    async fn check_media_access(&self, row: &MediaRow, viewer: Option<&UserId>) -> Result<()> {
        if viewer.is_some_and(|v| v.as_str() == row.uploader) {
            return Ok(());
        }
        let refs = self.store.media_refs(row.media_id.clone()).await?;
        if refs.is_empty() {
            return Ok(());
        }
        if let Some(viewer) = viewer {
            for ev in self.store.events(refs).await? {
                if self.may_see_event(viewer, &ev).await? {
                    return Ok(());
                }
            }
        }
        Err(not_found())
    }

    /// Of these local media, those `sender` may attach to an event (so that
    /// the event's readers may read them): their own uploads, and media
    /// they may read through an event that attaches them already. An event
    /// naming a file its sender could not read opens the file to nobody.
    pub(crate) async fn attachable_media(&self, sender: &UserId, ids: Vec<String>) -> Result<Vec<String>> {
        let mut out = vec![];
        for id in ids {
            let Some(row) = self.store.media(id.clone()).await? else {
                continue;
            };
            let ok = row.uploader == sender.as_str()
                || !self.store.media_refs(id.clone()).await?.is_empty()
                    && self.check_media_access(&row, Some(sender)).await.is_ok();
            if ok {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Quarantines (or releases) a local media: quarantined media are not served.
    /// Returns whether the media exists.
    pub async fn quarantine_media(&self, media_id: &str, quarantined: bool) -> Result<bool> {
        if !valid_media_id(media_id) {
            return Ok(false);
        }
        Ok(self
            .store
            .set_media_quarantined(media_id.to_owned(), quarantined)
            .await?)
    }
}

fn served_thumbnail(data: Vec<u8>, content_type: &str) -> Served {
    let ext = if content_type == "image/jpeg" { "jpg" } else { "png" };
    Served {
        data,
        content_type: content_type.to_owned(),
        filename: Some(format!("thumbnail.{ext}")),
    }
}

fn check_reservation(row: &MediaRow, uploader: &UserId) -> Result<()> {
    if row.uploader != uploader.as_str() {
        return Err(not_owner());
    }
    if row.sha256.is_some() {
        return Err(already_uploaded());
    }
    if row.expires_ts.is_some_and(|e| e <= now_ms()) {
        return Err(not_found());
    }
    Ok(())
}

fn not_owner() -> Error {
    Error::forbidden("This media ID was reserved by another user")
}

fn already_uploaded() -> Error {
    Error::cannot_overwrite_media("This media has already been uploaded")
}

fn cannot_thumbnail() -> Error {
    Error::Matrix {
        status: http::StatusCode::BAD_REQUEST,
        errcode: "M_UNKNOWN",
        message: "Cannot generate thumbnails for this content type".into(),
        extra: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sharded_and_validated() {
        let sha = "ab".repeat(32);
        assert_eq!(content_key(&sha), format!("content/ab/ab/{sha}"));
        let backend = FsBackend::new(PathBuf::from("/m"));
        assert!(backend.path(&content_key(&sha)).is_ok());
        for bad in ["", "../x", "a//b", "a/.hidden", "/abs", "a/b..c"] {
            assert!(backend.path(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn remote_media_keys_are_valid_backend_keys() {
        let backend = FsBackend::new(PathBuf::from("/m"));
        let server = <&ServerName>::try_from("matrix.example.org:8448").unwrap();
        let key = remote_meta_key(server, "AbC123");
        assert!(backend.path(&key).is_ok(), "{key}");
        assert_ne!(key, remote_meta_key(server, "AbC124"));
    }

    #[test]
    fn media_ids_name_no_path() {
        assert!(valid_media_id("AbC123"));
        for bad in ["", "..", "a/b", "a.b", "a%2Fb"] {
            assert!(!valid_media_id(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_directory_backend_round_trips() {
        let dir = std::env::temp_dir().join(format!("missive-media-test-{}", random_string(8)));
        let backend = FsBackend::new(dir.clone());
        let key = content_key(&"0f".repeat(32));
        assert!(backend.get(&key).await.expect("get").is_none());
        backend.put(&key, Bytes::from_static(b"hello")).await.expect("put");
        backend
            .put(&key, Bytes::from_static(b"hello"))
            .await
            .expect("put again");
        assert_eq!(backend.get(&key).await.expect("get").as_deref(), Some(&b"hello"[..]));
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("content/0f/0f"))
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
