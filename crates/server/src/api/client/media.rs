//! Content repository: uploads (`/media/v3/upload`, `/media/v1/create` and
//! the asynchronous `PUT /media/v3/upload/{serverName}/{mediaId}`),
//! authenticated downloads and thumbnails (`/client/v1/media/…`), the
//! configuration, URL previews, and the deprecated unauthenticated `/media/v3`
//! downloads.
//!
//! Every media response carries the headers the spec recommends so that a
//! file opened in a browser cannot run script against the server's origin
//! ([`security_headers`]), and is `inline` only for types that are safe so.

#![allow(deprecated)] // the legacy `/_matrix/media/v3` endpoints are deprecated, and served

use std::time::Duration;

use axum::response::Response;
use bytes::BufMut;
use http::HeaderValue;
use ruma::{
    MilliSecondsSinceUnixEpoch, ServerName, UInt,
    api::client::{
        authenticated_media as authed,
        media::{
            create_content, create_content_async, create_mxc_uri, get_content, get_content_as_filename,
            get_content_thumbnail, get_media_config, get_media_preview,
        },
    },
    api::{OutgoingResponse, error::IntoHttpError},
    http_headers::{ContentDisposition, ContentDispositionType},
    media::Method,
};

use crate::{
    App, Error, Result,
    ruma_wrapper::Ruma,
    services::{
        media::{Served, Upload, UploadData},
        thumbnail::{self, Size},
    },
};

/// Content types a browser may show inline without risk (the spec's list).
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// `inline` for the safe types, `attachment` for everything else, with the file name.
pub fn disposition(content_type: &str, filename: Option<String>) -> ContentDisposition {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let kind = if INLINE_TYPES.contains(&essence.as_str()) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    ContentDisposition::new(kind).with_filename(filename.filter(|f| !f.is_empty()))
}

/// Headers on every content repository response: a served file cannot run
/// script or load anything, and may be embedded by web clients on other origins.
pub async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
             style-src 'unsafe-inline'; object-src 'self';",
        ),
    );
    h.insert(
        http::header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

fn upload_size(app: &App) -> UInt {
    UInt::try_from(app.config.max_upload_bytes as u64).unwrap_or(UInt::MAX)
}

pub(crate) fn thumbnail_size(width: UInt, height: UInt, method: Option<Method>) -> Result<Size> {
    let method = match method {
        Some(Method::Crop) => thumbnail::Method::Crop,
        Some(Method::Scale) | None => thumbnail::Method::Scale,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown thumbnail method {:?}",
                other.as_str()
            )));
        }
    };
    Size::new(width.into(), height.into(), method)
        .ok_or_else(|| Error::invalid_param("Thumbnail width and height must be positive"))
}

/// The deprecated unauthenticated downloads serve nothing unless configured to.
fn legacy_allowed(app: &App) -> Result<()> {
    if app.config.unauthenticated_media {
        Ok(())
    } else {
        Err(Error::not_found(
            "Unauthenticated media downloads are disabled: use /_matrix/client/v1/media",
        ))
    }
}

/// A download's file name: the one in the path, else the one given at upload.
fn with_name(served: Served, path_name: Option<String>) -> (Vec<u8>, String, ContentDisposition) {
    let disposition = disposition(&served.content_type, path_name.or(served.filename));
    (served.data, served.content_type, disposition)
}

async fn download_file(
    app: &App,
    viewer: Option<&ruma::UserId>,
    server_name: &ServerName,
    media_id: &str,
    path_name: Option<String>,
    timeout: Duration,
) -> Result<(Vec<u8>, String, ContentDisposition)> {
    let served = app.download_media(viewer, server_name, media_id, timeout).await?;
    Ok(with_name(served, path_name))
}

