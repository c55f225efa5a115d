//! Login, logout and token refresh.

use ruma::{
    OwnedUserId,
    api::client::session::{get_login_types, login, logout, logout_all, refresh_token},
};
use serde_json::Value;

use crate::{App, Error, Result, ruma_wrapper::Ruma, services::ratelimit::Action};

pub async fn login_types(_app: App, _req: Ruma<get_login_types::v3::Request>) -> Result<get_login_types::v3::Response> {
    use get_login_types::v3::{LoginType, PasswordLoginType};
    Ok(get_login_types::v3::Response::new(vec![LoginType::Password(
        PasswordLoginType::new(),
    )]))
}

pub async fn login(app: App, req: Ruma<login::v3::Request>) -> Result<login::v3::Response> {
    let ip = req.client_ip.map(|i| i.to_string()).unwrap_or_default();
    app.rate_limiter.check(&app.config.rate_limits, Action::Login, &ip)?;
    // The body's identifier is read as JSON: the spec also allows the legacy `user` field.
    let body: Value = serde_json::from_slice(&req.raw_body).map_err(|e| Error::not_json(e.to_string()))?;
    if body.get("type").and_then(Value::as_str) != Some("m.login.password") {
        return Err(Error::Matrix {
            status: http::StatusCode::BAD_REQUEST,
            errcode: "M_UNKNOWN",
            message: "Unsupported login type".into(),
            extra: None,
        });
    }
    let ident = body.get("identifier");
    let user = match ident {
        Some(i) => {
            if i.get("type").and_then(Value::as_str) != Some("m.id.user") {
                return Err(Error::invalid_param("Only m.id.user identifiers are supported"));
            }
            i.get("user").and_then(Value::as_str)
        }
        None => body.get("user").and_then(Value::as_str),
    }
    .ok_or_else(|| Error::missing_param("Missing user identifier"))?;
    let password = body
        .get("password")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::missing_param("Missing password"))?;
    let user_id = if user.starts_with('@') {
        OwnedUserId::try_from(user).map_err(|_| Error::forbidden("Invalid username or password"))?
    } else {
        app.user_id(&user.to_lowercase())
            .map_err(|_| Error::forbidden("Invalid username or password"))?
    };
    if !app.is_local(&user_id) {
        return Err(Error::forbidden("Invalid username or password"));
    }
    if let Some(row) = app.store.user(user_id.to_string()).await?
        && row.deactivated
    {
        return Err(Error::user_deactivated("This account has been deactivated"));
    }
    if !app.check_password(&user_id, password).await? {
        return Err(Error::forbidden("Invalid username or password"));
    }
    let r = req.body;
    let (device_id, tokens) = app
        .start_session(&user_id, r.device_id, r.initial_device_display_name, r.refresh_token)
        .await?;
    let mut resp = login::v3::Response::new(user_id, tokens.access_token, device_id);
    resp.refresh_token = tokens.refresh_token;
    resp.expires_in = tokens.expires_in_ms.map(std::time::Duration::from_millis);
    #[allow(deprecated)]
    {
        resp.home_server = Some(app.server_name.clone());
    }
    Ok(resp)
}

pub async fn logout(app: App, req: Ruma<logout::v3::Request>) -> Result<logout::v3::Response> {
    let s = req.session()?;
    app.delete_devices(&s.user_id, vec![s.device_id.to_string()]).await?;
    Ok(logout::v3::Response::new())
}

pub async fn logout_all(app: App, req: Ruma<logout_all::v3::Request>) -> Result<logout_all::v3::Response> {
    let s = req.session()?;
    let all = app
        .store
        .devices(s.user_id.to_string())
        .await?
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    app.delete_devices(&s.user_id, all).await?;
    Ok(logout_all::v3::Response::new())
}

pub async fn refresh(app: App, req: Ruma<refresh_token::v3::Request>) -> Result<refresh_token::v3::Response> {
    let t = app.refresh(&req.body.refresh_token).await?;
    let mut resp = refresh_token::v3::Response::new(t.access_token);
    resp.refresh_token = t.refresh_token;
    resp.expires_in_ms = t.expires_in_ms.map(std::time::Duration::from_millis);
    Ok(resp)
}
