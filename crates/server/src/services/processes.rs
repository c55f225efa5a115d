//! Several processes serving one server name on one PostgreSQL database:
//! what a process keeps only in memory and the others must know too
//! (typing, presence) is published to all of them and applied by each.
//! Stored changes travel by the store (its commits are announced), and
//! each process wakes its own syncs for them here.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::{App, AppInner};

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Shared {
    Typing {
        room: OwnedRoomId,
        user: OwnedUserId,
        timeout_ms: Option<u64>,
    },
    Presence {
        user: OwnedUserId,
        state: String,
        /// `None`: the message is left as it is.
        status_msg: Option<Option<String>>,
        now_ms: i64,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The publishing process, which has applied the change already.
    origin: String,
    #[serde(flatten)]
    change: Shared,
}

impl App {
    /// Sets a user's typing here and in the other processes.
    pub async fn set_typing(&self, room: &RoomId, user: &OwnedUserId, timeout: Option<Duration>) {
        if self.typing.set(room, user, timeout) {
            self.notify();
        }
        self.share(Shared::Typing {
            room: room.to_owned(),
            user: user.clone(),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
        })
        .await;
    }

    /// Records presence, here and in the other processes, and wakes syncs
    /// if others would see a change.
    pub async fn set_presence(&self, user: &UserId, state: &str, status_msg: Option<Option<String>>) {
        let now_ms = crate::services::accounts::now_ms();
        let changed = self.presence.set(user, state, status_msg.clone(), now_ms);
        if changed {
            self.notify();
            self.federate_presence(user).await;
            self.share(Shared::Presence {
                user: user.to_owned(),
                state: state.to_owned(),
                status_msg,
                now_ms,
            })
            .await;
        }
    }

    async fn share(&self, change: Shared) {
        if !self.store.is_postgres() {
            return;
        }
        let envelope = Envelope {
            origin: self.process_id.clone(),
            change,
        };
        let Ok(payload) = serde_json::to_string(&envelope) else {
            return;
        };
        // Ephemeral by nature: another process missing it is a typing
        // notice not shown, not a message lost.
        if let Err(e) = self.store.publish(payload).await {
            tracing::warn!(error = %e, "could not share typing or presence with the other processes");
        }
    }

    /// Wakes this process's syncs for the other processes' commits, and
    /// applies what they share, for as long as the server runs.
    pub(crate) fn follow_other_processes(&self) {
        if !self.store.is_postgres() {
            return;
        }
        let mut commits = self.store.subscribe_other_commits();
        let weak = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            while commits.changed().await.is_ok() {
                match weak.upgrade() {
                    Some(inner) => App(inner).notify(),
                    None => break,
                }
            }
        });
        let mut rx = self.store.subscribe_messages();
        let weak = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            loop {
                let payload = match rx.recv().await {
                    Ok(p) => p,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "fell behind the other processes' typing and presence");
                        continue;
                    }
                    Err(_) => break,
                };
                let Some(inner) = weak.upgrade() else { break };
                apply(&inner, &payload);
            }
        });
    }
}

fn apply(app: &Arc<AppInner>, payload: &str) {
    let Ok(env) = serde_json::from_str::<Envelope>(payload) else {
        tracing::debug!("ignored a malformed message from another process");
        return;
    };
    if env.origin == app.process_id {
        return;
    }
    let changed = match env.change {
        Shared::Typing { room, user, timeout_ms } => {
            app.typing.set(&room, &user, timeout_ms.map(Duration::from_millis))
        }
        Shared::Presence {
            user,
            state,
            status_msg,
            now_ms,
        } => app.presence.set(&user, &state, status_msg, now_ms),
    };
    if changed {
        App(app.clone()).notify();
    }
}
