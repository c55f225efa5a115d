//! Accounts, devices and tokens: Argon2id passwords, random access tokens
//! stored only as SHA-256 hashes.

use std::collections::HashMap;

use base64::Engine;
use missive_store::{StoreError, accounts::NewSession};
use rand::RngCore;
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use sha2::{Digest, Sha256};

use crate::{App, Error, Result, services::ratelimit::Action};

/// Who is calling: the owner of a valid access token.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// A guest account: only the endpoints the spec opens to guests.
    pub is_guest: bool,
}

pub fn random_string(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect()
}

/// A fresh secret token with 256 bits of randomness.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// When each device was last recorded as seen by this process.
#[derive(Default)]
pub struct DeviceActivity(std::sync::Mutex<HashMap<(OwnedUserId, OwnedDeviceId), std::time::Instant>>);

/// How often a device's last-seen time and address are written.
const LAST_SEEN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl DeviceActivity {
    /// Whether the device's activity should be written now (and notes that it is).
    fn due(&self, s: &Session) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let key = (s.user_id.clone(), s.device_id.clone());
        if seen.get(&key).is_some_and(|t| now.duration_since(*t) < LAST_SEEN_EVERY) {
            return false;
        }
        if seen.len() >= 100_000 {
            seen.retain(|_, t| now.duration_since(*t) < LAST_SEEN_EVERY);
        }
        seen.insert(key, now);
        true
    }
}

/// Password hashing is CPU- and memory-bound (Argon2id, 19 MiB each): at
/// most this many run at once, whatever the number of clients logging in,
/// so a burst of logins queues instead of growing threads and memory.
pub struct PasswordHashing {
    permits: tokio::sync::Semaphore,
    /// A hash of no one's password, checked against when the user is
    /// unknown, so that a refusal takes as long for an unknown account as
    /// for a known one (no timing tells which accounts exist).
    decoy: tokio::sync::OnceCell<String>,
}

impl Default for PasswordHashing {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        PasswordHashing {
            permits: tokio::sync::Semaphore::new(cores),
            decoy: tokio::sync::OnceCell::new(),
        }
    }
}

impl PasswordHashing {
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(e.to_string()))
    }

    pub async fn hash(&self, password: String) -> Result<String> {
        self.run(move || {
            use argon2::{Argon2, PasswordHasher, password_hash::SaltString};
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(format!("password hashing: {e}")))
        })
        .await?
    }

    /// Spends the time of a password check that fails.
    pub async fn verify_nothing(&self, password: String) {
        let decoy = self
            .decoy
            .get_or_try_init(|| self.hash(random_string(32)))
            .await
            .cloned();
        if let Ok(decoy) = decoy {
            self.verify(password, decoy).await;
        }
    }

    pub async fn verify(&self, password: String, hash: String) -> bool {
        self.run(move || {
            use argon2::{Argon2, PasswordHash, PasswordVerifier};
            PasswordHash::new(&hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false)
    }
}

/// Checks a localpart against the spec's grammar for new user IDs.
pub fn validate_localpart(localpart: &str) -> Result<()> {
    if localpart.is_empty()
        || localpart.len() > 200
        || !localpart
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'))
    {
        return Err(Error::invalid_username(
            "User ID may only contain a-z, 0-9, . _ = - / +",
        ));
    }
    Ok(())
}

/// Tokens handed to a client at login or registration.
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
}

