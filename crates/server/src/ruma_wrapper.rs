//! The adapter between axum and ruma: a handler receives the endpoint's typed
//! ruma request (with the authenticated user) and returns its typed response.

use std::{collections::BTreeSet, future::Future};

use axum::{
    Router,
    extract::{FromRequest, FromRequestParts, RawPathParams, Request, State},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use bytes::BytesMut;
use ruma::{
    OwnedDeviceId, OwnedUserId,
    api::{
        IncomingRequest, OutgoingResponse,
        auth_scheme::{
            AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken, NoAuthentication,
        },
        path_builder::PathBuilder,
    },
};

use crate::{App, Error, Result, services::accounts::Session};

/// Whether an endpoint needs an access token, as its ruma metadata says.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TokenRule {
    Required,
    Optional,
    None,
}

pub trait AuthKind {
    const RULE: TokenRule;
}
impl AuthKind for AccessToken {
    const RULE: TokenRule = TokenRule::Required;
}
impl AuthKind for AccessTokenOptional {
    const RULE: TokenRule = TokenRule::Optional;
}
// No application services are registered, so an appservice token is just an access token.
impl AuthKind for AppserviceToken {
    const RULE: TokenRule = TokenRule::Required;
}
impl AuthKind for AppserviceTokenOptional {
    const RULE: TokenRule = TokenRule::Optional;
}
impl AuthKind for NoAuthentication {
    const RULE: TokenRule = TokenRule::None;
}
impl AuthKind for NoAccessToken {
    const RULE: TokenRule = TokenRule::None;
}

/// A parsed request with who sent it.
pub struct Ruma<R> {
    pub body: R,
    pub session: Option<Session>,
    /// The raw JSON body, for the few endpoints that need fields ruma drops.
    pub raw_body: bytes::Bytes,
    /// The peer's address, for per-client rate limits.
    pub client_ip: Option<std::net::IpAddr>,
}

impl<R> Ruma<R> {
    /// The authenticated session; only `None` on endpoints without a required token.
    pub fn session(&self) -> Result<&Session> {
        self.session
            .as_ref()
            .ok_or_else(|| Error::missing_token("Missing access token"))
    }
    /// The caller, if authenticated (for endpoints where a token is optional).
    pub fn viewer(&self) -> Option<&ruma::UserId> {
        self.session.as_ref().map(|s| &*s.user_id)
    }
    pub fn user(&self) -> Result<&OwnedUserId> {
        Ok(&self.session()?.user_id)
    }
    pub fn device(&self) -> Result<&OwnedDeviceId> {
        Ok(&self.session()?.device_id)
    }
}

/// Extracts the access token from the `Authorization` header or the deprecated query parameter.
pub fn access_token(parts: &http::request::Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(http::header::AUTHORIZATION) {
        let h = h.to_str().ok()?;
        return h.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    let q = parts.uri.query()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "access_token").then(|| v.to_owned())
    })
}

/// How an endpoint's request body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// A JSON object (or nothing), bounded by `max_request_bytes`.
    Json,
    /// The raw bytes of a file (media uploads), bounded by `max_upload_bytes`
    /// and kept only in the parsed request.
    Upload,
}

impl BodyKind {
    fn limit(self, app: &App) -> usize {
        match self {
            BodyKind::Json => app.config.max_request_bytes,
            BodyKind::Upload => app.config.max_upload_bytes,
        }
    }
}

impl<R> Ruma<R>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthKind,
{
    /// Authenticates and parses a request whose body is of the given kind.
    pub async fn extract(req: Request, app: &App, kind: BodyKind) -> Result<Self> {
        let (mut parts, body) = req.into_parts();
        let client_ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let params = RawPathParams::from_request_parts(&mut parts, app)
            .await
            .map_err(|e| Error::invalid_param(e.to_string()))?;
        let mut args: Vec<String> = params.iter().map(|(_, v)| v.to_owned()).collect();
        // An empty trailing state key comes as a shorter path (see RouterExt).
        while args.len() < R::_path_parameters().len() {
            args.push(String::new());
        }

        // Who is asking comes before reading a body: nobody gets the server
        // to buffer a large upload without a valid token.
        let session = match (R::Authentication::RULE, access_token(&parts)) {
            (TokenRule::None, _) => None,
            (_, Some(token)) => Some(app.authenticate(&token).await?),
            (TokenRule::Optional, None) => None,
            (TokenRule::Required, None) => {
                return Err(Error::missing_token("Missing access token"));
            }
        };

        let limit = kind.limit(app);
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(n) = declared.filter(|n| *n > limit as u64) {
            // A client still sending its body when the connection closes
            // sees a broken pipe, not the 413: read (and drop) a bounded
            // overshoot first so that it gets the answer.
            if n <= DRAIN_BYTES {
                let drain = http_body_util::BodyExt::collect(body);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
            }
            return Err(Error::too_large(too_large_message(kind, limit)));
        }
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| Error::too_large(too_large_message(kind, limit)))?;

