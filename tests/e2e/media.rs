//! The content repository: files uploaded and downloaded with matrix-sdk,
//! the exact headers on the wire, thumbnails of the requested size, the
//! upload limit, who may download, and asynchronous uploads.

use std::io::Cursor;

use matrix_sdk::{
    Client,
    media::{MediaFormat, MediaRequestParameters, MediaThumbnailSettings},
    ruma::{OwnedMxcUri, UInt, events::room::MediaSource, media::Method},
};
use serde_json::Value;

use crate::common::{Raw, TestServer, sdk_login};

/// The whole answer to a raw request: status, headers and body.
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn errcode(&self) -> String {
        self.json()["errcode"].as_str().unwrap_or("").to_owned()
    }
}

async fn send(req: reqwest::RequestBuilder) -> Got {
    let res = req.send().await.expect("request");
    Got {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.bytes().await.expect("body").to_vec(),
    }
}

async fn get(u: &Raw, path: &str, token: Option<&str>) -> Got {
    let mut req = u.http.get(format!("{}{path}", u.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(req).await
}

/// `POST /media/v3/upload` as a raw request; returns the answer.
async fn upload(u: &Raw, content_type: &str, filename: Option<&str>, data: Vec<u8>) -> Got {
    let mut url = format!("{}/_matrix/media/v3/upload", u.base);
    if let Some(f) = filename {
        url.push_str(&format!("?filename={}", crate::common::enc(f)));
    }
    send(
        u.http
            .post(url)
            .bearer_auth(&u.token)
            .header("content-type", content_type)
            .body(data),
    )
    .await
}

fn media_id(mxc: &str) -> String {
    mxc.strip_prefix("mxc://localhost/")
        .unwrap_or_else(|| panic!("local mxc URI, not {mxc}"))
        .to_owned()
}

/// A PNG of the given size, a gradient so that it is not trivially compressible.
fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode png");
    out
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("a decodable image");
    (img.width(), img.height())
}

async fn user(server: &TestServer, name: &str) -> (Raw, Client) {
    let raw = Raw::register(server, name).await;
    let client = sdk_login(server, name).await;
    (raw, client)
}

fn file_request(uri: OwnedMxcUri) -> MediaRequestParameters {
    MediaRequestParameters {
        source: MediaSource::Plain(uri),
        format: MediaFormat::File,
    }
}

fn thumbnail_request(uri: OwnedMxcUri, method: Method, width: u32, height: u32) -> MediaRequestParameters {
    MediaRequestParameters {
        source: MediaSource::Plain(uri),
        format: MediaFormat::Thumbnail(MediaThumbnailSettings::with_method(
            method,
            UInt::from(width),
            UInt::from(height),
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_with_their_type_and_name() {
    let server = TestServer::start().await;
    let (alice, client) = user(&server, "alice").await;

    // matrix-sdk uploads and downloads (through authenticated media).
    let data = b"Rapport trimestriel\n".repeat(100);
    let uri = client
        .media()
        .upload(&mime::TEXT_PLAIN, data.clone(), None)
        .await
        .expect("upload")
        .content_uri;
    let id = media_id(uri.as_str());
    assert!(id.len() >= 24 && id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
    let back = client
        .media()
        .get_media_content(&file_request(uri.clone()), false)
        .await
        .expect("download");
    assert_eq!(back, data);

    // The exact headers: type, inline for a safe type, and the sandbox.
    let got = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/localhost/{id}"),
        Some(&alice.token),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, data);
    assert_eq!(got.header("content-type"), "text/plain");
    assert_eq!(got.header("content-disposition"), "inline");
    assert!(
        got.header("content-security-policy")
            .starts_with("sandbox; default-src 'none'; script-src 'none';"),
        "{}",
        got.header("content-security-policy")
    );
    assert_eq!(got.header("cross-origin-resource-policy"), "cross-origin");

    // A file name given at upload; an unsafe type is an attachment.
    let pdf = b"%PDF-1.7 pretend".to_vec();
    let up = upload(&alice, "application/pdf", Some("note de service.pdf"), pdf.clone()).await;
    assert_eq!(up.status, 200, "{}", up.json());
    let pdf_id = media_id(up.json()["content_uri"].as_str().expect("content_uri"));
    let got = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/localhost/{pdf_id}"),
        Some(&alice.token),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, pdf);
    assert_eq!(got.header("content-type"), "application/pdf");
    assert_eq!(
        got.header("content-disposition"),
        "attachment; filename=\"note de service.pdf\""
    );
    // The name in the download path wins.
    let got = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/localhost/{pdf_id}/copie.pdf"),
        Some(&alice.token),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, pdf);
    assert_eq!(got.header("content-disposition"), "attachment; filename=copie.pdf");
    // HTML is never shown inline.
    let up = upload(&alice, "text/html", None, b"<script>alert(1)</script>".to_vec()).await;
    let html_id = media_id(up.json()["content_uri"].as_str().expect("content_uri"));
    let got = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/localhost/{html_id}"),
        Some(&alice.token),
    )
    .await;
    assert_eq!(got.header("content-disposition"), "attachment");

    // The limit clients are told.
    let got = get(&alice, "/_matrix/client/v1/media/config", Some(&alice.token)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["m.upload.size"], 104_857_600);

    // Another user of the server may download it too.
    let bob = Raw::register(&server, "bob").await;
    let got = get(
        &bob,
        &format!("/_matrix/client/v1/media/download/localhost/{id}"),
        Some(&bob.token),
    )
    .await;
    assert_eq!((got.status, got.body), (200, data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_get_thumbnails_of_the_requested_size() {
    let server = TestServer::start().await;
    let (alice, client) = user(&server, "alice").await;
    let uri = client
        .media()
        .upload(&mime::IMAGE_PNG, png(640, 480), None)
        .await
        .expect("upload")
        .content_uri;

    let crop = client
        .media()
        .get_media_content(&thumbnail_request(uri.clone(), Method::Crop, 96, 96), false)
        .await
        .expect("crop thumbnail");
    assert_eq!(dimensions(&crop), (96, 96));
    let scale = client
        .media()
        .get_media_content(&thumbnail_request(uri.clone(), Method::Scale, 320, 320), false)
        .await
        .expect("scale thumbnail");
    assert_eq!(dimensions(&scale), (320, 240), "scale keeps the aspect ratio");
    // Scaling never enlarges the original.
    let big = client
        .media()
        .get_media_content(&thumbnail_request(uri.clone(), Method::Scale, 1000, 1000), false)
        .await
        .expect("scale thumbnail");
    assert_eq!(dimensions(&big), (640, 480));

    // On the wire: an inline PNG; the second request is served from the cache, the same.
    let id = media_id(uri.as_str());
    let path = format!("/_matrix/client/v1/media/thumbnail/localhost/{id}?width=32&height=32&method=crop");
    let first = get(&alice, &path, Some(&alice.token)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-type"), "image/png");
    assert!(first.header("content-disposition").starts_with("inline"));
    assert_eq!(dimensions(&first.body), (32, 32));
    let again = get(&alice, &path, Some(&alice.token)).await;
    assert_eq!(again.body, first.body);

    // Not an image: no thumbnail.
    let up = upload(&alice, "text/plain", None, b"just text".to_vec()).await;
    let text_id = media_id(up.json()["content_uri"].as_str().expect("content_uri"));
    let got = get(
        &alice,
        &format!("/_matrix/client/v1/media/thumbnail/localhost/{text_id}?width=32&height=32"),
        Some(&alice.token),
    )
    .await;
    assert_eq!((got.status, got.errcode().as_str()), (400, "M_UNKNOWN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_configured_limit_are_refused() {
    let server = TestServer::start_with(&[
        ("MISSIVE_MAX_UPLOAD_BYTES", "4096"),
        ("MISSIVE_UNAUTHENTICATED_MEDIA", "true"),
    ])
    .await;
    let (alice, client) = user(&server, "alice").await;

    let got = get(&alice, "/_matrix/client/v1/media/config", Some(&alice.token)).await;
    assert_eq!(got.json()["m.upload.size"], 4096);
    let over = upload(&alice, "application/octet-stream", None, vec![7; 4097]).await;
    assert_eq!((over.status, over.errcode().as_str()), (413, "M_TOO_LARGE"));
    // A client that sends it anyway is refused too.
    assert!(
        client
            .media()
            .upload(&mime::APPLICATION_OCTET_STREAM, vec![7; 10_000], None)
            .await
            .is_err()
    );
    // Exactly the limit is fine, and uploads bigger than ordinary request bodies are
    // bounded by the upload limit, not by max_request_bytes.
    let at = upload(&alice, "application/octet-stream", None, vec![7; 4096]).await;
    assert_eq!(at.status, 200, "{}", at.json());

    // With unauthenticated_media on, the deprecated endpoints serve media, with the same headers.
    let id = media_id(at.json()["content_uri"].as_str().expect("content_uri"));
    let got = get(&alice, &format!("/_matrix/media/v3/download/localhost/{id}"), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, vec![7; 4096]);
    assert_eq!(got.header("content-type"), "application/octet-stream");
    assert_eq!(got.header("content-disposition"), "attachment");
    assert!(got.header("content-security-policy").starts_with("sandbox"));

    let server = TestServer::start_with(&[("MISSIVE_MAX_UPLOAD_BYTES", "2000000")]).await;
    let alice = Raw::register(&server, "alice").await;
    let big = upload(&alice, "application/octet-stream", None, vec![1; 1_500_000]).await;
    assert_eq!(
        big.status, 200,
        "an upload over max_request_bytes but under the upload limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_need_an_account_and_an_existing_local_media() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let up = upload(&alice, "image/png", Some("a.png"), png(8, 8)).await;
    let id = media_id(up.json()["content_uri"].as_str().expect("content_uri"));

    let path = format!("/_matrix/client/v1/media/download/localhost/{id}");
    let got = get(&alice, &path, None).await;
    assert_eq!((got.status, got.errcode().as_str()), (401, "M_MISSING_TOKEN"));
    let got = get(&alice, &path, Some("not-a-token")).await;
    assert_eq!((got.status, got.errcode().as_str()), (401, "M_UNKNOWN_TOKEN"));
    let thumb = format!("/_matrix/client/v1/media/thumbnail/localhost/{id}?width=4&height=4");
    let got = get(&alice, &thumb, None).await;
    assert_eq!((got.status, got.errcode().as_str()), (401, "M_MISSING_TOKEN"));
    // The deprecated unauthenticated endpoints serve nothing by default.
    for legacy in [
        format!("/_matrix/media/v3/download/localhost/{id}"),
        format!("/_matrix/media/v3/download/localhost/{id}/a.png"),
        format!("/_matrix/media/v3/thumbnail/localhost/{id}?width=4&height=4"),
    ] {
        let got = get(&alice, &legacy, None).await;
        assert_eq!((got.status, got.errcode().as_str()), (404, "M_NOT_FOUND"), "{legacy}");
    }
    // Uploading needs an account too.
    let got = send(
        alice
            .http
            .post(format!("{}/_matrix/media/v3/upload", alice.base))
            .header("content-type", "text/plain")
            .body("anonymous"),
    )
    .await;
    assert_eq!((got.status, got.errcode().as_str()), (401, "M_MISSING_TOKEN"));

    for missing in [
        "/_matrix/client/v1/media/download/localhost/NoSuchMediaIdAtAllHere123".to_owned(),
        "/_matrix/client/v1/media/thumbnail/localhost/NoSuchMediaIdAtAllHere123?width=4&height=4".to_owned(),
        format!("/_matrix/client/v1/media/download/elsewhere.example/{id}"),
        "/_matrix/client/v1/media/download/localhost/..%2F..%2Fmissive.db".to_owned(),
    ] {
        let got = get(&alice, &missing, Some(&alice.token)).await;
        assert_eq!((got.status, got.errcode().as_str()), (404, "M_NOT_FOUND"), "{missing}");
    }

    // URL previews are off.
    let got = get(
        &alice,
        "/_matrix/client/v1/media/preview_url?url=https%3A%2F%2Fexample.org",
        Some(&alice.token),
    )
    .await;
    assert_eq!((got.status, got.errcode().as_str()), (403, "M_FORBIDDEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_uploads_fill_a_reserved_id_once() {
    let server = TestServer::start().await;
    let (alice, client) = user(&server, "alice").await;

    // matrix-sdk reserves an ID, then uploads to it.
    let reserved = client.media().create_content_uri().await.expect("create");
    let uri = reserved.uri.clone();
    let data = png(20, 10);
    client
        .media()
        .upload_preallocated(reserved, &mime::IMAGE_PNG, data.clone())
        .await
        .expect("upload to the reserved ID");
    let back = client
        .media()
        .get_media_content(&file_request(uri.clone()), false)
        .await
        .expect("download");
    assert_eq!(back, data);

    // A second upload to the same ID is refused, and changes nothing.
    let id = media_id(uri.as_str());
    let put = |u: &Raw, id: &str, body: &'static [u8]| {
        u.http
            .put(format!("{}/_matrix/media/v3/upload/localhost/{id}", u.base))
            .bearer_auth(&u.token)
            .header("content-type", "text/plain")
            .body(body)
    };
    let again = send(put(&alice, &id, b"replacement")).await;
    assert_eq!(
        (again.status, again.errcode().as_str()),
        (409, "M_CANNOT_OVERWRITE_MEDIA")
    );
    let got = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/localhost/{id}"),
        Some(&alice.token),
    )
    .await;
    assert_eq!(got.body, data);
    assert_eq!(got.header("content-type"), "image/png");

    // Only the user who reserved an ID may upload to it.
    let create = send(
        alice
            .http
            .post(format!("{}/_matrix/media/v1/create", alice.base))
            .bearer_auth(&alice.token),
    )
    .await;
    assert_eq!(create.status, 200);
    let id2 = media_id(create.json()["content_uri"].as_str().expect("content_uri"));
    assert!(create.json()["unused_expires_at"].as_u64().is_some());
    let bob = Raw::register(&server, "bob").await;
    let got = send(put(&bob, &id2, b"not yours")).await;
    assert_eq!((got.status, got.errcode().as_str()), (403, "M_FORBIDDEN"));
    let got = send(put(&alice, "NoSuchReservedMediaId1234", b"nothing reserved")).await;
    assert_eq!((got.status, got.errcode().as_str()), (404, "M_NOT_FOUND"));

    // Before its upload, a download waits for at most timeout_ms …
    let path = format!("/_matrix/client/v1/media/download/localhost/{id2}");
    let got = get(&alice, &format!("{path}?timeout_ms=100"), Some(&alice.token)).await;
    assert_eq!((got.status, got.errcode().as_str()), (504, "M_NOT_YET_UPLOADED"));
    // … and one waiting when the upload comes gets the content.
    let waiting = {
        let alice = alice.clone();
        let path = format!("{path}?timeout_ms=15000");
        tokio::spawn(async move { get(&alice, &path, Some(&alice.token)).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let done = send(put(&alice, &id2, b"arrived late")).await;
    assert_eq!(done.status, 200, "{}", done.json());
    assert_eq!(done.json(), serde_json::json!({}));
    let got = waiting.await.expect("waiting download");
    assert_eq!((got.status, got.body.as_slice()), (200, &b"arrived late"[..]));
}

/// Media attached to a room's messages follow the room: members get them,
/// others are told there is no such media; unattached media stay available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_attached_in_a_room_are_refused_to_outsiders() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let mallory = Raw::register(&server, "mallory").await;
    let room = alice
        .create_room(serde_json::json!({ "preset": "private_chat", "invite": [bob.user_id] }))
        .await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", crate::common::enc(&room)),
        Some(serde_json::json!({})),
    )
    .await;

    let attached = upload(&alice, "image/png", Some("plan.png"), png(8, 8)).await.json()["content_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let loose = upload(&alice, "image/png", Some("avatar.png"), png(8, 8)).await.json()["content_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/img",
                crate::common::enc(&room)
            ),
            Some(serde_json::json!({ "msgtype": "m.image", "body": "plan.png", "url": attached })),
        )
        .await;

    let path = |mxc: &str| format!("/_matrix/client/v1/media/download/localhost/{}", media_id(mxc));
    let thumb = |mxc: &str| {
        format!(
            "/_matrix/client/v1/media/thumbnail/localhost/{}?width=4&height=4",
            media_id(mxc)
        )
    };
    assert_eq!(
        get(&alice, &path(&attached), Some(&alice.token)).await.status,
        200,
        "the uploader"
    );
    assert_eq!(
        get(&bob, &path(&attached), Some(&bob.token)).await.status,
        200,
        "a member"
    );
    let refused = get(&mallory, &path(&attached), Some(&mallory.token)).await;
    assert_eq!(
        (refused.status, refused.errcode().as_str()),
        (404, "M_NOT_FOUND"),
        "an outsider"
    );
    assert_eq!(
        get(&mallory, &thumb(&attached), Some(&mallory.token)).await.status,
        404,
        "nor its thumbnail"
    );
    assert_eq!(get(&bob, &thumb(&attached), Some(&bob.token)).await.status, 200);
    assert_eq!(
        get(&mallory, &path(&loose), Some(&mallory.token)).await.status,
        200,
        "media attached to no room"
    );
}
