//! Server discovery: versions, `.well-known`, capabilities.

use std::collections::BTreeMap;

use ruma::api::client::discovery::{discover_homeserver, discover_support, get_capabilities, get_supported_versions};
use serde_json::json;

use crate::{
    App, Error, Result,
    ruma_wrapper::{JsonResponse, Ruma},
};

/// Spec versions whose client API this server implements.
pub const VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
];

pub async fn versions(
    _app: App,
    _req: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    let mut resp = get_supported_versions::Response::new(VERSIONS.iter().map(|v| (*v).to_owned()).collect());
    resp.unstable_features = BTreeMap::from([
        ("org.matrix.msc2285.stable".to_owned(), true),
        // Simplified sliding sync (MSC4186), which Element X requires.
        ("org.matrix.simplified_msc3575".to_owned(), true),
        // Dehydrated devices (MSC3814), so messages sent while all of a user's devices are offline stay decryptable.
        ("org.matrix.msc3814".to_owned(), true),
        // Rooms shared with another user (MSC2666), at both paths.
        ("uk.half-shot.msc2666.query_mutual_rooms".to_owned(), true),
        ("uk.half-shot.msc2666.query_mutual_rooms.stable".to_owned(), true),
    ]);
    Ok(resp)
}

pub async fn well_known(app: App, _req: Ruma<discover_homeserver::Request>) -> Result<discover_homeserver::Response> {
    let base = app
        .config
        .public_baseurl
        .clone()
        .unwrap_or_else(|| format!("http://{}", app.config.listen));
    Ok(discover_homeserver::Response::new(
        discover_homeserver::HomeserverInfo::new(base),
    ))
}

/// `/.well-known/matrix/support`: whom to contact about this server, as
/// configured in `[support]`; not found when nothing is configured.
pub async fn support(app: App, _req: Ruma<discover_support::Request>) -> Result<JsonResponse> {
    let support = &app.config.support;
    if support.contacts.is_empty() && support.page.is_none() {
        return Err(Error::not_found("No support contacts are configured"));
    }
    let mut body = json!({ "contacts": support.contacts });
    if let Some(page) = &support.page {
        body["support_page"] = page.clone().into();
    }
    Ok(JsonResponse(body))
}

/// Every standard capability, each named even where its value is the
/// spec's default (clients and suites look for `m.change_password`).
pub async fn capabilities(app: App, _req: Ruma<get_capabilities::v3::Request>) -> Result<JsonResponse> {
    let available: serde_json::Map<String, serde_json::Value> = missive_core::SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| ((*v).to_owned(), "stable".into()))
        .collect();
    Ok(JsonResponse(json!({
        "capabilities": {
            "m.room_versions": {
                "default": app.config.default_room_version,
                "available": available,
            },
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.profile_fields": { "enabled": true },
            // No e-mail or phone numbers yet.
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": app.config.login_token_enabled },
        }
    })))
}
