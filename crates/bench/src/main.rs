//! `missive-bench`: a load generator that drives any Matrix homeserver through
//! the standard Client-Server API only, so the same scenarios run against
//! Missive and Synapse for side-by-side figures.
//!
//! `missive-bench run --url …` runs the scenarios and prints a table (stdout),
//! with progress on stderr and, with `--json FILE`, every figure per run. A
//! server running as several processes gets one `--url` (and `--pid`) per
//! process; the simulated clients are spread over the URLs round-robin.
//! `missive-bench compare A.json B.json [C.json …]` prints the Markdown
//! comparison.

mod client;
mod meter;
mod results;
mod scenarios;

use std::{
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use client::{Registration, Server, User};
use results::{BenchResult, Scenario};

#[derive(Parser)]
#[command(name = "missive-bench", version, about = "Load generator for any Matrix homeserver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios against one homeserver.
    Run(Box<RunArgs>),
    /// Print the Markdown side-by-side table of two or more `--json` results.
    Compare {
        /// The results, one column each, in this order.
        #[arg(required = true, num_args = 2..)]
        results: Vec<PathBuf>,
        /// A column "ahead, by" comparing two results, as `I:J` (1-based
        /// positions in the list of results); repeatable. Default: `1:2`.
        #[arg(long, value_parser = parse_pair)]
        ahead: Vec<(usize, usize)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum ScenarioId {
    /// 1: N users in M rooms send as fast as answers come.
    Send,
    /// 2: time from a send's 200 to another member's long-polling /sync returning it.
    Latency,
    /// 3: initial /sync of a user in R rooms of K members with H events each.
    InitialSync,
    /// 7: simplified sliding sync (MSC4186): time to the first room list.
    SlidingSync,
    /// 4: one sendToDevice to D devices, until every device's sync has it.
    ToDevice,
    /// 6: registrations/s and logins/s.
    Login,
}

impl ScenarioId {
    /// The short identifier and the title its scenario module gives it, for
    /// a scenario that failed before it returned any.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            ScenarioId::Send => ("send", "1 send throughput"),
            ScenarioId::Latency => ("latency", "2 delivery latency"),
            ScenarioId::InitialSync => ("initial_sync", "3 initial sync"),
            ScenarioId::SlidingSync => ("sliding_sync", "7 sliding sync"),
            ScenarioId::ToDevice => ("to_device", "4 to-device fan-out"),
            ScenarioId::Login => ("login", "6 registration and login"),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, serde::Serialize)]
enum RegistrationMode {
    /// `/register` with the `m.login.dummy` stage (Missive: MISSIVE_REGISTRATION=open).
    Open,
    /// Synapse's `/_synapse/admin/v1/register` with `--shared-secret`.
    SharedSecret,
}

#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct RunArgs {
    /// Homeserver base URL. Repeat it (or separate URLs with commas) for a
    /// server running as several processes: simulated client i talks to URL
    /// i mod n only, and so does each account's registration.
    #[arg(long = "url", value_delimiter = ',', default_value = "http://127.0.0.1:8008")]
    urls: Vec<String>,
    /// Name of the server in the tables.
    #[arg(long, default_value = "server")]
    label: String,
    /// How accounts are created.
    #[arg(long, value_enum, default_value = "open")]
    registration: RegistrationMode,
    /// Synapse's `registration_shared_secret`, for `--registration shared-secret`.
    #[arg(long, env = "MISSIVE_BENCH_SHARED_SECRET", hide_env_values = true)]
    #[serde(skip)]
    shared_secret: Option<String>,
    /// PID of the server process, to read its memory and CPU time from /proc
    /// (same machine only). Repeat it (or separate PIDs with commas) for a
    /// server running as several processes: memory and CPU are their sums.
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Scenarios to run, comma-separated, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "send,latency,initial-sync,sliding-sync,to-device,login"
    )]
    scenarios: Vec<ScenarioId>,
    /// Measured runs per scenario (after one set-up); each figure is their median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Write every figure of every run here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Requests in flight while setting up (accounts, rooms, history).
    #[arg(long, default_value_t = 8)]
    setup_concurrency: usize,

    /// 1 send: senders.
    #[arg(long, default_value_t = 20)]
    send_users: usize,
    /// 1 send: rooms the senders are spread over.
    #[arg(long, default_value_t = 5)]
    send_rooms: usize,
    /// 1 send: seconds per run.
    #[arg(long, default_value_t = 10.0)]
    send_secs: f64,

    /// 2 latency: rooms, each with one sender and one long-polling reader.
    #[arg(long, default_value_t = 4)]
    latency_rooms: usize,
    /// 2 latency: messages per second, all rooms together.
    #[arg(long, default_value_t = 20.0)]
    latency_rate: f64,
    /// 2 latency: seconds of sending per run.
    #[arg(long, default_value_t = 10.0)]
    latency_secs: f64,

    /// 3 initial sync: rooms the user is in (R).
    #[arg(long, default_value_t = 40)]
    sync_rooms: usize,
    /// 3 initial sync: members per room, the user included (K).
    #[arg(long, default_value_t = 40)]
    sync_members: usize,
    /// 3 initial sync: messages per room (H).
    #[arg(long, default_value_t = 20)]
    sync_events: usize,
    /// 3 initial sync: timeline events per room in the response.
    #[arg(long, default_value_t = 10)]
    sync_timeline_limit: usize,

    /// 7 sliding sync: rooms in the first window of the room list.
    #[arg(long, default_value_t = 20)]
    ss_window: usize,

    /// 4 to-device: devices the message goes to (D).
    #[arg(long, default_value_t = 200)]
    td_devices: usize,
    /// 4 to-device: devices per user (the devices are created by logging in).
    #[arg(long, default_value_t = 10)]
    td_devices_per_user: usize,

    /// 6 login: seconds of logging in per run.
    #[arg(long, default_value_t = 5.0)]
    login_secs: f64,
    /// 6 login: seconds of registering per run.
    #[arg(long, default_value_t = 5.0)]
    register_secs: f64,
    /// 6 login: requests in flight.
    #[arg(long, default_value_t = 4)]
    login_concurrency: usize,
}

