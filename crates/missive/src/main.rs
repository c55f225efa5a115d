//! `missive`: the homeserver binary. `missive` (or `missive serve`) runs the
//! server; `missive admin …` manages accounts from the command line.

mod config;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use missive_server::{App, Config, config::Database};
use missive_store::{RegistrationToken, Store};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "missive", version, about = "Missive: a sovereign Matrix homeserver")]
struct Cli {
    /// TOML configuration file (see missive.example.toml); every key has a default.
    #[arg(long, short, global = true, env = "MISSIVE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver (the default).
    Serve,
    /// Administration commands, run against the server's database.
    Admin {
        #[command(subcommand)]
        command: Admin,
    },
}

#[derive(Subcommand)]
enum Admin {
    /// Create a user account.
    CreateUser {
        /// The localpart (`alice` for `@alice:server_name`).
        username: String,
        /// The password; read from MISSIVE_PASSWORD if not given here.
        #[arg(long, env = "MISSIVE_PASSWORD", hide_env_values = true)]
        password: String,
        /// Make the user a server administrator.
        #[arg(long)]
        admin: bool,
    },
    /// Create a registration token (for `registration = "token"`).
    CreateRegistrationToken {
        /// The token; a random one is generated if omitted.
        #[arg(long)]
        token: Option<String>,
        /// How many registrations it allows (unlimited if omitted).
        #[arg(long)]
        uses: Option<i64>,
        /// Validity in hours (forever if omitted).
        #[arg(long)]
        valid_hours: Option<i64>,
    },
    /// List the reports users made of events, rooms and users, newest first.
    Reports {
        /// How many to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only reports older than this report number (to page back).
        #[arg(long)]
        before: Option<i64>,
    },
    /// Replace the server's signing key (e.g. once a year, or if it may have
    /// leaked). The old key stays published as expired, so other servers
    /// still verify past events; restart every process afterwards.
    RotateSigningKey,
    /// Apply the database's pending schema migrations and exit (the server
    /// applies them at start too); with --status, only list them.
    Migrate {
        /// List the migrations applied and pending, change nothing.
        #[arg(long)]
        status: bool,
    },
    /// Copy an SQLite database into an empty PostgreSQL database (stop the server first).
    MigrateDb {
        /// The SQLite database: `sqlite://PATH`.
        #[arg(long)]
        from: String,
        /// The PostgreSQL database: `postgres://user@host/database`; it must be empty.
        #[arg(long)]
        to: String,
    },
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("MISSIVE_LOG").unwrap_or_else(|_| EnvFilter::new("info,ruma_state_res=warn")),
        )
        // Colours only for a person at a terminal: a journal or a file
        // gets plain lines that grep and log shippers read.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    // Panics are caught per request (a 500 or, for ruma's parsers, a 400);
    // log them through tracing rather than as raw stderr text.
    std::panic::set_hook(Box::new(|info| tracing::warn!(panic = %info, "caught a panic")));
    let config = config::load(cli.config.as_deref())?;
    // Blocking threads (SQLite, hashing, thumbnails) each keep a malloc arena:
    // a bounded pool keeps the resident size bounded too.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(64)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Admin { command } => admin(config, command).await,
        }
    })
}

