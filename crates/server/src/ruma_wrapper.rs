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
    OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName,
    api::{
        IncomingRequest, OutgoingResponse,
        auth_scheme::{
            AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken, NoAuthentication,
        },
        federation::authentication::{ServerSignatures, XMatrix},
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
    /// A request from another server, signed with `X-Matrix`.
    ServerSignatures,
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
impl AuthKind for ServerSignatures {
    const RULE: TokenRule = TokenRule::ServerSignatures;
}

/// A parsed request with who sent it.
pub struct Ruma<R> {
    pub body: R,
    pub session: Option<Session>,
    /// The raw JSON body, for the few endpoints that need fields ruma drops.
    pub raw_body: bytes::Bytes,
    /// The peer's address, for per-client rate limits.
    pub client_ip: Option<std::net::IpAddr>,
    /// The server that signed the request, on federation endpoints.
    pub origin: Option<OwnedServerName>,
    /// The request's URI, for the query parameters of older paths that
    /// ruma's request type does not read.
    pub uri: http::Uri,
    /// An upload's body, not read yet: the handler streams it to storage.
    pub upload: Option<axum::body::Body>,
    /// To be set by the handler once it read the upload to its end.
    pub upload_consumed: Option<crate::BodyConsumed>,
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
    /// A query parameter of the request, as sent.
    pub fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.uri.query()?.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The authenticated server on a federation endpoint.
    pub fn origin(&self) -> Result<&ServerName> {
        self.origin
            .as_deref()
            .ok_or_else(|| Error::unauthorized("Missing X-Matrix authorization"))
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
    /// The raw bytes of a file (media uploads), bounded by `max_upload_bytes`,
    /// handed to the handler unread ([`Ruma::upload`]).
    Upload,
}

/// The smallest bound on a federation request's JSON body: a transaction
/// may carry 50 PDUs and 100 EDUs, of up to 64 KiB each.
const FEDERATION_MIN_BODY_BYTES: usize = 10 * 1024 * 1024;

impl BodyKind {
    fn limit(self, app: &App, rule: TokenRule) -> usize {
        match (self, rule) {
            (BodyKind::Json, TokenRule::ServerSignatures) => {
                app.config.max_request_bytes.max(FEDERATION_MIN_BODY_BYTES)
            }
            (BodyKind::Json, _) => app.config.max_request_bytes,
            (BodyKind::Upload, _) => app.config.max_upload_bytes,
        }
    }
}

/// The `X-Matrix` header of a federation request, and the keys of the
/// server it names: 404 while federation is off, 401 when it is missing,
/// garbled, addressed elsewhere or its key cannot be had, 403 from a server
/// outside the allow-list.
async fn server_signature(
    app: &App,
    parts: &http::request::Parts,
) -> Result<(XMatrix, ruma::signatures::PublicKeyMap)> {
    if !app.federation_enabled() {
        return Err(Error::unrecognized("Federation is disabled on this server"));
    }
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| Error::unauthorized("Missing X-Matrix authorization"))?;
    let x =
        XMatrix::try_from(header).map_err(|e| Error::unauthorized(format!("Invalid X-Matrix authorization: {e}")))?;
    let keys = app.x_matrix_keys(&x).await?;
    Ok((x, keys))
}

impl<R> Ruma<R>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthKind,
{
    /// Authenticates and parses a request whose body is of the given kind.
    pub async fn extract(req: Request, app: &App, kind: BodyKind) -> Result<Self> {
        let (parts, body) = req.into_parts();
        let consumed = parts.extensions.get::<crate::BodyConsumed>().cloned();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let (result, body) = match Self::extract_parts(parts, body, app, kind, declared).await {
            Ok(r) => (Ok(r), BodyLeft::Read),
            Err((e, left)) => (Err(e), left),
        };
        let read = match body {
            BodyLeft::Read => true,
            BodyLeft::Dropped => false,
            // Refused before its body was read: a small body is read
            // anyway, so that the connection stays usable.
            BodyLeft::Unread(body) => {
                declared.is_some_and(|n| n <= EARLY_REFUSAL_DRAIN_BYTES)
                    && matches!(
                        tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            http_body_util::BodyExt::collect(body)
                        )
                        .await,
                        Ok(Ok(_))
                    )
            }
        };
        // An upload's body is read by its handler, which says when it was.
        if read
            && kind == BodyKind::Json
            && let Some(c) = &consumed
        {
            c.set();
        }
        result.map(|mut r| {
            if kind == BodyKind::Upload {
                r.upload_consumed = consumed;
            }
            r
        })
    }

    /// The work of [`extract`](Self::extract). On an error, the body if it
    /// was not read.
    async fn extract_parts(
        mut parts: http::request::Parts,
        body: axum::body::Body,
        app: &App,
        kind: BodyKind,
        declared: Option<u64>,
    ) -> std::result::Result<Self, (Error, BodyLeft)> {
        macro_rules! early {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((e, BodyLeft::Unread(body))),
                }
            };
        }
        macro_rules! late {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((e, BodyLeft::Read)),
                }
            };
        }
        let client_ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let params = early!(
            RawPathParams::from_request_parts(&mut parts, app)
                .await
                .map_err(|e| Error::invalid_param(e.to_string()))
        );
        // A file name is not an identifier: it may run past 255 bytes.
        let limited: Vec<bool> = params
            .iter()
            .map(|(k, _)| !k.to_ascii_lowercase().replace('_', "").contains("filename"))
            .collect();
        let mut args: Vec<String> = params.iter().map(|(_, v)| v.to_owned()).collect();
        // An empty trailing state key comes as a shorter path (see RouterExt);
        // an extra path's extra parameters are not the endpoint's.
        args.resize(R::_path_parameters().len(), String::new());
        // No identifier, type, key or token in a path or query holds NUL or
        // runs past the spec's limits: no store could keep it, and none is
        // asked of an engine.
        early!(check_path_and_query(&args, &limited, parts.uri.query()));

        // Who is asking comes before reading a body: nobody gets the server
        // to buffer a large upload without a valid token.
        let mut server_auth = None;
        let session = match (R::Authentication::RULE, access_token(&parts)) {
            (TokenRule::None, _) => None,
            (TokenRule::ServerSignatures, _) => {
                server_auth = Some(early!(server_signature(app, &parts).await));
                None
            }
            (_, Some(token)) => Some(early!(app.authenticate(&token).await)),
            (TokenRule::Optional, None) => None,
            (TokenRule::Required, None) => {
                return Err((Error::missing_token("Missing access token"), BodyLeft::Unread(body)));
            }
        };

        let requester = parts.extensions.get::<crate::access_log::Requester>().cloned();
        if let (Some(who), Some(s)) = (&requester, &session) {
            who.set(s.user_id.as_str());
        }
        if let Some(s) = &session
            && s.is_guest
        {
            let route = parts.extensions.get::<axum::extract::MatchedPath>().map(|p| p.as_str());
            if !route.is_some_and(|r| crate::api::client::guest::may(&parts.method, r)) {
                return Err((guest_forbidden(), BodyLeft::Unread(body)));
            }
        }

        let limit = kind.limit(app, R::Authentication::RULE);
        if let Some(n) = declared.filter(|n| *n > limit as u64) {
            // A client still sending its body when the connection closes
            // sees a broken pipe, not the 413: read (and drop) a bounded
            // overshoot first so that it gets the answer.
            let mut left = BodyLeft::Dropped;
            if n <= DRAIN_BYTES {
                let drain = http_body_util::BodyExt::collect(body);
                if let Ok(Ok(_)) = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await {
                    left = BodyLeft::Read;
                }
            }
            return Err((Error::too_large(too_large_message(kind, limit)), left));
        }
        // An upload goes to the handler unread, to be streamed to storage.
        let (bytes, upload) = match kind {
            BodyKind::Upload => (bytes::Bytes::new(), Some(body)),
            // A body that could not be read through (over the limit, or cut
            // off) leaves the connection unusable.
            BodyKind::Json => match axum::body::to_bytes(body, limit).await {
                Ok(b) => (b, None),
                Err(e) => return Err((body_error(&e, kind, limit), BodyLeft::Dropped)),
            },
        };

        if kind == BodyKind::Json
            && !bytes.is_empty()
            && parts.method != http::Method::GET
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err()
        {
            return Err((Error::not_json("Request body is not valid JSON"), BodyLeft::Read));
        }
        let uri = parts.uri.clone();
        let mut http_req = http::Request::from_parts(parts, bytes.clone());
        let origin = match server_auth {
            // Checked on the body as it was signed, before anything else.
            Some((x, keys)) => {
                late!(
                    x.verify_request(&http_req, &app.server_name, &keys)
                        .map_err(|e| Error::unauthorized(format!("Invalid X-Matrix signature: {e}")))
                );
                // Whatever it asks, a server that reaches us is up: what
                // waits for it goes now, not at its next retry.
                app.destination_seen(&x.origin).await;
                if let Some(who) = &requester {
                    who.set(x.origin.as_str());
                }
                Some(x.origin)
            }
            None => None,
        };
        // Clients omit the body of requests whose fields are all optional
        // (matrix-nio's join sends none): no body reads as `{}`, as the
        // reference server takes it. A required field still gets its error.
        let body_bytes = if kind == BodyKind::Json
            && bytes.is_empty()
            && origin.is_none()
            && matches!(http_req.method(), &http::Method::POST | &http::Method::PUT)
        {
            bytes::Bytes::from_static(b"{}")
        } else {
            bytes
        };
        *http_req.body_mut() = body_bytes.clone();
        let body = late!(parse_http_request::<R>(http_req, &args));
        Ok(Ruma {
            body,
            session,
            client_ip,
            origin,
            uri,
            raw_body: body_bytes,
            upload,
            upload_consumed: None,
        })
    }
}