/// What every scenario gets.
pub struct Ctx {
    pub server: Server,
    pub args: RunArgs,
    /// Prefix of every account name of this invocation, so runs against the same server do not collide.
    pub prefix: String,
}

impl Ctx {
    pub fn localpart(&self, scenario: &str, i: usize) -> String {
        format!("{}_{scenario}_{i}", self.prefix)
    }

    /// Registers `n` accounts named after `scenario`, with a progress display.
    pub async fn register_many(&self, scenario: &str, n: usize) -> anyhow::Result<Vec<User>> {
        let p = meter::Progress::new(scenario, "registering accounts", n);
        let deadline = Instant::now() + std::time::Duration::from_secs(1800);
        client::for_each_concurrent((0..n).collect(), self.args.setup_concurrency, |i| {
            let p = &p;
            async move {
                client::check_deadline(deadline, "registration")?;
                let u = self.server.register(i, &self.localpart(scenario, i)).await?;
                p.inc();
                Ok(u)
            }
        })
        .await
    }

    /// After a set-up, waits (at most 60 s) until the server's CPU falls
    /// below 5 % of a core (all its processes together), so that work it
    /// deferred (push rule evaluation, say) is not billed to the measured
    /// runs. Without `--pid`, a fixed second.
    pub async fn settle(&self) {
        let pids = &self.args.pids;
        if pids.is_empty() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            return;
        }
        let started = Instant::now();
        let mut last = meter::total_cpu_secs(pids).unwrap_or(0.0);
        for _ in 0..120 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let now = meter::total_cpu_secs(pids).unwrap_or(0.0);
            if now - last < 0.025 {
                break;
            }
            last = now;
        }
        eprintln!(
            "[{}] server idle after {:.1} s",
            self.args.label,
            started.elapsed().as_secs_f64()
        );
    }

    pub fn meter(&self) -> meter::Meter {
        meter::Meter::start(&self.args.pids)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Run(args) => rt.block_on(run(*args)),
        Command::Compare { results, ahead } => {
            let read = |p: &PathBuf| -> anyhow::Result<BenchResult> {
                serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                    .with_context(|| format!("parsing {}", p.display()))
            };
            let rs = results.iter().map(read).collect::<anyhow::Result<Vec<_>>>()?;
            let mut pairs = vec![];
            for (i, j) in if ahead.is_empty() { vec![(1, 2)] } else { ahead } {
                if i == 0 || j == 0 || i > rs.len() || j > rs.len() || i == j {
                    bail!("--ahead {i}:{j}: two different positions from 1 to {}", rs.len());
                }
                pairs.push((i - 1, j - 1));
            }
            let rs: Vec<&BenchResult> = rs.iter().collect();
            print!("{}", results::compare_markdown(&rs, &pairs));
            let notes = results::notes_markdown(&rs);
            if !notes.is_empty() {
                print!("\nNotes from the runs:\n\n{notes}");
            }
            Ok(())
        }
    }
}

