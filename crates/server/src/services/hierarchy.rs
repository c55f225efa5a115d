//! The space hierarchy (`GET /rooms/{roomId}/hierarchy`): a depth-first
//! walk from a space through its `m.space.child` state events, showing the
//! rooms the user may see. Only rooms on this server are known until
//! federation exists; other children are skipped.

use std::collections::HashSet;

use ruma::{OwnedRoomId, RoomId, ServerName, UserId, api::client::space::SpaceHierarchyRoomsChunk, serde::Raw};
use serde_json::{Value, json};

use crate::{App, Error, Result, services::directory::RoomInfo};

/// Rooms per page when the client names no limit, and at most.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;
/// How deep the walk goes when the client names no depth, and at most.
const MAX_DEPTH: usize = 10;
/// Rooms visited per request at most, for spaces that are wide or cyclic.
const MAX_VISITED: usize = 2000;

/// A page of the hierarchy request.
pub struct HierarchyRequest<'a> {
    pub from: Option<&'a str>,
    pub limit: Option<u64>,
    pub max_depth: Option<u64>,
    pub suggested_only: bool,
}

/// A child of a space, from its `m.space.child` event.
struct Child {
    room_id: OwnedRoomId,
    order: Option<String>,
    ts: u64,
    suggested: bool,
    /// The event as `children_state` shows it (stripped, with its timestamp).
    event: Value,
}

/// A valid `order`: at most 50 printable ASCII characters.
fn valid_order(o: &str) -> bool {
    o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// The pagination token: how many rooms came before, and the walk's
/// settings, which may not change between pages.
fn token(offset: usize, depth: usize, suggested: bool) -> String {
    format!("{offset}_{depth}_{}", u8::from(suggested))
}

fn parse_token(t: &str, depth: usize, suggested: bool) -> Result<usize> {
    let mut parts = t.split('_');
    let (Some(offset), Some(d), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Error::invalid_param("Unknown from token"));
    };
    let offset = offset.parse().map_err(|_| Error::invalid_param("Unknown from token"))?;
    if d != depth.to_string() || s != u8::from(suggested).to_string() {
        return Err(Error::invalid_param(
            "suggested_only and max_depth cannot change on paginated requests",
        ));
    }
    Ok(offset)
}

impl App {
    /// One page of the hierarchy under `root`, and the next page's token.
    pub async fn space_hierarchy(
        &self,
        user: &UserId,
        root: &RoomId,
        req: HierarchyRequest<'_>,
    ) -> Result<(Vec<SpaceHierarchyRoomsChunk>, Option<String>)> {
        let limit = match req.limit {
            Some(0) => return Err(Error::invalid_param("limit must be greater than zero")),
            Some(l) => (l as usize).min(MAX_LIMIT),
            None => DEFAULT_LIMIT,
        };
        let max_depth = req.max_depth.map(|d| (d as usize).min(MAX_DEPTH)).unwrap_or(MAX_DEPTH);
        let offset = match req.from {
            Some(t) => parse_token(t, max_depth, req.suggested_only)?,
            None => 0,
        };
        let root_info = match self.room_info(root).await? {
            Some(info) if self.may_preview_room(user, &info).await? => info,
            _ => return Err(Error::forbidden("You may not see this room")),
        };

        let mut out = vec![];
        let mut seen = 0usize;
        let mut visited: HashSet<OwnedRoomId> = HashSet::new();
        // Depth-first: the stack holds the rooms still to show, the next on top.
        let mut stack: Vec<(OwnedRoomId, usize, Option<RoomInfo>)> = vec![(root.to_owned(), 0, Some(root_info))];
        while let Some((room_id, depth, info)) = stack.pop() {
            if !visited.insert(room_id.clone()) || visited.len() > MAX_VISITED {
                continue;
            }
            let info = match info {
                Some(i) => i,
                None => match self.room_info(&room_id).await? {
                    Some(i) if self.may_preview_room(user, &i).await? => i,
                    // Unknown here (federation) or hidden from the user.
                    _ => continue,
                },
            };
            let children = if info.is_space() {
                self.space_children(&room_id).await?
            } else {
                vec![]
            };
            if seen >= offset {
                if out.len() == limit {
                    return Ok((out, Some(token(seen, max_depth, req.suggested_only))));
                }
                let state = children
                    .iter()
                    .filter_map(|c| serde_json::value::to_raw_value(&c.event).ok().map(Raw::from_json))
                    .collect();
                out.push(SpaceHierarchyRoomsChunk::new(info.summary, state));
            }
            seen += 1;
            if depth < max_depth {
                for c in children.into_iter().rev() {
                    if (!req.suggested_only || c.suggested) && !visited.contains(&c.room_id) {
                        stack.push((c.room_id, depth + 1, None));
                    }
                }
            }
        }
        Ok((out, None))
    }

