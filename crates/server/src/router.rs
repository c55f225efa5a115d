//! Every endpoint the server answers, the Matrix errors for the ones it
//! does not (`404`/`405 M_UNRECOGNIZED`), and CORS for browser clients.

use axum::{
    Router,
    extract::Request,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http::{HeaderValue, Method, StatusCode, header};
use ruma::api::client::{
    account, alias, backup, config, context, dehydrated_device, device, directory, discovery, filter, keys, membership,
    message, presence, profile, read_marker, receipt, redact, relations, room, session, state, sync::sync_events, tag,
    thirdparty, threads, to_device, typing,
};

use crate::{App, Error, api::client as c, ruma_wrapper::RouterExt};

/// The client listener's routes: the client API, and the server-server
/// API only when `[federation] on_client_listener` says so.
pub fn router(app: App) -> Router {
    let federation = app.config.federation.on_client_listener;
    routes(app, federation)
}

/// The federation listener's routes: the server-server API, and the
/// client API as well (one TLS port can serve both, as clients may use it).
pub fn federation_router(app: App) -> Router {
    routes(app, true)
}

fn routes(app: App, federation: bool) -> Router {
    let server_api = if federation {
        crate::api::federation::routes(Router::new())
    } else {
        // Where to find the federation listener is asked of the client
        // port (the server name's web server): that one document stays.
        crate::api::federation::discovery::well_known_routes(Router::new())
    };
    Router::new()
        // Discovery
        .ruma::<discovery::get_supported_versions::Request, _, _>(c::discovery::versions)
        .ruma::<discovery::discover_homeserver::Request, _, _>(c::discovery::well_known)
        .ruma_json::<discovery::discover_support::Request, _, _, _>(c::discovery::support)
        .ruma_json::<discovery::get_capabilities::v3::Request, _, _, _>(c::discovery::capabilities)
        // Accounts and sessions
        .ruma::<account::register::v3::Request, _, _>(c::register::register)
        .ruma::<account::get_username_availability::v3::Request, _, _>(c::register::available)
        .ruma::<account::check_registration_token_validity::v1::Request, _, _>(c::register::token_validity)
        .ruma::<session::get_login_types::v3::Request, _, _>(c::session::login_types)
        .ruma::<session::login::v3::Request, _, _>(c::session::login)
        .ruma::<session::get_login_token::v1::Request, _, _>(c::session::get_login_token)
        .ruma::<session::logout::v3::Request, _, _>(c::session::logout)
        .ruma::<session::logout_all::v3::Request, _, _>(c::session::logout_all)
        .ruma::<session::refresh_token::v3::Request, _, _>(c::session::refresh)
        .ruma::<account::whoami::v3::Request, _, _>(c::account::whoami)
        .ruma::<account::request_openid_token::v3::Request, _, _>(c::account::openid_token)
        .ruma::<account::change_password::v3::Request, _, _>(c::account::change_password)
        .ruma::<account::deactivate::v3::Request, _, _>(c::account::deactivate)
        .ruma_json::<account::get_3pids::v3::Request, _, _, _>(c::account::threepids)
        .ruma_also::<ruma::api::client::admin::get_user_info::v3::Request, _, _, _>(
            &[
                "/_matrix/client/api/v1/admin/whois/{user_id}",
                "/_matrix/client/v1/admin/whois/{user_id}",
            ],
            c::account::whois,
        )
        .ruma::<device::get_devices::v3::Request, _, _>(c::device::get_devices)
        .ruma::<device::get_device::v3::Request, _, _>(c::device::get_device)
        .ruma::<device::update_device::v3::Request, _, _>(c::device::update_device)
        .ruma::<device::delete_device::v3::Request, _, _>(c::device::delete_device)
        .ruma::<device::delete_devices::v3::Request, _, _>(c::device::delete_devices)
        .merge(
            // Readable without a token; a token that is sent must be valid.
            Router::new()
                .ruma::<profile::get_profile::v3::Request, _, _>(c::profile::get_profile)
                .ruma::<profile::get_display_name::v3::Request, _, _>(c::profile::get_displayname)
                .ruma::<profile::get_avatar_url::v3::Request, _, _>(c::profile::get_avatar_url)
                .ruma::<profile::get_profile_field::v3::Request, _, _>(c::profile::get_field)
                .route_layer(middleware::from_fn_with_state(app.clone(), valid_token_if_any)),
        )
        .ruma::<profile::set_display_name::v3::Request, _, _>(c::profile::set_displayname)
        .ruma::<profile::set_avatar_url::v3::Request, _, _>(c::profile::set_avatar_url)
        .ruma::<profile::set_profile_field::v3::Request, _, _>(c::profile::set_field)
        .ruma::<profile::delete_profile_field::v3::Request, _, _>(c::profile::delete_field)
        // Rooms
        .ruma::<room::create_room::v3::Request, _, _>(c::room::create_room)
        .ruma::<room::upgrade_room::v3::Request, _, _>(c::room::upgrade_room)
        .ruma::<room::get_summary::v1::Request, _, _>(c::room::summary)
        .ruma::<directory::get_room_visibility::v3::Request, _, _>(c::room::get_visibility)
        .ruma::<directory::set_room_visibility::v3::Request, _, _>(c::room::set_visibility)
        .ruma::<membership::join_room_by_id::v3::Request, _, _>(c::membership::join_by_id)
        .ruma::<membership::join_room_by_id_or_alias::v3::Request, _, _>(c::membership::join_by_id_or_alias)
        .ruma::<ruma::api::client::knock::knock_room::v3::Request, _, _>(c::membership::knock)
        .ruma::<membership::invite_user::v3::Request, _, _>(c::membership::invite)
        .ruma::<membership::leave_room::v3::Request, _, _>(c::membership::leave)
        .ruma::<membership::forget_room::v3::Request, _, _>(c::membership::forget)
        .ruma::<membership::kick_user::v3::Request, _, _>(c::membership::kick)
        .ruma::<membership::ban_user::v3::Request, _, _>(c::membership::ban)
        .ruma::<membership::unban_user::v3::Request, _, _>(c::membership::unban)
        .ruma::<membership::joined_rooms::v3::Request, _, _>(c::membership::joined_rooms)
        .ruma::<membership::get_member_events::v3::Request, _, _>(c::membership::members)
        .ruma_json::<membership::joined_members::v3::Request, _, _, _>(c::membership::joined_members)
        .ruma_also::<membership::mutual_rooms::unstable::Request, _, _, _>(
            &["/_matrix/client/v1/mutual_rooms"],
            c::membership::mutual_rooms,
        )
        .ruma::<state::get_state_events::v3::Request, _, _>(c::state::get_state)
        .ruma::<state::get_state_event_for_key::v3::Request, _, _>(c::state::get_state_for_key)
        .ruma::<state::send_state_event::v3::Request, _, _>(c::state::send_state)
        .ruma::<alias::create_alias::v3::Request, _, _>(c::alias::create)
        .ruma::<alias::get_alias::v3::Request, _, _>(c::alias::get)
        .ruma::<alias::delete_alias::v3::Request, _, _>(c::alias::delete)
        .ruma::<room::aliases::v3::Request, _, _>(c::alias::list)
        // Directories, search, reporting, room snapshots and spaces
        .ruma::<ruma::api::client::user_directory::search_users::v3::Request, _, _>(c::directory::search_users)
        .ruma::<directory::get_public_rooms::v3::Request, _, _>(c::directory::public_rooms)
        .ruma::<directory::get_public_rooms_filtered::v3::Request, _, _>(c::directory::public_rooms_filtered)
        .ruma::<ruma::api::client::search::search_events::v3::Request, _, _>(c::search::search)
        .ruma::<room::report_content::v3::Request, _, _>(c::reporting::report_event)
        .ruma::<room::report_room::v3::Request, _, _>(c::reporting::report_room)
        .ruma::<ruma::api::client::reporting::report_user::v3::Request, _, _>(c::reporting::report_user)
        .ruma::<ruma::api::client::peeking::get_current_state::v3::Request, _, _>(c::initial_sync::room_initial_sync)
        .route(c::events::PATHS[0], axum::routing::get(c::events::events))
        .route(c::events::PATHS[1], axum::routing::get(c::events::events))
        .ruma::<ruma::api::client::space::get_hierarchy::v1::Request, _, _>(c::space::hierarchy)
        // Events
        .ruma::<message::send_message_event::v3::Request, _, _>(c::message::send)
        .ruma::<redact::redact_event::v3::Request, _, _>(c::message::redact)
        .ruma::<room::get_room_event::v3::Request, _, _>(c::message::get_event)
        .ruma::<message::get_message_events::v3::Request, _, _>(c::message::messages)
        .ruma::<context::get_context::v3::Request, _, _>(c::message::context)
        .ruma::<room::get_event_by_timestamp::v1::Request, _, _>(c::message::timestamp_to_event)
        .ruma::<relations::get_relating_events::v1::Request, _, _>(c::relations::relating)
        .ruma::<relations::get_relating_events_with_rel_type::v1::Request, _, _>(c::relations::relating_with_type)
        .ruma::<relations::get_relating_events_with_rel_type_and_event_type::v1::Request, _, _>(
            c::relations::relating_with_type_and_event,
        )
        .merge(
            Router::new()
                .ruma::<threads::get_threads::v1::Request, _, _>(c::relations::threads)
                .layer(middleware::map_request(default_threads_include)),
        )
        // Sync and per-user data
        .ruma_json::<sync_events::v3::Request, _, _, _>(c::sync::sync)
        .ruma::<sync_events::v5::Request, _, _>(c::sliding_sync::sync)
        .ruma::<filter::create_filter::v3::Request, _, _>(c::sync::create)
        .ruma::<filter::get_filter::v3::Request, _, _>(c::sync::get)
        .ruma::<config::set_global_account_data::v3::Request, _, _>(c::account_data::set_global)
        .ruma::<config::get_global_account_data::v3::Request, _, _>(c::account_data::get_global)
        .ruma::<config::set_room_account_data::v3::Request, _, _>(c::account_data::set_room)
        .ruma::<config::get_room_account_data::v3::Request, _, _>(c::account_data::get_room)
        .ruma::<tag::get_tags::v3::Request, _, _>(c::account_data::get_tags)
        .ruma::<tag::create_tag::v3::Request, _, _>(c::account_data::create_tag)
        .ruma::<tag::delete_tag::v3::Request, _, _>(c::account_data::delete_tag)
        .merge(
            Router::new()
                .ruma::<typing::create_typing_event::v3::Request, _, _>(c::typing::typing)
                .layer(middleware::from_fn(default_typing_timeout)),
        )
        .ruma::<receipt::create_receipt::v3::Request, _, _>(c::receipt::create)
        .ruma::<read_marker::set_read_marker::v3::Request, _, _>(c::receipt::read_markers)
        .ruma::<presence::set_presence::v3::Request, _, _>(c::presence::set)
        .ruma::<presence::get_presence::v3::Request, _, _>(c::presence::get)
        .ruma::<thirdparty::get_protocols::v3::Request, _, _>(c::thirdparty::protocols)
        .ruma::<thirdparty::get_protocol::v3::Request, _, _>(c::thirdparty::protocol)
        .ruma::<thirdparty::get_location_for_protocol::v3::Request, _, _>(c::thirdparty::locations_for_protocol)
        .ruma::<thirdparty::get_user_for_protocol::v3::Request, _, _>(c::thirdparty::users_for_protocol)
        .ruma::<thirdparty::get_location_for_room_alias::v3::Request, _, _>(c::thirdparty::locations_for_alias)
        .ruma::<thirdparty::get_user_for_user_id::v3::Request, _, _>(c::thirdparty::users_for_user_id)
        .ruma_json::<ruma::api::client::voip::get_turn_server_info::v3::Request, _, _, _>(c::voip::turn_server)
        // Push rules, pushers and notifications
        .merge(
            Router::new()
                .ruma::<ruma::api::client::push::get_pushrules_all::v3::Request, _, _>(c::push::get_rules)
                .ruma::<ruma::api::client::push::get_pushrules_global_scope::v3::Request, _, _>(
                    c::push::get_global_rules,
                )
                .ruma::<ruma::api::client::push::get_pushrule::v3::Request, _, _>(c::push::get_rule)
                .ruma::<ruma::api::client::push::set_pushrule::v3::Request, _, _>(c::push::set_rule)
                .ruma::<ruma::api::client::push::delete_pushrule::v3::Request, _, _>(c::push::delete_rule)
                .ruma::<ruma::api::client::push::get_pushrule_enabled::v3::Request, _, _>(c::push::get_enabled)
                .ruma::<ruma::api::client::push::set_pushrule_enabled::v3::Request, _, _>(c::push::set_enabled)
                .ruma::<ruma::api::client::push::get_pushrule_actions::v3::Request, _, _>(c::push::get_actions)
                .ruma::<ruma::api::client::push::set_pushrule_actions::v3::Request, _, _>(c::push::set_actions)
                .ruma::<ruma::api::client::push::get_pushers::v3::Request, _, _>(c::push::get_pushers)
                .ruma::<ruma::api::client::push::set_pusher::v3::Request, _, _>(c::push::set_pusher)
                .ruma::<ruma::api::client::push::get_notifications::v3::Request, _, _>(c::push::notifications)
                .merge(push_kind_lists())
                // What no push route matched still goes through the check.
                .route(
                    "/_matrix/client/{version}/pushrules/{*rest}",
                    axum::routing::any(unrecognized),
                )
                .layer(middleware::from_fn(c::push::check_rule_kind)),
        )
        // Content repository
        .merge(media_routes())
        // End-to-end encryption
        .ruma::<keys::upload_keys::v3::Request, _, _>(c::keys::upload)
        .ruma::<keys::get_keys::v3::Request, _, _>(c::keys::query)
        .ruma::<keys::claim_keys::v3::Request, _, _>(c::keys::claim)
        .ruma::<keys::get_key_changes::v3::Request, _, _>(c::keys::changes)
        .ruma::<keys::upload_signing_keys::v3::Request, _, _>(c::keys::upload_signing)
        .ruma::<keys::upload_signatures::v3::Request, _, _>(c::keys::upload_signatures)
        .ruma::<to_device::send_event_to_device::v3::Request, _, _>(c::to_device::send)
        // MSC3814 dehydrated devices
        .ruma::<dehydrated_device::put_dehydrated_device::unstable::Request, _, _>(c::dehydrated_device::put)
        .ruma::<dehydrated_device::get_dehydrated_device::unstable::Request, _, _>(c::dehydrated_device::get)
        .ruma::<dehydrated_device::delete_dehydrated_device::unstable::Request, _, _>(c::dehydrated_device::delete)
        .ruma::<dehydrated_device::get_events::unstable::Request, _, _>(c::dehydrated_device::events)
        // Server-side key backup
        .ruma::<backup::create_backup_version::v3::Request, _, _>(c::backup::create_version)
        .ruma::<backup::get_latest_backup_info::v3::Request, _, _>(c::backup::latest_version)
        .ruma::<backup::get_backup_info::v3::Request, _, _>(c::backup::get_version)
        .ruma::<backup::update_backup_version::v3::Request, _, _>(c::backup::update_version)
        .ruma::<backup::delete_backup_version::v3::Request, _, _>(c::backup::delete_version)
        .ruma::<backup::add_backup_keys::v3::Request, _, _>(c::backup::put_keys)
        .ruma::<backup::add_backup_keys_for_room::v3::Request, _, _>(c::backup::put_room_keys)
        .ruma::<backup::add_backup_keys_for_session::v3::Request, _, _>(c::backup::put_session_key)
        .ruma::<backup::get_backup_keys::v3::Request, _, _>(c::backup::get_keys)
        .ruma::<backup::get_backup_keys_for_room::v3::Request, _, _>(c::backup::get_room_keys)
        .ruma::<backup::get_backup_keys_for_session::v3::Request, _, _>(c::backup::get_session_key)
        .ruma::<backup::delete_backup_keys::v3::Request, _, _>(c::backup::delete_keys)
        .ruma::<backup::delete_backup_keys_for_room::v3::Request, _, _>(c::backup::delete_room_keys)
        .ruma::<backup::delete_backup_keys_for_session::v3::Request, _, _>(c::backup::delete_session_key)
        .merge(server_api)
        .fallback(unrecognized)
        .layer(middleware::from_fn(matrix_edges))
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn(crate::access_log::access_log))
        .with_state(app)
}

