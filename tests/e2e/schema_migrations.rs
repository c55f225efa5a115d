//! Versioned migrations: a database written by the release before them
//! (the fixture in tests/fixtures/schema-v0, made by populate.py against
//! that release) is upgraded in place, on SQLite and on PostgreSQL, with
//! every session and every byte of data intact; a database a newer release
//! migrated further is refused with a clear message.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::{Raw, TestDatabase, TestServer, enc};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/schema-v0");

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(FIXTURE).join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A data directory holding the fixture's media files.
fn data_dir() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    copy_dir(&fixture("media"), &data.path().join("media"));
    data
}

async fn run_admin(data: &Path, database_url: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_missive"))
        .arg("admin")
        .args(args)
        .env("MISSIVE_DATA_DIR", data)
        .env("MISSIVE_DATABASE_URL", database_url)
        .env("MISSIVE_SERVER_NAME", "fixture.example")
        .env("MISSIVE_LOG", "warn")
        .output()
        .await
        .unwrap()
}

/// Everything the fixture holds, read back through the client API with the
/// sessions it was made with.
async fn everything_is_there(server: &TestServer, tokens: &Value) {
    let user = |who: &str| Raw {
        base: server.url.clone(),
        http: reqwest::Client::new(),
        token: tokens[who]["access_token"].as_str().unwrap().to_owned(),
        user_id: tokens[who]["user_id"].as_str().unwrap().to_owned(),
    };
    let (alice, bob) = (user("alice"), user("bob"));
    let room = tokens["room"].as_str().unwrap();
    let events: Vec<&str> = tokens["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();

    // Nobody was logged out.
    let me = alice.ok("GET", "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(me["user_id"], tokens["alice"]["user_id"]);
    assert_eq!(me["device_id"], tokens["alice"]["device_id"]);
    bob.ok("GET", "/_matrix/client/v3/account/whoami", None).await;
    // Passwords still work.
    let login = crate::common::request(
        &alice.http,
        "POST",
        &format!("{}/_matrix/client/v3/login", server.url),
        None,
        Some(crate::common::RawBody::Json(json!({
            "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
            "password": "alice-fixture-password",
        }))),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.body);

    // The timeline, its edit, reaction and redaction.
    let page = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(room)),
            None,
        )
        .await;
    let chunk = page["chunk"].as_array().unwrap();
    for (i, id) in events.iter().enumerate() {
        let ev = chunk
            .iter()
            .find(|e| e["event_id"] == *id)
            .unwrap_or_else(|| panic!("event {i} is gone"));
        match i {
            2 => assert!(
                ev["content"].as_object().unwrap().is_empty(),
                "the redaction holds: {ev}"
            ),
            _ => assert_eq!(ev["content"]["body"], format!("fixture message {i}")),
        }
    }
    let first = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(events[0])),
            None,
        )
        .await;
    assert_eq!(
        first["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"]["body"], "fixture message 0, edited",
        "{first}"
    );
    let state = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room)),
            None,
        )
        .await;
    assert_eq!(state["topic"], "kept across upgrades");
    let alias = alice
        .ok(
            "GET",
            "/_matrix/client/v3/directory/room/%23fixture%3Afixture.example",
            None,
        )
        .await;
    assert_eq!(alias["room_id"], tokens["public_room"]);
    // Account data, tags, push rules, filters.
    let data = alice
        .ok(
            "GET",
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.fixture",
                enc(&alice.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(data, json!({ "kept": true }));
    let tags = alice
        .ok(
            "GET",
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags",
                enc(&alice.user_id),
                enc(room)
            ),
            None,
        )
        .await;
    assert_eq!(tags["tags"]["u.work"]["order"], 0.5);
    let rule = alice
        .ok("GET", "/_matrix/client/v3/pushrules/global/content/fixture", None)
        .await;
    assert_eq!(rule["pattern"], "fixture");
    let filter = alice
        .ok(
            "GET",
            &format!(
                "/_matrix/client/v3/user/{}/filter/{}",
                enc(&alice.user_id),
                tokens["filter_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(filter["room"]["timeline"]["limit"], 7);
    // The file.
    let file = alice.download(tokens["media"].as_str().unwrap()).await;
    assert_eq!(file, b"fixture file");
    // End-to-end encryption: keys, one-time keys, the backup, a waiting to-device message.
    let keys = bob
        .ok(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { alice.user_id.clone(): [] } })),
        )
        .await;
    let device = tokens["alice"]["device_id"].as_str().unwrap();
    assert_eq!(
        keys["device_keys"][&alice.user_id][device]["keys"][format!("curve25519:{device}")],
        "fixturecurvekey",
        "{keys}"
    );
    let counts = alice
        .ok("POST", "/_matrix/client/v3/keys/upload", Some(json!({})))
        .await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 5, "{counts}");
    let version = tokens["backup_version"].as_str().unwrap();
    let backup = alice
        .ok(
            "GET",
            &format!(
                "/_matrix/client/v3/room_keys/keys/{}/fixturesession?version={version}",
                enc(room)
            ),
            None,
        )
        .await;
    assert_eq!(backup["session_data"]["ciphertext"], "c");
    let sync = alice.sync(None, 0).await;
    let to_device = sync["to_device"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        to_device.iter().any(|e| e["type"] == "m.fixture"),
        "the waiting to-device message: {sync}"
    );
    assert!(sync["rooms"]["join"][room].is_object());
    // And the room goes on.
    let sent = alice
        .send_text(room, "after-upgrade", "written after the upgrade")
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let sync = bob.sync(None, 0).await;
    assert!(sync.to_string().contains("written after the upgrade"));
}

