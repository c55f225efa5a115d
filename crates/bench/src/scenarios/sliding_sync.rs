//! Scenario 7, simplified sliding sync (MSC4186): time to the first room list — a new
//! connection's first request for the first window of the user's rooms,
//! sorted by activity, with the state a room list shows — for the user of
//! scenario 3 (R rooms). Skipped with a note when the server does not know
//! the endpoint.

use std::time::Instant;

use serde_json::json;

use super::{initial_sync, ms, record};
use crate::{
    Ctx,
    client::{HttpError, is_unrecognized},
    results::{Metric, Scenario},
};

pub const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

pub async fn run(ctx: &Ctx, slot: &mut Option<initial_sync::World>) -> anyhow::Result<Scenario> {
    let a = &ctx.args;
    let mut s = Scenario::new(
        "sliding_sync",
        "7 sliding sync",
        json!({ "rooms": a.sync_rooms, "window": a.ss_window }),
    );
    let sv = &ctx.server;
    // Ask first, before building the rooms, whether the server knows the endpoint.
    let probe = sv
        .call(
            reqwest::Method::POST,
            &format!("{PATH}?timeout=0"),
            None,
            Some(&json!({ "lists": {} })),
        )
        .await;
    if let Err(e) = &probe
        && is_unrecognized(e)
    {
        let h = e.downcast_ref::<HttpError>();
        s.skipped = Some(format!(
            "server answered {} {} to {PATH}",
            h.map_or(0, |h| h.status),
            h.map_or("", HttpError::errcode)
        ));
        eprintln!("[sliding sync] skipped: {}", s.skipped.as_deref().unwrap_or(""));
        return Ok(s);
    }
    let w = initial_sync::world(ctx, slot, &mut s).await?;
    let window = a.ss_window.max(1);
    s.notes.push(format!(
        "first request of a new connection: one list, ranges [[0, {}]], timeline_limit 1, room-list state (create, name, avatar, encryption, lazy members)",
        window - 1
    ));
    let mut wrong = vec![];
    for run in 0..a.runs {
        let body = json!({
            "conn_id": format!("{}-{run}", ctx.prefix),
            "lists": {
                "rooms": {
                    "ranges": [[0, window - 1]],
                    "timeline_limit": 1,
                    "required_state": [
                        ["m.room.create", ""],
                        ["m.room.name", ""],
                        ["m.room.avatar", ""],
                        ["m.room.encryption", ""],
                        ["m.room.member", "$LAZY"],
                    ],
                },
            },
        });
        let meter = ctx.meter();
        let t = Instant::now();
        // To the user's own process: the connection lives there.
        let r = w
            .user
            .call_sized(sv, reqwest::Method::POST, &format!("{PATH}?timeout=0"), Some(&body))
            .await;
        let took = ms(t.elapsed());
        let reading = meter.finish();
        let (v, size) = match r {
            Ok(x) => x,
            Err(e) if run == 0 && is_unrecognized(&e) => {
                s.skipped = Some(format!("server does not implement {PATH}: {e}"));
                return Ok(s);
            }
            Err(e) => return Err(e),
        };
        let count = v["lists"]["rooms"]["count"].as_u64().unwrap_or(0) as usize;
        let rooms = v["rooms"].as_object().map_or(0, |o| o.len());
        let expected = window.min(w.rooms.len());
        if count != w.rooms.len() || rooms != expected {
            wrong.push(format!(
                "list count {count} (expected {}), {rooms} rooms returned (expected {expected})",
                w.rooms.len()
            ));
        }
        eprintln!(
            "[sliding sync] run {}: {took:.0} ms, {} KiB, count {count}, {rooms} rooms",
            run + 1,
            size / 1024
        );
        s.metric(Metric::new("time to first room list", "ms", false)).push(took);
        s.metric(Metric::info("response size", "KiB"))
            .push(size as f64 / 1024.0);
        record(&mut s, &reading, false);
    }
    wrong.dedup();
    s.notes.extend(wrong);
    Ok(s)
}