async fn thumbnail_file(
    app: &App,
    viewer: Option<&ruma::UserId>,
    server_name: &ServerName,
    media_id: &str,
    size: Size,
    timeout: Duration,
) -> Result<(Vec<u8>, String, ContentDisposition)> {
    let served = app
        .media_thumbnail(viewer, server_name, media_id, size, timeout)
        .await?;
    // Thumbnails are always images, and always inline.
    let disposition = ContentDisposition::new(ContentDispositionType::Inline).with_filename(served.filename);
    Ok((served.data, served.content_type, disposition))
}

// Uploads

pub async fn upload(app: App, req: Ruma<create_content::v3::Request>) -> Result<create_content::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    let uri = app
        .upload_media(
            &user,
            Upload {
                content_type: body.content_type,
                filename: body.filename,
                data: UploadData::Body(req.upload.unwrap_or_default()),
            },
        )
        .await?;
    if let Some(c) = req.upload_consumed {
        c.set();
    }
    Ok(create_content::v3::Response::new(uri))
}

pub async fn create(app: App, req: Ruma<create_mxc_uri::v1::Request>) -> Result<create_mxc_uri::v1::Response> {
    let (uri, expires) = app.reserve_media(req.user()?).await?;
    let mut resp = create_mxc_uri::v1::Response::new(uri);
    resp.unused_expires_at = UInt::try_from(expires.max(0) as u64)
        .ok()
        .map(MilliSecondsSinceUnixEpoch);
    Ok(resp)
}

/// The empty JSON object answering an asynchronous upload: ruma's response
/// type for it has no fields and no constructor usable outside ruma.
pub struct Uploaded;

impl OutgoingResponse for Uploaded {
    fn try_into_http_response<T: Default + BufMut>(self) -> Result<http::Response<T>, IntoHttpError> {
        let mut body = T::default();
        body.put_slice(b"{}");
        let mut res = http::Response::new(body);
        res.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(res)
    }
}

pub async fn upload_async(app: App, req: Ruma<create_content_async::v3::Request>) -> Result<Uploaded> {
    let user = req.user()?.clone();
    let body = req.body;
    app.upload_reserved_media(
        &body.server_name,
        &body.media_id,
        &user,
        Upload {
            content_type: body.content_type,
            filename: body.filename,
            data: UploadData::Body(req.upload.unwrap_or_default()),
        },
    )
    .await?;
    if let Some(c) = req.upload_consumed {
        c.set();
    }
    Ok(Uploaded)
}

// Configuration and URL previews

pub async fn config(
    app: App,
    _req: Ruma<authed::get_media_config::v1::Request>,
) -> Result<authed::get_media_config::v1::Response> {
    Ok(authed::get_media_config::v1::Response::new(upload_size(&app)))
}

pub async fn legacy_config(
    app: App,
    _req: Ruma<get_media_config::v3::Request>,
) -> Result<get_media_config::v3::Response> {
    Ok(get_media_config::v3::Response::new(upload_size(&app)))
}

/// The OpenGraph data of a pasted URL, when URL previews are on (see
/// `services::url_preview` for what the server will and will not fetch).
async fn preview(
    app: &App,
    user: &ruma::UserId,
    url: &str,
    ts: Option<MilliSecondsSinceUnixEpoch>,
) -> Result<serde_json::Value> {
    app.preview_url(user, url, ts.map(|t| u64::from(t.0))).await
}

pub async fn preview_url(
    app: App,
    req: Ruma<authed::get_media_preview::v1::Request>,
) -> Result<authed::get_media_preview::v1::Response> {
    let og = preview(&app, req.user()?, &req.body.url, req.body.ts).await?;
    authed::get_media_preview::v1::Response::from_serialize(&og).map_err(|e| Error::Internal(e.to_string()))
}

pub async fn legacy_preview_url(
    app: App,
    req: Ruma<get_media_preview::v3::Request>,
) -> Result<get_media_preview::v3::Response> {
    let og = preview(&app, req.user()?, &req.body.url, req.body.ts).await?;
    get_media_preview::v3::Response::from_serialize(&og).map_err(|e| Error::Internal(e.to_string()))
}

