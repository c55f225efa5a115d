//! What other servers may read here: server ACLs, history visibility for a
//! server, single events, the state at an event, auth chains, backfill and
//! missing events, and the queries (profile, alias, devices).
//!
//! Every room read checks the room's server ACL and that the asking server
//! is in the room (or the room is world-readable); events a server may not
//! see under the history visibility are served redacted.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use missive_core::{auth::StateMap, visibility::HistoryVisibility};
use missive_store::{Direction, StoredEvent};
use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, ServerName, UserId,
};
use serde_json::{Value, value::RawValue};

use crate::{App, Error, Result};

/// Most events one `/backfill` or `/get_missing_events` answers with.
const MAX_WALK: usize = 100;
/// Auth chains longer than this are refused rather than loaded whole.
const MAX_AUTH_CHAIN: usize = 100_000;

/// Whether a glob with `*` (any run) and `?` (one character) matches the
/// whole of `name`, ignoring ASCII case (server names are DNS names).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().map(|c| c.to_ascii_lowercase()).collect();
    let n: Vec<char> = name.chars().map(|c| c.to_ascii_lowercase()).collect();
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether an `m.room.server_acl` content lets `server` in. Ports are not
/// part of the match; an IP literal needs `allow_ip_literals` (default true);
/// a deny wins over an allow; no allow entry matching means denied.
pub fn acl_allows(content: &Value, server: &ServerName) -> bool {
    let host = server.host();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if server.is_ip_literal() && content.get("allow_ip_literals").and_then(Value::as_bool) == Some(false) {
        return false;
    }
    let globs = |key: &str| -> Vec<String> {
        content
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    if globs("deny").iter().any(|g| glob_matches(g, host)) {
        return false;
    }
    globs("allow").iter().any(|g| glob_matches(g, host))
}

/// The server part of a user ID held as a string (a state key).
fn server_of(user_id: &str) -> Option<&str> {
    user_id.split_once(':').map(|(_, s)| s)
}

/// A node of the room DAG, as the walks below see it.
pub(crate) trait DagNode {
    fn node_id(&self) -> &EventId;
    fn node_room(&self) -> &RoomId;
    fn node_depth(&self) -> u64;
    fn node_prevs(&self) -> &[OwnedEventId];
}

impl DagNode for StoredEvent {
    fn node_id(&self) -> &EventId {
        &self.pdu.event_id
    }
    fn node_room(&self) -> &RoomId {
        &self.pdu.room_id
    }
    fn node_depth(&self) -> u64 {
        self.pdu.depth
    }
    fn node_prevs(&self) -> &[OwnedEventId] {
        &self.pdu.prev_events
    }
}

/// Loads the stored events among the IDs (unknown ones are left out).
pub(crate) trait Loader<N> {
    fn load(&mut self, ids: Vec<OwnedEventId>) -> impl Future<Output = Result<Vec<N>>> + Send;
}

/// Events from the store.
struct StoreLoader<'a>(&'a App);

impl Loader<StoredEvent> for StoreLoader<'_> {
    fn load(&mut self, ids: Vec<OwnedEventId>) -> impl Future<Output = Result<Vec<StoredEvent>>> + Send {
        let app = self.0;
        async move {
            Ok(app
                .store
                .events(ids.into_iter().map(|i| i.to_string()).collect())
                .await?)
        }
    }
}

/// `/backfill`: from the given events (included) back through
/// `prev_events`, deepest first, at most `limit` events of the room.
pub(crate) async fn walk_backfill<N: DagNode, L: Loader<N>>(
    room: &RoomId,
    from: Vec<OwnedEventId>,
    limit: usize,
    mut loader: L,
) -> Result<Vec<N>> {
    let mut seen: HashSet<OwnedEventId> = from.iter().cloned().collect();
    let mut loaded: HashMap<OwnedEventId, N> = HashMap::new();
    let mut heap: BinaryHeap<(u64, OwnedEventId)> = BinaryHeap::new();
    for n in loader.load(from).await? {
        if n.node_room() == room {
            heap.push((n.node_depth(), n.node_id().to_owned()));
            loaded.insert(n.node_id().to_owned(), n);
        }
    }
    let mut out = vec![];
    while out.len() < limit {
        let Some((_, id)) = heap.pop() else { break };
        let Some(n) = loaded.remove(&id) else { continue };
        let prevs: Vec<OwnedEventId> = n
            .node_prevs()
            .iter()
            .filter(|p| seen.insert((*p).clone()))
            .cloned()
            .collect();
        out.push(n);
        if prevs.is_empty() {
            continue;
        }
        for p in loader.load(prevs).await? {
            if p.node_room() == room {
                heap.push((p.node_depth(), p.node_id().to_owned()));
                loaded.insert(p.node_id().to_owned(), p);
            }
        }
    }
    Ok(out)
}

