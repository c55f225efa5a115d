//! User-interactive authentication: sessions of completed stages, kept in
//! memory (a restart makes the client start the flow again, which the spec allows).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::UserId;
use serde_json::{Value, json};

use crate::{App, Error, Result, services::accounts::random_string};

const SESSION_LIFETIME: Duration = Duration::from_secs(30 * 60);

#[derive(Default)]
pub struct UiaSessions(Mutex<HashMap<String, UiaState>>);

struct UiaState {
    completed: Vec<String>,
    registration_token: Option<String>,
    created: Instant,
}

pub const PASSWORD: &str = "m.login.password";
pub const DUMMY: &str = "m.login.dummy";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";

/// What a finished flow proved.
#[derive(Debug, Default)]
pub struct UiaOutcome {
    pub registration_token: Option<String>,
}

fn identifier_user(auth: &Value) -> Option<&str> {
    auth.get("identifier")
        .and_then(|i| i.get("user"))
        .and_then(Value::as_str)
        .or_else(|| auth.get("user").and_then(Value::as_str))
}

impl App {
    /// Runs one round of user-interactive auth. `user` is who must prove
    /// their password (for an authenticated endpoint). Returns when one of
    /// `flows` is complete; otherwise the 401 the client continues from.
    pub async fn uia(&self, auth: Option<&Value>, flows: &[&[&str]], user: Option<&UserId>) -> Result<UiaOutcome> {
        let challenge = |session: &str, completed: &[String], error: Option<(&str, &str)>| {
            let mut body = json!({
                "flows": flows.iter().map(|f| json!({ "stages": f })).collect::<Vec<_>>(),
                "params": {},
                "session": session,
                "completed": completed,
            });
            if let Some((code, msg)) = error {
                body["errcode"] = code.into();
                body["error"] = msg.into();
            }
            Error::Uia(body)
        };

        let Some(auth) = auth.filter(|a| a.is_object()) else {
            let session = random_string(24);
            self.uia
                .0
                .lock()
                .expect("uia lock")
                .retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
            self.uia.0.lock().expect("uia lock").insert(
                session.clone(),
                UiaState {
                    completed: vec![],
                    registration_token: None,
                    created: Instant::now(),
                },
            );
            return Err(challenge(&session, &[], None));
        };
        let session = auth
            .get("session")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| random_string(24));
        let stage = auth.get("type").and_then(Value::as_str);

        let mut error = None;
        let mut passed = None;
        let mut token_used = None;
        match stage {
            Some(DUMMY) => passed = Some(DUMMY),
            Some(PASSWORD) => {
                let claimed = identifier_user(auth).and_then(|u| {
                    if u.starts_with('@') {
                        ruma::OwnedUserId::try_from(u).ok()
                    } else {
                        self.user_id(&u.to_lowercase()).ok()
                    }
                });
                let password = auth.get("password").and_then(Value::as_str).unwrap_or_default();
                let ok = match (claimed, user) {
                    (Some(c), Some(u)) if c != *u => false,
                    (Some(c), _) => self.check_password(&c, password).await?,
                    (None, Some(u)) => self.check_password(u, password).await?,
                    (None, None) => false,
                };
                if ok {
                    passed = Some(PASSWORD);
                } else {
                    error = Some(("M_FORBIDDEN", "Invalid password"));
                }
            }
            Some(REGISTRATION_TOKEN) => {
                let token = auth.get("token").and_then(Value::as_str).unwrap_or_default();
                if self.registration_token_valid(token).await? {
                    passed = Some(REGISTRATION_TOKEN);
                    token_used = Some(token.to_owned());
                } else {
                    error = Some(("M_FORBIDDEN", "Invalid registration token"));
                }
            }
            Some(_) => error = Some(("M_UNRECOGNIZED", "Unsupported authentication type")),
            None => {}
        }

        let mut sessions = self.uia.0.lock().expect("uia lock");
        let state = sessions.entry(session.clone()).or_insert_with(|| UiaState {
            completed: vec![],
            registration_token: None,
            created: Instant::now(),
        });
        if let Some(p) = passed {
            // A stage only counts if some offered flow contains it.
            if flows.iter().any(|f| f.contains(&p)) && !state.completed.iter().any(|c| c == p) {
                state.completed.push(p.to_owned());
            }
        }
        if token_used.is_some() {
            state.registration_token = token_used;
        }
        let done = flows
            .iter()
            .any(|f| f.iter().all(|s| state.completed.iter().any(|c| c == s)));
        if done {
            let state = sessions.remove(&session).expect("present");
            return Ok(UiaOutcome {
                registration_token: state.registration_token,
            });
        }
        let completed = state.completed.clone();
        drop(sessions);
        Err(challenge(&session, &completed, error))
    }

    pub async fn registration_token_valid(&self, token: &str) -> Result<bool> {
        let Some(t) = self.store.registration_token(token.to_owned()).await? else {
            return Ok(false);
        };
        let now = crate::services::accounts::now_ms();
        Ok(t.uses_allowed.is_none_or(|u| t.completed < u) && t.expiry_ts.is_none_or(|e| e > now))
    }
}
