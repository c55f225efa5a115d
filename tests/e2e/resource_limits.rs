//! What a peer that holds connections open, sends half a request or opens
//! too many connections gets: closed connections, a log line, and a server
//! that keeps serving everyone else.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::{Raw, TestServer};

/// How long until the server closes `stream` (reading and dropping
/// whatever it answers first), or `None` if it is still open after `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(wait.saturating_sub(start.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(("127.0.0.1", server.port)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_sent_requests_are_closed() {
    let server =
        TestServer::start_with(&[("MISSIVE_HEADER_TIMEOUT_SECS", "1"), ("MISSIVE_BODY_TIMEOUT_SECS", "1")]).await;
    let alice = Raw::register(&server, "alice").await;
    let wait = Duration::from_secs(6);

    // A connection that never says anything.
    let mut silent = connect(&server).await;
    // Half the headers.
    let mut half_head = connect(&server).await;
    half_head
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // A body announced as 100 bytes, of which 2 come.
    let mut half_body = connect(&server).await;
    let head = format!(
        "POST /_matrix/client/v3/createRoom HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"",
        alice.token
    );
    half_body.write_all(head.as_bytes()).await.unwrap();
    // A finished request on a connection then left idle.
    let mut idle = connect(&server).await;
    idle.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();

    // A long poll lasts longer than those timeouts: it is not cut.
    let since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let started = Instant::now();
    alice.sync(Some(&since), 2500).await;
    assert!(started.elapsed() >= Duration::from_secs(2));

    for (what, stream) in [
        ("silent", &mut silent),
        ("half headers", &mut half_head),
        ("half body", &mut half_body),
        ("idle keep-alive", &mut idle),
    ] {
        assert!(
            closed_within(stream, wait).await.is_some(),
            "a {what} connection was still open after {wait:?}"
        );
    }
    // And the server serves the next client.
    alice.ok("GET", "/_matrix/client/v3/account/whoami", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_and_is_logged() {
    let server = TestServer::start_with(&[("MISSIVE_MAX_CONNECTIONS", "20"), ("MISSIVE_LOG", "warn")]).await;
    // Its kept-alive connection goes with it: twenty idle ones fill the cap.
    drop(Raw::register(&server, "alice").await);
    let mut idle = vec![];
    for _ in 0..40 {
        idle.push(connect(&server).await);
    }
    // Some of those were closed at once; the rest hold the cap.
    let mut open = 0;
    let mut refused = 0;
    for s in &mut idle {
        match closed_within(s, Duration::from_millis(300)).await {
            Some(_) => refused += 1,
            None => open += 1,
        }
    }
    assert!(open <= 20, "{open} connections open past a cap of 20");
    assert!(refused >= 20, "only {refused} connections refused");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("connection cap reached") {
        assert!(Instant::now() < deadline, "no log line for the cap: {}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once they go, others come in again.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = Raw::login(&server, "alice").await;
    fresh.ok("GET", "/_matrix/client/v3/account/whoami", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_raises_its_open_files_limit() {
    // Started by a shell with a low soft limit, as a default systemd or
    // login session would give it.
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -S -n 256 && exec \"$0\"")
        .arg(env!("CARGO_BIN_EXE_missive"))
        .env("MISSIVE_LISTEN", format!("127.0.0.1:{port}"))
        .env("MISSIVE_DATA_DIR", data.path())
        .env(
            "MISSIVE_DATABASE_URL",
            format!("sqlite://{}/m.db", data.path().display()),
        )
        .env("MISSIVE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let limits = loop {
        let ready = reqwest::get(format!("http://127.0.0.1:{port}/_matrix/client/versions"))
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "soft limit not raised to the hard one: {line}");
    assert_ne!(numbers[0], "256", "{line}");
    child.kill().await.unwrap();
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Samples `pid`'s resident memory until the returned flag is set; the
/// task answers the highest figure seen.
fn sample_rss(
    pid: u32,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<u64>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = stop.clone();
    let task = tokio::spawn(async move {
        let mut peak = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss(pid));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak
    });
    (stop, task)
}

fn staged_files(server: &TestServer) -> usize {
    std::fs::read_dir(server.data_dir().join("media/.uploading")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_to_disk_instead_of_memory() {
    const MIB: usize = 1024 * 1024;
    let server = TestServer::start_with(&[("MISSIVE_MAX_UPLOAD_BYTES", &(80 * MIB).to_string())]).await;
    let alice = Raw::register(&server, "alice").await;
    let pid = server.pid().unwrap();
    let url = format!("{}/_matrix/media/v3/upload?filename=big.bin", server.url);
    let upload = |body: reqwest::Body| {
        alice
            .http
            .post(&url)
            .bearer_auth(&alice.token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    // Warm up: the first upload creates the directories.
    assert!(
        upload(reqwest::Body::from(vec![1u8; 1024]))
            .await
            .unwrap()
            .status()
            .is_success()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss(pid);

    // Four 64 MiB files at once: held whole, that is 256 MiB at least.
    let (stop, peak) = sample_rss(pid);
    let files: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 64 * MIB]).collect();
    let sends = files.iter().map(|f| upload(reqwest::Body::from(f.clone())));
    for r in futures_util::future::join_all(sends).await {
        let r = r.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let grew = peak.await.unwrap().saturating_sub(before);
    eprintln!(
        "server RSS {} MiB before, grew by {} MiB during four 64 MiB uploads",
        before / MIB as u64,
        grew / MIB as u64
    );
    assert!(
        grew < 96 * MIB as u64,
        "the server grew by {} MiB during the uploads",
        grew / MIB as u64
    );

    // What comes back is what was sent.
    let uri = upload(reqwest::Body::from(files[3].clone()))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["content_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = alice.download(&uri).await;
    assert!(got.len() == files[3].len() && got.iter().all(|b| *b == 3));

    // A streamed body past the limit (no Content-Length to refuse it by)
    // is cut at the limit, and leaves nothing behind.
    let mut conn = connect(&server).await;
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        alice.token
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![7u8; MIB];
    for _ in 0..90 {
        let sent = async {
            conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
            conn.write_all(&chunk).await?;
            conn.write_all(b"\r\n").await
        };
        if sent.await.is_err() {
            break; // the server answered and closed
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.300}");
    assert!(answer.contains("M_TOO_LARGE"), "{answer:.300}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(staged_files(&server), 0, "a refused upload left its staged file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_room_with_thousands_of_state_events_stays_within_the_cache_budget() {
    const MIB: u64 = 1024 * 1024;
    // 2,000 by default; MISSIVE_TEST_STATE_EVENTS=10000 for the size.
    let state_events: usize = std::env::var("MISSIVE_TEST_STATE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let server = TestServer::start_with(&[("MISSIVE_STATE_CACHE_BYTES", &(4 * MIB).to_string())]).await;
    let alice = Raw::register(&server, "alice").await;
    let pid = server.pid().unwrap();
    let initial: Vec<serde_json::Value> = (0..256)
        .map(|i| serde_json::json!({ "type": "org.example.bulk", "state_key": format!("initial-{i}"), "content": { "n": i } }))
        .collect();
    let room = alice
        .create_room(serde_json::json!({ "preset": "public_chat", "initial_state": initial }))
        .await;
    let started = Instant::now();
    let path = |i: usize| {
        format!(
            "/_matrix/client/v3/rooms/{}/state/org.example.bulk/key-{i}",
            crate::common::enc(&room)
        )
    };
    for batch in (256..state_events).collect::<Vec<_>>().chunks(8) {
        let paths: Vec<(usize, String)> = batch.iter().map(|i| (*i, path(*i))).collect();
        let puts = paths
            .iter()
            .map(|(i, p)| alice.call("PUT", p, Some(serde_json::json!({ "n": i }))));
        for r in futures_util::future::join_all(puts).await {
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    eprintln!("{state_events} state events in {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss(pid);
    let (stop, peak) = sample_rss(pid);
    let started = Instant::now();
    for _ in 0..100 {
        let page = alice
            .ok(
                "GET",
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                    crate::common::enc(&room)
                ),
                None,
            )
            .await;
        assert_eq!(page["chunk"].as_array().unwrap().len(), 100);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let grew = peak.await.unwrap().saturating_sub(before);
    eprintln!(
        "100 pages read in {:?}; server RSS {} MiB before, grew by {} MiB",
        started.elapsed(),
        before / MIB,
        grew / MIB
    );
    assert!(grew < 48 * MIB, "the server grew by {} MiB", grew / MIB);
}

/// Requests the HTTP parser itself refuses (not HTTP, an over-long URI,
/// too many or too large headers, a broken Content-Length) get a Matrix
/// error like every other refusal, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_http_parser_refuses_get_a_matrix_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: a\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"HELLO\r\n\r\n".to_vec(), 400, "M_UNKNOWN"),
        (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), 400, "M_UNKNOWN"),
        (
            b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
            "M_UNKNOWN",
        ),
        (
            format!(
                "GET /_matrix/client/versions?x={} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
            414,
            "M_TOO_LARGE",
        ),
        (
            format!("GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "M_TOO_LARGE",
        ),
        (
            format!(
                "GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n\r\n",
                "a".repeat(500_000)
            )
            .into_bytes(),
            431,
            "M_TOO_LARGE",
        ),
    ];
    for (request, status, errcode) in cases {
        let mut conn = connect(&server).await;
        // The server may answer and close before the whole request is sent.
        let _ = conn.write_all(&request).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status} expected: {answer}"
        );
        let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default())
            .unwrap_or_else(|e| panic!("no JSON body ({e}): {answer}"));
        assert_eq!(body["errcode"], errcode, "{answer}");
    }
    // Well-formed requests are answered as before.
    let r = crate::common::request(
        &reqwest::Client::new(),
        "GET",
        &format!("{}/_matrix/client/versions", server.url),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
}
