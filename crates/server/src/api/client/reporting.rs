//! Reporting events, rooms and users to the server's administrators.

use ruma::api::client::{
    reporting::report_user,
    room::{report_content, report_room},
};

use crate::{App, Result, ruma_wrapper::Ruma};

pub async fn report_event(app: App, req: Ruma<report_content::v3::Request>) -> Result<report_content::v3::Response> {
    let user = req.user()?.clone();
    // `score` left the spec in v1.18 (and ruma); older clients still send it.
    let score = serde_json::from_slice::<serde_json::Value>(&req.raw_body)
        .ok()
        .and_then(|b| b.get("score").and_then(serde_json::Value::as_i64));
    let r = &req.body;
    app.report_event(&user, &r.room_id, &r.event_id, r.reason.clone(), score)
        .await?;
    Ok(report_content::v3::Response::new())
}

pub async fn report_room(app: App, req: Ruma<report_room::v3::Request>) -> Result<report_room::v3::Response> {
    let user = req.user()?.clone();
    app.report_room(&user, &req.body.room_id, req.body.reason.clone())
        .await?;
    Ok(report_room::v3::Response::new())
}

pub async fn report_user(app: App, req: Ruma<report_user::v3::Request>) -> Result<report_user::v3::Response> {
    let user = req.user()?.clone();
    app.report_user(&user, &req.body.user_id, req.body.reason.clone())
        .await?;
    Ok(report_user::v3::Response::new())
}
