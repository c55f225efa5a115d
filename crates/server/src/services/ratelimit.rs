//! Token-bucket rate limits for the expensive or abusable endpoints: login
//! and registration (per client address: each attempt costs a password
//! hash), sending and URL previews (per user).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::{Error, Result};

/// Rates in requests per second, bursts in requests.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Turn every limit off (load tests). `MISSIVE_RATE_LIMITS=off`.
    pub enabled: bool,
    pub login_per_second: f64,
    pub login_burst: f64,
    pub registration_per_second: f64,
    pub registration_burst: f64,
    pub send_per_second: f64,
    pub send_burst: f64,
    pub url_preview_per_second: f64,
    pub url_preview_burst: f64,
    /// Wrong passwords per account, wherever they come from: past the
    /// burst, the account's logins wait for the rate to give one back.
    pub failed_login_per_second: f64,
    pub failed_login_burst: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            login_per_second: 0.5,
            login_burst: 10.0,
            registration_per_second: 0.2,
            registration_burst: 5.0,
            send_per_second: 10.0,
            send_burst: 50.0,
            url_preview_per_second: 0.5,
            url_preview_burst: 10.0,
            failed_login_per_second: 0.1,
            failed_login_burst: 5.0,
        }
    }
}

#[derive(Clone, Copy)]
pub enum Action {
    Login,
    Registration,
    Send,
    UrlPreview,
    FailedLogin,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct RateLimiter(Mutex<HashMap<(u8, String), Bucket>>);

impl RateLimiter {
    /// Takes one token for `key`, or says how long to wait for one.
    pub fn check(&self, limits: &RateLimits, action: Action, key: &str) -> Result<()> {
        self.take(limits, action, key, 1.0)
    }

    /// Says how long to wait when `key` has no token left, taking none.
    pub fn would_allow(&self, limits: &RateLimits, action: Action, key: &str) -> Result<()> {
        self.take(limits, action, key, 0.0)
    }

    fn take(&self, limits: &RateLimits, action: Action, key: &str, cost: f64) -> Result<()> {
        if !limits.enabled {
            return Ok(());
        }
        let (rate, burst) = match action {
            Action::Login => (limits.login_per_second, limits.login_burst),
            Action::Registration => (limits.registration_per_second, limits.registration_burst),
            Action::Send => (limits.send_per_second, limits.send_burst),
            Action::UrlPreview => (limits.url_preview_per_second, limits.url_preview_burst),
            Action::FailedLogin => (limits.failed_login_per_second, limits.failed_login_burst),
        };
        if rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.0.lock().expect("rate limiter lock");
        if buckets.len() > 100_000 {
            // Forget buckets that have refilled: they carry no information.
            buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets
            .entry((action as u8, key.to_owned()))
            .or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= cost;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - b.tokens) / rate);
        let mut extra = serde_json::Map::new();
        extra.insert("retry_after_ms".into(), (wait.as_millis() as u64).into());
        Err(Error::Matrix {
            status: http::StatusCode::TOO_MANY_REQUESTS,
            errcode: "M_LIMIT_EXCEEDED",
            message: "Too many requests".into(),
            extra: Some(extra),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limits = RateLimits {
            login_per_second: 1000.0,
            login_burst: 3.0,
            ..Default::default()
        };
        let l = RateLimiter::default();
        for _ in 0..3 {
            l.check(&limits, Action::Login, "1.2.3.4").unwrap();
        }
        assert!(l.check(&limits, Action::Login, "1.2.3.4").is_err());
        assert!(
            l.check(&limits, Action::Login, "5.6.7.8").is_ok(),
            "keys are independent"
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            l.check(&limits, Action::Login, "1.2.3.4").is_ok(),
            "tokens come back at the rate"
        );
        let off = RateLimits {
            enabled: false,
            ..limits
        };
        for _ in 0..100 {
            l.check(&off, Action::Send, "u").unwrap();
        }
    }
}
