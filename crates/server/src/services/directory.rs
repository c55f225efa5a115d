//! Finding people and rooms: the user directory, the public room
//! directory, and the room summary both the room directory and the space
//! hierarchy show.

use missive_store::directory::DirectoryUser;
use ruma::{
    EventEncryptionAlgorithm, OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt,
    UserId,
    api::client::user_directory::search_users::v3::User,
    directory::{Filter, PublicRoomsChunk, RoomNetwork, RoomTypeFilter},
    room::{JoinRule, JoinRuleSummary, RoomSummary, RoomType},
};
use serde_json::Value;

use crate::{App, Error, Result};

/// Most results a user directory search returns, whatever the client asks.
const MAX_USER_RESULTS: usize = 100;
/// Public rooms per page when the client names no limit, and at most.
const DEFAULT_PUBLIC_ROOMS: usize = 100;
const MAX_PUBLIC_ROOMS: usize = 500;

/// A room as directories show it, with what deciding access needs.
#[derive(Clone, Debug)]
pub struct RoomInfo {
    pub summary: RoomSummary,
    pub alt_aliases: Vec<String>,
}

impl RoomInfo {
    pub fn is_space(&self) -> bool {
        self.summary.room_type == Some(RoomType::Space)
    }
}

/// A page of the public room directory.
pub struct PublicRoomsPage {
    pub chunk: Vec<PublicRoomsChunk>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total: usize,
}

fn as_str<'a>(state: &'a [(String, Value)], kind: &str, key: &str) -> Option<&'a str> {
    state
        .iter()
        .find(|(k, _)| k == kind)
        .and_then(|(_, c)| c.get(key))
        .and_then(Value::as_str)
}

/// How well a user matches the search words: `None` if some word matches
/// neither the localpart nor the display name (a word with `@` or `:` is
/// matched against the whole user ID); lower is better.
fn user_match(user: &DirectoryUser, words: &[String], whole: &str) -> Option<u8> {
    let id = user.user_id.to_lowercase();
    let localpart = id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let name = user.displayname.as_deref().unwrap_or_default().to_lowercase();
    let all = words.iter().all(|w| {
        if w.contains('@') || w.contains(':') {
            id.contains(w.as_str())
        } else {
            localpart.contains(w.as_str()) || name.contains(w.as_str())
        }
    });
    if !all {
        return None;
    }
    Some(if localpart == whole || name == whole || id == whole {
        0
    } else if localpart.starts_with(whole)
        || name.starts_with(whole)
        || name.split_whitespace().any(|n| n.starts_with(whole))
    {
        1
    } else {
        2
    })
}

impl App {
    /// `/user_directory/search`: local users the searcher may find whose
    /// localpart or display name contains every word of the term.
    pub async fn search_user_directory(
        &self,
        searcher: &UserId,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<User>, bool)> {
        let whole = term.trim().to_lowercase();
        let words: Vec<String> = whole.split_whitespace().map(str::to_owned).collect();
        if words.is_empty() {
            return Ok((vec![], false));
        }
        let candidates = self
            .store
            .directory_users(searcher.to_string(), self.config.user_directory_search_all_users)
            .await?;
        let mut found: Vec<(u8, DirectoryUser)> = candidates
            .into_iter()
            .filter_map(|u| user_match(&u, &words, &whole).map(|m| (m, u)))
            .collect();
        // Best match first, then people with a display name, then by name.
        found.sort_by(|(a, ua), (b, ub)| {
            a.cmp(b)
                .then(ua.displayname.is_none().cmp(&ub.displayname.is_none()))
                .then_with(|| {
                    let key = |u: &DirectoryUser| u.displayname.as_deref().unwrap_or(&u.user_id).to_lowercase();
                    key(ua).cmp(&key(ub))
                })
                .then_with(|| ua.user_id.cmp(&ub.user_id))
        });
        let limit = limit.clamp(1, MAX_USER_RESULTS);
        let limited = found.len() > limit;
        let results = found
            .into_iter()
            .take(limit)
            .filter_map(|(_, u)| {
                let mut user = User::new(OwnedUserId::try_from(u.user_id).ok()?);
                user.display_name = u.displayname;
                user.avatar_url = u.avatar_url.map(OwnedMxcUri::from);
                Some(user)
            })
            .collect();
        Ok((results, limited))
    }

