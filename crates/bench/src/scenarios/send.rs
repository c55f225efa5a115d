//! Scenario 1, send throughput: N users in M rooms each send `m.room.message` events
//! as fast as the answers come (one request in flight per user) for T seconds.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use super::{ms, record};
use crate::{
    Ctx,
    client::for_each_concurrent,
    results::{Metric, Scenario, quantile},
};

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let a = &ctx.args;
    let n = a.send_users.max(1);
    let m = a.send_rooms.clamp(1, n);
    let mut s = Scenario::new(
        "send",
        "1 send throughput",
        json!({ "users": n, "rooms": m, "secs_per_run": a.send_secs }),
    );
    let setup = Instant::now();
    let users = ctx.register_many("send", n).await?;
    let sv = &ctx.server;
    let rooms = for_each_concurrent((0..m).collect(), a.setup_concurrency, |i| {
        let u = &users[i];
        async move { u.create_room(sv, &format!("send {i}")).await }
    })
    .await?;
    for_each_concurrent((m..n).collect(), a.setup_concurrency, |i| {
        let (u, r) = (&users[i], &rooms[i % m]);
        async move { u.join(sv, r).await }
    })
    .await?;
    s.setup_secs = setup.elapsed().as_secs_f64();
    ctx.settle().await;

    for run in 0..a.runs {
        let meter = ctx.meter();
        let acked = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let stop = start + Duration::from_secs_f64(a.send_secs);
        let mut tasks = vec![];
        for (i, u) in users.iter().enumerate() {
            let (u, room, sv) = (u.clone(), rooms[i % m].clone(), sv.clone());
            let (acked, errors, prefix) = (acked.clone(), errors.clone(), ctx.prefix.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = vec![];
                // Bounded in time by `stop` and in count.
                for k in 0..1_000_000u64 {
                    if Instant::now() >= stop {
                        break;
                    }
                    let t = Instant::now();
                    let txn = format!("{prefix}-s{run}-{i}-{k}");
                    match u
                        .send_text(&sv, &room, &txn, &format!("message {k} from sender {i}"))
                        .await
                    {
                        Ok(_) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            lat.push(ms(t.elapsed()));
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("send failed: {e:#}");
                            }
                        }
                    }
                }
                lat
            }));
        }
        let mut lat = vec![];
        for t in tasks {
            lat.extend(t.await?);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let reading = meter.finish();
        let n_acked = acked.load(Ordering::Relaxed);
        s.errors += errors.load(Ordering::Relaxed);
        let rate = n_acked as f64 / elapsed;
        eprintln!(
            "[send] run {}: {n_acked} events acknowledged in {elapsed:.1} s = {rate:.0}/s",
            run + 1
        );
        s.metric(Metric::new("acknowledged events/s", "ev/s", true)).push(rate);
        if let Some(p) = quantile(&mut lat, 0.5) {
            s.metric(Metric::new("send round trip p50", "ms", false)).push(p);
        }
        if let Some(p) = quantile(&mut lat, 0.99) {
            s.metric(Metric::new("send round trip p99", "ms", false)).push(p);
        }
        if let (Some(cpu), true) = (reading.cpu_secs, n_acked > 0) {
            s.metric(Metric::new("server CPU per event", "ms", false))
                .push(cpu * 1000.0 / n_acked as f64);
        }
        record(&mut s, &reading, false);
    }
    Ok(s)
}
