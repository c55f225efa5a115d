//! TURN credentials for calls, in the shared-secret scheme coturn checks
//! with `use-auth-secret`: the username is `<expiry>:<user>` and the
//! password is base64(HMAC-SHA1(secret, username)).

use base64::Engine;
use hmac::{Hmac, Mac};
use ruma::UserId;

use crate::App;

pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
    pub ttl_secs: u64,
}

/// The credentials for `user` valid until `expiry_unix_secs`.
pub fn credentials(secret: &str, user: &UserId, expiry_unix_secs: u64) -> (String, String) {
    let username = format!("{expiry_unix_secs}:{user}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

impl App {
    /// Credentials for `user`, or `None` when no TURN server is configured.
    pub fn turn_credentials(&self, user: &UserId) -> Option<TurnCredentials> {
        let secret = self
            .config
            .turn_shared_secret
            .as_deref()
            .filter(|_| !self.config.turn_uris.is_empty())?;
        let now = crate::services::accounts::now_ms() as u64 / 1000;
        let (username, password) = credentials(secret, user, now + self.config.turn_ttl_secs);
        Some(TurnCredentials {
            username,
            password,
            uris: self.config.turn_uris.clone(),
            ttl_secs: self.config.turn_ttl_secs,
        })
    }
}