fn tokens(engine: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{engine}-tokens.json"))).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_migrations_upgrades_in_place_on_sqlite() {
    let data = data_dir();
    let db = data.path().join("missive.db");
    std::fs::copy(fixture("sqlite.db"), &db).unwrap();
    let url = format!("sqlite://{}", db.display());

    // The status reads without changing anything.
    let status = run_admin(data.path(), &url, &["migrate", "--status"]).await;
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(out.contains("baseline") && out.contains("pending"), "{out}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        std::fs::read(fixture("sqlite.db")).unwrap()
    );

    let server = TestServer::start_prepared(
        data,
        None,
        &[
            ("MISSIVE_DATABASE_URL", &url),
            ("MISSIVE_SERVER_NAME", "fixture.example"),
        ],
    )
    .await;
    everything_is_there(&server, &tokens("sqlite")).await;
    let status = run_admin(server.data_dir(), &url, &["migrate", "--status"]).await;
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains("applied at") && out.contains("up to date"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_migrations_upgrades_in_place_on_postgres() {
    let Some(database) = TestDatabase::from_env() else {
        eprintln!("skipped: MISSIVE_TEST_POSTGRES is not set");
        return;
    };
    database.load(&std::fs::read_to_string(fixture("postgres.sql")).unwrap());
    let url = database.url();
    let data = data_dir();
    let status = run_admin(data.path(), &url, &["migrate", "--status"]).await;
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(
        out.contains("pending"),
        "{out} {}",
        String::from_utf8_lossy(&status.stderr)
    );
    // `admin migrate` applies them without starting a server.
    let migrated = run_admin(data.path(), &url, &["migrate"]).await;
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let server = TestServer::start_prepared(data, Some(database), &[("MISSIVE_SERVER_NAME", "fixture.example")]).await;
    everything_is_there(&server, &tokens("postgres")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_a_newer_release_migrated_is_refused() {
    let mut server = TestServer::start().await;
    server.kill9().await;
    let url = server
        .database_url()
        .unwrap_or_else(|| format!("sqlite://{}", server.data_dir().join("missive.db").display()));
    let future = "INSERT INTO schema_migrations (version, name, applied_ts) VALUES (9999, 'from the future', 0)";
    if let Some(path) = url.strip_prefix("sqlite://") {
        rusqlite::Connection::open(path).unwrap().execute_batch(future).unwrap();
    } else {
        let u = url.clone();
        std::thread::spawn(move || {
            postgres::Client::connect(&u, postgres::NoTls)
                .unwrap()
                .batch_execute(future)
                .unwrap()
        })
        .join()
        .unwrap();
    }
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_missive"))
            .env("MISSIVE_DATA_DIR", server.data_dir())
            .env("MISSIVE_DATABASE_URL", &url)
            .env("MISSIVE_LISTEN", "127.0.0.1:0")
            .env("MISSIVE_LOG", "warn")
            .output(),
    )
    .await
    .expect("the server must stop, not serve")
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("schema version 9999"), "{said}");
    let status = run_admin(server.data_dir(), &url, &["migrate", "--status"]).await;
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains("newer than this release"), "{said}");
}