/// `/get_missing_events`: the events before `latest` (not included) back
/// through `prev_events`, not going into or past `earliest`, nor below
/// `min_depth`, at most `limit`, oldest first.
pub(crate) async fn walk_missing<N: DagNode, L: Loader<N>>(
    room: &RoomId,
    latest: Vec<OwnedEventId>,
    earliest: &[OwnedEventId],
    min_depth: u64,
    limit: usize,
    mut loader: L,
) -> Result<Vec<N>> {
    let mut seen: HashSet<OwnedEventId> = latest.iter().chain(earliest).cloned().collect();
    let mut frontier: Vec<OwnedEventId> = loader
        .load(latest)
        .await?
        .into_iter()
        .filter(|n| n.node_room() == room)
        .flat_map(|n| n.node_prevs().to_vec())
        .collect();
    let mut out: Vec<N> = vec![];
    while !frontier.is_empty() && out.len() < limit {
        let batch: Vec<OwnedEventId> = frontier.drain(..).filter(|id| seen.insert(id.clone())).collect();
        if batch.is_empty() {
            break;
        }
        let mut found = loader.load(batch).await?;
        // Deepest first, so that a cut by `limit` keeps the events nearest `latest`.
        found.sort_by(|a, b| {
            b.node_depth()
                .cmp(&a.node_depth())
                .then_with(|| a.node_id().cmp(b.node_id()))
        });
        for n in found {
            if n.node_room() != room || n.node_depth() < min_depth {
                continue;
            }
            if out.len() == limit {
                break;
            }
            frontier.extend(n.node_prevs().iter().cloned());
            out.push(n);
        }
    }
    out.sort_by(|a, b| {
        a.node_depth()
            .cmp(&b.node_depth())
            .then_with(|| a.node_id().cmp(b.node_id()))
    });
    Ok(out)
}

impl App {
    /// Refuses (403) a server the room's `m.room.server_acl` keeps out.
    /// Our own server is never refused.
    pub async fn check_server_acl(&self, room_id: &RoomId, server: &ServerName) -> Result<()> {
        if server == self.server_name {
            return Ok(());
        }
        match self.state_content(room_id, "m.room.server_acl", "").await? {
            Some(acl) if !acl_allows(&acl, server) => Err(Error::forbidden("Server is banned by the room's ACL")),
            _ => Ok(()),
        }
    }

    /// Whether `server` has a user joined to the room now.
    pub async fn server_in_room(&self, room_id: &RoomId, server: &ServerName) -> Result<bool> {
        Ok(self
            .store
            .joined_members(room_id.to_string())
            .await?
            .iter()
            .any(|u| server_of(u) == Some(server.as_str())))
    }

    /// The checks before a server reads a room: the room exists here, its
    /// ACL lets the server in, and the server has a joined user (or the
    /// room is world-readable).
    pub async fn check_server_reads_room(&self, room_id: &RoomId, server: &ServerName) -> Result<()> {
        if self.store.room(room_id.to_string()).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        self.check_server_acl(room_id, server).await?;
        if self.server_in_room(room_id, server).await? {
            return Ok(());
        }
        let vis = self
            .state_content(room_id, "m.room.history_visibility", "")
            .await?
            .and_then(|c| c.get("history_visibility").and_then(Value::as_str).map(str::to_owned));
        if HistoryVisibility::parse(vis.as_deref()) == HistoryVisibility::WorldReadable {
            return Ok(());
        }
        Err(Error::forbidden("Server is not in the room"))
    }

    /// History visibility for a server (the asking server is known to be in
    /// the room): `world_readable` and `shared` events are visible (a
    /// server in the room sees the shared history, as its users do);
    /// `invited` ones if one of its users was invited or joined at the
    /// event; `joined` ones if one was joined.
    pub async fn server_can_see_event(&self, server: &ServerName, event: &StoredEvent) -> Result<bool> {
        self.server_sees_group(server, event.state_group).await
    }