/// `GET /pushrules/global/{kind}/` for each kind of rule.
fn push_kind_lists() -> Router<App> {
    let mut router = Router::new();
    for kind in c::push::KINDS {
        let paths = c::push::kind_list_paths(kind);
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        router = router.ruma_at::<ruma::api::client::push::get_pushrules_global_scope::v3::Request, _, _, _>(
            &paths,
            move |app, req| c::push::get_kind_rules(app, req, kind),
        );
    }
    router
}

/// The content repository, with its security headers on every response.
#[allow(deprecated)] // the unauthenticated `/_matrix/media/v3` downloads are deprecated, and still routed
fn media_routes() -> Router<App> {
    use ruma::api::client::{authenticated_media as authed_media, media};
    Router::new()
        .ruma_upload::<media::create_content::v3::Request, _, _, _>(c::media::upload)
        .ruma::<media::create_mxc_uri::v1::Request, _, _>(c::media::create)
        .ruma_upload::<media::create_content_async::v3::Request, _, _, _>(c::media::upload_async)
        .ruma::<authed_media::get_media_config::v1::Request, _, _>(c::media::config)
        .ruma::<authed_media::get_content::v1::Request, _, _>(c::media::download)
        .ruma::<authed_media::get_content_as_filename::v1::Request, _, _>(c::media::download_as)
        .ruma::<authed_media::get_content_thumbnail::v1::Request, _, _>(c::media::thumbnail)
        .ruma::<authed_media::get_media_preview::v1::Request, _, _>(c::media::preview_url)
        .ruma::<media::get_media_config::v3::Request, _, _>(c::media::legacy_config)
        .ruma::<media::get_content::v3::Request, _, _>(c::media::legacy_download)
        .ruma::<media::get_content_as_filename::v3::Request, _, _>(c::media::legacy_download_as)
        .ruma::<media::get_content_thumbnail::v3::Request, _, _>(c::media::legacy_thumbnail)
        .ruma::<media::get_media_preview::v3::Request, _, _>(c::media::legacy_preview_url)
        .layer(middleware::map_response(c::media::security_headers))
}

