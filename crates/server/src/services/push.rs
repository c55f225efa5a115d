//! Push: each user's push rules (the spec's default set until they change
//! it, kept as their `m.push_rules` global account data), their evaluation
//! for every new room event into recorded notifications (what `/sync`'s
//! unread counts and `/notifications` show), pushers, and delivery of
//! notifications to HTTP push gateways (the Push Gateway API).
//!
//! Nothing here slows a send down: a new event is queued (a bounded queue;
//! when full, the event is not evaluated and a warning is logged) for a
//! background task, which evaluates it for the room's joined local members
//! and hands what must be pushed to one delivery task per pusher. Each
//! pusher's deliveries go out in order, retried with exponential backoff
//! (1 s doubling up to 10 min) for up to a day. Pending deliveries live in
//! memory only: a restart drops them.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use missive_store::{
    StoredEvent,
    push::{NewNotification, PusherRow},
};
use ruma::{
    Int, OwnedEventId, OwnedUserId, UInt, UserId,
    api::client::push::{Pusher, PusherKind, set_pusher::v3::PusherAction},
    power_levels::NotificationPowerLevels,
    push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    room_version_rules::RoomPowerLevelsRules,
    serde::Raw,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{App, AppInner, Error, Result, services::accounts::Session};

/// New events waiting to be evaluated.
const EVENT_QUEUE: usize = 10_000;
/// Deliveries waiting for one pusher; the oldest are dropped beyond this.
const PUSHER_QUEUE: usize = 100;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(600);
/// A delivery not done within this is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// The push service in [`App`]: the queue of new events, the deliveries
/// waiting for each pusher, and the HTTP client they go out with.
pub struct Push {
    events: mpsc::Sender<OwnedEventId>,
    pushers: Arc<Mutex<HashMap<PusherKey, VecDeque<Delivery>>>>,
    http: Option<reqwest::Client>,
    /// Serialises read-modify-write changes of users' rules.
    rules_lock: tokio::sync::Mutex<()>,
    /// Events queued and events evaluated, so a rule change can wait for
    /// the events sent before it to be judged by the rules they were sent under.
    queued: Arc<std::sync::atomic::AtomicU64>,
    evaluated: Arc<std::sync::atomic::AtomicU64>,
    progress: Arc<tokio::sync::Notify>,
    /// The unread count each pusher was last told, so that a receipt that
    /// changes nothing sends nothing.
    badges: Mutex<HashMap<PusherKey, u64>>,
}

/// The receiving end of the event queue, until [`PushWorker::spawn`].
pub struct PushWorker(mpsc::Receiver<OwnedEventId>);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PusherKey {
    user_id: OwnedUserId,
    app_id: String,
    pushkey: String,
}

struct Delivery {
    url: String,
    body: Value,
    queued: Instant,
}

impl Push {
    /// The push service; its HTTP client trusts the system's certificate
    /// store and, if configured, `push_ca_file` (a gateway behind the
    /// ministry's own CA).
    pub fn new(config: &crate::Config) -> Result<(Push, PushWorker)> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.push_ca_file {
            for c in crate::services::federation::ca_file("push_ca_file", path)? {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| tracing::error!(error = %e, "no HTTP client: push notifications will not be delivered"))
            .ok();
        let push = Push {
            events: tx,
            pushers: Default::default(),
            http,
            rules_lock: Default::default(),
            queued: Default::default(),
            evaluated: Default::default(),
            progress: Default::default(),
            badges: Default::default(),
        };
        Ok((push, PushWorker(rx)))
    }
}

impl PushWorker {
    /// Starts the task that evaluates new events. It holds the server only
    /// weakly and ends with it.
    pub fn spawn(self, app: &App) {
        let weak = Arc::downgrade(&app.0);
        let mut rx = self.0;
        tokio::spawn(async move {
            while let Some(event_id) = rx.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                let app = App(inner);
                if let Err(e) = app.evaluate_push(&event_id).await {
                    tracing::warn!(error = %e, %event_id, "push rule evaluation failed");
                }
                app.push.evaluated.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                app.push.progress.notify_waiters();
            }
        });
    }
}

/// The parsed ruleset in `m.push_rules` account data, or the default one.
fn ruleset_of(user: &UserId, content: Option<&Value>) -> Ruleset {
    match content.and_then(|c| c.get("global")) {
        Some(global) => serde_json::from_value(global.clone()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, %user, "unreadable push rules, using the defaults");
            Ruleset::server_default(user)
        }),
        None => Ruleset::server_default(user),
    }
}

