//! The space hierarchy: `GET /rooms/{roomId}/hierarchy`.

use ruma::api::client::space::get_hierarchy;

use crate::{App, Result, ruma_wrapper::Ruma, services::hierarchy::HierarchyRequest};

pub async fn hierarchy(app: App, req: Ruma<get_hierarchy::v1::Request>) -> Result<get_hierarchy::v1::Response> {
    let user = req.user()?.clone();
    let r = &req.body;
    let (rooms, next_batch) = app
        .space_hierarchy(
            &user,
            &r.room_id,
            HierarchyRequest {
                from: r.from.as_deref(),
                limit: r.limit.map(u64::from),
                max_depth: r.max_depth.map(u64::from),
                suggested_only: r.suggested_only,
            },
        )
        .await?;
    let mut resp = get_hierarchy::v1::Response::new();
    resp.rooms = rooms;
    resp.next_batch = next_batch;
    Ok(resp)
}
