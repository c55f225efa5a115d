//! Scenario 6, registration and login: accounts created per second, then password
//! logins per second (each a new device), with C requests in flight. The
//! password hash dominates both; its parameters are server configuration,
//! reported beside the figures by the script that starts the servers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use super::record;
use crate::{
    Ctx,
    results::{Metric, Scenario},
};

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let a = &ctx.args;
    let c = a.login_concurrency.max(1);
    let mut s = Scenario::new(
        "login",
        "6 registration and login",
        json!({ "concurrency": c, "register_secs": a.register_secs, "login_secs": a.login_secs }),
    );
    let setup = Instant::now();
    let users = ctx.register_many("login", c).await?;
    s.setup_secs = setup.elapsed().as_secs_f64();
    ctx.settle().await;
    let sv = &ctx.server;
    for run in 0..a.runs {
        // Registrations: worker w registers `<prefix>_reg<run>_<w>_<k>`; worker w
        // is simulated client w (so, with several URLs, talks to URL w mod n).
        let meter = ctx.meter();
        let (rate, errors) = timed(c, a.register_secs, |w, k| {
            let sv = sv.clone();
            let name = format!("{}_reg{run}_{w}_{k}", ctx.prefix);
            async move { sv.register(w, &name).await.map(drop) }
        })
        .await;
        record(&mut s, &meter.finish(), false);
        s.errors += errors;
        s.metric(Metric::new("registrations/s", "/s", true)).push(rate);
        // Logins: worker w logs in as its own account, again and again.
        let meter = ctx.meter();
        let (rate2, errors) = timed(c, a.login_secs, |w, _| {
            let (sv, lp) = (sv.clone(), users[w].localpart.clone());
            async move { sv.login(w, &lp).await.map(drop) }
        })
        .await;
        record(&mut s, &meter.finish(), false);
        s.errors += errors;
        eprintln!(
            "[login] run {}: {rate:.1} registrations/s, {rate2:.1} logins/s",
            run + 1
        );
        s.metric(Metric::new("logins/s", "/s", true)).push(rate2);
    }
    Ok(s)
}

/// Runs `c` workers calling `f(worker, k)` back to back for `secs`; returns
/// successes per second (over the time until the last answer) and failures.
async fn timed<F, Fut>(c: usize, secs: f64, f: F) -> (f64, u64)
where
    F: Fn(usize, u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(secs);
    let f = &f;
    let workers = (0..c).map(|w| {
        let (ok, failed) = (ok.clone(), failed.clone());
        async move {
            // Bounded in time and count.
            for k in 0..100_000u64 {
                if Instant::now() >= stop {
                    break;
                }
                match f(w, k).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("login scenario request failed: {e:#}");
                        }
                        0
                    }
                };
            }
        }
    });
    futures_util::future::join_all(workers).await;
    let elapsed = start.elapsed().as_secs_f64();
    (
        ok.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
    )
}