    async fn server_sees_group(&self, server: &ServerName, group: i64) -> Result<bool> {
        let state = self.store.state_at_group(group).await?;
        let hv = state.get(&("m.room.history_visibility".into(), String::new())).cloned();
        let vis = match hv {
            Some(id) => self.store.event(id.to_string()).await?.and_then(|e| {
                e.pdu
                    .content_value()
                    .get("history_visibility")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }),
            None => None,
        };
        let wanted: &[&str] = match HistoryVisibility::parse(vis.as_deref()) {
            HistoryVisibility::WorldReadable | HistoryVisibility::Shared => return Ok(true),
            HistoryVisibility::Invited => &["invite", "join"],
            HistoryVisibility::Joined => &["join"],
        };
        let members: Vec<String> = state
            .iter()
            .filter(|((t, k), _)| t.to_string() == "m.room.member" && server_of(k) == Some(server.as_str()))
            .map(|(_, id)| id.to_string())
            .collect();
        Ok(self
            .store
            .events(members)
            .await?
            .iter()
            .any(|e| e.pdu.membership().is_some_and(|m| wanted.contains(&m.as_str()))))
    }

    /// An event's PDU as `server` may have it: whole, or redacted when the
    /// history visibility hides it from the server.
    async fn pdu_for_server(
        &self,
        server: &ServerName,
        ev: &StoredEvent,
        cache: &mut HashMap<i64, bool>,
    ) -> Result<Box<RawValue>> {
        let visible = match cache.get(&ev.state_group) {
            Some(v) => *v,
            None => {
                let v = self.server_sees_group(server, ev.state_group).await?;
                cache.insert(ev.state_group, v);
                v
            }
        };
        if visible {
            return Ok(ev.pdu.json.clone());
        }
        let version = self.room_version(&ev.pdu.room_id).await?;
        let obj: CanonicalJsonObject =
            serde_json::from_str(ev.pdu.json.get()).map_err(|e| Error::Internal(e.to_string()))?;
        let redacted = ruma::canonical_json::redact(obj, &version.rules.redaction, None)
            .map_err(|e| Error::Internal(e.to_string()))?;
        serde_json::value::to_raw_value(&redacted).map_err(|e| Error::Internal(e.to_string()))
    }

    /// `GET /event/{eventId}`.
    pub async fn federation_event(&self, origin: &ServerName, event_id: &EventId) -> Result<Box<RawValue>> {
        let ev = self
            .store
            .event(event_id.to_string())
            .await?
            .ok_or_else(|| Error::not_found("Unknown event"))?;
        self.check_server_reads_room(&ev.pdu.room_id, origin).await?;
        self.pdu_for_server(origin, &ev, &mut HashMap::new()).await
    }

    /// A room event asked for by another server, after the room checks.
    async fn event_in_room(&self, origin: &ServerName, room_id: &RoomId, event_id: &EventId) -> Result<StoredEvent> {
        self.check_server_reads_room(room_id, origin).await?;
        self.store
            .event(event_id.to_string())
            .await?
            .filter(|e| e.pdu.room_id == room_id)
            .ok_or_else(|| Error::not_found("Unknown event"))
    }

    /// The room state before an event (what `/state` and `/state_ids` give).
    /// State groups hold the state after each event: for a state event the
    /// state before is its single parent's, else the group without what
    /// the event changed. Outliers have no known state.
    pub async fn state_before_event(&self, ev: &StoredEvent) -> Result<StateMap> {
        if ev.stream_pos < 0 {
            return Err(Error::not_found("The state at this event is not known here"));
        }
        let after = self.store.state_at_group(ev.state_group).await?;
        let Some(sk) = &ev.pdu.state_key else {
            return Ok((*after).clone());
        };
        let key = (ev.pdu.kind.to_string().into(), sk.clone());
        if after.get(&key) != Some(&ev.pdu.event_id) {
            // The event did not take effect (lost a resolution): nothing to undo.
            return Ok((*after).clone());
        }
        if let [prev] = ev.pdu.prev_events.as_slice()
            && let Some(p) = self.store.event(prev.to_string()).await?
            && p.stream_pos > 0
        {
            return Ok((*self.store.state_at_group(p.state_group).await?).clone());
        }
        let mut before = (*after).clone();
        let replaced = ev
            .unsigned
            .as_ref()
            .and_then(|u| u.get("replaces_state"))
            .and_then(Value::as_str)
            .and_then(|s| OwnedEventId::try_from(s).ok());
        match replaced {
            Some(r) => before.insert(key, r),
            None => before.remove(&key),
        };
        Ok(before)
    }

