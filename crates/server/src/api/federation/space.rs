//! `GET /_matrix/federation/v1/hierarchy/{roomId}`: a space's rooms for
//! another server's users.

use axum::Router;
use ruma::api::federation::space::get_hierarchy;

use crate::{App, Result, ruma_wrapper::RouterExt, ruma_wrapper::Ruma};

pub fn routes(router: Router<App>) -> Router<App> {
    router.ruma::<get_hierarchy::v1::Request, _, _>(hierarchy)
}

async fn hierarchy(app: App, req: Ruma<get_hierarchy::v1::Request>) -> Result<get_hierarchy::v1::Response> {
    let origin = req.origin()?;
    app.federation_hierarchy(origin, &req.body.room_id, req.body.suggested_only)
        .await
}
