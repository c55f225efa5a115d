//! The user directory and the public room directory.

use ruma::api::client::{
    directory::{get_public_rooms, get_public_rooms_filtered},
    user_directory::search_users,
};

use crate::{App, Result, ruma_wrapper::Ruma, services::directory::PublicRoomsPage};

pub async fn search_users(app: App, req: Ruma<search_users::v3::Request>) -> Result<search_users::v3::Response> {
    let user = req.user()?.clone();
    let limit = u64::from(req.body.limit) as usize;
    let (results, limited) = app.search_user_directory(&user, &req.body.search_term, limit).await?;
    Ok(search_users::v3::Response::new(results, limited))
}

/// This server's directory, or another server's asked over federation.
async fn page(
    app: &App,
    server: Option<&ruma::ServerName>,
    filter: &ruma::directory::Filter,
    network: &ruma::directory::RoomNetwork,
    limit: Option<ruma::UInt>,
    since: Option<&str>,
) -> Result<PublicRoomsPage> {
    match server {
        Some(s) if s != app.server_name => app.remote_public_rooms(s, filter, network, limit, since).await,
        _ => app.public_rooms(filter, network, limit, since).await,
    }
}

fn total(page: &PublicRoomsPage) -> Option<ruma::UInt> {
    ruma::UInt::try_from(page.total as u64).ok()
}

pub async fn public_rooms(
    app: App,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let r = &req.body;
    let page = page(
        &app,
        r.server.as_deref(),
        &Default::default(),
        &Default::default(),
        r.limit,
        r.since.as_deref(),
    )
    .await?;
    let mut resp = get_public_rooms::v3::Response::new(vec![]);
    resp.total_room_count_estimate = total(&page);
    resp.chunk = page.chunk;
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    Ok(resp)
}

pub async fn public_rooms_filtered(
    app: App,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let r = &req.body;
    let page = page(
        &app,
        r.server.as_deref(),
        &r.filter,
        &r.room_network,
        r.limit,
        r.since.as_deref(),
    )
    .await?;
    let mut resp = get_public_rooms_filtered::v3::Response::new();
    resp.total_room_count_estimate = total(&page);
    resp.chunk = page.chunk;
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    Ok(resp)
}
