//! `/voip/turnServer`.

use std::time::Duration;

use ruma::api::client::voip::get_turn_server_info;

use crate::{App, Result, ruma_wrapper::Ruma};

pub async fn turn_server(
    app: App,
    req: Ruma<get_turn_server_info::v3::Request>,
) -> Result<get_turn_server_info::v3::Response> {
    let c = app.turn_credentials(req.user()?)?;
    Ok(get_turn_server_info::v3::Response::new(
        c.username,
        c.password,
        c.uris,
        Duration::from_secs(c.ttl_secs),
    ))
}
