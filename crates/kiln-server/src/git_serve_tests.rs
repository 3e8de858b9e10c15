//! A real `git` client against an axum router that serves one attempt's
//! view of a mirror through [`advertise`] and [`serve`], as the worker
//! routes do. The mirror is made as the server makes one (a `--no-checkout`
//! clone of an upstream), with this attempt's branch and another task's.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::Router;
use kiln_testkit::git_http::{bare_repository, git};

use super::*;

const OURS: &str = "kiln/t1/1";
const OTHER: &str = "kiln/other/1";

struct Fixture {
    _root: tempfile::TempDir,
    root: PathBuf,
    mirror: PathBuf,
    url: String,
    /// Requests whose body came gzip-encoded.
    gzipped: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Scope {
    mirror: PathBuf,
    refs: AttemptRefs,
    gzipped: Arc<AtomicUsize>,
}

async fn info_refs(
    State(scope): State<Scope>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match query.get("service").and_then(|s| GitService::from_query(s)) {
        Some(service) => advertise(&scope.mirror, &scope.refs, service).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn rpc(
    State(scope): State<Scope>,
    axum::extract::Path(service): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if headers.get(header::CONTENT_ENCODING).is_some() {
        scope.gzipped.fetch_add(1, Ordering::SeqCst);
    }
    match GitService::from_query(&service) {
        Some(service) => serve(&scope.mirror, &scope.refs, service, &headers, body).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn commit_on(repo: &Path, parent: &str, message: &str) -> String {
    let tree = format!("{parent}^{{tree}}");
    git(
        repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit-tree",
            &tree,
            "-p",
            parent,
            "-m",
            message,
        ],
    )
    .trim()
    .to_string()
}

/// Upstream `app.git` (branch `main`, tag `v1`), cloned into a mirror that
/// holds this attempt's branch and another task's, served for this attempt.
async fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let upstream = bare_repository(root.path());
    git(&upstream, &["tag", "v1", "main"]);
    git(
        root.path(),
        &[
            "clone",
            "--quiet",
            "--no-checkout",
            upstream.to_str().unwrap(),
            "mirror",
        ],
    );
    let mirror = root.path().join("mirror");
    let ours = commit_on(&mirror, "origin/main", "this attempt's work");
    git(
        &mirror,
        &["update-ref", &format!("refs/heads/{OURS}"), &ours],
    );
    let secret = commit_on(&mirror, "origin/main", "another task's secret work");
    git(
        &mirror,
        &["update-ref", &format!("refs/heads/{OTHER}"), &secret],
    );

    let gzipped = Arc::new(AtomicUsize::new(0));
    let scope = Scope {
        mirror: mirror.clone(),
        refs: AttemptRefs {
            branch: OURS.to_string(),
        },
        gzipped: gzipped.clone(),
    };
    let app = Router::new()
        .route("/git/info/refs", get(info_refs))
        .route("/git/{service}", post(rpc))
        .with_state(scope);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/git", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fixture {
        root: root.path().to_path_buf(),
        _root: root,
        mirror,
        url,
        gzipped,
    }
}

/// git as a worker runs it (no global or system configuration), on a
/// blocking thread so the server in this runtime keeps answering.
async fn client(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("git")
            .current_dir(&dir)
            .args(&args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn client_ok(dir: &Path, args: &[&str]) -> String {
    let out = client(dir, args).await;
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ref_names(ls_remote: &str) -> Vec<String> {
    let mut names: Vec<String> = ls_remote
        .lines()
        .filter_map(|line| line.split('\t').nth(1))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn mirror_refs(mirror: &Path) -> String {
    git(
        mirror,
        &["for-each-ref", "--format=%(refname) %(objectname)"],
    )
}

async fn new_client(fixture: &Fixture, name: &str) -> PathBuf {
    let dir = fixture.root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    client_ok(&dir, &["init", "--quiet", "--initial-branch=scratch"]).await;
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_sees_upstream_branches_tags_and_only_its_own_attempt_branch() {
    let fixture = fixture().await;
    let dir = new_client(&fixture, "client").await;
    for protocol in ["0", "2"] {
        let listed = client_ok(
            &dir,
            &[
                "-c",
                &format!("protocol.version={protocol}"),
                "ls-remote",
                &fixture.url,
            ],
        )
        .await;
        assert_eq!(
            ref_names(&listed),
            [
                "refs/heads/kiln/t1/1",
                "refs/remotes/origin/HEAD",
                "refs/remotes/origin/main",
                "refs/tags/v1",
            ],
            "protocol.version={protocol}: {listed}"
        );
    }
    let for_push = reqwest::get(format!(
        "{}/info/refs?service=git-receive-pack",
        fixture.url
    ))
    .await
    .unwrap();
    assert_eq!(
        for_push.headers()[header::CONTENT_TYPE],
        "application/x-git-receive-pack-advertisement"
    );
    let for_push = for_push.text().await.unwrap();
    assert!(
        for_push.starts_with("001f# service=git-receive-pack\n0000"),
        "{for_push:?}"
    );
    assert!(
        for_push.contains(&format!("refs/heads/{OURS}")),
        "{for_push:?}"
    );
    assert!(!for_push.contains(OTHER), "{for_push:?}");
    assert!(!for_push.contains("refs/heads/main"), "{for_push:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_attempts_commit_cannot_be_fetched_by_id_in_either_protocol() {
    let fixture = fixture().await;
    let secret = git(&fixture.mirror, &["rev-parse", OTHER])
        .trim()
        .to_string();
    let dir = new_client(&fixture, "thief").await;
    for protocol in ["0", "1", "2"] {
        let out = client(
            &dir,
            &[
                "-c",
                &format!("protocol.version={protocol}"),
                "fetch",
                "--quiet",
                &fixture.url,
                &secret,
            ],
        )
        .await;
        assert!(
            !out.status.success(),
            "protocol.version={protocol}: fetched another task's commit by id"
        );
        let has = client(&dir, &["cat-file", "-e", &secret]).await;
        assert!(
            !has.status.success(),
            "the secret commit reached the client"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_advertisement_is_protocol_v0_even_when_the_client_asks_for_v2() {
    let fixture = fixture().await;
    let answer = reqwest::Client::new()
        .get(format!("{}/info/refs?service=git-upload-pack", fixture.url))
        .header("Git-Protocol", "version=2")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()[header::CONTENT_TYPE],
        "application/x-git-upload-pack-advertisement"
    );
    let body = answer.text().await.unwrap();
    let rest = body
        .strip_prefix("001e# service=git-upload-pack\n0000")
        .unwrap_or_else(|| panic!("no service line and flush first: {body:?}"));
    assert!(!rest.contains("version 2"), "{rest:?}");
    assert!(rest.contains("refs/remotes/origin/main"), "{rest:?}");
    assert!(!rest.contains(OTHER), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_gets_upstream_and_the_attempt_branch_with_gzipped_negotiation() {
    let fixture = fixture().await;
    let dir = new_client(&fixture, "worker").await;
    // History the server has never seen, so the negotiation sends many
    // `have` lines and git compresses its request.
    let tree = client_ok(&dir, &["hash-object", "-t", "tree", "-w", "/dev/null"]).await;
    let tree = tree.trim();
    let mut parent: Option<String> = None;
    for i in 0..80 {
        let message = format!("local {i}");
        let mut args = vec![
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit-tree",
            tree,
            "-m",
            &message,
        ];
        let parent_arg;
        if let Some(p) = &parent {
            parent_arg = p.clone();
            args.extend(["-p", &parent_arg]);
        }
        parent = Some(client_ok(&dir, &args).await.trim().to_string());
    }
    client_ok(
        &dir,
        &["update-ref", "refs/heads/local", parent.as_deref().unwrap()],
    )
    .await;
    client_ok(
        &dir,
        &[
            "fetch",
            "--quiet",
            &fixture.url,
            "+refs/remotes/origin/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
            &format!("+refs/heads/{OURS}:refs/heads/work"),
        ],
    )
    .await;
    for (theirs, mine) in [("origin/main", "origin/main"), ("v1", "v1"), (OURS, "work")] {
        assert_eq!(
            git(&fixture.mirror, &["rev-parse", theirs]),
            client_ok(&dir, &["rev-parse", mine]).await,
            "{theirs}"
        );
    }
    assert!(
        fixture.gzipped.load(Ordering::SeqCst) > 0,
        "no request came gzip-encoded: the test did not exercise decoding"
    );
}

/// A clone of the attempt's branch with one new commit on it, as a worker
/// has at the end of an attempt; returns the client and the new commit.
async fn worker_with_a_new_commit(fixture: &Fixture, name: &str) -> (PathBuf, String) {
    let dir = new_client(fixture, name).await;
    client_ok(
        &dir,
        &[
            "fetch",
            "--quiet",
            &fixture.url,
            &format!("+refs/heads/{OURS}:refs/heads/work"),
        ],
    )
    .await;
    client_ok(&dir, &["checkout", "--quiet", "work"]).await;
    std::fs::write(dir.join("fix.txt"), format!("the fix from {name}\n")).unwrap();
    client_ok(&dir, &["add", "fix.txt"]).await;
    client_ok(
        &dir,
        &[
            "-c",
            "user.name=w",
            "-c",
            "user.email=w@w",
            "commit",
            "--quiet",
            "-m",
            "fix",
        ],
    )
    .await;
    let head = client_ok(&dir, &["rev-parse", "HEAD"])
        .await
        .trim()
        .to_string();
    (dir, head)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_to_the_attempt_branch_updates_the_mirror_force_included() {
    let fixture = fixture().await;
    let (dir, head) = worker_with_a_new_commit(&fixture, "worker").await;
    client_ok(
        &dir,
        &[
            "push",
            "--quiet",
            &fixture.url,
            &format!("HEAD:refs/heads/{OURS}"),
        ],
    )
    .await;
    assert_eq!(git(&fixture.mirror, &["rev-parse", OURS]).trim(), head);
    git(
        &fixture.mirror,
        &["cat-file", "-e", &format!("{head}:fix.txt")],
    );

    // A follow-up on another machine may rewrite the branch.
    let (other, _) = worker_with_a_new_commit(&fixture, "second").await;
    client_ok(&other, &["reset", "--quiet", "--hard", "HEAD~1"]).await;
    client_ok(
        &other,
        &[
            "-c",
            "user.name=w",
            "-c",
            "user.email=w@w",
            "commit",
            "--quiet",
            "--amend",
            "-m",
            "rewritten",
        ],
    )
    .await;
    let rewritten = client_ok(&other, &["rev-parse", "HEAD"])
        .await
        .trim()
        .to_string();
    let plain = client(
        &other,
        &[
            "push",
            "--quiet",
            &fixture.url,
            &format!("HEAD:refs/heads/{OURS}"),
        ],
    )
    .await;
    assert!(
        !plain.status.success(),
        "a non-fast-forward push without --force went through"
    );
    client_ok(
        &other,
        &[
            "push",
            "--quiet",
            "--force",
            &fixture.url,
            &format!("HEAD:refs/heads/{OURS}"),
        ],
    )
    .await;
    assert_eq!(git(&fixture.mirror, &["rev-parse", OURS]).trim(), rewritten);
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_to_any_other_ref_or_a_delete_are_refused_and_change_nothing() {
    let fixture = fixture().await;
    let (dir, head) = worker_with_a_new_commit(&fixture, "attacker").await;
    client_ok(&dir, &["tag", "evil"]).await;
    let before = mirror_refs(&fixture.mirror);
    for refspec in [
        "HEAD:refs/heads/main".to_string(),
        format!("HEAD:refs/heads/{OTHER}"),
        "HEAD:refs/heads/kiln/t1/10".to_string(),
        "HEAD:refs/remotes/origin/main".to_string(),
        "refs/tags/evil".to_string(),
        format!(":refs/heads/{OURS}"),
    ] {
        let out = client(&dir, &["push", "--force", &fixture.url, &refspec]).await;
        assert!(!out.status.success(), "push {refspec} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("403"),
            "push {refspec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(mirror_refs(&fixture.mirror), before, "push {refspec}");
    }
    // git never ran: not even the objects arrived.
    let arrived = std::process::Command::new("git")
        .current_dir(&fixture.mirror)
        .args(["cat-file", "-e", &head])
        .output()
        .unwrap();
    assert!(
        !arrived.status.success(),
        "the refused pack reached the mirror"
    );
}

fn pkt(payload: &str) -> Vec<u8> {
    pkt_line(payload)
}

fn push_body(commands: &[String]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        let line = if i == 0 {
            format!("{command}\0report-status side-band-64k\n")
        } else {
            format!("{command}\n")
        };
        body.extend(pkt(&line));
    }
    body.extend_from_slice(b"0000");
    body
}

async fn post_receive_pack(fixture: &Fixture, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/git-receive-pack", fixture.url))
        .header(
            header::CONTENT_TYPE,
            "application/x-git-receive-pack-request",
        )
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_smuggling_a_second_ref_after_its_own_is_refused_with_the_reason() {
    let fixture = fixture().await;
    let zero = "0".repeat(40);
    let ours = git(&fixture.mirror, &["rev-parse", OURS])
        .trim()
        .to_string();
    let before = mirror_refs(&fixture.mirror);
    let answer = post_receive_pack(
        &fixture,
        push_body(&[
            format!("{ours} {ours} refs/heads/{OURS}"),
            format!("{zero} {ours} refs/heads/main"),
        ]),
    )
    .await;
    assert_eq!(answer.status(), 403);
    let text = answer.text().await.unwrap();
    assert!(text.contains("refs/heads/main"), "{text}");
    assert_eq!(mirror_refs(&fixture.mirror), before);

    let signed = post_receive_pack(&fixture, {
        let mut body = pkt("push-cert\0report-status\n");
        body.extend_from_slice(b"0000");
        body
    })
    .await;
    assert_eq!(signed.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gzip_bomb_in_the_negotiation_is_refused_at_the_cap() {
    let fixture = fixture().await;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..(UPLOAD_BODY_LIMIT / zeros.len() as u64 + 1) {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 1024 * 1024, "{} bytes", bomb.len());
    let answer = reqwest::Client::new()
        .post(format!("{}/git-upload-pack", fixture.url))
        .header(
            header::CONTENT_TYPE,
            "application/x-git-upload-pack-request",
        )
        .header(header::CONTENT_ENCODING, "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_of_the_wrong_type_or_encoding_is_refused() {
    let fixture = fixture().await;
    let http = reqwest::Client::new();
    let untyped = http
        .post(format!("{}/git-upload-pack", fixture.url))
        .body("0000")
        .send()
        .await
        .unwrap();
    assert_eq!(untyped.status(), 415);
    let crossed = http
        .post(format!("{}/git-upload-pack", fixture.url))
        .header(
            header::CONTENT_TYPE,
            "application/x-git-receive-pack-request",
        )
        .body("0000")
        .send()
        .await
        .unwrap();
    assert_eq!(crossed.status(), 415);
    let brotli = http
        .post(format!("{}/git-upload-pack", fixture.url))
        .header(
            header::CONTENT_TYPE,
            "application/x-git-upload-pack-request",
        )
        .header(header::CONTENT_ENCODING, "br")
        .body("0000")
        .send()
        .await
        .unwrap();
    assert_eq!(brotli.status(), 415);
}

#[test]
fn the_command_list_parser_waits_for_the_flush_and_rejects_nonsense() {
    let id = "a".repeat(40);
    let whole = push_body(&[format!("{id} {id} refs/heads/{OURS}")]);
    for cut in 0..whole.len() {
        assert_eq!(parse_command_list(&whole[..cut]), Ok(None), "cut at {cut}");
    }
    let parsed = parse_command_list(&whole).unwrap().unwrap();
    assert_eq!(
        parsed,
        [RefUpdate {
            old: id.clone(),
            new: id.clone(),
            name: format!("refs/heads/{OURS}"),
        }]
    );
    for bad in [
        b"zzzz".to_vec(),
        b"0003".to_vec(),
        b"0001".to_vec(),
        [pkt("not a command\n"), b"0000".to_vec()].concat(),
        [
            pkt(&format!("{id} xyz refs/heads/{OURS}\n")),
            b"0000".to_vec(),
        ]
        .concat(),
        [
            pkt(&format!("{id} {} refs/heads/{OURS}\n", "b".repeat(64))),
            b"0000".to_vec(),
        ]
        .concat(),
    ] {
        assert!(
            matches!(parse_command_list(&bad), Err(PushRefused::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(&bad)
        );
    }
    let shallow = [pkt(&format!("shallow {id}\n")), whole.clone()].concat();
    assert_eq!(parse_command_list(&shallow).unwrap().unwrap().len(), 1);
}

#[test]
fn only_kiln_attempt_branches_scope_a_git_service() {
    for good in ["kiln/t1/1", "kiln/0190a3b2-7c1d/12"] {
        assert!(
            AttemptRefs {
                branch: good.into()
            }
            .is_well_formed(),
            "{good}"
        );
    }
    for bad in [
        "kiln",
        "kiln/",
        "main",
        "kiln//1",
        "kiln/../main",
        "kiln/t/1.lock",
        "kiln/t 1/1",
        "kiln/.t/1",
    ] {
        assert!(
            !AttemptRefs { branch: bad.into() }.is_well_formed(),
            "{bad}"
        );
    }
}

/// Processes running `git receive-pack` on `mirror`.
fn receive_packs_on(mirror: &Path) -> usize {
    let needle = mirror.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains("receive-pack") && cmdline.contains(&needle))
        .count()
}

/// Waits until `condition` holds, failing the test after a minute.
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_whose_client_goes_away_mid_pack_leaves_no_git_running_and_no_ref_moved() {
    let fixture = fixture().await;
    let ours = git(&fixture.mirror, &["rev-parse", OURS])
        .trim()
        .to_string();
    let before = mirror_refs(&fixture.mirror);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let mut start = push_body(&[format!("{ours} {} refs/heads/{OURS}", "b".repeat(40))]);
    // The start of a pack that never ends.
    start.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\x05");
    sender.send(Ok(Bytes::from(start))).await.unwrap();
    let url = format!("{}/git-receive-pack", fixture.url);
    let push = tokio::spawn(async move {
        let answer = reqwest::Client::new()
            .post(url)
            .header(
                header::CONTENT_TYPE,
                "application/x-git-receive-pack-request",
            )
            .body(reqwest::Body::wrap_stream(
                tokio_stream::wrappers::ReceiverStream::new(receiver),
            ))
            .send()
            .await;
        // Hold the connection open until the test drops it.
        futures::future::pending::<()>().await;
        drop(answer);
    });
    until("git receive-pack started", || {
        receive_packs_on(&fixture.mirror) == 1
    })
    .await;

    push.abort();
    let _ = push.await;
    until("git receive-pack ended", || {
        receive_packs_on(&fixture.mirror) == 0
    })
    .await;
    drop(sender);
    assert_eq!(mirror_refs(&fixture.mirror), before);
}