    /// Every event reachable from `ids` through `auth_events` (not `ids`
    /// themselves unless reachable), as stored here.
    pub async fn auth_chain_of(&self, ids: impl IntoIterator<Item = OwnedEventId>) -> Result<Vec<StoredEvent>> {
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut frontier: Vec<OwnedEventId> = ids.into_iter().collect();
        let mut out = vec![];
        while !frontier.is_empty() {
            let batch: Vec<String> = frontier
                .drain(..)
                .filter(|id| seen.insert(id.clone()))
                .map(|id| id.to_string())
                .collect();
            if batch.is_empty() {
                break;
            }
            if seen.len() > MAX_AUTH_CHAIN {
                return Err(Error::Internal("auth chain too long".into()));
            }
            for ev in self.store.events(batch).await? {
                frontier.extend(ev.pdu.auth_events.iter().cloned());
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// The state before an event and the auth chain of that state.
    async fn state_and_chain(&self, ev: &StoredEvent) -> Result<(Vec<StoredEvent>, Vec<StoredEvent>)> {
        let state = self.state_before_event(ev).await?;
        let mut ids: Vec<String> = state.values().map(|e| e.to_string()).collect();
        ids.sort();
        let pdus = self.store.events(ids).await?;
        let chain = self
            .auth_chain_of(pdus.iter().flat_map(|p| p.pdu.auth_events.iter().cloned()))
            .await?;
        Ok((pdus, chain))
    }

    /// `GET /state/{roomId}?event_id=`: the state PDUs and their auth chain.
    pub async fn federation_state(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<Box<RawValue>>, Vec<Box<RawValue>>)> {
        let ev = self.event_in_room(origin, room_id, event_id).await?;
        let (state, chain) = self.state_and_chain(&ev).await?;
        Ok((
            state.into_iter().map(|e| e.pdu.json).collect(),
            chain.into_iter().map(|e| e.pdu.json).collect(),
        ))
    }

    /// `GET /state_ids/{roomId}?event_id=`.
    pub async fn federation_state_ids(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        let ev = self.event_in_room(origin, room_id, event_id).await?;
        let (state, chain) = self.state_and_chain(&ev).await?;
        Ok((
            state.into_iter().map(|e| e.pdu.event_id).collect(),
            chain.into_iter().map(|e| e.pdu.event_id).collect(),
        ))
    }

    /// `GET /event_auth/{roomId}/{eventId}`: the event's whole auth chain.
    pub async fn federation_event_auth(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Vec<Box<RawValue>>> {
        let ev = self.event_in_room(origin, room_id, event_id).await?;
        let chain = self.auth_chain_of(ev.pdu.auth_events.iter().cloned()).await?;
        Ok(chain.into_iter().map(|e| e.pdu.json).collect())
    }

    /// `GET /backfill/{roomId}?v=&limit=`.
    pub async fn federation_backfill(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        from: Vec<OwnedEventId>,
        limit: usize,
    ) -> Result<Vec<Box<RawValue>>> {
        self.check_server_reads_room(room_id, origin).await?;
        let limit = limit.min(MAX_WALK);
        let events = walk_backfill(room_id, from, limit, StoreLoader(self)).await?;
        let mut cache = HashMap::new();
        let mut out = Vec::with_capacity(events.len());
        for ev in &events {
            out.push(self.pdu_for_server(origin, ev, &mut cache).await?);
        }
        Ok(out)
    }

    /// `POST /get_missing_events/{roomId}`.
    pub async fn federation_missing_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        latest: Vec<OwnedEventId>,
        earliest: &[OwnedEventId],
        min_depth: u64,
        limit: usize,
    ) -> Result<Vec<Box<RawValue>>> {
        self.check_server_reads_room(room_id, origin).await?;
        let limit = limit.min(MAX_WALK);
        let events = walk_missing(room_id, latest, earliest, min_depth, limit, StoreLoader(self)).await?;
        let mut cache = HashMap::new();
        let mut out = Vec::with_capacity(events.len());
        for ev in &events {
            out.push(self.pdu_for_server(origin, ev, &mut cache).await?);
        }
        Ok(out)
    }

    /// `GET /timestamp_to_event/{roomId}`: the room event closest to `ts`
    /// in the direction given, among those the server may see.
    pub async fn federation_timestamp_to_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        ts: i64,
        dir: Direction,
    ) -> Result<(OwnedEventId, i64)> {
        self.check_server_reads_room(room_id, origin).await?;
        let ev = self.store.events_at_ts(room_id.to_string(), ts, dir, 1).await?.pop();
        let ev = ev.ok_or_else(|| Error::not_found("No event found"))?;
        if !self.server_can_see_event(origin, &ev).await? {
            return Err(Error::not_found("No event found"));
        }
        Ok((ev.pdu.event_id.clone(), u64::from(ev.pdu.origin_server_ts.0) as i64))
    }

    /// `GET /query/profile`: a local user's profile, or one field of it.
    pub async fn federation_profile(&self, user: &UserId, field: Option<&str>) -> Result<BTreeMap<String, Value>> {
        if !self.is_local(user) {
            return Err(Error::not_found("User is not on this server"));
        }
        let row = match self.store.user(user.to_string()).await? {
            Some(r) if !r.deactivated => r,
            _ => return Err(Error::not_found("Unknown user")),
        };
        let mut all = BTreeMap::new();
        if let Some(d) = row.displayname {
            all.insert("displayname".to_owned(), Value::from(d));
        }
        if let Some(a) = row.avatar_url {
            all.insert("avatar_url".to_owned(), Value::from(a));
        }
        for (k, v) in self.store.profile_fields(user.to_string()).await? {
            all.insert(k, v);
        }
        Ok(match field {
            Some(f) => all.into_iter().filter(|(k, _)| k == f).collect(),
            None => all,
        })
    }

    /// `GET /query/directory`: a local alias's room and servers to join it through.
    pub async fn federation_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        if alias.server_name() != self.server_name {
            return Err(Error::not_found("Room alias not found"));
        }
        let (room, _) = self
            .store
            .alias(alias.to_string())
            .await?
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        let room = OwnedRoomId::try_from(room).map_err(|e| Error::Internal(e.to_string()))?;
        let mut servers = vec![self.server_name.clone()];
        servers.extend(self.servers_in_room(&room).await?);
        servers.dedup();
        Ok((room, servers))
    }
}

impl App {
    /// A remote user's profile (or one field of it), asked of their server.
    pub async fn remote_profile(
        &self,
        user: &UserId,
        field: Option<ruma::profile::ProfileFieldName>,
    ) -> Result<BTreeMap<String, Value>> {
        let mut req = ruma::api::federation::query::get_profile_information::v1::Request::new(user.to_owned());
        req.field = field;
        let resp = self.federation_request(user.server_name(), req).await?;
        Ok(resp.into_iter().collect())
    }

