//! Simplified sliding sync (MSC4186):
//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.

use ruma::api::client::sync::sync_events::v5;

use crate::{App, Result, ruma_wrapper::Ruma};

pub async fn sync(app: App, req: Ruma<v5::Request>) -> Result<v5::Response> {
    let session = req.session()?.clone();
    if app.config.presence {
        let state = req.body.set_presence.as_str();
        if state != "offline" {
            app.set_presence(&session.user_id, state, None).await;
        }
    }
    app.touch_device(&session, req.client_ip).await?;
    app.sliding_sync(&session, &req.body).await
}