/// `403 M_GUEST_ACCESS_FORBIDDEN`: not for guest accounts.
pub fn guest_forbidden() -> Error {
    Error::Matrix {
        status: http::StatusCode::FORBIDDEN,
        errcode: "M_GUEST_ACCESS_FORBIDDEN",
        message: "Guest access not allowed".into(),
        extra: None,
    }
}

/// What became of a request's body when its parsing failed.
enum BodyLeft {
    /// Read to its end.
    Read,
    /// Not read: the refusal came first.
    Unread(axum::body::Body),
    /// Partly read and dropped (too large to read through).
    Dropped,
}

/// The longest path parameter or query value (identifiers are at most 255
/// bytes; tokens and filters given in a query are longer).
const MAX_PATH_PARAM_BYTES: usize = 255;
const MAX_QUERY_VALUE_BYTES: usize = 8 * 1024;

/// Refuses path parameters and query values no store could keep: a NUL,
/// or past the length limits (`limited[i]` false exempts parameter `i`).
pub fn check_path_and_query(args: &[String], limited: &[bool], query: Option<&str>) -> Result<()> {
    for (i, a) in args.iter().enumerate() {
        if a.contains('\0') {
            return Err(Error::invalid_param("A path parameter holds a NUL character"));
        }
        if a.len() > MAX_PATH_PARAM_BYTES && limited.get(i).copied().unwrap_or(true) {
            return Err(Error::too_large("A path parameter is longer than 255 bytes"));
        }
    }
    for (_, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if v.contains('\0') {
            return Err(Error::invalid_param("A query parameter holds a NUL character"));
        }
        if v.len() > MAX_QUERY_VALUE_BYTES {
            return Err(Error::too_large("A query parameter is too long"));
        }
    }
    Ok(())
}