fn open_store(config: &Config) -> anyhow::Result<Store> {
    match config.database() {
        Database::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            Store::open(&path).with_context(|| format!("opening database {}", path.display()))
        }
        // The URL may hold a password: it is not repeated in the error.
        // The PostgreSQL client blocks on its own runtime: not on this one's workers.
        Database::Url(url) => std::thread::spawn(move || Store::open_url(&url))
            .join()
            .map_err(|_| anyhow::anyhow!("opening the PostgreSQL database panicked"))?
            .context("opening the PostgreSQL database"),
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    let files = raise_open_files_limit();
    if config.max_connections == 0 {
        let listeners = if config.federation.listen.is_some() { 2 } else { 1 };
        config.max_connections = automatic_connection_cap(files, listeners);
    }
    tracing::info!(
        open_files = files,
        max_connections = config.max_connections,
        "connection limits"
    );
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store = open_store(&config)?;
    let listen = config.listen;
    let app = App::new(config.clone(), store).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(
        server_name = %config.server_name,
        listen = %listener.local_addr()?,
        registration = ?config.registration,
        data_dir = %config.data_dir.display(),
        "Missive is listening"
    );
    // The federation listener, beside the client one, when federation is on.
    let federation_listener = match config.federation.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the federation listener {addr}"))?;
            tracing::info!(listen = %l.local_addr()?, "federation (TLS) is listening");
            Some(l)
        }
        None => None,
    };
    // One signal stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let shutdown_signal = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let typing_app = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            if typing_app.typing.expire() {
                typing_app.notify();
            }
        }
    });
    let federation = async {
        match federation_listener {
            Some(l) => missive_server::serve_federation(app.clone(), l, shutdown_signal()).await,
            None => Ok(()),
        }
    };
    let client = missive_server::serve(app.clone(), listener, shutdown_signal());
    // A federation listener that cannot start (its certificate) stops the server.
    tokio::try_join!(client, federation)?;
    Ok(())
}

async fn admin(config: Config, command: Admin) -> anyhow::Result<()> {
    // It works on the two databases it is given, not on the configured one.
    if let Admin::MigrateDb { from, to } = command {
        return migrate_db(from, to);
    }
    if let Admin::Migrate { status: true } = command {
        return migration_status(&config);
    }
    let store = open_store(&config)?;
    if let Admin::Migrate { .. } = command {
        // Opening the store applied whatever was pending.
        println!(
            "the database is at schema version {}",
            missive_store::migrations::latest()
        );
        return Ok(());
    }
    let app = App::new(config, store).await?;
    match command {
        Admin::CreateUser {
            username,
            password,
            admin,
        } => {
            let localpart = username.to_lowercase();
            missive_server::services::accounts::validate_localpart(&localpart)?;
            if password.len() < 8 {
                bail!("password must be at least 8 characters");
            }
            let user = app.user_id(&localpart)?;
            app.create_account(&user, Some(password), admin).await?;
            println!("created {user}");
        }
        Admin::CreateRegistrationToken {
            token,
            uses,
            valid_hours,
        } => {
            let token = token.unwrap_or_else(|| missive_server::services::accounts::random_string(16));
            let expiry_ts = valid_hours.map(|h| missive_server::services::accounts::now_ms() + h * 3_600_000);
            app.store
                .create_registration_token(RegistrationToken {
                    token: token.clone(),
                    uses_allowed: uses,
                    completed: 0,
                    expiry_ts,
                })
                .await?;
            println!("{token}");
        }
        Admin::MigrateDb { .. } | Admin::Migrate { .. } => unreachable!("handled before the server starts"),
        Admin::RotateSigningKey => {
            use ruma::serde::{Base64, base64::Standard};
            let old_id = format!("ed25519:{}", app.key.version());
            let old_public = Base64::<Standard>::new(app.key.public_key().to_vec()).encode();
            let version = format!("ed25519:{}", missive_server::services::accounts::random_string(6));
            app.store
                .rotate_signing_key(
                    old_id.clone(),
                    old_public,
                    version.clone(),
                    missive_core::signing_key::generate(),
                    missive_server::services::accounts::now_ms(),
                )
                .await?;
            println!("retired {old_id}; {version} signs once the server is restarted");
        }
        Admin::Reports { limit, before } => {
            use missive_store::directory::ReportTarget;
            for r in app.store.reports(before, limit).await? {
                let target = match &r.report.target {
                    ReportTarget::Event { room_id, event_id } => format!("event {event_id} in {room_id}"),
                    ReportTarget::Room { room_id } => format!("room {room_id}"),
                    ReportTarget::User { user_id } => format!("user {user_id}"),
                };
                let score = r.report.score.map(|s| format!(" score {s}")).unwrap_or_default();
                // Quoted: a reason is user input, and may hold control characters.
                let reason = r.report.reason.as_deref().unwrap_or("");
                println!(
                    "#{} at {} ms by {}: {target}{score}, reason {reason:?}",
                    r.id, r.received_ts, r.report.reporter
                );
            }
        }
    }
    Ok(())
}

