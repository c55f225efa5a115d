//! Scenario 4, to-device fan-out: one `PUT /sendToDevice` addressed to D devices
//! (each a login of one of D/P users), each device long-polling `/sync`;
//! timed until every device's sync has returned the message.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Map, Value, json};

use super::{ms, record};
use crate::{
    Ctx,
    client::{Server, User, enc, for_each_concurrent},
    meter::Progress,
    results::{Metric, Scenario, quantile},
};

/// Longest wait for every device to have the message.
const DEADLINE: Duration = Duration::from_secs(120);
const EVENT_TYPE: &str = "org.missive.bench.fanout";

/// No rooms, presence or account data: the devices only wait for to-device messages.
fn filter() -> String {
    json!({
        "room": { "rooms": [] },
        "presence": { "types": [] },
        "account_data": { "types": [] },
    })
    .to_string()
}

/// When each device saw each run's message: `seen[run][device]`.
type Seen = Arc<Mutex<Vec<Vec<Option<Instant>>>>>;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let a = &ctx.args;
    let d = a.td_devices.max(1);
    let per = a.td_devices_per_user.clamp(1, d);
    let n_users = d.div_ceil(per);
    let mut s = Scenario::new(
        "to_device",
        "4 to-device fan-out",
        json!({ "devices": d, "devices_per_user": per, "users": n_users }),
    );
    s.notes.push(format!(
        "one sendToDevice to {d} devices ({n_users} users × {per} devices, each device a password login)"
    ));
    let sv = &ctx.server;
    let setup = Instant::now();
    let mut users = ctx.register_many("todev", n_users + 1).await?;
    let sender = users.pop().expect("n_users + 1 >= 1");
    // Device j of user u: the registration's device for j = 0, a login otherwise.
    // Each login is a new simulated client, numbered after the registered ones.
    let logins: Vec<(usize, usize)> = (0..n_users)
        .flat_map(|u| (1..per).map(move |j| (u, j)))
        .filter(|(u, j)| u * per + j < d)
        .enumerate()
        .map(|(k, (u, _))| (n_users + 1 + k, u))
        .collect();
    let p = Progress::new("to-device", "logging in devices", logins.len());
    let extra = for_each_concurrent(logins, a.setup_concurrency, |(client, u)| {
        let (p, users) = (&p, &users);
        async move {
            let dev = sv.login(client, &users[u].localpart).await?;
            p.inc();
            Ok(dev)
        }
    })
    .await?;
    drop(p);
    let mut devices: Vec<User> = users.clone();
    devices.extend(extra);
    devices.truncate(d);
    // Initial syncs: each device's token.
    let p = Progress::new("to-device", "initial syncs", devices.len());
    let tokens = for_each_concurrent(devices.iter().collect(), a.setup_concurrency, |dev| {
        let p = &p;
        async move {
            let (v, _) = dev.sync(sv, &filter(), None, 0).await?;
            p.inc();
            Ok(v["next_batch"].as_str().unwrap_or("").to_owned())
        }
    })
    .await?;
    drop(p);
    s.setup_secs = setup.elapsed().as_secs_f64();
    ctx.settle().await;

    let seen: Seen = Arc::new(Mutex::new(vec![vec![None; devices.len()]; a.runs]));
    let polling = Arc::new(AtomicUsize::new(0));
    let mut loops = vec![];
    for (i, (dev, since)) in devices.iter().zip(tokens).enumerate() {
        loops.push(tokio::spawn(device_loop(
            sv.clone(),
            dev.clone(),
            i,
            since,
            ctx.prefix.clone(),
            seen.clone(),
            polling.clone(),
        )));
    }
    let mut messages = Map::new();
    for dev in &devices {
        messages
            .entry(dev.user_id.clone())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .expect("object")
            .insert(dev.device_id.clone(), Value::Null);
    }
    let result = measure(ctx, &mut s, &sender, &messages, &seen, &polling).await;
    for l in loops {
        l.abort();
    }
    result?;
    Ok(s)
}

async fn measure(
    ctx: &Ctx,
    s: &mut Scenario,
    sender: &User,
    messages: &Map<String, Value>,
    seen: &Seen,
    polling: &AtomicUsize,
) -> anyhow::Result<()> {
    let sv = &ctx.server;
    let d = seen.lock().expect("lock")[0].len();
    for run in 0..ctx.args.runs {
        // Every device must be waiting in a long-poll (bounded wait).
        let ready_by = Instant::now() + Duration::from_secs(60);
        while polling.load(Ordering::Relaxed) < d && Instant::now() < ready_by {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let content = json!({ "run": run, "nonce": ctx.prefix });
        let mut body = messages.clone();
        for devs in body.values_mut() {
            for c in devs.as_object_mut().expect("object").values_mut() {
                *c = content.clone();
            }
        }
        let meter = ctx.meter();
        let t0 = Instant::now();
        sender
            .put(
                sv,
                &format!(
                    "/_matrix/client/v3/sendToDevice/{EVENT_TYPE}/{}",
                    enc(&format!("{}-td{run}", ctx.prefix))
                ),
                &json!({ "messages": body }),
            )
            .await?;
        let acked = t0.elapsed();
        let until = t0 + DEADLINE;
        loop {
            let all = seen.lock().expect("lock")[run].iter().all(Option::is_some);
            if all || Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reading = meter.finish();
        let mut times: Vec<f64> = seen.lock().expect("lock")[run]
            .iter()
            .flatten()
            .map(|t| ms(t.saturating_duration_since(t0)))
            .collect();
        let missing = d - times.len();
        let last = times.iter().copied().fold(0.0, f64::max);
        let p50 = quantile(&mut times, 0.5).unwrap_or(0.0);
        eprintln!(
            "[to-device] run {}: 200 after {:.0} ms, all {} devices after {last:.0} ms (median device {p50:.0} ms), {missing} missing",
            run + 1,
            ms(acked),
            d - missing
        );
        if missing == 0 {
            s.metric(Metric::new("until every device has it", "ms", false))
                .push(last);
        } else {
            s.notes.push(format!(
                "run {}: {missing} devices had nothing after {} s",
                run + 1,
                DEADLINE.as_secs()
            ));
        }
        s.metric(Metric::new("sendToDevice answered", "ms", false))
            .push(ms(acked));
        s.metric(Metric::new("median device has it", "ms", false)).push(p50);
        record(s, &reading, true);
    }
    Ok(())
}

async fn device_loop(
    sv: Server,
    dev: User,
    index: usize,
    mut since: String,
    nonce: String,
    seen: Seen,
    polling: Arc<AtomicUsize>,
) {
    let f = filter();
    let mut counted = false;
    // Bounded: aborted when the scenario ends; long-polls last 30 s.
    for _ in 0..10_000 {
        if !counted {
            counted = true;
            polling.fetch_add(1, Ordering::Relaxed);
        }
        let Ok((v, _)) = dev.sync(&sv, &f, Some(&since), 30_000).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let now = Instant::now();
        for e in v["to_device"]["events"].as_array().into_iter().flatten() {
            if e["type"] == EVENT_TYPE
                && e["content"]["nonce"] == nonce.as_str()
                && let Some(run) = e["content"]["run"].as_u64()
            {
                let mut seen = seen.lock().expect("lock");
                if let Some(slot) = seen.get_mut(run as usize).and_then(|r| r.get_mut(index)) {
                    slot.get_or_insert(now);
                }
            }
        }
        if let Some(next) = v["next_batch"].as_str() {
            since = next.to_owned();
        }
    }
}
