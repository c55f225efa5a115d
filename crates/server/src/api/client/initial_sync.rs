//! `GET /rooms/{roomId}/initialSync`: a snapshot of one room.

use ruma::api::client::peeking::get_current_state;

use crate::{App, Result, ruma_wrapper::Ruma};

pub async fn room_initial_sync(
    app: App,
    req: Ruma<get_current_state::v3::Request>,
) -> Result<get_current_state::v3::Response> {
    let session = req.session()?.clone();
    app.room_initial_sync(&session, &req.body.room_id).await
}