impl PusherKey {
    fn of(user: &UserId, p: PusherRow) -> Self {
        PusherKey {
            user_id: user.to_owned(),
            app_id: p.app_id,
            pushkey: p.pushkey,
        }
    }
}

/// An HTTP pusher's gateway URL, and the pusher's `data` without it (what
/// the gateway is sent back).
fn gateway_of(p: &PusherRow) -> Option<(String, Value)> {
    let mut data = p.json.get("data").cloned().unwrap_or_else(|| json!({}));
    let url = data
        .as_object_mut()
        .and_then(|d| d.remove("url"))
        .and_then(|u| u.as_str().map(str::to_owned))?;
    Some((url, data))
}

/// The `tweaks` of a notification: every `set_tweak` action, by name.
fn tweaks(actions: &[Action]) -> Value {
    let mut out = serde_json::Map::new();
    for a in actions {
        if let Ok(v) = serde_json::to_value(a)
            && let Some(name) = v.get("set_tweak").and_then(Value::as_str)
        {
            out.insert(name.to_owned(), v.get("value").cloned().unwrap_or(Value::Bool(true)));
        }
    }
    Value::Object(out)
}

/// Checks an HTTP pusher's URL: http(s), with a host, ending in the notify path.
fn valid_pusher_url(url: &str) -> bool {
    match reqwest::Url::parse(url) {
        Ok(u) => matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path().ends_with(NOTIFY_PATH),
        Err(_) => false,
    }
}

