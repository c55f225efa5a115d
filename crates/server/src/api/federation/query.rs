//! Queries from other servers: profiles, room aliases, the public room
//! directory, users' devices and end-to-end encryption keys, and who an
//! OpenID token stands for.

use axum::Router;
use ruma::api::federation::{
    device::get_devices,
    directory::{get_public_rooms, get_public_rooms_filtered},
    keys::{claim_keys, get_keys},
    openid::get_openid_userinfo,
    query::{get_profile_information, get_room_information},
};

use crate::{
    App, Result,
    ruma_wrapper::{RouterExt, Ruma},
    services::directory::PublicRoomsPage,
};

pub fn routes(router: Router<App>) -> Router<App> {
    router
        .ruma::<get_profile_information::v1::Request, _, _>(profile)
        .ruma::<get_room_information::v1::Request, _, _>(directory)
        .ruma::<get_devices::v1::Request, _, _>(user_devices)
        .ruma::<get_keys::v1::Request, _, _>(keys_query)
        .ruma::<claim_keys::v1::Request, _, _>(keys_claim)
        .ruma::<get_public_rooms::v1::Request, _, _>(public_rooms)
        .ruma::<get_public_rooms_filtered::v1::Request, _, _>(public_rooms_filtered)
        .ruma::<get_openid_userinfo::v1::Request, _, _>(openid_userinfo)
}

/// Unauthenticated by design: the token is the credential, and the asker
/// is usually not a homeserver.
async fn openid_userinfo(
    app: App,
    req: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<get_openid_userinfo::v1::Response> {
    if !app.federation_enabled() {
        return Err(crate::Error::unrecognized("Federation is not enabled on this server"));
    }
    Ok(get_openid_userinfo::v1::Response::new(
        app.openid_userinfo(&req.body.access_token).await?,
    ))
}

async fn profile(
    app: App,
    req: Ruma<get_profile_information::v1::Request>,
) -> Result<get_profile_information::v1::Response> {
    req.origin()?;
    let field = req.body.field.as_ref().map(|f| f.as_str());
    let fields = app.federation_profile(&req.body.user_id, field).await?;
    Ok(fields.into_iter().collect())
}

async fn directory(
    app: App,
    req: Ruma<get_room_information::v1::Request>,
) -> Result<get_room_information::v1::Response> {
    req.origin()?;
    let (room_id, servers) = app.federation_alias(&req.body.room_alias).await?;
    Ok(get_room_information::v1::Response::new(room_id, servers))
}

async fn user_devices(app: App, req: Ruma<get_devices::v1::Request>) -> Result<get_devices::v1::Response> {
    req.origin()?;
    app.federation_user_devices(&req.body.user_id).await
}

/// Only local users are answered for; the others are left out.
async fn keys_query(app: App, req: Ruma<get_keys::v1::Request>) -> Result<get_keys::v1::Response> {
    req.origin()?;
    let keys = app.local_keys(None, &req.body.device_keys).await?;
    let mut resp = get_keys::v1::Response::new(keys.device_keys);
    resp.master_keys = keys.master_keys;
    resp.self_signing_keys = keys.self_signing_keys;
    Ok(resp)
}

async fn keys_claim(app: App, req: Ruma<claim_keys::v1::Request>) -> Result<claim_keys::v1::Response> {
    req.origin()?;
    let keys = app.claim_local_keys(&req.body.one_time_keys).await?;
    Ok(claim_keys::v1::Response::new(keys))
}

fn total(page: &PublicRoomsPage) -> Option<ruma::UInt> {
    ruma::UInt::try_from(page.total as u64).ok()
}

async fn public_rooms(app: App, req: Ruma<get_public_rooms::v1::Request>) -> Result<get_public_rooms::v1::Response> {
    req.origin()?;
    let b = &req.body;
    let page = app
        .public_rooms(&Default::default(), &b.room_network, b.limit, b.since.as_deref())
        .await?;
    let mut resp = get_public_rooms::v1::Response::new();
    resp.total_room_count_estimate = total(&page);
    resp.chunk = page.chunk;
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    Ok(resp)
}

async fn public_rooms_filtered(
    app: App,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response> {
    req.origin()?;
    let b = &req.body;
    let page = app
        .public_rooms(&b.filter, &b.room_network, b.limit, b.since.as_deref())
        .await?;
    let mut resp = get_public_rooms_filtered::v1::Response::new();
    resp.total_room_count_estimate = total(&page);
    resp.chunk = page.chunk;
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    Ok(resp)
}
