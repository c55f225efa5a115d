//! The Server-Server API, one module per spec area.

use axum::Router;

use crate::App;

pub mod discovery;
pub mod events;
pub mod keys;
pub mod media;
pub mod membership;
pub mod query;
pub mod space;
pub mod transactions;

/// Every federation endpoint (`/_matrix/federation/…`, `/_matrix/key/…`).
pub fn routes(router: Router<App>) -> Router<App> {
    let router = discovery::routes(router);
    let router = keys::routes(router);
    let router = transactions::routes(router);
    let router = membership::routes(router);
    let router = events::routes(router);
    let router = query::routes(router);
    let router = space::routes(router);
    media::routes(router)
}
