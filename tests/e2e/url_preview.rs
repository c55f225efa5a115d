//! URL previews: off by default; when on, never fetched from a private
//! address (directly, through a name, or after a redirect) unless that range
//! is allowlisted; and from an allowed site, the page's OpenGraph data with
//! its image kept as local media. A tiny HTTP server inside the test plays
//! the site.

use std::{
    collections::HashMap,
    io::Cursor,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::common::{Raw, Reply, TestServer, enc};

const PAGE: &str = r#"<!DOCTYPE html>
<html><head>
<title>Fallback title</title>
<meta property="og:title" content="Missive &amp; friends">
<meta property="og:description" content="A sovereign homeserver">
<meta property="og:image" content="/logo.png">
</head><body><p>Hello</p></body></html>"#;

/// Size of the page that must be cut off.
const HUGE_BYTES: usize = 32 * 1024 * 1024;

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 200]));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png");
    out
}

/// A site on a loopback address, counting the requests for each path.
struct Site {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Site {
    async fn start(ip: &str) -> Site {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind the site");
        let addr = listener.local_addr().expect("addr");
        let hits: Arc<Mutex<HashMap<String, usize>>> = Default::default();
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, counted.clone()));
            }
        });
        Site { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

async fn serve(mut conn: TcpStream, hits: Arc<Mutex<HashMap<String, usize>>>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_owned();
    let target = line.split(' ').nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    *hits.lock().unwrap().entry(path.to_owned()).or_default() += 1;
    let respond = |status: &str, headers: &str, body_len: usize| {
        format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {body_len}\r\nConnection: close\r\n\r\n")
    };
    let _ = match path {
        "/page" => {
            let head = respond("200 OK", "Content-Type: text/html; charset=utf-8\r\n", PAGE.len());
            conn.write_all(format!("{head}{PAGE}").as_bytes()).await
        }
        "/logo.png" => {
            let img = png();
            let head = respond("200 OK", "Content-Type: image/png\r\n", img.len());
            let _ = conn.write_all(head.as_bytes()).await;
            conn.write_all(&img).await
        }
        "/redirect" => {
            // `/redirect?to=<percent-encoded url>`.
            let to = percent_decode(query.strip_prefix("to=").unwrap_or("/page"));
            let head = respond("302 Found", &format!("Location: {to}\r\n"), 0);
            conn.write_all(head.as_bytes()).await
        }
        "/huge" => {
            let start = "<html><head><meta property=\"og:title\" content=\"Huge\"></head><body>";
            let head = respond("200 OK", "Content-Type: text/html\r\n", HUGE_BYTES);
            let _ = conn.write_all(format!("{head}{start}").as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = start.len();
            while sent < HUGE_BYTES {
                let n = chunk.len().min(HUGE_BYTES - sent);
                if conn.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                sent += n;
            }
            Ok(())
        }
        "/text" => {
            let head = respond("200 OK", "Content-Type: text/plain\r\n", 5);
            conn.write_all(format!("{head}hello").as_bytes()).await
        }
        _ => conn.write_all(respond("404 Not Found", "", 0).as_bytes()).await,
    };
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match (b[i], s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn preview(u: &Raw, url: &str) -> Reply {
    u.call(
        "GET",
        &format!("/_matrix/client/v1/media/preview_url?url={}", enc(url)),
        None,
    )
    .await
}

fn assert_blocked(r: &Reply, what: &str) {
    assert_eq!(r.status, 403, "{what} must be refused: {}", r.body);
    assert_eq!(r.errcode(), "M_FORBIDDEN", "{what}");
    assert_eq!(r.body["error"], "URL preview blocked", "{what}");
}

#[tokio::test]
async fn url_previews_are_off_by_default() {
    let site = Site::start("127.0.0.1").await;
    let server = TestServer::start().await;
    let u = Raw::register(&server, "off").await;
    let r = preview(&u, &site.url("/page")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.errcode(), "M_FORBIDDEN");
    let legacy = u
        .call(
            "GET",
            &format!("/_matrix/media/v3/preview_url?url={}", enc(&site.url("/page"))),
            None,
        )
        .await;
    assert_eq!(legacy.status, 403, "{}", legacy.body);
    assert_eq!(site.hits("/page"), 0, "nothing fetched");
}

#[tokio::test]
async fn url_previews_never_reach_private_addresses() {
    let site = Site::start("127.0.0.1").await;
    let port = site.addr.port();
    let server = TestServer::start_with(&[("MISSIVE_URL_PREVIEWS", "true")]).await;
    let u = Raw::register(&server, "private").await;
    for (url, what) in [
        (site.url("/page"), "a loopback address"),
        (format!("http://localhost:{port}/page"), "a name resolving to loopback"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/page"),
            "an IPv4-mapped loopback",
        ),
        (format!("http://2130706433:{port}/page"), "loopback written as a number"),
        (format!("http://[::1]:{port}/page"), "IPv6 loopback"),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "the cloud metadata address",
        ),
        ("http://10.0.0.1/".to_owned(), "a private network"),
    ] {
        assert_blocked(&preview(&u, &url).await, what);
    }
    assert_eq!(site.hits("/page"), 0, "the site was never contacted");
    let unauthenticated = crate::common::request(
        &u.http,
        "GET",
        &format!(
            "{}/_matrix/client/v1/media/preview_url?url={}",
            u.base,
            enc(&site.url("/page"))
        ),
        None,
        None,
    )
    .await;
    assert_eq!(unauthenticated.status, 401, "previews need an account");
}

#[tokio::test]
async fn allowlisted_pages_are_previewed_within_bounds() {
    let site = Site::start("127.0.0.1").await;
    let server = TestServer::start_with(&[
        ("MISSIVE_URL_PREVIEWS", "on"),
        ("MISSIVE_URL_PREVIEW_IP_ALLOWLIST", "127.0.0.1/32"),
    ])
    .await;
    let u = Raw::register(&server, "allowed").await;

    let r = preview(&u, &site.url("/page")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["og:title"], "Missive & friends");
    assert_eq!(r.body["og:description"], "A sovereign homeserver");
    let image = r.body["og:image"].as_str().expect("og:image");
    let media_id = image
        .strip_prefix("mxc://localhost/")
        .expect("a local copy of the image");
    let img = png();
    assert_eq!(r.body["matrix:image:size"], Value::from(img.len()));
    assert_eq!(r.body["og:image:width"], 7);
    assert_eq!(r.body["og:image:type"], "image/png");
    let stored = u
        .http
        .get(format!(
            "{}/_matrix/client/v1/media/download/localhost/{media_id}",
            u.base
        ))
        .bearer_auth(&u.token)
        .send()
        .await
        .expect("download");
    assert_eq!(stored.status(), 200);
    assert_eq!(
        stored.bytes().await.expect("body").to_vec(),
        img,
        "the stored copy is the image"
    );

    // Cached: asking again does not fetch again; the legacy endpoint answers too.
    let again = u
        .call(
            "GET",
            &format!("/_matrix/media/v3/preview_url?url={}", enc(&site.url("/page"))),
            None,
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["og:title"], "Missive & friends");
    assert_eq!(site.hits("/page"), 1, "the second preview came from the cache");

    // An image URL is previewed as the image itself.
    let r = preview(&u, &site.url("/logo.png")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["og:image"]
            .as_str()
            .unwrap_or("")
            .starts_with("mxc://localhost/")
    );

    // A redirect to an allowed address is followed...
    let r = preview(&u, &site.url(&format!("/redirect?to={}", enc(&site.url("/page?r=1"))))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["og:title"], "Missive & friends");
    // ...one to another loopback address is not, even with something listening there.
    let other = Site::start("127.0.0.2").await;
    let r = preview(&u, &site.url(&format!("/redirect?to={}", enc(&other.url("/page"))))).await;
    assert_blocked(&r, "a redirect to 127.0.0.2");
    let r = preview(
        &u,
        &site.url(&format!(
            "/redirect?to={}",
            enc(&format!("http://[::1]:{}/page", other.addr.port()))
        )),
    )
    .await;
    assert_blocked(&r, "a redirect to IPv6 loopback");
    assert_eq!(other.hits("/page"), 0, "the private site was never contacted");
    let r = preview(&u, &site.url("/redirect?to=file:///etc/passwd")).await;
    assert_blocked(&r, "a redirect to a file");

    // Other schemes are not fetched at all.
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "gopher://127.0.0.1/",
        "not a url",
    ] {
        let r = preview(&u, url).await;
        assert!(matches!(r.status, 400 | 403), "{url}: {} {}", r.status, r.body);
    }

    // A huge page is read up to the cap, and still previewed.
    let started = std::time::Instant::now();
    let r = preview(&u, &site.url("/huge")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["og:title"], "Huge");
    assert!(started.elapsed().as_secs() < 10, "cut off, not read whole");

    // What is neither a page nor an image is not previewed.
    let r = preview(&u, &site.url("/text")).await;
    assert!(r.status >= 400, "plain text: {} {}", r.status, r.body);
}

#[tokio::test]
async fn a_redirect_from_an_allowed_host_to_loopback_is_refused() {
    let private = Site::start("127.0.0.1").await;
    let allowed = Site::start("127.0.0.2").await;
    let server = TestServer::start_with(&[
        ("MISSIVE_URL_PREVIEWS", "1"),
        ("MISSIVE_URL_PREVIEW_IP_ALLOWLIST", "127.0.0.2/32"),
    ])
    .await;
    let u = Raw::register(&server, "redirected").await;
    let r = preview(&u, &allowed.url("/page")).await;
    assert_eq!(r.status, 200, "the allowed host is previewed: {}", r.body);
    assert_eq!(r.body["og:title"], "Missive & friends");
    let r = preview(
        &u,
        &allowed.url(&format!("/redirect?to={}", enc(&private.url("/page")))),
    )
    .await;
    assert_blocked(&r, "a redirect to 127.0.0.1");
    assert_eq!(private.hits("/page"), 0, "127.0.0.1 was never contacted");
}
