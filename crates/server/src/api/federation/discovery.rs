//! `GET /_matrix/federation/v1/version` and `GET /.well-known/matrix/server`
//! (delegation of the server name to another host and port).

use axum::Router;
use ruma::{
    OwnedServerName,
    api::federation::discovery::{discover_homeserver, get_server_version},
};

use crate::{App, Error, Result, ruma_wrapper::RouterExt, ruma_wrapper::Ruma};

pub fn routes(router: Router<App>) -> Router<App> {
    well_known_routes(router).ruma::<get_server_version::v1::Request, _, _>(version)
}

/// `/.well-known/matrix/server`, served wherever the client API is.
pub fn well_known_routes(router: Router<App>) -> Router<App> {
    router.ruma::<discover_homeserver::Request, _, _>(well_known)
}

async fn version(app: App, _req: Ruma<get_server_version::v1::Request>) -> Result<get_server_version::v1::Response> {
    if !app.federation_enabled() {
        return Err(Error::unrecognized("Federation is not enabled on this server"));
    }
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Missive".into());
    server.version = Some(env!("CARGO_PKG_VERSION").into());
    let mut res = get_server_version::v1::Response::new();
    res.server = Some(server);
    Ok(res)
}

/// Answers only when `[federation] well_known_server` names where other
/// servers should connect; otherwise they use the server name itself.
async fn well_known(app: App, _req: Ruma<discover_homeserver::Request>) -> Result<discover_homeserver::Response> {
    let Some(target) = app
        .config
        .federation
        .well_known_server
        .as_deref()
        .filter(|_| app.federation_enabled())
    else {
        return Err(Error::unrecognized("This server does not delegate federation"));
    };
    let server = OwnedServerName::try_from(target).map_err(|e| Error::Internal(format!("well_known_server: {e}")))?;
    Ok(discover_homeserver::Response::new(server))
}
