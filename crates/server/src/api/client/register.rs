//! Account registration, with user-interactive auth per the configured mode.

use ruma::api::client::account::{check_registration_token_validity, get_username_availability, register};

use crate::{
    App, Error, Registration, Result,
    api::client::uia_auth,
    ruma_wrapper::Ruma,
    services::{
        accounts::{random_string, validate_localpart},
        ratelimit::Action,
        uia,
    },
};

pub async fn register(app: App, req: Ruma<register::v3::Request>) -> Result<register::v3::Response> {
    if req.body.kind == register::RegistrationKind::Guest {
        return register_guest(app, req).await;
    }
    let flows: &[&[&str]] = match app.config.registration {
        Registration::Closed => {
            return Err(Error::forbidden("Registration is disabled on this server"));
        }
        Registration::Token => &[&[uia::REGISTRATION_TOKEN]],
        Registration::Open => &[&[uia::DUMMY]],
    };
    let ip = req.client_ip.map(|i| i.to_string()).unwrap_or_default();
    app.rate_limiter
        .check(&app.config.rate_limits, Action::Registration, &ip)?;
    let localpart = match &req.body.username {
        Some(u) => u.to_lowercase(),
        None => random_string(12).to_lowercase(),
    };
    validate_localpart(&localpart)?;
    if localpart.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid_username("Numeric user IDs are reserved for guests"));
    }
    let user_id = app.user_id(&localpart)?;
    if app.store.user(user_id.to_string()).await?.is_some() {
        return Err(Error::user_in_use("User ID already taken"));
    }
    let outcome = app.uia(uia_auth(&req).as_ref(), flows, None).await?;
    if let Some(token) = &outcome.registration_token
        && !app.store.use_registration_token(token.clone()).await?
    {
        return Err(Error::forbidden("Registration token used up or expired"));
    }
    let r = req.body;
    app.create_account(&user_id, r.password, false).await?;
    tracing::info!(user = %user_id, "registered");
    let mut resp = register::v3::Response::new(user_id.clone());
    if !r.inhibit_login {
        let (device_id, tokens) = app
            .start_session(&user_id, r.device_id, r.initial_device_display_name, r.refresh_token)
            .await?;
        resp.access_token = Some(tokens.access_token);
        resp.device_id = Some(device_id);
        resp.refresh_token = tokens.refresh_token;
        resp.expires_in = tokens.expires_in_ms.map(std::time::Duration::from_millis);
    }
    Ok(resp)
}

/// A guest account, when the server allows them: no credentials asked,
/// a numbered user ID, a session at once.
async fn register_guest(app: App, req: Ruma<register::v3::Request>) -> Result<register::v3::Response> {
    if !app.config.allow_guest_access {
        return Err(Error::Matrix {
            status: http::StatusCode::FORBIDDEN,
            errcode: "M_GUEST_ACCESS_FORBIDDEN",
            message: "Guest access is disabled".into(),
            extra: None,
        });
    }
    let ip = req.client_ip.map(|i| i.to_string()).unwrap_or_default();
    app.rate_limiter
        .check(&app.config.rate_limits, Action::Registration, &ip)?;
    let user_id = app.create_guest().await?;
    tracing::info!(user = %user_id, "guest registered");
    let r = req.body;
    let (device_id, tokens) = app
        .start_session(&user_id, r.device_id, r.initial_device_display_name, r.refresh_token)
        .await?;
    let mut resp = register::v3::Response::new(user_id);
    resp.access_token = Some(tokens.access_token);
    resp.device_id = Some(device_id);
    resp.refresh_token = tokens.refresh_token;
    resp.expires_in = tokens.expires_in_ms.map(std::time::Duration::from_millis);
    Ok(resp)
}

pub async fn available(
    app: App,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    if app.config.registration == Registration::Closed {
        return Err(Error::forbidden("Registration is disabled on this server"));
    }
    let localpart = req.body.username.to_lowercase();
    validate_localpart(&localpart)?;
    if app.store.user(app.user_id(&localpart)?.to_string()).await?.is_some() {
        return Err(Error::user_in_use("User ID already taken"));
    }
    Ok(get_username_availability::v3::Response::new(true))
}

pub async fn token_validity(
    app: App,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    if app.config.registration != Registration::Token {
        return Err(Error::forbidden("Registration tokens are not in use on this server"));
    }
    let valid = app.registration_token_valid(&req.body.token).await?;
    Ok(check_registration_token_validity::v1::Response::new(valid))
}
