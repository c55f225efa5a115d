//! Server-side search: `POST /search`.

use ruma::api::client::search::search_events::v3::{Request, Response, ResultCategories};

use crate::{App, Result, ruma_wrapper::Ruma};

pub async fn search(app: App, req: Ruma<Request>) -> Result<Response> {
    let session = req.session()?.clone();
    let mut categories = ResultCategories::new();
    if let Some(criteria) = &req.body.search_categories.room_events {
        // ruma fills in a default `event_context`; the spec returns context
        // only when the client asked for it.
        let with_context = serde_json::from_slice::<serde_json::Value>(&req.raw_body)
            .ok()
            .and_then(|b| b.pointer("/search_categories/room_events/event_context").cloned())
            .is_some_and(|c| c.is_object());
        categories.room_events = app
            .search_room_events(&session, criteria, req.body.next_batch.as_deref(), with_context)
            .await?;
    }
    Ok(Response::new(categories))
}
