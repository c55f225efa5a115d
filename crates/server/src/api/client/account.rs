//! whoami, password change, deactivation.

use ruma::api::client::{
    account::{ThirdPartyIdRemovalStatus, change_password, deactivate, get_3pids, whoami},
    admin::get_user_info,
};
use serde_json::json;

use crate::{
    App, Error, Result,
    api::client::uia_auth,
    ruma_wrapper::{JsonResponse, Ruma},
    services::uia,
};

pub async fn whoami(_app: App, req: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response> {
    let s = req.session()?;
    let mut resp = whoami::v3::Response::new(s.user_id.clone(), s.is_guest);
    resp.device_id = Some(s.device_id.clone());
    Ok(resp)
}

pub async fn change_password(
    app: App,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let s = req.session()?.clone();
    app.uia(uia_auth(&req).as_ref(), &[&[uia::PASSWORD]], Some(&s.user_id))
        .await?;
    let hash = app.password_hashing.hash(req.body.new_password.clone()).await?;
    app.store.set_password(s.user_id.to_string(), hash).await?;
    if req.body.logout_devices {
        let others = app
            .store
            .devices(s.user_id.to_string())
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .filter(|d| d != s.device_id.as_str())
            .collect();
        app.delete_devices(&s.user_id, others).await?;
    }
    Ok(change_password::v3::Response::new())
}

pub async fn deactivate(app: App, req: Ruma<deactivate::v3::Request>) -> Result<deactivate::v3::Response> {
    let s = req.session()?.clone();
    app.uia(uia_auth(&req).as_ref(), &[&[uia::PASSWORD]], Some(&s.user_id))
        .await?;
    // Leave every room first, so other members see the departure.
    for m in app.store.memberships(s.user_id.to_string()).await? {
        if matches!(m.membership.as_str(), "join" | "invite" | "knock")
            && let Ok(room) = ruma::OwnedRoomId::try_from(m.room_id)
        {
            let _ = app
                .set_membership(&room, &s.user_id, &s.user_id, "leave", None, None)
                .await;
        }
    }
    app.store.deactivate_user(s.user_id.to_string()).await?;
    app.notify();
    Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}

pub async fn openid_token(
    app: App,
    req: Ruma<ruma::api::client::account::request_openid_token::v3::Request>,
) -> Result<ruma::api::client::account::request_openid_token::v3::Response> {
    use ruma::api::client::account::request_openid_token::v3;
    super::require_self(&req, &req.body.user_id)?;
    let token = app.request_openid_token(&req.body.user_id).await?;
    Ok(v3::Response::new(
        token,
        ruma::authentication::TokenType::Bearer,
        app.server_name.clone(),
        crate::services::openid::OPENID_TOKEN_LIFETIME,
    ))
}

/// The account's third-party identifiers: none, until e-mail addresses
/// can be added (Element's notification settings read this list).
pub async fn threepids(_app: App, req: Ruma<get_3pids::v3::Request>) -> Result<JsonResponse> {
    req.session()?;
    Ok(JsonResponse(json!({ "threepids": [] })))
}

/// Who is behind an account and from where: the user themselves, or a
/// server administrator.
pub async fn whois(app: App, req: Ruma<get_user_info::v3::Request>) -> Result<JsonResponse> {
    let caller = req.user()?;
    let target = &req.body.user_id;
    if caller != target && !app.is_server_admin(caller).await? {
        return Err(Error::forbidden("You are not a server admin"));
    }
    if !app.is_local(target) {
        return Err(Error::invalid_param("Only local users can be looked up"));
    }
    if app.store.user(target.to_string()).await?.is_none() {
        return Err(Error::not_found("Unknown user"));
    }
    let devices: serde_json::Map<String, serde_json::Value> = app
        .store
        .devices(target.to_string())
        .await?
        .into_iter()
        .map(|d| {
            let connections: Vec<serde_json::Value> = d
                .last_seen_ip
                .iter()
                .map(|ip| {
                    // No user agent is kept: the key is there, empty.
                    json!({ "ip": ip, "last_seen": d.last_seen_ts, "user_agent": null })
                })
                .collect();
            (d.device_id, json!({ "sessions": [{ "connections": connections }] }))
        })
        .collect();
    Ok(JsonResponse(json!({ "user_id": target, "devices": devices })))
}
