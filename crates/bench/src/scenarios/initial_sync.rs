//! Scenario 3, initial sync: a user in R rooms of K members (the user included) with
//! H messages each — the shape of the published 300 rooms × 300 members
//! comparison, scaled down — makes an initial `/sync`, once with lazy-loaded
//! members and once with the full member state.
//!
//! The K−1 other members are the same accounts in every room: member state
//! per room is what matters, and registering R×K accounts would time the
//! password hash instead.

use std::time::Instant;

use serde_json::{Value, json};

use super::{ms, record};
use crate::{
    Ctx,
    client::{User, for_each_concurrent},
    meter::Progress,
    results::{Metric, Scenario},
};

/// The rooms, members and history, set up once and shared with sliding sync.
pub struct World {
    pub user: User,
    pub rooms: Vec<String>,
}

/// Sets up the world if no earlier scenario did.
pub async fn world<'a>(ctx: &Ctx, slot: &'a mut Option<World>, s: &mut Scenario) -> anyhow::Result<&'a World> {
    if slot.is_none() {
        let setup = Instant::now();
        *slot = Some(build(ctx).await?);
        s.setup_secs = setup.elapsed().as_secs_f64();
        ctx.settle().await;
    }
    Ok(slot.as_ref().expect("just built"))
}

async fn build(ctx: &Ctx) -> anyhow::Result<World> {
    let a = &ctx.args;
    let (r, k, h) = (a.sync_rooms.max(1), a.sync_members.max(2), a.sync_events);
    let sv = &ctx.server;
    let users = ctx.register_many("sync", k).await?;
    let (user, members) = users.split_first().expect("k >= 2");
    // One after the other, as one client creates its rooms (and because two
    // identical room-v12 create events in the same millisecond would be one room).
    let p = Progress::new("sync", "creating rooms", r);
    let rooms = for_each_concurrent((0..r).collect(), 1, |i| {
        let p = &p;
        async move {
            let room = user.create_room(sv, &format!("sync room {i}")).await?;
            p.inc();
            Ok(room)
        }
    })
    .await?;
    drop(p);
    // Member-major order: requests in flight go to different rooms.
    let joins: Vec<(usize, usize)> = (0..members.len()).flat_map(|m| (0..r).map(move |i| (m, i))).collect();
    let p = Progress::new("sync", "joining", joins.len());
    for_each_concurrent(joins, a.setup_concurrency, |(m, i)| {
        let (p, rooms) = (&p, &rooms);
        async move {
            members[m].join(sv, &rooms[i]).await?;
            p.inc();
            Ok(())
        }
    })
    .await?;
    drop(p);
    let sends: Vec<(usize, usize)> = (0..h).flat_map(|j| (0..r).map(move |i| (j, i))).collect();
    let p = Progress::new("sync", "sending history", sends.len());
    for_each_concurrent(sends, a.setup_concurrency, |(j, i)| {
        let (p, rooms, prefix) = (&p, &rooms, &ctx.prefix);
        async move {
            let sender = &members[j % members.len()];
            sender
                .send_text(
                    sv,
                    &rooms[i],
                    &format!("{prefix}-h{i}-{j}"),
                    &format!("history {j} in room {i}"),
                )
                .await?;
            p.inc();
            Ok(())
        }
    })
    .await?;
    drop(p);
    Ok(World {
        user: user.clone(),
        rooms,
    })
}

pub async fn run(ctx: &Ctx, slot: &mut Option<World>) -> anyhow::Result<Scenario> {
    let a = &ctx.args;
    let mut s = Scenario::new(
        "initial_sync",
        "3 initial sync",
        json!({
            "rooms": a.sync_rooms, "members_per_room": a.sync_members,
            "messages_per_room": a.sync_events, "timeline_limit": a.sync_timeline_limit,
        }),
    );
    s.notes.push(format!(
        "{} rooms × {} members × {} messages (the 300 × 300 shape scaled down); timeline limit {}; each run's filter excludes a different unused event type so no response cache answers",
        a.sync_rooms, a.sync_members, a.sync_events, a.sync_timeline_limit
    ));
    let w = world(ctx, slot, &mut s).await?;
    let sv = &ctx.server;
    let mut wrong = vec![];
    for run in 0..a.runs {
        for (name, lazy) in [("lazy-loaded members", true), ("full member state", false)] {
            let nonce = format!("org.missive.bench.nonce.{}.{run}.{lazy}", ctx.prefix);
            let mut state = json!({});
            if lazy {
                state["lazy_load_members"] = Value::Bool(true);
            }
            let filter = json!({
                "room": {
                    "timeline": { "limit": a.sync_timeline_limit, "not_types": [nonce] },
                    "state": state,
                },
            })
            .to_string();
            let meter = ctx.meter();
            let t = Instant::now();
            let (v, size) = w.user.sync(sv, &filter, None, 0).await?;
            let took = ms(t.elapsed());
            let reading = meter.finish();
            let joined = v["rooms"]["join"].as_object().map_or(0, |o| o.len());
            let members: usize = v["rooms"]["join"]
                .as_object()
                .map(|o| {
                    o.values()
                        .map(|r| {
                            r["state"]["events"]
                                .as_array()
                                .map_or(0, |e| e.iter().filter(|e| e["type"] == "m.room.member").count())
                        })
                        .sum()
                })
                .unwrap_or(0);
            if joined != w.rooms.len() {
                wrong.push(format!(
                    "{name}: {joined} joined rooms returned, {} expected",
                    w.rooms.len()
                ));
            }
            eprintln!(
                "[sync] run {} {name}: {took:.0} ms, {} KiB, {joined} rooms, {members} member events in state",
                run + 1,
                size / 1024
            );
            s.metric(Metric::new(&format!("initial /sync, {name}"), "ms", false))
                .push(took);
            s.metric(Metric::info(&format!("response size, {name}"), "KiB"))
                .push(size as f64 / 1024.0);
            record(&mut s, &reading, false);
        }
    }
    wrong.dedup();
    s.notes.extend(wrong);
    Ok(s)
}