fn migrate_db(from: String, to: String) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};

    let Some(path) = from.strip_prefix("sqlite://") else {
        bail!("--from must be sqlite://PATH");
    };
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        bail!("--to must be a postgres:// URL");
    }
    let path = PathBuf::from(path);
    let started = std::time::Instant::now();
    // The PostgreSQL client blocks on its own runtime: not on this one's workers.
    let counts = std::thread::spawn(move || {
        let tty = std::io::stderr().is_terminal();
        missive_store::migrate::sqlite_to_postgres(&path, &to, |table, rows| {
            if tty {
                eprint!("\r\x1b[Kcopying {table}: {rows} rows");
                let _ = std::io::stderr().flush();
            }
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the migration panicked"))?;
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
    // The URL may hold a password: it is not repeated in the error.
    let counts = counts.context("migrating the database to PostgreSQL")?;
    let width = counts.iter().map(|c| c.table.len()).fold("total".len(), usize::max);
    for c in &counts {
        println!("{:width$}  {}", c.table, c.rows);
    }
    println!("{:width$}  {}", "total", counts.iter().map(|c| c.rows).sum::<u64>());
    println!(
        "copied {} tables in {:.1} s; row counts match. Point database_url at the PostgreSQL database.",
        counts.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints the schema migrations the configured database has applied and
/// those this release would apply, without changing anything.
fn migration_status(config: &Config) -> anyhow::Result<()> {
    let url = match config.database() {
        Database::Sqlite(path) => {
            if !path.is_file() {
                bail!("there is no database at {} yet", path.display());
            }
            format!("sqlite://{}", path.display())
        }
        Database::Url(url) => url,
    };
    // The PostgreSQL client blocks on its own runtime: not on this one's workers.
    let status = std::thread::spawn(move || missive_store::migrations::status(&url))
        .join()
        .map_err(|_| anyhow::anyhow!("reading the migrations panicked"))?
        .context("reading the database's migrations")?;
    for (version, name, ts) in &status.applied {
        println!("{version:>4}  {name:<24}  applied at {ts} ms");
    }
    for (version, name) in &status.pending {
        println!("{version:>4}  {name:<24}  pending");
    }
    let latest = missive_store::migrations::latest();
    match status.version() {
        v if v > latest => println!("the database is at version {v}, newer than this release ({latest})"),
        v if v == latest => println!("the database is at version {v}, up to date"),
        v => println!("the database is at version {v}; this release would bring it to {latest}"),
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one: each connection
/// is a file, and the usual soft limit (1,024) would take the server
/// offline with a thousand idle connections. Returns the limit in force.
fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            } else {
                tracing::warn!(
                    soft = lim.rlim_cur,
                    hard = lim.rlim_max,
                    "could not raise the open files limit"
                );
            }
        }
    }
    lim.rlim_cur
}

/// Connections per listener that leave files for the rest (the database,
/// media, connections to other servers): at most the default cap.
fn automatic_connection_cap(open_files: u64, listeners: u64) -> usize {
    let spare = open_files.saturating_sub(512) / listeners.max(1);
    (spare as usize).clamp(64, missive_server::DEFAULT_MAX_CONNECTIONS)
}

/// glibc gives each thread that allocates its own arena, and keeps freed
/// large blocks in the heap once it has raised its mmap threshold: a server with many short bursts on many threads then
/// keeps the peak forever. Two arenas keep the resident size close to what
/// is in use, at a negligible cost in contention for this workload.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // A fixed mmap threshold: large blocks (a password hash's 19 MiB)
        // always come from mmap and go back to the system when freed, instead
        // of glibc raising the threshold and keeping them in the heap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