/// Parses a request, whose body was read, into the endpoint's ruma type.
/// Malformed input of any kind is a `400 M_BAD_JSON`: ruma's deserialisers
/// can panic on some malformed bodies (a missing `type` in /login), which
/// is bad input, not a server fault.
pub fn parse_http_request<R: IncomingRequest>(req: http::Request<bytes::Bytes>, path_args: &[String]) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        R::try_from_http_request(req, path_args)
    }))
    .map_err(|_| Error::bad_json("Malformed request body"))?
    .map_err(|e| Error::bad_json(e.to_string()))
}

/// The largest body read after a refusal that came before it was needed
/// (a bad token, say), to keep the connection open for the next request.
const EARLY_REFUSAL_DRAIN_BYTES: u64 = 64 * 1024;

/// The largest refused body still read to its end before the 413 is sent.
const DRAIN_BYTES: u64 = 8 * 1024 * 1024;

/// Why a body could not be read through: too large, too slow, or cut off.
pub(crate) fn body_error(e: &(dyn std::error::Error + 'static), kind: BodyKind, limit: usize) -> Error {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<crate::listener::BodyTimedOut>() {
            return Error::Matrix {
                status: http::StatusCode::REQUEST_TIMEOUT,
                errcode: "M_UNKNOWN",
                message: c.to_string(),
                extra: None,
            };
        }
        if c.is::<http_body_util::LengthLimitError>() {
            return Error::too_large(too_large_message(kind, limit));
        }
        cause = c.source();
    }
    Error::bad_json(format!("The request body could not be read: {e}"))
}

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

