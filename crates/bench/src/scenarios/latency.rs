//! Scenario 2, delivery latency: in L rooms, a sender sends at a fixed total rate
//! (open loop: a slow answer does not slow the sending) while another member
//! long-polls `/sync`; the latency of an event is the time from the sender
//! receiving its `200` to the reader's `/sync` returning it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{ms, record};
use crate::{
    Ctx,
    client::{User, for_each_concurrent},
    results::{Metric, Scenario, quantile},
};

/// How long to wait for the last events after the sending stops.
const DRAIN: Duration = Duration::from_secs(10);

fn filter(room: &str) -> String {
    json!({
        "room": {
            "rooms": [room],
            "timeline": { "limit": 100 },
            "state": { "types": [] },
            "ephemeral": { "types": [] },
            "account_data": { "types": [] },
        },
        "presence": { "types": [] },
        "account_data": { "types": [] },
    })
    .to_string()
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let a = &ctx.args;
    let l = a.latency_rooms.max(1);
    let rate = a.latency_rate.max(0.1);
    let total = (rate * a.latency_secs).round().max(1.0) as usize;
    let mut s = Scenario::new(
        "latency",
        "2 delivery latency",
        json!({ "rooms": l, "messages_per_s": rate, "secs_per_run": a.latency_secs, "messages_per_run": total }),
    );
    s.notes.push(format!(
        "{total} messages per run at {rate}/s over {l} rooms; latency = reader's /sync returned it − sender got its 200 (0 when the sync came first)"
    ));
    let setup = Instant::now();
    let users = ctx.register_many("latency", 2 * l).await?;
    let sv = &ctx.server;
    let rooms = for_each_concurrent((0..l).collect(), a.setup_concurrency, |i| {
        let (u, reader) = (&users[2 * i], &users[2 * i + 1]);
        async move {
            let r = u.create_room(sv, &format!("latency {i}")).await?;
            reader.join(sv, &r).await?;
            Ok(r)
        }
    })
    .await?;
    s.setup_secs = setup.elapsed().as_secs_f64();
    ctx.settle().await;

    let mut before_ack = 0usize;
    for run in 0..a.runs {
        // Readers: an initial sync for a token, then long-polls from it.
        let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let tokens = for_each_concurrent((0..l).collect(), a.setup_concurrency, |i| {
            let (u, f) = (&users[2 * i + 1], filter(&rooms[i]));
            async move {
                Ok(u.sync(sv, &f, None, 0).await?.0["next_batch"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned())
            }
        })
        .await?;
        let mut readers = vec![];
        for (i, since) in tokens.into_iter().enumerate() {
            readers.push(tokio::spawn(read_loop(
                sv.clone(),
                users[2 * i + 1].clone(),
                rooms[i].clone(),
                since,
                received.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;

        let meter = ctx.meter();
        let start = Instant::now();
        let mut sends = vec![];
        for k in 0..total {
            tokio::time::sleep_until((start + Duration::from_secs_f64(k as f64 / rate)).into()).await;
            let i = k % l;
            let (u, room, sv) = (users[2 * i].clone(), rooms[i].clone(), sv.clone());
            let txn = format!("{}-l{run}-{k}", ctx.prefix);
            sends.push(tokio::spawn(async move {
                let id = u.send_text(&sv, &room, &txn, &format!("latency probe {k}")).await;
                (id, Instant::now())
            }));
        }
        let mut acked: Vec<(String, Instant)> = vec![];
        for t in sends {
            match t.await? {
                (Ok(id), at) => acked.push((id, at)),
                (Err(e), _) => {
                    if s.errors < 3 {
                        eprintln!("latency send failed: {e:#}");
                    }
                    s.errors += 1;
                }
            }
        }
        let drain_until = Instant::now() + DRAIN;
        while Instant::now() < drain_until {
            let all = {
                let got = received.lock().expect("lock");
                acked.iter().all(|(id, _)| got.contains_key(id))
            };
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reading = meter.finish();
        for r in readers {
            r.abort();
        }
        let got = received.lock().expect("lock").clone();
        let mut lat = vec![];
        let mut lost = 0;
        for (id, at) in &acked {
            match got.get(id) {
                Some(seen) => {
                    if seen < at {
                        before_ack += 1;
                    }
                    lat.push(ms(seen.saturating_duration_since(*at)));
                }
                None => lost += 1,
            }
        }
        eprintln!(
            "[latency] run {}: {} delivered, {lost} not within {} s of the end",
            run + 1,
            lat.len(),
            DRAIN.as_secs()
        );
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            if let Some(v) = quantile(&mut lat, q) {
                s.metric(Metric::new(&format!("delivery latency {name}"), "ms", false))
                    .push(v);
            }
        }
        s.metric(Metric::new("not delivered", "events", false))
            .push(lost as f64);
        record(&mut s, &reading, true);
    }
    if before_ack > 0 {
        s.notes.push(format!(
            "{before_ack} events reached the reader before the sender had its 200 (counted as 0 ms)"
        ));
    }
    Ok(s)
}

async fn read_loop(
    sv: crate::client::Server,
    u: User,
    room: String,
    mut since: String,
    received: Arc<Mutex<HashMap<String, Instant>>>,
) {
    let f = filter(&room);
    // Bounded: the task is aborted at the end of the run, and long-polls last 30 s.
    for _ in 0..10_000 {
        let Ok((v, _)) = u.sync(&sv, &f, Some(&since), 30_000).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let now = Instant::now();
        if let Some(events) = v["rooms"]["join"][&room]["timeline"]["events"].as_array() {
            let mut got = received.lock().expect("lock");
            for e in events {
                if let Some(id) = e.get("event_id").and_then(Value::as_str) {
                    got.entry(id.to_owned()).or_insert(now);
                }
            }
        }
        if let Some(next) = v["next_batch"].as_str() {
            since = next.to_owned();
        }
    }
}
