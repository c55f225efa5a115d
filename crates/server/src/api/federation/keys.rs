//! Server keys (`/_matrix/key/v2/…`): this server's own, and other
//! servers' as a notary. Unauthenticated, so served on both listeners.

use axum::Router;
use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::federation::discovery::{get_remote_server_keys, get_remote_server_keys_batch, get_server_keys},
};

use crate::{App, Error, Result, ruma_wrapper::RouterExt, ruma_wrapper::Ruma};

/// The most servers one batch query asks about.
const MAX_BATCH_SERVERS: usize = 50;

/// The most servers one query makes this server contact: anyone may ask,
/// so the rest are answered from what is already known rather than
/// turning the notary into a scanner of others' hosts.
const MAX_FETCHES_PER_QUERY: usize = 3;

pub fn routes(router: Router<App>) -> Router<App> {
    router
        // The key ID of the older paths is ignored: every key is given.
        .ruma_also::<get_server_keys::v2::Request, _, _, _>(&["/_matrix/key/v2/server/{key_id}"], server_keys)
        .ruma_also::<get_remote_server_keys::v2::Request, _, _, _>(
            &["/_matrix/key/v2/query/{server_name}/{key_id}"],
            query,
        )
        .ruma::<get_remote_server_keys_batch::v2::Request, _, _>(query_batch)
}

/// `GET /_matrix/key/v2/server`: published even with federation off, since
/// it reveals nothing but the public key.
async fn server_keys(app: App, _req: Ruma<get_server_keys::v2::Request>) -> Result<get_server_keys::v2::Response> {
    let obj = app.own_server_keys().await?;
    let raw = crate::services::federation::raw_json(&obj)?;
    Ok(get_server_keys::v2::Response::new(ruma::serde::Raw::from_json(raw)))
}

/// `GET /_matrix/key/v2/query/{serverName}`.
async fn query(
    app: App,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response> {
    notary_enabled(&app)?;
    let min = ts(req.body.minimum_valid_until_ts);
    let keys = app.notary_server_keys(&req.body.server_name, min, true).await?;
    Ok(get_remote_server_keys::v2::Response::new(keys))
}

/// `POST /_matrix/key/v2/query`.
async fn query_batch(
    app: App,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response> {
    notary_enabled(&app)?;
    if req.body.server_keys.len() > MAX_BATCH_SERVERS {
        return Err(Error::too_large(format!(
            "At most {MAX_BATCH_SERVERS} servers may be asked about at once"
        )));
    }
    let now = ts(MilliSecondsSinceUnixEpoch::now());
    let mut out = vec![];
    for (i, (server, criteria)) in req.body.server_keys.iter().enumerate() {
        // The response must be valid until the latest time any key was asked for.
        let min = criteria
            .values()
            .filter_map(|c| c.minimum_valid_until_ts.map(ts))
            .max()
            .unwrap_or(now);
        // One server that cannot be reached is no reason to fail the others.
        match app.notary_server_keys(server, min, i < MAX_FETCHES_PER_QUERY).await {
            Ok(keys) => out.extend(keys),
            Err(e) => tracing::debug!(%server, error = %e, "notary: no keys"),
        }
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(out))
}

/// A notary makes requests to other servers: only while federation is on.
fn notary_enabled(app: &App) -> Result<()> {
    if app.federation_enabled() {
        Ok(())
    } else {
        Err(Error::unrecognized("Federation is disabled on this server"))
    }
}

fn ts(t: MilliSecondsSinceUnixEpoch) -> i64 {
    i64::from(t.get())
}
