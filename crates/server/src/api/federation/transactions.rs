//! `PUT /_matrix/federation/v1/send/{txnId}`: PDUs and EDUs from another server.

use std::collections::BTreeMap;

use axum::Router;
use ruma::api::federation::transactions::send_transaction_message;

use crate::{
    App, Error, Result,
    ruma_wrapper::{RouterExt, Ruma},
};

pub fn routes(router: Router<App>) -> Router<App> {
    router.ruma::<send_transaction_message::v1::Request, _, _>(send)
}

async fn send(
    app: App,
    req: Ruma<send_transaction_message::v1::Request>,
) -> Result<send_transaction_message::v1::Response> {
    let origin = req.origin()?.to_owned();
    if req.body.origin != origin {
        return Err(Error::forbidden("The transaction's origin is not the signing server"));
    }
    if req.body.pdus.len() > 50 || req.body.edus.len() > 100 {
        return Err(Error::bad_json("At most 50 PDUs and 100 EDUs per transaction"));
    }
    app.destination_seen(&origin).await;
    let mut results = BTreeMap::new();
    for raw in &req.body.pdus {
        let (id, res) = app.handle_incoming_pdu(&origin, raw).await;
        if let Some(id) = id {
            results.insert(id, res.map_err(|e| e.to_string()));
        }
    }
    for edu in &req.body.edus {
        match serde_json::from_str::<serde_json::Value>(edu.json().get()) {
            Ok(v) => app.handle_edu(&origin, v).await,
            Err(e) => tracing::debug!("unreadable EDU from {origin}: {e}"),
        }
    }
    Ok(send_transaction_message::v1::Response::new(results))
}
