//! This server's media for other servers: `GET /media/download/{mediaId}`
//! and `GET /media/thumbnail/{mediaId}` (multipart: empty metadata, then
//! the file).

use axum::Router;
use ruma::{
    api::federation::authenticated_media::{
        Content, ContentMetadata, FileOrLocation, get_content, get_content_thumbnail,
    },
    http_headers::{ContentDisposition, ContentDispositionType},
};

use crate::{
    App, Result,
    api::client::media::{disposition, thumbnail_size},
    ruma_wrapper::{RouterExt, Ruma},
};

pub fn routes(router: Router<App>) -> Router<App> {
    router
        .ruma::<get_content::v1::Request, _, _>(download)
        .ruma::<get_content_thumbnail::v1::Request, _, _>(thumbnail)
}

async fn download(app: App, req: Ruma<get_content::v1::Request>) -> Result<get_content::v1::Response> {
    let served = app
        .media_for_server(req.origin()?, &req.body.media_id, req.body.timeout_ms)
        .await?;
    let d = disposition(&served.content_type, served.filename);
    Ok(get_content::v1::Response::new(
        ContentMetadata::new(),
        FileOrLocation::File(Content::new(served.data, served.content_type, d)),
    ))
}

async fn thumbnail(
    app: App,
    req: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<get_content_thumbnail::v1::Response> {
    let b = &req.body;
    let size = thumbnail_size(b.width, b.height, b.method.clone())?;
    let served = app
        .media_thumbnail_for_server(req.origin()?, &b.media_id, size, b.timeout_ms)
        .await?;
    let d = ContentDisposition::new(ContentDispositionType::Inline).with_filename(served.filename);
    Ok(get_content_thumbnail::v1::Response::new(
        ContentMetadata::new(),
        FileOrLocation::File(Content::new(served.data, served.content_type, d)),
    ))
}