        if kind == BodyKind::Json
            && !bytes.is_empty()
            && parts.method != http::Method::GET
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err()
        {
            return Err(Error::not_json("Request body is not valid JSON"));
        }
        let http_req = http::Request::from_parts(parts, bytes.clone());
        // ruma's deserialisers can panic on some malformed bodies (a missing
        // `type` in /login): that is bad input, not a server fault.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            R::try_from_http_request(http_req, &args)
        }))
        .map_err(|_| Error::bad_json("Malformed request body"))?;
        let body = parsed.map_err(|e| Error::bad_json(e.to_string()))?;
        Ok(Ruma {
            body,
            session,
            client_ip,
            // An upload is in the parsed request already; no second copy.
            raw_body: match kind {
                BodyKind::Json => bytes,
                BodyKind::Upload => bytes::Bytes::new(),
            },
        })
    }
}

/// The largest refused body still read to its end before the 413 is sent.
const DRAIN_BYTES: u64 = 8 * 1024 * 1024;

fn too_large_message(kind: BodyKind, limit: usize) -> String {
    match kind {
        BodyKind::Json => "Request body too large".to_owned(),
        BodyKind::Upload => format!("Upload larger than this server's limit of {limit} bytes"),
    }
}

impl<R> FromRequest<App> for Ruma<R>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthKind,
{
    type Rejection = Error;

    async fn from_request(req: Request, app: &App) -> Result<Self> {
        Self::extract(req, app, BodyKind::Json).await
    }
}

/// A typed ruma response sent as HTTP.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(res) => res.map(|b| axum::body::Body::from(b.freeze())).into_response(),
            Err(e) => Error::Internal(format!("response serialisation: {e}")).into_response(),
        }
    }
}

pub trait RouterExt {
    /// Serves the ruma endpoint `R` at every path its metadata lists.
    fn ruma<R, F, Fut>(self, handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        R::OutgoingResponse: Send,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse>> + Send + 'static;

    /// Like [`ruma`](Self::ruma), for an endpoint whose body is an uploaded
    /// file: raw bytes bounded by `max_upload_bytes`. The handler may answer
    /// with a response type of its own (ruma's for the asynchronous upload
    /// cannot be built outside ruma).
    fn ruma_upload<R, F, Fut, O>(self, handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        O: OutgoingResponse + Send + 'static,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static;
}

impl RouterExt for Router<App> {
    fn ruma<R, F, Fut>(self, handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        R::OutgoingResponse: Send,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
    {
        route_ruma(self, BodyKind::Json, handler)
    }

    fn ruma_upload<R, F, Fut, O>(self, handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        O: OutgoingResponse + Send + 'static,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static,
    {
        route_ruma(self, BodyKind::Upload, handler)
    }
}

fn route_ruma<R, F, Fut, O>(mut router: Router<App>, kind: BodyKind, handler: F) -> Router<App>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthKind,
    O: OutgoingResponse + Send + 'static,
    F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<O>> + Send + 'static,
{
    let filter = MethodFilter::try_from(R::METHOD).expect("standard HTTP method");
    let mut paths: BTreeSet<String> = R::PATH_BUILDER.all_paths().map(str::to_owned).collect();
    // The router cannot match an empty segment, and clients send an
    // empty state key as `/state/{type}/` or `/state/{type}`.
    for p in paths.clone() {
        if let Some(prefix) = p.strip_suffix("/{state_key}") {
            paths.insert(prefix.to_owned());
            paths.insert(format!("{prefix}/"));
        }
    }
    for path in paths {
        let h = handler.clone();
        router = router.route(
            &path,
            on(filter, move |State(app): State<App>, req: Request| {
                let h = h.clone();
                async move {
                    let req = Ruma::<R>::extract(req, &app, kind).await?;
                    h(app, req).await.map(RumaResponse)
                }
            }),
        );
    }
    router
}
