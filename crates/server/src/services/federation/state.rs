//! State resolution (v2, with v2.1's conflicted subgraph from room version
//! 12) over states held in the store, through `ruma::state_res`.

use std::collections::{HashMap, HashSet};

use missive_core::{auth::StateMap, pdu::Pdu};
use ruma::{EventId, OwnedEventId};

use crate::{App, Error, Result, services::rooms::RoomVersion};

/// Events loaded for one resolution, with their auth ancestors.
struct Graph {
    events: HashMap<OwnedEventId, Pdu>,
}

impl Graph {
    /// The auth chain of `id`: every event reachable through `auth_events`, not `id` itself.
    fn auth_chain(&self, id: &EventId) -> HashSet<OwnedEventId> {
        let mut out = HashSet::new();
        let mut stack: Vec<OwnedEventId> = self.events.get(id).map(|p| p.auth_events.clone()).unwrap_or_default();
        while let Some(e) = stack.pop() {
            if out.insert(e.clone())
                && let Some(p) = self.events.get(&e)
            {
                stack.extend(p.auth_events.iter().cloned());
            }
        }
        out
    }

    /// The conflicted state subgraph (room version 12): the events on an
    /// auth path from one conflicted event to another, both included.
    fn conflicted_subgraph(&self, conflicted: &HashSet<OwnedEventId>) -> HashSet<OwnedEventId> {
        let mut ancestors: HashSet<OwnedEventId> = conflicted.clone();
        for c in conflicted {
            ancestors.extend(self.auth_chain(c));
        }
        // An ancestor is in the subgraph when it reaches a conflicted event
        // through auth edges (or is one).
        let mut memo: HashMap<OwnedEventId, bool> = HashMap::new();
        fn reaches(
            g: &Graph,
            id: &OwnedEventId,
            conflicted: &HashSet<OwnedEventId>,
            memo: &mut HashMap<OwnedEventId, bool>,
            depth: usize,
        ) -> bool {
            if let Some(r) = memo.get(id) {
                return *r;
            }
            memo.insert(id.clone(), false);
            let r = depth < 10_000
                && g.events.get(id).is_some_and(|p| {
                    p.auth_events
                        .iter()
                        .any(|a| conflicted.contains(a) || reaches(g, a, conflicted, memo, depth + 1))
                });
            memo.insert(id.clone(), r);
            r
        }
        ancestors
            .into_iter()
            .filter(|id| conflicted.contains(id) || reaches(self, id, conflicted, &mut memo, 0))
            .collect()
    }
}

impl App {
    /// Loads the events and their whole auth chains into memory.
    /// `extra` are events not stored yet (the one being received): without
    /// them, resolution would drop them as unknown.
    async fn load_graph(&self, roots: impl IntoIterator<Item = OwnedEventId>, extra: &[Pdu]) -> Result<Graph> {
        let mut events: HashMap<OwnedEventId, Pdu> = extra.iter().map(|p| (p.event_id.clone(), p.clone())).collect();
        let mut wanted: Vec<OwnedEventId> = roots.into_iter().collect();
        for p in extra {
            wanted.extend(p.auth_events.iter().cloned());
        }
        while !wanted.is_empty() {
            let batch: Vec<String> = wanted
                .drain(..)
                .filter(|e| !events.contains_key(e))
                .map(|e| e.to_string())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if batch.is_empty() {
                break;
            }
            for ev in self.store.events(batch).await? {
                wanted.extend(ev.pdu.auth_events.iter().filter(|a| !events.contains_key(*a)).cloned());
                events.insert(ev.pdu.event_id.clone(), ev.pdu);
            }
        }
        Ok(Graph { events })
    }

    /// Resolves several states of a room into one. Events of the states
    /// that are not stored yet must be in `extra`.
    pub async fn resolve_states(&self, version: &RoomVersion, maps: Vec<StateMap>, extra: &[Pdu]) -> Result<StateMap> {
        if maps.is_empty() {
            return Ok(StateMap::new());
        }
        if maps.iter().all(|m| *m == maps[0]) {
            return Ok(maps.into_iter().next().unwrap_or_default());
        }
        let roots: HashSet<OwnedEventId> = maps.iter().flat_map(|m| m.values().cloned()).collect();
        let graph = self.load_graph(roots, extra).await?;
        let Some(v2) = version.rules.state_res.v2_rules() else {
            return Ok(missive_core::state_res_v1::resolve(
                &version.rules,
                &maps,
                &graph.events,
            ));
        };
        let auth_chains: Vec<HashSet<OwnedEventId>> = maps
            .iter()
            .map(|m| {
                let mut chain = HashSet::new();
                for e in m.values() {
                    chain.extend(graph.auth_chain(e));
                }
                chain
            })
            .collect();
        let maps_r: Vec<ruma::state_res::StateMap<OwnedEventId>> = maps
            .iter()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .collect();
        let resolved = ruma::state_res::resolve(
            &version.rules.authorization,
            v2,
            maps_r.iter(),
            auth_chains.into_iter().map(|s| s.into_iter().collect()).collect(),
            |id| graph.events.get(id).cloned(),
            |conflicted| {
                let set: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
                Some(graph.conflicted_subgraph(&set).into_iter().collect())
            },
        )
        .map_err(|e| Error::Internal(format!("state resolution: {e}")))?;
        Ok(resolved.into_iter().collect())
    }

    /// The state after each of the given events (timeline events only).
    pub async fn states_after(&self, event_ids: &[OwnedEventId]) -> Result<Vec<StateMap>> {
        let mut out = vec![];
        for ev in self
            .store
            .events(event_ids.iter().map(|e| e.to_string()).collect())
            .await?
        {
            if ev.stream_pos > 0 {
                out.push((*self.store.state_at_group(ev.state_group).await?).clone());
            }
        }
        Ok(out)
    }
}