    /// A space and its direct children as another server may see them
    /// (`GET /_matrix/federation/v1/hierarchy/{roomId}`): rooms it could
    /// join or peek are summarised, the others listed as inaccessible.
    pub async fn federation_hierarchy(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<ruma::api::federation::space::get_hierarchy::v1::Response> {
        use ruma::api::federation::space::{SpaceHierarchyParentSummary, get_hierarchy};
        self.check_server_acl(room_id, origin).await?;
        let info = match self.room_info(room_id).await? {
            Some(i) if self.server_may_preview(origin, &i).await? => i,
            _ => return Err(Error::not_found("Unknown room, or not one your server may see")),
        };
        let children = if info.is_space() {
            self.space_children(room_id).await?
        } else {
            vec![]
        };
        let state = children
            .iter()
            .filter_map(|c| serde_json::value::to_raw_value(&c.event).ok().map(Raw::from_json))
            .collect();
        let mut res = get_hierarchy::v1::Response::new(SpaceHierarchyParentSummary::new(info.summary, state));
        for c in children.into_iter().filter(|c| !suggested_only || c.suggested) {
            match self.room_info(&c.room_id).await? {
                Some(i) if self.server_may_preview(origin, &i).await? => res.children.push(i.summary),
                Some(_) => res.inaccessible_children.push(c.room_id),
                // Not a room this server is in: it cannot say.
                None => {}
            }
        }
        Ok(res)
    }

    /// Whether a server may see a room's summary: anyone may see a room
    /// that is world-readable or that one can join or knock on without an
    /// invite; otherwise only a server with a member in it.
    async fn server_may_preview(&self, server: &ServerName, info: &RoomInfo) -> Result<bool> {
        use ruma::room::JoinRuleSummary;
        if info.summary.world_readable
            || matches!(
                info.summary.join_rule,
                JoinRuleSummary::Public
                    | JoinRuleSummary::Knock
                    | JoinRuleSummary::KnockRestricted(_)
                    | JoinRuleSummary::Restricted(_)
            )
        {
            return Ok(true);
        }
        self.server_in_room(&info.summary.room_id, server).await
    }

    /// A space's children: its `m.space.child` events with a non-empty
    /// `via`, ordered by `order`, then age, then room ID (the spec's order).
    async fn space_children(&self, room_id: &RoomId) -> Result<Vec<Child>> {
        let state = self.store.current_state_ids(room_id.to_string()).await?;
        let ids = state
            .iter()
            .filter(|((kind, _), _)| kind.to_string() == "m.space.child")
            .map(|(_, id)| id.to_string())
            .collect();
        let mut children = vec![];
        for ev in self.store.events(ids).await? {
            let content = ev.pdu.content_value();
            let has_via = content
                .get("via")
                .and_then(Value::as_array)
                .is_some_and(|v| v.iter().any(|s| s.as_str().is_some_and(|s| !s.is_empty())));
            let Some(Ok(child)) = ev.pdu.state_key.as_deref().map(OwnedRoomId::try_from) else {
                continue;
            };
            if !has_via {
                continue;
            }
            let ts = u64::from(ev.pdu.origin_server_ts.0);
            children.push(Child {
                room_id: child,
                order: content
                    .get("order")
                    .and_then(Value::as_str)
                    .filter(|o| valid_order(o))
                    .map(str::to_owned),
                ts,
                suggested: content.get("suggested").and_then(Value::as_bool).unwrap_or(false),
                event: json!({
                    "type": "m.space.child",
                    "state_key": ev.pdu.state_key,
                    "sender": ev.pdu.sender,
                    "content": content,
                    "origin_server_ts": ts,
                }),
            });
        }
        children.sort_by(|a, b| match (&a.order, &b.order) {
            (Some(x), Some(y)) => x.cmp(y).then(a.ts.cmp(&b.ts)).then_with(|| a.room_id.cmp(&b.room_id)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.ts.cmp(&b.ts).then_with(|| a.room_id.cmp(&b.room_id)),
        });
        Ok(children)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_the_walk_settings() {
        let t = token(7, 3, true);
        assert_eq!(parse_token(&t, 3, true).unwrap(), 7);
        assert!(parse_token(&t, 2, true).is_err());
        assert!(parse_token(&t, 3, false).is_err());
        assert!(parse_token("garbage", 3, true).is_err());
    }

    #[test]
    fn orders_are_printable_ascii_up_to_50() {
        assert!(valid_order("a"));
        assert!(!valid_order("é"));
        assert!(!valid_order(&"a".repeat(51)));
    }
}
