//! Server discovery: versions, `.well-known`, capabilities.

use std::collections::BTreeMap;

use ruma::api::client::discovery::{discover_homeserver, get_capabilities, get_supported_versions};

use crate::{App, Result, ruma_wrapper::Ruma};

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

pub async fn capabilities(
    app: App,
    _req: Ruma<get_capabilities::v3::Request>,
) -> Result<get_capabilities::v3::Response> {
    use get_capabilities::v3::{Capabilities, RoomVersionStability, RoomVersionsCapability};
    let mut caps = Capabilities::new();
    let available = missive_core::SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| {
            (
                ruma::RoomVersionId::try_from(*v).expect("valid version"),
                RoomVersionStability::Stable,
            )
        })
        .collect();
    caps.room_versions = RoomVersionsCapability::new(
        ruma::RoomVersionId::try_from(missive_core::DEFAULT_ROOM_VERSION).expect("valid version"),
        available,
    );
    caps.change_password.enabled = true;
    #[allow(deprecated)]
    {
        caps.set_displayname.enabled = true;
        caps.set_avatar_url.enabled = true;
    }
    caps.thirdparty_id_changes.enabled = false;
    let _ = app;
    Ok(get_capabilities::v3::Response::new(caps))
}