impl App {
    /// Queues a new room event for push rule evaluation. Never waits: when
    /// the queue is full the event goes unevaluated.
    pub fn queue_push(&self, pdu: &missive_core::pdu::Pdu) {
        match self.push.events.try_send(pdu.event_id.clone()) {
            Ok(()) => {
                self.push.queued.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            Err(e) => tracing::warn!(event_id = %pdu.event_id, error = %e, "push queue full, event not evaluated"),
        }
    }

    /// A user's push rules.
    pub async fn push_rules(&self, user: &UserId) -> Result<Ruleset> {
        let content = self
            .store
            .account_data(user.to_string(), String::new(), "m.push_rules".into())
            .await?;
        Ok(ruleset_of(user, content.as_ref()))
    }

    /// Changes a user's push rules and stores them, for clients to sync.
    pub async fn update_push_rules(
        &self,
        user: &UserId,
        change: impl FnOnce(&mut Ruleset) -> Result<()>,
    ) -> Result<()> {
        let _guard = self.push.rules_lock.lock().await;
        // Events sent before this change are judged by the rules they were
        // sent under: let the evaluator catch up first (bounded, never stuck).
        let target = self.push.queued.load(std::sync::atomic::Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.push.evaluated.load(std::sync::atomic::Ordering::Acquire) < target {
            let progressed = self.push.progress.notified();
            tokio::pin!(progressed);
            // Registered before the check, so a wake-up in between is not lost.
            progressed.as_mut().enable();
            if self.push.evaluated.load(std::sync::atomic::Ordering::Acquire) >= target
                || tokio::time::timeout_at(deadline, progressed).await.is_err()
            {
                break;
            }
        }
        let mut rules = self.push_rules(user).await?;
        change(&mut rules)?;
        let global = serde_json::to_value(&rules).map_err(|e| Error::Internal(e.to_string()))?;
        self.store
            .set_account_data(
                user.to_string(),
                String::new(),
                "m.push_rules".into(),
                json!({ "global": global }),
            )
            .await?;
        self.notify();
        Ok(())
    }

    /// Evaluates a new event against the push rules of the room's joined
    /// local members (and of a local user it invites), records the
    /// notifications and queues what must be pushed.
    async fn evaluate_push(&self, event_id: &OwnedEventId) -> Result<()> {
        let Some(ev) = self.store.event(event_id.to_string()).await? else {
            return Ok(());
        };
        let pdu = &ev.pdu;
        let room_id = &pdu.room_id;
        let members = self.store.room_members(room_id.to_string()).await?;
        let joined = members.iter().filter(|(_, m)| m == "join").count();
        let invitee = (pdu.kind.to_string() == "m.room.member" && pdu.membership().as_deref() == Some("invite"))
            .then(|| pdu.state_key.clone())
            .flatten();
        let mut candidates: Vec<OwnedUserId> = members
            .iter()
            .filter(|(u, m)| m == "join" || Some(u) == invitee.as_ref())
            .filter_map(|(u, _)| OwnedUserId::try_from(u.as_str()).ok())
            .filter(|u| u.server_name() == self.server_name && *u != pdu.sender)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        // Nobody is notified of a message (or an invite) from someone they ignore.
        if !pdu.is_state() || invitee.is_some() {
            let ignoring = self.users_ignoring(&candidates, &pdu.sender).await?;
            candidates.retain(|u| !ignoring.contains(u));
            if candidates.is_empty() {
                return Ok(());
            }
        }
        // Those who were members when the event was sent, not only now.
        let (targets, names) = self.members_at(&ev, candidates).await?;
        if targets.is_empty() {
            return Ok(());
        }

        let version = self.room_version(room_id).await?;
        let pl = self.power_levels(room_id).await?;
        let mut notifications = NotificationPowerLevels::new();
        notifications.room = Int::new_saturating(pl.notification("room"));
        // Only the sender's level is ever asked about.
        let pl_ctx = PushConditionPowerLevelsCtx::new(
            [(pdu.sender.clone(), Int::new_saturating(pl.user(&pdu.sender)))].into(),
            Int::from(0),
            notifications,
            RoomPowerLevelsRules::new(&version.rules.authorization, []),
        );
        let rules = self
            .store
            .push_rules_of(targets.iter().map(|u| u.to_string()).collect())
            .await?;
        let event: Raw<Value> = Raw::new(&pdu.to_client_event(None)).map_err(|e| Error::Internal(e.to_string()))?;
        let member_count = UInt::new(joined as u64).unwrap_or(UInt::MAX);
        let thread_id = thread_of(&ev);

        let mut rows = vec![];
        let mut to_push = vec![];
        for user in targets {
            let ruleset = ruleset_of(&user, rules.get(user.as_str()));
            let name = names.get(&user).cloned().unwrap_or_default();
            let ctx = PushConditionRoomCtx::new(room_id.clone(), member_count, user.clone(), name)
                .with_power_levels(pl_ctx.clone());
            let actions = ruleset.get_actions(&event, &ctx).await.to_vec();
            if !actions.iter().any(Action::should_notify) {
                continue;
            }
            rows.push(NewNotification {
                user_id: user.to_string(),
                room_id: room_id.to_string(),
                event_id: pdu.event_id.to_string(),
                event_pos: ev.stream_pos,
                thread_id: thread_id.clone(),
                actions: serde_json::to_value(&actions).map_err(|e| Error::Internal(e.to_string()))?,
                highlight: actions.iter().any(Action::is_highlight),
            });
            if actions.iter().any(|a| matches!(a, Action::Notify)) {
                to_push.push((user, actions));
            }
        }
        if self.store.add_notifications(rows).await?.is_some() {
            self.notify();
        }
        for (user, actions) in to_push {
            if let Err(e) = self.queue_deliveries(&ev, &user, &actions).await {
                tracing::warn!(error = %e, %user, event_id = %pdu.event_id, "push delivery not queued");
            }
        }
        Ok(())
    }

    /// Of these users (joined now, or invited by this event), those whose
    /// membership at the event was the same, with their display names in
    /// the room.
    async fn members_at(
        &self,
        ev: &StoredEvent,
        users: Vec<OwnedUserId>,
    ) -> Result<(Vec<OwnedUserId>, HashMap<OwnedUserId, String>)> {
        let now = self.store.current_state_ids(ev.pdu.room_id.to_string()).await?;
        let then = self.store.state_at_group(ev.state_group).await?;
        let mut ids = vec![];
        for u in &users {
            let key = ("m.room.member".into(), u.to_string());
            if let Some(id) = now.get(&key) {
                ids.push(id.to_string());
                if let Some(at) = then.get(&key).filter(|at| *at != id) {
                    ids.push(at.to_string());
                }
            }
        }
        let events: HashMap<OwnedEventId, StoredEvent> = self
            .store
            .events(ids)
            .await?
            .into_iter()
            .map(|e| (e.pdu.event_id.clone(), e))
            .collect();
        let mut targets = vec![];
        let mut names = HashMap::new();
        for u in users {
            let key = ("m.room.member".into(), u.to_string());
            let (Some(now_ev), Some(then_ev)) = (
                now.get(&key).and_then(|id| events.get(id)),
                then.get(&key).and_then(|id| events.get(id)),
            ) else {
                continue;
            };
            if then_ev.pdu.membership() != now_ev.pdu.membership() {
                continue;
            }
            if let Some(name) = now_ev.pdu.content_value().get("displayname").and_then(Value::as_str) {
                names.insert(u.clone(), name.to_owned());
            }
            targets.push(u);
        }
        Ok((targets, names))
    }

    /// Builds the Push Gateway request of a notification for each of the
    /// user's HTTP pushers and queues it.
    async fn queue_deliveries(&self, ev: &StoredEvent, user: &UserId, actions: &[Action]) -> Result<()> {
        let pushers = self.store.pushers(user.to_string()).await?;
        let pushers: Vec<_> = pushers.into_iter().filter(|p| p.kind == "http").collect();
        if pushers.is_empty() || self.push.http.is_none() {
            return Ok(());
        }
        let pdu = &ev.pdu;
        let unread = self.store.unread_notification_total(user.to_string()).await?;
        // The badge, zero included (gateways of the Sygnal era read it to
        // clear a badge); missed calls are not counted.
        let counts = json!({ "unread": unread });
        let tweaks = tweaks(actions);
        let high = tweaks.get("highlight").is_some_and(|h| h != &Value::Bool(false)) || tweaks.get("sound").is_some();
        let prio = if high { "high" } else { "low" };

        // The full form, filled in once for all pushers that want it.
        let mut full = None;
        for p in pushers {
            let Some((url, data)) = gateway_of(&p) else { continue };
            let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
            let mut device = json!({
                "app_id": p.app_id,
                "pushkey": p.pushkey,
                "pushkey_ts": p.pushkey_ts,
                "data": data,
            });
            if !event_id_only && tweaks.as_object().is_some_and(|t| !t.is_empty()) {
                device["tweaks"] = tweaks.clone();
            }
            let mut notification = json!({
                "event_id": pdu.event_id,
                "room_id": pdu.room_id,
                "prio": prio,
                "counts": counts,
                "devices": [device],
            });
            if !event_id_only {
                // `id` is the legacy name of `event_id`, which older gateways read.
                notification["id"] = pdu.event_id.to_string().into();
                if full.is_none() {
                    full = Some(self.notification_details(ev, user).await?);
                }
                if let (Some(obj), Some(Value::Object(details))) = (notification.as_object_mut(), &full) {
                    obj.extend(details.clone());
                }
            }
            let key = PusherKey::of(user, p);
            self.note_badge(&key, unread);
            self.push_to(key, url, notification);
        }
        Ok(())
    }

    /// Queues one notification for a pusher's gateway.
    fn push_to(&self, key: PusherKey, url: String, notification: Value) {
        self.enqueue_delivery(
            key,
            Delivery {
                url,
                body: json!({ "notification": notification }),
                queued: Instant::now(),
            },
        );
    }

    /// Records the count a pusher is told; whether it is news to it.
    fn note_badge(&self, key: &PusherKey, unread: u64) -> bool {
        let mut badges = self.push.badges.lock().unwrap_or_else(|e| e.into_inner());
        if badges.len() >= 100_000 {
            badges.clear();
        }
        badges.insert(key.clone(), unread) != Some(unread)
    }

    /// Tells the user's HTTP pushers their new unread count after a read
    /// receipt, so that the badge on their phones follows (the gateway
    /// sees a notification without an event). Failures are logged only.
    pub async fn push_badge(&self, user: &UserId) {
        if self.push.http.is_none() {
            return;
        }
        let pushers = match self.store.pushers(user.to_string()).await {
            Ok(p) => p.into_iter().filter(|p| p.kind == "http").collect::<Vec<_>>(),
            Err(e) => return tracing::warn!(error = %e, %user, "no badge update: pushers unreadable"),
        };
        if pushers.is_empty() {
            return;
        }
        let unread = match self.store.unread_notification_total(user.to_string()).await {
            Ok(n) => n,
            Err(e) => return tracing::warn!(error = %e, %user, "no badge update: unread count unreadable"),
        };
        for p in pushers {
            let Some((url, data)) = gateway_of(&p) else { continue };
            let notification = json!({
                "id": "",
                "type": null,
                "sender": "",
                "counts": { "unread": unread },
                "devices": [{
                    "app_id": p.app_id,
                    "pushkey": p.pushkey,
                    "pushkey_ts": p.pushkey_ts,
                    "data": data,
                }],
            });
            let key = PusherKey::of(user, p);
            if self.note_badge(&key, unread) {
                self.push_to(key, url, notification);
            }
        }
    }

    /// The fields of a notification beyond `event_id_only`: the event and
    /// names to show it with.
    async fn notification_details(&self, ev: &StoredEvent, user: &UserId) -> Result<Value> {
        let pdu = &ev.pdu;
        let mut out = json!({
            "type": pdu.kind.to_string(),
            "sender": pdu.sender,
            "content": pdu.content_value(),
        });
        let sender_name = self
            .state_content(&pdu.room_id, "m.room.member", pdu.sender.as_str())
            .await?
            .and_then(|c| c.get("displayname").and_then(Value::as_str).map(str::to_owned));
        if let Some(n) = sender_name {
            out["sender_display_name"] = n.into();
        }
        if let Some(n) = self
            .state_content(&pdu.room_id, "m.room.name", "")
            .await?
            .and_then(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
            .filter(|n| !n.is_empty())
        {
            out["room_name"] = n.into();
        }
        if let Some(a) = self
            .state_content(&pdu.room_id, "m.room.canonical_alias", "")
            .await?
            .and_then(|c| c.get("alias").and_then(Value::as_str).map(str::to_owned))
        {
            out["room_alias"] = a.into();
        }
        if pdu.kind.to_string() == "m.room.member" {
            out["user_is_target"] = (pdu.state_key.as_deref() == Some(user.as_str())).into();
            if let Some(m) = pdu.membership() {
                out["membership"] = m.into();
            }
        }
        Ok(out)
    }

    /// Adds a delivery to its pusher's queue, starting the pusher's task if
    /// it has none.
    fn enqueue_delivery(&self, key: PusherKey, delivery: Delivery) {
        let start = {
            let mut map = self.push.pushers.lock().expect("push queues");
            let queue = map.entry(key.clone()).or_default();
            let start = queue.is_empty();
            if queue.len() >= PUSHER_QUEUE {
                // The head is in flight: drop the oldest behind it.
                queue.remove(1);
                tracing::warn!(app_id = %key.app_id, user = %key.user_id, "pusher queue full, oldest notification dropped");
            }
            queue.push_back(delivery);
            start
        };
        if start {
            let weak = Arc::downgrade(&self.0);
            tokio::spawn(deliver_all(weak, key));
        }
    }

    /// Sets or deletes a pusher (`/pushers/set`).
    pub async fn set_pusher(&self, session: &Session, action: PusherAction) -> Result<()> {
        let user = &session.user_id;
        let data = match action {
            PusherAction::Delete(ids) => {
                self.store
                    .delete_pusher(user.to_string(), ids.app_id, ids.pushkey)
                    .await?;
                return Ok(());
            }
            PusherAction::Post(data) => data,
            _ => return Err(Error::invalid_param("Unknown pusher action")),
        };
        let pusher = data.pusher;
        if pusher.ids.app_id.is_empty() || pusher.ids.app_id.len() > 64 {
            return Err(Error::invalid_param("app_id must be 1 to 64 bytes"));
        }
        if pusher.ids.pushkey.is_empty() || pusher.ids.pushkey.len() > 512 {
            return Err(Error::invalid_param("pushkey must be 1 to 512 bytes"));
        }
        match &pusher.kind {
            PusherKind::Http(http) => {
                if !valid_pusher_url(&http.url) {
                    return Err(Error::invalid_param(format!(
                        "data.url must be an http(s) URL ending in {NOTIFY_PATH}"
                    )));
                }
            }
            PusherKind::Email(_) => return Err(Error::invalid_param("email pushers are not supported")),
            _ => return Err(Error::invalid_param("Unknown pusher kind")),
        }
        let json = serde_json::to_value(&pusher).map_err(|e| Error::Internal(e.to_string()))?;
        self.store
            .set_pusher(
                PusherRow {
                    user_id: user.to_string(),
                    app_id: pusher.ids.app_id.clone(),
                    pushkey: pusher.ids.pushkey.clone(),
                    kind: "http".into(),
                    json,
                    pushkey_ts: crate::services::accounts::now_ms() / 1000,
                    device_id: Some(session.device_id.to_string()),
                },
                data.append,
            )
            .await?;
        Ok(())
    }

    /// A user's pushers (`/pushers`).
    pub async fn pushers(&self, user: &UserId) -> Result<Vec<Pusher>> {
        let rows = self.store.pushers(user.to_string()).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| serde_json::from_value(r.json).ok())
            .collect())
    }
}

/// The thread an event is in (`main` when none), for threaded receipts.
fn thread_of(ev: &StoredEvent) -> String {
    match crate::services::rooms::relation_of(&ev.pdu) {
        (Some(t), Some(root)) if t == "m.thread" => root,
        _ => "main".to_owned(),
    }
}

/// What a push gateway said to one request.
enum Outcome {
    /// Accepted; these pushkeys are rejected (to be deleted).
    Done(Vec<String>),
    /// Refused for good (a client error): not retried.
    Refused(u16),
    /// Worth another try later.
    Retry(String),
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Outcome {
    let res = match http.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let status = res.status();
    if status.is_success() {
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let rejected = body
            .get("rejected")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Outcome::Done(rejected)
    } else if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
        Outcome::Refused(status.as_u16())
    } else {
        Outcome::Retry(format!("status {status}"))
    }
}

/// Delivers one pusher's queue in order until it is empty, then ends.
async fn deliver_all(weak: Weak<AppInner>, key: PusherKey) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let next = {
            let mut map = inner.push.pushers.lock().expect("push queues");
            // The queue stays (empty) while its head is in flight, so that
            // new deliveries do not start a second task.
            match map
                .get_mut(&key)
                .and_then(|q| q.front().map(|d| (d.url.clone(), d.body.clone(), d.queued)))
            {
                Some(d) => d,
                None => {
                    map.remove(&key);
                    return;
                }
            }
        };
        drop(inner);
        deliver_one(&weak, &key, next).await;
        let Some(inner) = weak.upgrade() else { return };
        let mut map = inner.push.pushers.lock().expect("push queues");
        if let Some(q) = map.get_mut(&key) {
            q.pop_front();
            if q.is_empty() {
                map.remove(&key);
                return;
            }
        }
    }
}