/// `include` is optional in the spec (default `all`) but ruma 0.16's
/// request type requires it; supply the default so clients that omit it work.
async fn default_threads_include(mut req: Request) -> Request {
    let uri = req.uri();
    let query = uri.query().unwrap_or("");
    if !query.split('&').any(|kv| kv.starts_with("include=")) {
        let joined = if query.is_empty() {
            "include=all".to_owned()
        } else {
            format!("{query}&include=all")
        };
        if let Ok(new) = format!("{}?{joined}", uri.path()).parse() {
            *req.uri_mut() = new;
        }
    }
    req
}

/// `{"typing": true}` without a `timeout` gets the default one. Typing
/// bodies are a few bytes: a larger one is refused here (413), before the
/// extractor sees it.
async fn default_typing_timeout(req: Request, next: Next) -> Response {
    const SMALL: usize = 4096;
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, SMALL).await {
        Ok(b) => b,
        Err(_) => return Error::too_large("Request body too large").into_response(),
    };
    let patched = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut o))
            if o.get("typing") == Some(&serde_json::Value::Bool(true)) && !o.contains_key("timeout") =>
        {
            o.insert("timeout".into(), c::typing::DEFAULT_TIMEOUT_MS.into());
            serde_json::to_vec(&o).map(bytes::Bytes::from).unwrap_or(bytes)
        }
        _ => bytes,
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(patched)))
        .await
}