// Authenticated downloads

pub async fn download(
    app: App,
    req: Ruma<authed::get_content::v1::Request>,
) -> Result<authed::get_content::v1::Response> {
    let b = &req.body;
    let (file, content_type, disposition) =
        download_file(&app, req.viewer(), &b.server_name, &b.media_id, None, b.timeout_ms).await?;
    Ok(authed::get_content::v1::Response::new(file, content_type, disposition))
}

pub async fn download_as(
    app: App,
    req: Ruma<authed::get_content_as_filename::v1::Request>,
) -> Result<authed::get_content_as_filename::v1::Response> {
    let b = &req.body;
    let (file, content_type, disposition) = download_file(
        &app,
        req.viewer(),
        &b.server_name,
        &b.media_id,
        Some(b.filename.clone()),
        b.timeout_ms,
    )
    .await?;
    Ok(authed::get_content_as_filename::v1::Response::new(
        file,
        content_type,
        disposition,
    ))
}

pub async fn thumbnail(
    app: App,
    req: Ruma<authed::get_content_thumbnail::v1::Request>,
) -> Result<authed::get_content_thumbnail::v1::Response> {
    let b = &req.body;
    let size = thumbnail_size(b.width, b.height, b.method.clone())?;
    let (file, content_type, disposition) =
        thumbnail_file(&app, req.viewer(), &b.server_name, &b.media_id, size, b.timeout_ms).await?;
    Ok(authed::get_content_thumbnail::v1::Response::new(
        file,
        content_type,
        disposition,
    ))
}

// Deprecated unauthenticated downloads

pub async fn legacy_download(app: App, req: Ruma<get_content::v3::Request>) -> Result<get_content::v3::Response> {
    legacy_allowed(&app)?;
    let b = &req.body;
    let (file, content_type, disposition) =
        download_file(&app, req.viewer(), &b.server_name, &b.media_id, None, b.timeout_ms).await?;
    Ok(get_content::v3::Response::new(file, content_type, disposition))
}

pub async fn legacy_download_as(
    app: App,
    req: Ruma<get_content_as_filename::v3::Request>,
) -> Result<get_content_as_filename::v3::Response> {
    legacy_allowed(&app)?;
    let b = &req.body;
    let (file, content_type, disposition) = download_file(
        &app,
        req.viewer(),
        &b.server_name,
        &b.media_id,
        Some(b.filename.clone()),
        b.timeout_ms,
    )
    .await?;
    Ok(get_content_as_filename::v3::Response::new(
        file,
        content_type,
        disposition,
    ))
}

pub async fn legacy_thumbnail(
    app: App,
    req: Ruma<get_content_thumbnail::v3::Request>,
) -> Result<get_content_thumbnail::v3::Response> {
    legacy_allowed(&app)?;
    let b = &req.body;
    let size = thumbnail_size(b.width, b.height, b.method.clone())?;
    let (file, content_type, disposition) =
        thumbnail_file(&app, req.viewer(), &b.server_name, &b.media_id, size, b.timeout_ms).await?;
    Ok(get_content_thumbnail::v3::Response::new(
        file,
        content_type,
        disposition,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_types_are_inline() {
        let d = disposition("image/png", Some("cat.png".into()));
        assert_eq!(d.to_string(), "inline; filename=cat.png");
        assert_eq!(disposition("Text/Plain; charset=utf-8", None).to_string(), "inline");
        assert_eq!(
            disposition("text/html", Some("page.html".into())).to_string(),
            "attachment; filename=page.html"
        );
        assert_eq!(disposition("image/svg+xml", None).to_string(), "attachment");
        assert_eq!(
            disposition("application/octet-stream", Some("r\u{e9}sum\u{e9}.pdf".into())).to_string(),
            "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf"
        );
    }
}