    /// A local room's summary from its current state; `None` if the room
    /// is not known here.
    pub async fn room_info(&self, room_id: &RoomId) -> Result<Option<RoomInfo>> {
        let Some(row) = self.store.room(room_id.to_string()).await? else {
            return Ok(None);
        };
        let types = [
            "m.room.name",
            "m.room.topic",
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.join_rules",
            "m.room.history_visibility",
            "m.room.guest_access",
            "m.room.create",
            "m.room.encryption",
        ];
        let state = self
            .store
            .room_state_contents(room_id.to_string(), types.iter().map(|t| (*t).to_owned()).collect())
            .await?;
        let joined = self.store.joined_member_count(room_id.to_string()).await?;
        let join_rule = state
            .iter()
            .find(|(k, _)| k == "m.room.join_rules")
            .and_then(|(_, c)| serde_json::from_value::<JoinRule>(c.clone()).ok())
            .map(JoinRuleSummary::from)
            // Without join rules nobody joins uninvited.
            .unwrap_or(JoinRuleSummary::Invite);
        let mut summary = RoomSummary::new(
            room_id.to_owned(),
            join_rule,
            as_str(&state, "m.room.guest_access", "guest_access") == Some("can_join"),
            UInt::try_from(joined).unwrap_or(UInt::MAX),
            as_str(&state, "m.room.history_visibility", "history_visibility") == Some("world_readable"),
        );
        summary.name = as_str(&state, "m.room.name", "name")
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        summary.topic = as_str(&state, "m.room.topic", "topic")
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        summary.avatar_url = as_str(&state, "m.room.avatar", "url")
            .filter(|u| !u.is_empty())
            .map(OwnedMxcUri::from);
        summary.canonical_alias =
            as_str(&state, "m.room.canonical_alias", "alias").and_then(|a| OwnedRoomAliasId::try_from(a).ok());
        summary.room_type = as_str(&state, "m.room.create", "type").map(RoomType::from);
        summary.encryption = as_str(&state, "m.room.encryption", "algorithm").map(EventEncryptionAlgorithm::from);
        summary.room_version = RoomVersionId::try_from(row.room_version.as_str()).ok();
        let alt_aliases = state
            .iter()
            .find(|(k, _)| k == "m.room.canonical_alias")
            .and_then(|(_, c)| c.get("alt_aliases"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Some(RoomInfo { summary, alt_aliases }))
    }

    /// Whether `user` may learn about a room without being in it: the
    /// spec's rule for room summaries and the space hierarchy (joined or
    /// invited, world-readable history, a join rule that lets them join or
    /// knock, or membership of a room a restricted rule admits).
    pub async fn may_preview_room(&self, user: &UserId, info: &RoomInfo) -> Result<bool> {
        let room_id = &info.summary.room_id;
        match self.membership(room_id, user).await?.as_deref() {
            Some("join") | Some("invite") => return Ok(true),
            Some("ban") => return Ok(false),
            _ => {}
        }
        if info.summary.world_readable {
            return Ok(true);
        }
        let allowed = match &info.summary.join_rule {
            JoinRuleSummary::Public | JoinRuleSummary::Knock | JoinRuleSummary::KnockRestricted(_) => return Ok(true),
            JoinRuleSummary::Restricted(r) => r.allowed_room_ids.clone(),
            _ => return Ok(false),
        };
        for r in allowed {
            if self.membership(&r, user).await?.as_deref() == Some("join") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `/publicRooms`: the rooms published in this server's directory that
    /// match the filter, most members first, `limit` at a time from `since`.
    pub async fn public_rooms(
        &self,
        filter: &Filter,
        network: &RoomNetwork,
        limit: Option<UInt>,
        since: Option<&str>,
    ) -> Result<PublicRoomsPage> {
        let offset = match since {
            None => 0,
            Some(t) => t
                .strip_prefix('p')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::invalid_param("Unknown pagination token"))?,
        };
        let limit = limit
            .map(|l| u64::from(l) as usize)
            .unwrap_or(DEFAULT_PUBLIC_ROOMS)
            .clamp(1, MAX_PUBLIC_ROOMS);
        // Rooms bridged from other networks do not exist here.
        if let RoomNetwork::ThirdParty(_) = network {
            return Ok(PublicRoomsPage {
                chunk: vec![],
                next_batch: None,
                prev_batch: None,
                total: 0,
            });
        }
        let term = filter
            .generic_search_term
            .as_deref()
            .map(|t| t.trim().to_lowercase())
            .filter(|t| !t.is_empty());
        let mut rooms = vec![];
        for id in self.store.published_rooms().await? {
            let Ok(id) = OwnedRoomId::try_from(id) else {
                continue;
            };
            let Some(info) = self.room_info(&id).await? else {
                continue;
            };
            if !filter.room_types.is_empty()
                && !filter
                    .room_types
                    .iter()
                    .any(|t| room_type_matches(t, info.summary.room_type.as_ref()))
            {
                continue;
            }
            if let Some(term) = &term {
                let s = &info.summary;
                let hit = [
                    s.name.as_deref(),
                    s.topic.as_deref(),
                    s.canonical_alias.as_ref().map(|a| a.as_str()),
                ]
                .into_iter()
                .flatten()
                .chain(info.alt_aliases.iter().map(String::as_str))
                .any(|text| text.to_lowercase().contains(term.as_str()));
                if !hit {
                    continue;
                }
            }
            rooms.push(info.summary);
        }
        rooms.sort_by(|a, b| {
            b.num_joined_members
                .cmp(&a.num_joined_members)
                .then_with(|| a.room_id.cmp(&b.room_id))
        });
        let total = rooms.len();
        let chunk: Vec<PublicRoomsChunk> = rooms
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(PublicRoomsChunk::from)
            .collect();
        Ok(PublicRoomsPage {
            next_batch: (offset + chunk.len() < total).then(|| format!("p{}", offset + chunk.len())),
            prev_batch: (offset > 0).then(|| format!("p{}", offset.saturating_sub(limit))),
            chunk,
            total,
        })
    }
}

impl App {
    /// Another server's public room directory, asked of it
    /// (`POST /_matrix/federation/v1/publicRooms`).
    pub async fn remote_public_rooms(
        &self,
        server: &ruma::ServerName,
        filter: &Filter,
        network: &RoomNetwork,
        limit: Option<UInt>,
        since: Option<&str>,
    ) -> Result<PublicRoomsPage> {
        let mut req = ruma::api::federation::directory::get_public_rooms_filtered::v1::Request::new();
        req.limit = limit;
        req.since = since.map(str::to_owned);
        req.filter = filter.clone();
        req.room_network = network.clone();
        let resp = self.federation_request(server, req).await?;
        Ok(PublicRoomsPage {
            total: resp
                .total_room_count_estimate
                .map_or(resp.chunk.len(), |t| u64::from(t) as usize),
            chunk: resp.chunk,
            next_batch: resp.next_batch,
            prev_batch: resp.prev_batch,
        })
    }
}

/// Whether a room type passes a `room_types` filter entry.
fn room_type_matches(filter: &RoomTypeFilter, room_type: Option<&RoomType>) -> bool {
    filter.as_str() == room_type.map(RoomType::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: Option<&str>) -> DirectoryUser {
        DirectoryUser {
            user_id: id.into(),
            displayname: name.map(str::to_owned),
            avatar_url: None,
        }
    }

    fn words(t: &str) -> (Vec<String>, String) {
        let whole = t.trim().to_lowercase();
        (whole.split_whitespace().map(str::to_owned).collect(), whole)
    }

    #[test]
    fn users_match_on_localpart_and_display_name_without_case() {
        let u = user("@jdupont:gouv.fr", Some("Jeanne Dupont-Élysée"));
        let m = |t: &str| {
            let (w, whole) = words(t);
            user_match(&u, &w, &whole)
        };
        assert_eq!(m("JDUPONT"), Some(0));
        assert_eq!(m("jean"), Some(1));
        assert_eq!(m("dupont jeanne"), Some(2));
        assert_eq!(m("élysée"), Some(2));
        assert_eq!(m("@jdupont:gouv"), Some(2));
        assert_eq!(m("gouv"), None, "the server name is not part of the localpart");
        assert_eq!(m("jeanne martin"), None);
    }
}