impl App {
    pub fn user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        OwnedUserId::try_from(format!("@{localpart}:{}", self.server_name))
            .map_err(|_| Error::invalid_username("Invalid user ID"))
    }

    pub fn is_local(&self, user: &UserId) -> bool {
        user.server_name() == self.server_name
    }

    /// Resolves an access token to its session.
    pub async fn authenticate(&self, token: &str) -> Result<Session> {
        let owner = self
            .store
            .token_owner(hash_token(token))
            .await?
            .ok_or_else(|| Error::unknown_token(false))?;
        if owner.expires_ts.is_some_and(|e| e <= now_ms()) {
            return Err(Error::unknown_token(true));
        }
        Ok(Session {
            user_id: OwnedUserId::try_from(owner.user_id).map_err(|e| Error::Internal(e.to_string()))?,
            device_id: owner.device_id.into(),
            is_guest: owner.is_guest,
        })
    }

    /// Records that a device is in use, and from where: at most once a
    /// minute per device and process, since every `/sync` calls it and a
    /// write per long-poll would contend with the sends.
    pub async fn touch_device(&self, s: &Session, ip: Option<std::net::IpAddr>) -> Result<()> {
        if !self.device_activity.due(s) {
            return Ok(());
        }
        self.store
            .touch_device(
                s.user_id.to_string(),
                s.device_id.to_string(),
                ip.map(|i| i.to_string()),
            )
            .await?;
        Ok(())
    }

    /// A new guest account, with a numbered localpart (as guests get from
    /// the reference server), never one a user could choose.
    pub async fn create_guest(&self) -> Result<OwnedUserId> {
        use rand::Rng;
        for _ in 0..5 {
            let n: u64 = rand::thread_rng().gen_range(1_000_000_000..10_000_000_000);
            let user = self.user_id(&n.to_string())?;
            match self.store.create_guest(user.to_string()).await {
                Ok(()) => return Ok(user),
                Err(StoreError::Exists) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Internal("no free guest user ID".into()))
    }

    /// Whether `user` is an administrator of this server.
    pub async fn is_server_admin(&self, user: &UserId) -> Result<bool> {
        Ok(self.is_local(user) && self.store.user(user.to_string()).await?.is_some_and(|u| u.is_admin))
    }

    /// Creates an account; a `None` password means it cannot log in with
    /// one. Its display name starts as its localpart, as the reference
    /// server does, so that clients show a name, not a user ID.
    pub async fn create_account(&self, user: &UserId, password: Option<String>, is_admin: bool) -> Result<()> {
        let hash = match password {
            Some(p) => Some(self.password_hashing.hash(p).await?),
            None => None,
        };
        let displayname = Some(user.localpart().to_owned());
        match self
            .store
            .create_user(user.to_string(), hash, is_admin, displayname)
            .await
        {
            Err(StoreError::Exists) => Err(Error::user_in_use("User ID already taken")),
            r => Ok(r?),
        }
    }

    /// Starts a session on a new or existing device of the user.
    pub async fn start_session(
        &self,
        user: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        refreshable: bool,
    ) -> Result<(OwnedDeviceId, IssuedTokens)> {
        let device_id = device_id.unwrap_or_else(|| random_string(10).into());
        let access_token = new_token("mva");
        let refresh_token = refreshable.then(|| new_token("mvr"));
        let lifetime_ms = self.config.access_token_lifetime_secs * 1000;
        let expires_ts = refreshable.then(|| now_ms() + lifetime_ms as i64);
        let new_device = self
            .store
            .create_session(NewSession {
                user_id: user.to_string(),
                device_id: device_id.to_string(),
                display_name,
                access_hash: hash_token(&access_token),
                refresh_hash: refresh_token.as_deref().map(hash_token),
                expires_ts,
            })
            .await?;
        if new_device {
            // Others sharing a room see the new device in `device_lists.changed`.
            self.notify();
        }
        Ok((
            device_id,
            IssuedTokens {
                access_token,
                refresh_token,
                expires_in_ms: refreshable.then_some(lifetime_ms),
            },
        ))
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens> {
        let access_token = new_token("mva");
        let new_refresh = new_token("mvr");
        let lifetime_ms = self.config.access_token_lifetime_secs * 1000;
        self.store
            .rotate_refresh_token(
                hash_token(refresh_token),
                hash_token(&access_token),
                hash_token(&new_refresh),
                Some(now_ms() + lifetime_ms as i64),
            )
            .await?
            .ok_or_else(|| Error::unknown_token(false))?;
        Ok(IssuedTokens {
            access_token,
            refresh_token: Some(new_refresh),
            expires_in_ms: Some(lifetime_ms),
        })
    }

    /// Whether `password` is `user`'s. Failures count against the
    /// account (`[rate_limits] failed_login_*`): past them, every attempt
    /// is refused with 429 until the allowance comes back, whatever the
    /// address it comes from. An unknown or passwordless account costs
    /// the same time as a known one.
    pub async fn check_password(&self, user: &UserId, password: &str) -> Result<bool> {
        let limits = &self.config.rate_limits;
        self.rate_limiter
            .would_allow(limits, Action::FailedLogin, user.as_str())?;
        let hash = match self.store.user(user.to_string()).await? {
            Some(row) if !row.deactivated => row.password_hash,
            _ => None,
        };
        let ok = match hash {
            Some(hash) => self.password_hashing.verify(password.to_owned(), hash).await,
            None => {
                self.password_hashing.verify_nothing(password.to_owned()).await;
                false
            }
        };
        if !ok {
            // The failure is counted; the refusal itself stays 403.
            let _ = self.rate_limiter.check(limits, Action::FailedLogin, user.as_str());
        }
        Ok(ok)
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl App {
    /// Removes devices, their tokens and whatever else belongs to them.
    pub async fn delete_devices(&self, user: &UserId, devices: Vec<String>) -> Result<()> {
        self.store.delete_devices(user.to_string(), devices.clone()).await?;
        self.notify();
        self.federate_devices_deleted(user, &devices).await;
        Ok(())
    }
}
