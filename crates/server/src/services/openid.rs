//! OpenID tokens: a user proves who they are to a third party (an
//! integration server, a widget host) without handing it their access
//! token; the third party asks this server over federation who a token
//! stands for.

use std::time::Duration;

use ruma::{OwnedUserId, UserId};

use crate::{
    App, Error, Result,
    services::accounts::{hash_token, now_ms, random_string},
};

/// How long an OpenID token is valid.
pub const OPENID_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

impl App {
    /// A new OpenID token for `user`.
    pub async fn request_openid_token(&self, user: &UserId) -> Result<String> {
        let token = random_string(32);
        let expires = now_ms() + OPENID_TOKEN_LIFETIME.as_millis() as i64;
        self.store
            .insert_openid_token(hash_token(&token), user.to_string(), expires)
            .await?;
        Ok(token)
    }

    /// The user an OpenID token stands for, if it is valid.
    pub async fn openid_userinfo(&self, token: &str) -> Result<OwnedUserId> {
        let user = self
            .store
            .openid_user(hash_token(token), now_ms())
            .await?
            .ok_or_else(|| Error::unknown_token(false))?;
        OwnedUserId::try_from(user).map_err(|e| Error::Internal(e.to_string()))
    }
}