async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    // A process given twice is counted once.
    let mut seen = std::collections::HashSet::new();
    args.pids.retain(|p| seen.insert(*p));
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let registration = match args.registration {
        RegistrationMode::Open => Registration::Open,
        RegistrationMode::SharedSecret => Registration::SharedSecret(
            args.shared_secret
                .clone()
                .context("--registration shared-secret needs --shared-secret")?,
        ),
    };
    let max_conns = args.td_devices + args.send_users + 64;
    let server = Server::new(&args.urls, registration, max_conns)?;
    let urls = server.bases.join(", ");
    // Every process must answer; the first one's versions are reported.
    let mut versions = None;
    for base in server.bases.iter() {
        let v = server
            .versions_at(base)
            .await
            .with_context(|| format!("no homeserver answers at {base}"))?;
        versions.get_or_insert(v);
    }
    let versions = versions.unwrap_or_default();
    let started = Instant::now();
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    // Letters only at the start of a localpart; base 36 of the start time.
    let prefix = format!(
        "b{}",
        base36(started_unix * 1000 + u64::from(std::process::id() % 1000))
    );
    let idle_rss_kib = meter::total_rss_kib(&args.pids);
    eprintln!(
        "[{}] {urls} — account prefix {prefix}, idle RSS {}",
        args.label,
        idle_rss_kib.map_or("unknown (no --pid)".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    );
    let ctx = Ctx {
        server,
        args: args.clone(),
        prefix,
    };
    let mut out: Vec<Scenario> = vec![];
    let mut sync_world: Option<scenarios::initial_sync::World> = None;
    for id in &args.scenarios {
        eprintln!("[{}] scenario {id:?}", args.label);
        let before_429 = ctx.server.rate_limited.load(std::sync::atomic::Ordering::Relaxed);
        let outcome = match id {
            ScenarioId::Send => scenarios::send::run(&ctx).await,
            ScenarioId::Latency => scenarios::latency::run(&ctx).await,
            ScenarioId::InitialSync => scenarios::initial_sync::run(&ctx, &mut sync_world).await,
            ScenarioId::SlidingSync => scenarios::sliding_sync::run(&ctx, &mut sync_world).await,
            ScenarioId::ToDevice => scenarios::to_device::run(&ctx).await,
            ScenarioId::Login => scenarios::login::run(&ctx).await,
        };
        // A failed scenario is recorded as such and the next one runs: one
        // failing request must not cost the figures of the others.
        let mut s = outcome.unwrap_or_else(|e| {
            let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            eprintln!("[{}] scenario {id:?} FAILED (unix time {at}): {e:#}", args.label);
            let (key, title) = id.names();
            let mut s = Scenario::new(key, title, serde_json::Value::Null);
            s.failed = Some(format!("{e:#}"));
            s
        });
        s.rate_limited = ctx.server.rate_limited.load(std::sync::atomic::Ordering::Relaxed) - before_429;
        if s.rate_limited > 0 {
            eprintln!(
                "[{}] warning: {} requests were rate-limited (429)",
                args.label, s.rate_limited
            );
        }
        out.push(s);
    }
    let result = BenchResult {
        label: args.label.clone(),
        url: urls,
        versions,
        pid: args.pids.first().copied(),
        pids: args.pids.clone(),
        runs: args.runs,
        idle_rss_kib,
        started_unix,
        duration_secs: started.elapsed().as_secs_f64(),
        args: serde_json::to_value(&args)?,
        scenarios: out,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", results::table(&result));
    Ok(())
}

/// `I:J`, two positions.
fn parse_pair(s: &str) -> Result<(usize, usize), String> {
    let (i, j) = s.split_once(':').ok_or("expected I:J")?;
    let n = |x: &str| x.trim().parse::<usize>().map_err(|e| format!("{x:?}: {e}"));
    Ok((n(i)?, n(j)?))
}

fn base36(mut n: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = vec![];
    while n > 0 {
        s.push(digits[(n % 36) as usize]);
        n /= 36;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}
