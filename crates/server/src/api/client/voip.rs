//! `/voip/turnServer`.

use ruma::api::client::voip::get_turn_server_info;
use serde_json::json;

use crate::{
    App, Result,
    ruma_wrapper::{JsonResponse, Ruma},
};

/// TURN credentials, or `{}` when no TURN server is configured: clients
/// then call without a relay (the reference server answers the same, and
/// Element logs an error at every start on a 404).
pub async fn turn_server(app: App, req: Ruma<get_turn_server_info::v3::Request>) -> Result<JsonResponse> {
    Ok(JsonResponse(match app.turn_credentials(req.user()?) {
        Some(c) => json!({
            "username": c.username,
            "password": c.password,
            "uris": c.uris,
            "ttl": c.ttl_secs,
        }),
        None => json!({}),
    }))
}