/// A JSON body of our own making, for answers ruma's types cannot give:
/// fields the reference server always sends that ruma leaves out when empty
/// or default, and shapes ruma has no type for.
pub struct JsonResponse(pub serde_json::Value);

impl OutgoingResponse for JsonResponse {
    fn try_into_http_response<T: Default + bytes::BufMut>(
        self,
    ) -> std::result::Result<http::Response<T>, ruma::api::error::IntoHttpError> {
        let mut body = T::default();
        body.put_slice(&serde_json::to_vec(&self.0)?);
        let mut res = http::Response::new(body);
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(res)
    }
}

impl JsonResponse {
    /// A ruma response as JSON, for `patch` to add what ruma leaves out.
    pub fn from_ruma<T: OutgoingResponse>(res: T, patch: impl FnOnce(&mut serde_json::Value)) -> Result<Self> {
        let http = res
            .try_into_http_response::<Vec<u8>>()
            .map_err(|e| Error::Internal(format!("response serialisation: {e}")))?;
        let mut value: serde_json::Value =
            serde_json::from_slice(http.body()).map_err(|e| Error::Internal(format!("response serialisation: {e}")))?;
        patch(&mut value);
        Ok(JsonResponse(value))
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

    /// Like [`ruma`](Self::ruma), for a handler that answers with a
    /// response of its own (usually [`JsonResponse`]).
    fn ruma_json<R, F, Fut, O>(self, handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        O: OutgoingResponse + Send + 'static,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static;

    /// Like [`ruma_json`](Self::ruma_json), also at paths ruma does not list
    /// (older or unstable paths clients still use). Their parameters come
    /// in the same order as the endpoint's; extra ones are ignored.
    fn ruma_also<R, F, Fut, O>(self, extra_paths: &[&str], handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        O: OutgoingResponse + Send + 'static,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static;

    /// Serves the request type `R` at other paths only, not its own: an
    /// older version of the endpoint that takes the same request and
    /// answers in another shape.
    fn ruma_at<R, F, Fut, O>(self, paths: &[&str], handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        O: OutgoingResponse + Send + 'static,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static;

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
        route_ruma(self, BodyKind::Json, &[], handler)
    }

    fn ruma_json<R, F, Fut, O>(self, handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        O: OutgoingResponse + Send + 'static,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static,
    {
        route_ruma(self, BodyKind::Json, &[], handler)
    }

    fn ruma_also<R, F, Fut, O>(self, extra_paths: &[&str], handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        O: OutgoingResponse + Send + 'static,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static,
    {
        route_ruma(self, BodyKind::Json, extra_paths, handler)
    }

    fn ruma_at<R, F, Fut, O>(self, paths: &[&str], handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        O: OutgoingResponse + Send + 'static,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static,
    {
        route_paths(
            self,
            BodyKind::Json,
            paths.iter().map(|p| (*p).to_owned()).collect(),
            handler,
        )
    }

    fn ruma_upload<R, F, Fut, O>(self, handler: F) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        O: OutgoingResponse + Send + 'static,
        F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static,
    {
        route_ruma(self, BodyKind::Upload, &[], handler)
    }
}

fn route_ruma<R, F, Fut, O>(router: Router<App>, kind: BodyKind, extra_paths: &[&str], handler: F) -> Router<App>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthKind,
    O: OutgoingResponse + Send + 'static,
    F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<O>> + Send + 'static,
{
    let mut paths: BTreeSet<String> = R::PATH_BUILDER.all_paths().map(str::to_owned).collect();
    paths.extend(extra_paths.iter().map(|p| (*p).to_owned()));
    route_paths(router, kind, paths, handler)
}

fn route_paths<R, F, Fut, O>(
    mut router: Router<App>,
    kind: BodyKind,
    mut paths: BTreeSet<String>,
    handler: F,
) -> Router<App>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthKind,
    O: OutgoingResponse + Send + 'static,
    F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<O>> + Send + 'static,
{
    let filter = MethodFilter::try_from(R::METHOD).expect("standard HTTP method");
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

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use ruma::{
        MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId,
        api::{
            OutgoingRequest,
            federation::{authentication::ServerSignaturesInput, transactions::send_transaction_message::v1 as send},
        },
        signatures::Ed25519KeyPair,
    };

    use super::*;

    /// A server whose federation is on (its listener is never started).
    async fn app(dir: &std::path::Path, allowed: Option<Vec<String>>) -> App {
        let mut config = crate::Config {
            server_name: "b.example".into(),
            data_dir: dir.to_owned(),
            ..Default::default()
        };
        config.federation.listen = Some("127.0.0.1:0".parse().unwrap());
        config.federation.tls_cert = Some("unused.pem".into());
        config.federation.tls_key = Some("unused.pem".into());
        config.federation.allowed_servers = allowed;
        let store = missive_store::Store::open(&dir.join("missive.db")).unwrap();
        App::new(config, store).await.unwrap()
    }

    /// A transaction from `origin` to `destination`, signed with `key`.
    fn signed(origin: &str, destination: &str, key: &Ed25519KeyPair) -> http::Request<Vec<u8>> {
        let origin = OwnedServerName::try_from(origin).unwrap();
        let req = send::Request::new(
            OwnedTransactionId::from("txn1"),
            origin.clone(),
            MilliSecondsSinceUnixEpoch::now(),
        );
        let input = ServerSignaturesInput::new(origin, destination.try_into().unwrap(), key);
        let mut req = req
            .try_into_http_request::<Vec<u8>>("https://b.example:8448", input, ())
            .unwrap();
        // As the server receives it: a path, not an absolute URI.
        *req.uri_mut() = req.uri().path_and_query().unwrap().as_str().parse().unwrap();
        req
    }

    /// The status of the request through the extractor, and the origin it found.
    async fn status(app: &App, req: http::Request<Vec<u8>>) -> StatusCode {
        // Routed as the router would: the path parameter comes from the match.
        let router = Router::<App>::new().route(
            "/_matrix/federation/v1/send/{txn}",
            axum::routing::put(|State(app): State<App>, req: Request| async move {
                match Ruma::<send::Request>::extract(req, &app, BodyKind::Json).await {
                    Ok(r) => r.origin().map(|o| o.to_string()).into_response(),
                    Err(e) => e.into_response(),
                }
            }),
        );
        let resp = tower::Service::call(&mut router.with_state(app.clone()), req.map(axum::body::Body::from))
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        if status == StatusCode::OK {
            assert_eq!(&body[..], b"b.example");
        }
        status
    }

    #[tokio::test]
    async fn x_matrix_signatures_are_checked() {
        let dir = std::env::temp_dir().join(format!(
            "missive-xmatrix-{}",
            crate::services::accounts::random_string(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // Signed by the server itself: its key needs no fetch.
        let app = app(&dir, Some(vec!["a.example".into()])).await;
        assert_eq!(
            status(&app, signed("b.example", "b.example", &app.key)).await,
            StatusCode::OK
        );

        // The body changed after signing.
        let mut tampered = signed("b.example", "b.example", &app.key);
        let body = String::from_utf8(tampered.body().clone())
            .unwrap()
            .replace("\"pdus\"", "\"pdus\" ");
        *tampered.body_mut() = format!("{{\"edus\":[],{}", &body[1..]).into_bytes();
        assert_eq!(status(&app, tampered).await, StatusCode::UNAUTHORIZED);

        // No header, or one addressed to another server.
        let mut unsigned = signed("b.example", "b.example", &app.key);
        unsigned.headers_mut().remove(http::header::AUTHORIZATION);
        assert_eq!(status(&app, unsigned).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(&app, signed("b.example", "c.example", &app.key)).await,
            StatusCode::UNAUTHORIZED
        );

        // A server outside the allow-list, before any key is fetched.
        let other = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "x".into()).unwrap();
        assert_eq!(
            status(&app, signed("evil.example", "b.example", &other)).await,
            StatusCode::FORBIDDEN
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn federation_endpoints_are_unknown_while_federation_is_off() {
        let dir = std::env::temp_dir().join(format!(
            "missive-xmatrix-{}",
            crate::services::accounts::random_string(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = crate::Config {
            server_name: "b.example".into(),
            data_dir: dir.clone(),
            ..Default::default()
        };
        let store = missive_store::Store::open(&dir.join("missive.db")).unwrap();
        let app = App::new(config, store).await.unwrap();
        assert_eq!(
            status(&app, signed("b.example", "b.example", &app.key)).await,
            StatusCode::NOT_FOUND
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