    /// A remote alias's room and the servers to join it through, asked of
    /// the alias's server.
    pub async fn resolve_remote_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let req = ruma::api::federation::query::get_room_information::v1::Request::new(alias.to_owned());
        let resp = self.federation_request(alias.server_name(), req).await?;
        let mut servers = resp.servers;
        if servers.is_empty() {
            servers.push(alias.server_name().to_owned());
        }
        Ok((resp.room_id, servers))
    }

    /// Any alias: a local one from the store, a remote one from its server.
    pub async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        if alias.server_name() == self.server_name {
            self.federation_alias(alias).await
        } else {
            self.resolve_remote_alias(alias).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_core::pdu::Pdu;
    use serde_json::json;

    #[test]
    fn globs_match_whole_names_without_case() {
        assert!(glob_matches("*", "example.org"));
        assert!(glob_matches("*.example.org", "matrix.EXAMPLE.org"));
        assert!(!glob_matches("*.example.org", "example.org"));
        assert!(glob_matches("ex?mple.org", "example.org"));
        assert!(!glob_matches("example", "example.org"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn acls_deny_first_and_ignore_ports() {
        let acl = json!({ "allow": ["*"], "deny": ["evil.org", "*.evil.org"], "allow_ip_literals": false });
        fn s(n: &str) -> &ServerName {
            <&ServerName>::try_from(n).unwrap()
        }
        assert!(acl_allows(&acl, s("good.org:8448")));
        assert!(!acl_allows(&acl, s("evil.org:8448")));
        assert!(!acl_allows(&acl, s("sub.evil.org")));
        assert!(!acl_allows(&acl, s("1.2.3.4")));
        assert!(!acl_allows(&acl, s("[::1]:8448")));
        assert!(acl_allows(&json!({ "allow": ["*"] }), s("1.2.3.4")));
        assert!(!acl_allows(&json!({}), s("good.org")), "no allow entry lets nobody in");
    }

    /// A small DAG: `a` ← `b` ← `c`, `a` ← `d`, and `e` merges `c` and `d`.
    fn dag() -> HashMap<OwnedEventId, StoredEvent> {
        let room = "!r:x";
        let mk = |id: &str, depth: u64, prevs: &[&str]| {
            let prev_ids: Vec<String> = prevs.iter().map(|p| format!("${p}")).collect();
            let json = json!({
                "room_id": room, "sender": "@u:x", "origin_server_ts": 0, "type": "m.room.message",
                "content": {}, "prev_events": prev_ids, "auth_events": [], "depth": depth,
            });
            let raw = serde_json::value::to_raw_value(&json).unwrap();
            let event_id = OwnedEventId::try_from(format!("${id}")).unwrap();
            let pdu = Pdu::from_json(event_id.clone(), None, raw).unwrap();
            (
                event_id,
                StoredEvent {
                    pdu,
                    stream_pos: depth as i64,
                    state_group: 0,
                    unsigned: None,
                    redacted_by: None,
                    txn_device: None,
                    txn_id: None,
                },
            )
        };
        [
            mk("a", 1, &[]),
            mk("b", 2, &["a"]),
            mk("c", 3, &["b"]),
            mk("d", 2, &["a"]),
            mk("e", 4, &["c", "d"]),
        ]
        .into_iter()
        .collect()
    }

    struct MapLoader<'a>(&'a HashMap<OwnedEventId, StoredEvent>);

    impl Loader<StoredEvent> for MapLoader<'_> {
        fn load(&mut self, ids: Vec<OwnedEventId>) -> impl Future<Output = Result<Vec<StoredEvent>>> + Send {
            let found = ids.iter().filter_map(|i| self.0.get(i).cloned()).collect();
            async move { Ok(found) }
        }
    }

    fn ids(v: &[&str]) -> Vec<OwnedEventId> {
        v.iter()
            .map(|i| OwnedEventId::try_from(format!("${i}")).unwrap())
            .collect()
    }

    fn names(v: &[StoredEvent]) -> Vec<String> {
        v.iter().map(|e| e.pdu.event_id.as_str()[1..].to_owned()).collect()
    }

    #[tokio::test]
    async fn missing_events_walk_back_to_earliest_oldest_first() {
        let g = dag();
        let room = <&RoomId>::try_from("!r:x").unwrap();
        let all = walk_missing(room, ids(&["e"]), &[], 0, 10, MapLoader(&g))
            .await
            .unwrap();
        assert_eq!(names(&all), ["a", "b", "d", "c"]);
        let cut = walk_missing(room, ids(&["e"]), &ids(&["b"]), 0, 10, MapLoader(&g))
            .await
            .unwrap();
        assert_eq!(names(&cut), ["a", "d", "c"], "b is known, but a is reached through d");
        let shallow = walk_missing(room, ids(&["e"]), &[], 3, 10, MapLoader(&g))
            .await
            .unwrap();
        assert_eq!(names(&shallow), ["c"]);
        let limited = walk_missing(room, ids(&["e"]), &[], 0, 2, MapLoader(&g)).await.unwrap();
        assert_eq!(names(&limited), ["d", "c"], "the nearest events are kept");
    }

    #[tokio::test]
    async fn backfill_walks_deepest_first_from_the_given_events() {
        let g = dag();
        let room = <&RoomId>::try_from("!r:x").unwrap();
        let all = walk_backfill(room, ids(&["e"]), 10, MapLoader(&g)).await.unwrap();
        assert_eq!(names(&all), ["e", "c", "d", "b", "a"]);
        let three = walk_backfill(room, ids(&["e"]), 3, MapLoader(&g)).await.unwrap();
        assert_eq!(names(&three), ["e", "c", "d"]);
        let other = <&RoomId>::try_from("!other:x").unwrap();
        assert!(
            walk_backfill(other, ids(&["e"]), 10, MapLoader(&g))
                .await
                .unwrap()
                .is_empty()
        );
    }
}