/// On an endpoint open to anyone, a request that does send an access token
/// is refused when the token is not valid (logged out, expired): a client
/// learns at once that its session is gone, as from the reference server.
async fn valid_token_if_any(
    axum::extract::State(app): axum::extract::State<App>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(token) = crate::ruma_wrapper::access_token(&parts)
        && let Err(e) = app.authenticate(&token).await
    {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// A panic in a handler becomes a Matrix 500, not a dropped connection.
async fn catch_panic(req: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(res) => res,
        Err(_) => Error::Internal("handler panicked".into()).into_response(),
    }
}

/// `404 M_UNRECOGNIZED` for what no route serves. A small body is read
/// first, so that the client may go on using the connection.
async fn unrecognized(req: Request) -> Response {
    let consumed = req.extensions().get::<BodyConsumed>().cloned();
    let small = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= 64 * 1024);
    if small {
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            axum::body::to_bytes(req.into_body(), 64 * 1024),
        )
        .await;
        if let (Ok(Ok(_)), Some(c)) = (read, consumed) {
            c.set();
        }
    }
    Error::unrecognized("Unrecognized request").into_response()
}

/// Whether a request comes with a body to read.
fn request_has_body(req: &Request) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// Set once a handler has read the request's body to its end.
#[derive(Clone, Default)]
pub struct BodyConsumed(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl BodyConsumed {
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// CORS for browser clients, and Matrix error bodies for requests the
/// router itself refuses (wrong method, or a body axum rejected).
async fn matrix_edges(mut req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let has_body = request_has_body(&req);
    let consumed = BodyConsumed::default();
    req.extensions_mut().insert(consumed.clone());
    let mut res = if preflight {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    // A body left unread (a refusal before it was needed, an unknown
    // endpoint) makes hyper close the connection after answering, which a
    // client reusing the connection meets as a dropped request: say so.
    if has_body && !consumed.get() {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if res.status() == StatusCode::METHOD_NOT_ALLOWED && res.headers().get(header::CONTENT_TYPE).is_none() {
        res = Error::unrecognized_method().into_response();
    }
    let h = res.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    res
}
