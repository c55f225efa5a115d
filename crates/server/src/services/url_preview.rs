//! URL previews: the server fetches a page a user pasted and answers with its
//! OpenGraph data, so that clients can show a card under the link.
//!
//! Fetching a URL a user names is a server-side request forgery waiting to
//! happen, so every fetch here resolves the host itself, refuses any address
//! that is not public ([`crate::services::addresses::is_public`]) unless an administrator allowed its range,
//! and then connects to exactly the addresses it vetted (a per-request client
//! whose resolver is pinned to them: no second DNS lookup that could answer
//! differently). Redirects are followed by hand, each hop vetted the same way.
//! Bodies are read up to a cap and the whole fetch has a deadline. Only HTML
//! pages and images are looked at; an image is stored as local media and the
//! preview points at the local copy.

use std::{
    collections::HashMap,
    io::Cursor,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use reqwest::{StatusCode, Url, header};
use ruma::UserId;
use serde_json::{Map, Value};

use crate::{
    App, Error, Result,
    services::{
        accounts::now_ms,
        addresses::allowed,
        media::{Upload, UploadData},
        opengraph,
        ratelimit::Action,
    },
};

/// Longest a whole preview (lookups, redirects, body, image) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read from one response; a longer page is read up to here.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most redirects followed.
const MAX_REDIRECTS: usize = 5;
/// How long a preview is reused.
const CACHE_LIFETIME: Duration = Duration::from_secs(3600);
/// Most previews kept in memory.
const CACHE_ENTRIES: usize = 10_000;
/// Previews are cached per hour of the `ts` asked for.
const TS_BUCKET_MS: u64 = 3600 * 1000;

fn blocked() -> Error {
    Error::forbidden("URL preview blocked")
}

/// The remote server failed us: its fault, not the client's.
fn upstream(message: impl Into<String>) -> Error {
    Error::Matrix {
        status: StatusCode::BAD_GATEWAY,
        errcode: "M_UNKNOWN",
        message: message.into(),
        extra: None,
    }
}

/// Previews already built, per URL and hour.
#[derive(Default)]
pub struct UrlPreviews {
    cache: Mutex<HashMap<(String, u64), (Instant, Value)>>,
}

impl UrlPreviews {
    fn get(&self, key: &(String, u64)) -> Option<Value> {
        let cache = self.cache.lock().expect("preview cache lock");
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < CACHE_LIFETIME)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: (String, u64), value: Value) {
        let mut cache = self.cache.lock().expect("preview cache lock");
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_LIFETIME);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), value));
    }
}

/// A response read up to the cap.
struct Fetched {
    url: Url,
    content_type: String,
    body: Vec<u8>,
    truncated: bool,
}

/// What a fetch accepts.
#[derive(Clone, Copy, PartialEq)]
enum Want {
    PageOrImage,
    Image,
}

fn http_url(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https")
}

impl App {
    /// `GET /media/v1/preview_url`: the OpenGraph object of the page at `url`.
    pub async fn preview_url(&self, user: &UserId, url: &str, ts: Option<u64>) -> Result<Value> {
        if !self.config.url_previews {
            return Err(Error::forbidden("URL previews are disabled"));
        }
        let parsed = Url::parse(url).map_err(|_| Error::invalid_param("Not a URL"))?;
        if !http_url(&parsed) {
            return Err(Error::invalid_param("URL previews are only for http and https URLs"));
        }
        let key = (parsed.to_string(), ts.unwrap_or_else(|| now_ms() as u64) / TS_BUCKET_MS);
        if let Some(hit) = self.url_previews.get(&key) {
            return Ok(hit);
        }
        self.rate_limiter
            .check(&self.config.rate_limits, Action::UrlPreview, user.as_str())?;
        let og = tokio::time::timeout(FETCH_TIMEOUT, self.build_preview(user, parsed))
            .await
            .map_err(|_| upstream("Timed out fetching the URL"))??;
        let og = Value::Object(og);
        self.url_previews.put(key, og.clone());
        Ok(og)
    }

