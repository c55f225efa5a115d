//! Login, logout and token refresh.

use ruma::{
    OwnedUserId,
    api::client::session::{get_login_token, get_login_types, login, logout, logout_all, refresh_token},
};
use serde_json::Value;

use crate::{
    App, Error, Result,
    api::client::uia_auth,
    ruma_wrapper::Ruma,
    services::{
        accounts::{hash_token, new_token, now_ms},
        ratelimit::Action,
        uia,
    },
};

pub async fn login_types(app: App, _req: Ruma<get_login_types::v3::Request>) -> Result<get_login_types::v3::Response> {
    use get_login_types::v3::{LoginType, PasswordLoginType, TokenLoginType};
    let mut flows = vec![LoginType::Password(PasswordLoginType::new())];
    if app.config.login_token_enabled {
        let mut token = TokenLoginType::new();
        token.get_login_token = true;
        flows.push(LoginType::Token(token));
    }
    Ok(get_login_types::v3::Response::new(flows))
}

/// How long a token from `/login/get_token` may be used (the spec
/// recommends two minutes).
const LOGIN_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

/// `POST /login/get_token`: a signed-in user, after proving their password
/// again, gets a single-use token to sign in a new device with (QR-code
/// login). Off with `login_token_enabled = false`.
pub async fn get_login_token(
    app: App,
    req: Ruma<get_login_token::v1::Request>,
) -> Result<get_login_token::v1::Response> {
    if !app.config.login_token_enabled {
        return Err(Error::unrecognized("Login tokens are disabled on this server"));
    }
    let user = req.user()?.clone();
    app.uia(uia_auth(&req).as_ref(), &[&[uia::PASSWORD]], Some(&user))
        .await?;
    let token = new_token("mvl");
    app.store
        .create_login_token(
            hash_token(&token),
            user.to_string(),
            now_ms() + LOGIN_TOKEN_LIFETIME.as_millis() as i64,
        )
        .await?;
    Ok(get_login_token::v1::Response::new(LOGIN_TOKEN_LIFETIME, token))
}

pub async fn login(app: App, req: Ruma<login::v3::Request>) -> Result<login::v3::Response> {
    let ip = req.client_ip.map(|i| i.to_string()).unwrap_or_default();
    app.rate_limiter.check(&app.config.rate_limits, Action::Login, &ip)?;
    // The body's identifier is read as JSON: the spec also allows the legacy `user` field.
    let body: Value = serde_json::from_slice(&req.raw_body).map_err(|e| Error::not_json(e.to_string()))?;
    let user_id = match body.get("type").and_then(Value::as_str) {
        Some("m.login.password") => password_login(&app, &body).await?,
        Some("m.login.token") if app.config.login_token_enabled => {
            let token = body
                .get("token")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::missing_param("Missing token"))?;
            let user = app
                .store
                .take_login_token(hash_token(token))
                .await?
                .ok_or_else(|| Error::forbidden("Invalid login token"))?;
            let user = OwnedUserId::try_from(user).map_err(|e| Error::Internal(e.to_string()))?;
            if app.store.user(user.to_string()).await?.is_none_or(|u| u.deactivated) {
                return Err(Error::user_deactivated("This account has been deactivated"));
            }
            user
        }
        _ => {
            return Err(Error::Matrix {
                status: http::StatusCode::BAD_REQUEST,
                errcode: "M_UNKNOWN",
                message: "Unsupported login type".into(),
                extra: None,
            });
        }
    };
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

/// The user an `m.login.password` body proves to be.
async fn password_login(app: &App, body: &Value) -> Result<OwnedUserId> {
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
    Ok(user_id)
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
