//! Send-to-device messaging.

use ruma::api::client::to_device::send_event_to_device;

use crate::{App, Result, ruma_wrapper::Ruma};

pub async fn send(
    app: App,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let session = req.session()?;
    app.send_to_device(
        session,
        &req.body.event_type.to_string(),
        req.body.txn_id.as_str(),
        &req.body.messages,
    )
    .await?;
    Ok(send_event_to_device::v3::Response::new())
}