    async fn build_preview(&self, user: &UserId, url: Url) -> Result<Map<String, Value>> {
        let page = self.fetch(url, Want::PageOrImage).await?;
        if page.content_type.starts_with("image/") {
            let mut og = Map::new();
            self.store_image(user, page, &mut og).await?;
            return Ok(og);
        }
        let html = decode_text(&page.body, &page.content_type);
        let mut og = opengraph::parse(&html).into_opengraph();
        let image = og.get("og:image").and_then(Value::as_str).map(str::to_owned);
        // The page's image, fetched like the page and kept here: the client
        // never has to reach the site itself.
        let image_keys: Vec<String> = og.keys().filter(|k| k.starts_with("og:image")).cloned().collect();
        for k in image_keys {
            og.remove(&k);
        }
        if let Some(image_url) = image.and_then(|i| page.url.join(&i).ok()).filter(http_url) {
            match self.fetch(image_url, Want::Image).await {
                Ok(img) => {
                    if let Err(e) = self.store_image(user, img, &mut og).await {
                        tracing::debug!(error = %e, "URL preview: page image not kept");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "URL preview: page image not fetched"),
            }
        }
        Ok(og)
    }

    /// Stores a fetched image as local media and describes it in `og`.
    async fn store_image(&self, user: &UserId, img: Fetched, og: &mut Map<String, Value>) -> Result<()> {
        if img.truncated {
            return Err(upstream("Image too large to preview"));
        }
        // Only images we can read (no SVG, no HTML in disguise), stored
        // under the type their bytes have, not the one the site claimed.
        let reader = image::ImageReader::new(Cursor::new(&img.body))
            .with_guessed_format()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let content_type = reader
            .format()
            .map(|f| f.to_mime_type().to_owned())
            .ok_or_else(|| upstream("Not an image this server can preview"))?;
        let (width, height) = reader
            .into_dimensions()
            .map_err(|_| upstream("Not an image this server can preview"))?;
        let size = img.body.len();
        let uri = self
            .upload_media(
                user,
                Upload {
                    content_type: Some(content_type.clone()),
                    filename: None,
                    data: UploadData::Bytes(img.body),
                },
            )
            .await?;
        og.insert("og:image".into(), uri.to_string().into());
        og.insert("og:image:type".into(), content_type.into());
        og.insert("og:image:width".into(), width.into());
        og.insert("og:image:height".into(), height.into());
        og.insert("matrix:image:size".into(), size.into());
        Ok(())
    }

    /// GETs `url`, following redirects by hand, connecting only to vetted addresses.
    async fn fetch(&self, mut url: Url, want: Want) -> Result<Fetched> {
        for _ in 0..=MAX_REDIRECTS {
            let client = self.pinned_client(&url).await?;
            let accept = match want {
                Want::PageOrImage => "text/html,application/xhtml+xml,image/*;q=0.8",
                Want::Image => "image/*",
            };
            let mut res = client
                .get(url.clone())
                .header(header::ACCEPT, accept)
                .send()
                .await
                .map_err(|e| upstream(format!("Could not fetch the URL: {}", without_url(e))))?;
            let status = res.status();
            if status.is_redirection() {
                let next = res
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .ok_or_else(|| upstream("Redirect without a valid location"))?;
                if !http_url(&next) {
                    return Err(blocked());
                }
                url = next;
                continue;
            }
            if !status.is_success() {
                return Err(upstream(format!("The URL answered {status}")));
            }
            let content_type = res
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let essence = content_type.split(';').next().unwrap_or("").trim();
            let acceptable = match want {
                Want::PageOrImage => {
                    matches!(essence, "text/html" | "application/xhtml+xml") || essence.starts_with("image/")
                }
                Want::Image => essence.starts_with("image/"),
            };
            if !acceptable {
                return Err(upstream("URL previews are only for HTML pages and images"));
            }
            let mut body = Vec::new();
            let mut truncated = false;
            while let Some(chunk) = res
                .chunk()
                .await
                .map_err(|e| upstream(format!("Reading the URL: {}", without_url(e))))?
            {
                let room = MAX_BODY_BYTES - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(Fetched {
                url,
                content_type,
                body,
                truncated,
            });
        }
        Err(upstream("Too many redirects"))
    }

    /// A client for one request to `url` that can connect only to the
    /// addresses its host resolves to now, each of them allowed.
    async fn pinned_client(&self, url: &Url) -> Result<reqwest::Client> {
        if !http_url(url) {
            return Err(blocked());
        }
        let port = url.port_or_known_default().ok_or_else(blocked)?;
        let allowlist = &self.config.url_preview_ip_allowlist;
        let builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(FETCH_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("Missive/", env!("CARGO_PKG_VERSION"), " (URL preview)"));
        let builder = match url.host() {
            Some(url::Host::Ipv4(ip)) => {
                // An address literal is connected to as is: nothing to pin.
                if !allowed(IpAddr::V4(ip), allowlist) {
                    return Err(blocked());
                }
                builder
            }
            Some(url::Host::Ipv6(ip)) => {
                if !allowed(IpAddr::V6(ip), allowlist) {
                    return Err(blocked());
                }
                builder
            }
            Some(url::Host::Domain(host)) => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|_| upstream("Could not resolve the URL's host"))?
                    .collect();
                if addrs.is_empty() {
                    return Err(upstream("Could not resolve the URL's host"));
                }
                // One non-public address is enough to refuse: a name that
                // points inside the network is not a page to preview.
                if addrs.iter().any(|a| !allowed(a.ip(), allowlist)) {
                    return Err(blocked());
                }
                builder.resolve_to_addrs(host, &addrs)
            }
            None => return Err(blocked()),
        };
        builder
            .build()
            .map_err(|e| Error::Internal(format!("URL preview client: {e}")))
    }
}