/// Sends one notification, retrying with backoff until it is accepted,
/// refused, or a day old.
async fn deliver_one(weak: &Weak<AppInner>, key: &PusherKey, (url, body, queued): (String, Value, Instant)) {
    let mut wait = FIRST_RETRY;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let Some(http) = inner.push.http.clone() else { return };
        drop(inner);
        match post(&http, &url, &body).await {
            Outcome::Done(rejected) => {
                if rejected.contains(&key.pushkey)
                    && let Some(inner) = weak.upgrade()
                {
                    tracing::info!(app_id = %key.app_id, user = %key.user_id, "push gateway rejected a pushkey, pusher deleted");
                    let deleted = App(inner)
                        .store
                        .delete_pusher(key.user_id.to_string(), key.app_id.clone(), key.pushkey.clone())
                        .await;
                    if let Err(e) = deleted {
                        tracing::warn!(error = %e, "deleting a rejected pusher failed");
                    }
                }
                return;
            }
            Outcome::Refused(status) => {
                tracing::warn!(%url, status, "push gateway refused a notification");
                return;
            }
            Outcome::Retry(reason) => {
                if queued.elapsed() + wait > GIVE_UP_AFTER {
                    tracing::warn!(%url, %reason, "push notification given up after a day of retries");
                    return;
                }
                tracing::debug!(%url, %reason, retry_in = ?wait, "push gateway unreachable, will retry");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_urls() {
        assert!(valid_pusher_url("https://push.example.org/_matrix/push/v1/notify"));
        assert!(valid_pusher_url("http://127.0.0.1:8080/_matrix/push/v1/notify"));
        assert!(!valid_pusher_url("https://push.example.org/"));
        assert!(!valid_pusher_url("ftp://push.example.org/_matrix/push/v1/notify"));
        assert!(!valid_pusher_url("/_matrix/push/v1/notify"));
        assert!(!valid_pusher_url("not a url"));
    }

    #[test]
    fn tweaks_by_name() {
        let actions: Vec<Action> = serde_json::from_value(
            json!(["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }]),
        )
        .unwrap();
        assert_eq!(tweaks(&actions), json!({ "sound": "default", "highlight": true }));
    }
}
