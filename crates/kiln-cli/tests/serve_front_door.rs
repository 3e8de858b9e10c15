//! Attacks on `kiln serve`'s front door, as an ordinary user or an
//! anonymous client would make them: environments that make the server
//! clone its own disk or probe its network, slow and greedy connections,
//! a revoked token's stream, anonymous metrics, a readable data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use reqwest::Method;
use serde_json::{json, Value};
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const LONG: Duration = Duration::from_secs(60);

/// A TCP port on loopback that counts the connections made to it.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, count)
}

async fn create_environment(
    server: &KilnServer,
    token: &str,
    name: &str,
    repo: &str,
) -> (u16, Value) {
    server
        .post(
            "/api/environments",
            token,
            json!({ "name": name, "repo": repo }),
        )
        .await
}

/// A model that keeps the attempt running (its first answer comes after
/// ten minutes), so the task's event stream stays open.
async fn stalling_model() -> ScriptedServer {
    ScriptedServer::start(Script::new(vec![Turn::delayed(
        Turn::message("late"),
        Duration::from_secs(600),
    )]))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_make_the_server_clone_its_disk_probe_its_network_or_run_helpers() {
    let model = ScriptedServer::start(Script::new(vec![])).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let bob = server.new_user("bob").await;
    let (port, connections) = counting_listener().await;

    let server_only = [
        "file:///etc".to_string(),
        "file://localhost/etc".to_string(),
        "/etc".to_string(),
        "/root/x".to_string(),
        format!("http://127.0.0.1:{port}/x"),
        format!("http://localhost:{port}/x"),
        format!("http://[::1]:{port}/x"),
        format!("git://127.0.0.1:{port}/x"),
        format!("ssh://git@127.0.0.1:{port}/x"),
        "git@127.0.0.1:org/x.git".to_string(),
        "http://10.0.0.1/x".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "https://[::ffff:192.168.0.1]/x".to_string(),
    ];
    for (i, repo) in server_only.iter().enumerate() {
        let (status, body) = create_environment(&server, &bob, &format!("probe{i}"), repo).await;
        assert_eq!(status, 403, "{repo}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{repo}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--allow-repo"), "{message}");
        let data = install.data_dir().display().to_string();
        assert!(!message.contains(&data), "{message}");
        // No environment, so no task can make the worker fetch it.
        let (status, body) = server
            .post(
                "/api/tasks",
                &bob,
                json!({"environment": format!("probe{i}"), "prompt": "x"}),
            )
            .await;
        assert_eq!(status, 404, "{repo}: {body}");
    }
    // Whether a host path exists is not told: the answers differ only in
    // the path the user sent.
    let (_, etc) = create_environment(&server, &bob, "e", "/etc").await;
    let (_, missing) = create_environment(&server, &bob, "e", "/no/such/dir").await;
    assert_eq!(
        etc["error"]["message"]
            .as_str()
            .unwrap()
            .replace("/etc", "P"),
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .replace("/no/such/dir", "P")
    );

    for repo in [
        "ext::sh -c touch% /tmp/kiln-pwned",
        "fd::3",
        "-uhack",
        "--upload-pack=touch /tmp/kiln-pwned",
        "ftp://example.com/x",
    ] {
        for token in [bob.as_str(), ADMIN_TOKEN] {
            let (status, body) = create_environment(&server, token, "helper", repo).await;
            assert_eq!(status, 422, "{repo}: {body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.starts_with("invalid repo"), "{message}");
        }
    }
    assert!(!std::path::Path::new("/tmp/kiln-pwned").exists());

    let (status, listed) = server.get("/api/environments", &bob).await;
    assert_eq!(status, 200);
    assert_eq!(listed["environments"], json!([]), "{listed}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the server sent nothing to the probed port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_and_allowed_prefixes_may_use_host_paths_and_internal_hosts() {
    let allowed_repo = fixtures::repo("calc-py");
    let other_repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![])).await;
    let install = Installation::new();
    let (port, _connections) = counting_listener().await;
    let allowed_url = format!("http://127.0.0.1:{port}/team/");
    let allowed_dir = allowed_repo.path().display().to_string();
    let server = KilnServer::start_with(
        &install,
        &model,
        1,
        &["--allow-repo", &allowed_dir, "--allow-repo", &allowed_url],
    )
    .await;
    let bob = server.new_user("bob").await;
    let other = other_repo.path().display().to_string();

    for (i, repo) in [
        allowed_dir.clone(),
        format!("file://{allowed_dir}"),
        format!("{allowed_url}app.git"),
    ]
    .iter()
    .enumerate()
    {
        let (status, body) = create_environment(&server, &bob, &format!("ok{i}"), repo).await;
        assert_eq!(status, 201, "{repo}: {body}");
    }
    for (i, repo) in [
        other.clone(),
        format!(
            "{allowed_dir}/../{}",
            other_repo.path().file_name().unwrap().to_string_lossy()
        ),
        format!("http://127.0.0.1:{port}/teamx/app.git"),
        format!("http://127.0.0.1:{}/team/app.git", port + 1),
    ]
    .iter()
    .enumerate()
    {
        let (status, body) = create_environment(&server, &bob, &format!("no{i}"), repo).await;
        assert_eq!(status, 403, "{repo}: {body}");
    }
    for (i, repo) in [
        other.clone(),
        format!("file://{other}"),
        "http://10.0.0.1/x.git".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let (status, body) =
            create_environment(&server, ADMIN_TOKEN, &format!("admin{i}"), repo).await;
        assert_eq!(status, 201, "{repo}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_an_admin_or_the_metrics_token_unless_opened_on_purpose() {
    let model = ScriptedServer::start(Script::new(vec![])).await;
    let install = Installation::new();
    let server = KilnServer::start_with(
        &install,
        &model,
        1,
        &["--metrics-token", "scraper-secret-0123456789"],
    )
    .await;
    let bob = server.new_user("bob").await;

    let (status, body) = server.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = server.get("/metrics", "not-a-token-0123456789").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = server.get("/metrics", &bob).await;
    assert_eq!(status, 403, "{body}");
    for token in ["scraper-secret-0123456789", ADMIN_TOKEN] {
        let (status, body) = server.get("/metrics", token).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.as_str().unwrap().contains("kiln_queue_depth"),
            "{body}"
        );
    }
    let (status, _) = server.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200, "health probes need no token");
    server.terminate().await;

    let server = KilnServer::start_with(&install, &model, 1, &["--metrics-public"]).await;
    let (status, body) = server.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tokens_open_event_stream_ends() {
    let repo = fixtures::repo("calc-py");
    let model = stalling_model().await;
    let install = Installation::new();
    let allowed = repo.path().display().to_string();
    let server = KilnServer::start_with(&install, &model, 1, &["--allow-repo", &allowed]).await;
    let bob = server.new_user("bob").await;
    server.environment(&bob, "calc", repo.path()).await;
    let task = server
        .task(
            &bob,
            json!({"environment": "calc", "prompt": "take your time"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let mut stream = server.events(&bob, &id, None).await;
    stream.until("attempt.started", LONG).await;
    let mut admins_stream = server.events(ADMIN_TOKEN, &id, None).await;
    admins_stream.until("attempt.started", LONG).await;

    server.revoke("bob").await;
    assert!(
        stream.ended_within(Duration::from_secs(20)).await,
        "bob's stream still flows after his token was revoked"
    );
    assert!(
        !admins_stream.ended_within(Duration::from_secs(1)).await,
        "the admin's stream of the same task goes on"
    );
    let (status, _) = server
        .post(&format!("/api/tasks/{id}/cancel"), ADMIN_TOKEN, json!({}))
        .await;
    assert_eq!(status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_event_streams_than_the_per_token_cap_are_refused_with_429() {
    let repo = fixtures::repo("calc-py");
    let model = stalling_model().await;
    let install = Installation::new();
    let allowed = repo.path().display().to_string();
    let server = KilnServer::start_with(
        &install,
        &model,
        1,
        &["--allow-repo", &allowed, "--max-streams-per-token", "2"],
    )
    .await;
    let bob = server.new_user("bob").await;
    server.environment(&bob, "calc", repo.path()).await;
    let task = server
        .task(
            &bob,
            json!({"environment": "calc", "prompt": "take your time"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();

    let first = server.events(&bob, &id, None).await;
    let _second = server.events(&bob, &id, None).await;
    let third = server.events_response(&bob, &id).await;
    assert_eq!(third.status(), 429);
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-streams-per-token"), "{message}");
    // The cap is per token: the admin still gets a stream.
    let admins = server.events_response(ADMIN_TOKEN, &id).await;
    assert_eq!(admins.status(), 200);

    // A closed stream gives its slot back.
    drop(first);
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let again = server.events_response(&bob, &id).await;
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the closed stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = server
        .post(&format!("/api/tasks/{id}/cancel"), ADMIN_TOKEN, json!({}))
        .await;
    assert_eq!(status, 202);
}

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(server: &KilnServer, from: &str) -> TcpStream {
    let addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Everything the server sends until it closes the connection, or `None`
/// if it is still open after `timeout`.
async fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(timeout, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&received).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_capped_per_address_while_healthz_answers() {
    let model = ScriptedServer::start(Script::new(vec![])).await;
    let install = Installation::new();
    let server = KilnServer::start_with(
        &install,
        &model,
        1,
        &[
            "--header-read-timeout-secs",
            "2",
            "--max-connections-per-ip",
            "4",
        ],
    )
    .await;

    // A slowloris from 127.0.0.2: requests whose headers never end.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut stream = connect_from(&server, "127.0.0.2").await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    // One more from the same address is refused at once...
    let mut extra = connect_from(&server, "127.0.0.2").await;
    let answer = read_until_closed(&mut extra, Duration::from_secs(10))
        .await
        .expect("the connection over the per-address cap is answered and closed");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    // ...while other addresses are served.
    let (status, body) = server.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200, "{body}");

    for mut stream in slow {
        let closed = read_until_closed(&mut stream, Duration::from_secs(20)).await;
        assert!(
            closed.is_some(),
            "a client that never finished its headers is still connected"
        );
    }
    // The slots come free again (each once its connection's task ends,
    // just after the close the client saw).
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let mut again = connect_from(&server, "127.0.0.2").await;
        // A refusal may close the connection before this write lands.
        let _ = again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
            .await;
        let answer = read_until_closed(&mut again, Duration::from_secs(10))
            .await
            .unwrap_or_default();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the address never got a slot back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_global_cap_are_answered_503_from_any_address() {
    let model = ScriptedServer::start(Script::new(vec![])).await;
    let install = Installation::new();
    let server = KilnServer::start_with(&install, &model, 1, &["--max-connections", "2"]).await;
    let mut held = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3"] {
        let mut stream = connect_from(&server, from).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(stream);
    }
    let mut third = connect_from(&server, "127.0.0.4").await;
    let answer = read_until_closed(&mut third, Duration::from_secs(10))
        .await
        .expect("the connection over the cap is answered and closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("--max-connections"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_the_servers_files_are_private_even_if_they_were_not() {
    let model = ScriptedServer::start(Script::new(vec![])).await;
    let install = Installation::new();
    let data = install.data_dir();
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = data.join("secret.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();

    let server = KilnServer::start(&install, &model, 1).await;
    let (status, _) = server.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200);

    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(data), 0o700, "the data directory");
    for name in ["secret.key", "kiln.db", "serve.lock"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    for name in ["kiln.db-wal", "kiln.db-shm"] {
        if data.join(name).exists() {
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
    }
}