/// A reqwest error without the URL it carries (which the user gave us anyway,
/// but a redirect's target need not be told).
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        e.to_string()
    }
}

/// The page as text: UTF-8 unless it says Latin-1 (or its Windows
/// superset, read as Latin-1), in the Content-Type or a `<meta charset>`.
fn decode_text(body: &[u8], content_type: &str) -> String {
    let head = String::from_utf8_lossy(&body[..body.len().min(2048)]).to_ascii_lowercase();
    let declared = content_type
        .to_ascii_lowercase()
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("charset="))
        .next()
        .map(|c| c.trim_matches('"').to_owned())
        .or_else(|| {
            let at = head.find("charset=")? + "charset=".len();
            let rest = head[at..].trim_start_matches(['"', '\'']);
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))?;
            Some(rest[..end].to_owned())
        })
        .unwrap_or_default();
    if matches!(
        declared.as_str(),
        "iso-8859-1" | "latin1" | "windows-1252" | "cp1252" | "us-ascii"
    ) {
        body.iter().map(|&b| b as char).collect()
    } else {
        String::from_utf8_lossy(body).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allowlist_from_the_environment_and_toml() {
        let mut config = crate::Config::default();
        assert!(!config.url_previews);
        let env = |v: &'static str| move |k: &str| (k == "MISSIVE_URL_PREVIEW_IP_ALLOWLIST").then(|| v.to_owned());
        config.apply_env(env(" 127.0.0.1/32, fd00::/8 ,")).unwrap();
        assert_eq!(config.url_preview_ip_allowlist.len(), 2);
        assert!(config.apply_env(env("127.0.0.1/32,localhost")).is_err());
        let parsed: crate::Config = serde_json::from_value(serde_json::json!({
            "url_previews": true, "url_preview_ip_allowlist": ["10.0.0.0/8"]
        }))
        .unwrap();
        assert!(parsed.url_previews && parsed.url_preview_ip_allowlist[0].contains(ip("10.9.8.7")));
        assert!(
            serde_json::from_value::<crate::Config>(serde_json::json!({ "url_preview_ip_allowlist": ["10/8"] }))
                .is_err()
        );
    }

    #[test]
    fn charset() {
        assert_eq!(decode_text(b"caf\xe9", "text/html; charset=ISO-8859-1"), "café");
        assert_eq!(
            decode_text(b"<meta charset=\"windows-1252\">\xe9", "text/html"),
            "<meta charset=\"windows-1252\">é"
        );
        assert_eq!(decode_text("café".as_bytes(), "text/html"), "café");
    }
}
