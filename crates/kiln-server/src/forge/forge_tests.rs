#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode as HttpStatus, Uri};
use axum::response::IntoResponse;
use kiln_protocol::{ForgeConfig, ForgeKind};
use serde_json::{json, Value};

use super::*;

const TOKEN: &str = "tok-SECRET-0123456789abcdef";

/// One request as the stand-in forge received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query exactly as sent (percent-encoding kept).
    target: String,
    headers: HeaderMap,
    body: Option<Value>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Reply = (u16, Vec<(&'static str, String)>, Value);

/// A local HTTP server standing in for a forge: it records every request
/// and answers with the next scripted reply.
struct StandIn {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    async fn start(replies: Vec<Reply>) -> StandIn {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let recorder = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: HttpMethod, uri: Uri, headers: HeaderMap, body: Bytes| {
                let recorder = recorder.clone();
                let replies = replies.clone();
                async move {
                    recorder.lock().unwrap().push(Seen {
                        method: method.to_string(),
                        target: uri
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default(),
                        headers,
                        body: serde_json::from_slice(&body).ok(),
                    });
                    let (status, headers, body) = replies
                        .lock()
                        .unwrap()
                        .pop_front()
                        .expect("a scripted reply for every request");
                    let mut response =
                        (HttpStatus::from_u16(status).unwrap(), axum::Json(body)).into_response();
                    for (name, value) in headers {
                        response.headers_mut().insert(name, value.parse().unwrap());
                    }
                    response
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        StandIn { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn forge(kind: ForgeKind, api_url: &str, repo: &str) -> Forge {
    let config = ForgeConfig {
        kind,
        api_url: Some(api_url.to_string()),
        repo: repo.to_string(),
        token_secret: "FORGE_TOKEN".to_string(),
    };
    Forge::new(&config, TOKEN.to_string(), http_client(None).unwrap()).unwrap()
}

fn proposal(draft: bool) -> Proposal {
    Proposal {
        title: "Fix the rounding in calc.add".to_string(),
        body: "## Summary\n\nFixed it.\n".to_string(),
        head: "kiln/t_abc".to_string(),
        base: "main".to_string(),
        draft,
    }
}

fn ok(status: u16, body: Value) -> Reply {
    (status, Vec::new(), body)
}

#[tokio::test]
async fn github_create_and_update_send_the_documented_requests() {
    let page = "https://github.com/acme/app/pull/42";
    let stand_in = StandIn::start(vec![
        ok(201, json!({"number": 42, "html_url": page})),
        ok(200, json!({"number": 42, "html_url": page})),
        ok(200, json!([{"number": 42, "html_url": page}])),
    ])
    .await;
    let github = forge(ForgeKind::Github, &stand_in.url, "acme/app");

    let created = github.create(&proposal(true)).await.unwrap();
    assert_eq!(
        created,
        ForgePull {
            number: 42,
            url: page.to_string()
        }
    );
    let updated = github.update(42, &proposal(false)).await.unwrap();
    assert_eq!(updated.number, 42);
    let found = github.find_open("kiln/t_abc").await.unwrap();
    assert_eq!(found.map(|p| p.number), Some(42));

    let seen = stand_in.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/repos/acme/app/pulls");
    assert_eq!(
        seen[0].body,
        Some(json!({
            "title": "Fix the rounding in calc.add",
            "head": "kiln/t_abc",
            "base": "main",
            "body": "## Summary\n\nFixed it.\n",
            "draft": true,
        }))
    );
    assert_eq!(seen[1].method, "PATCH");
    assert_eq!(seen[1].target, "/repos/acme/app/pulls/42");
    assert_eq!(
        seen[1].body,
        Some(json!({"title": "Fix the rounding in calc.add", "body": "## Summary\n\nFixed it.\n"}))
    );
    assert_eq!(seen[2].method, "GET");
    assert_eq!(
        seen[2].target,
        "/repos/acme/app/pulls?head=acme%3Akiln%2Ft_abc&state=open"
    );
    for request in &seen {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(
            request.header("accept"),
            Some("application/vnd.github+json")
        );
        assert_eq!(request.header("x-github-api-version"), Some("2022-11-28"));
        assert!(request.header("user-agent").unwrap().starts_with("kiln/"));
    }
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn gitlab_create_and_update_send_the_documented_requests() {
    let page = "https://gitlab.example/group/sub/app/-/merge_requests/7";
    let stand_in = StandIn::start(vec![
        ok(201, json!({"iid": 7, "id": 9001, "web_url": page})),
        ok(200, json!({"iid": 7, "id": 9001, "web_url": page})),
        ok(200, json!([])),
    ])
    .await;
    let gitlab = forge(
        ForgeKind::Gitlab,
        &format!("{}/api/v4", stand_in.url),
        "group/sub/app",
    );

    let created = gitlab.create(&proposal(true)).await.unwrap();
    // The iid (the number people see), not the global id.
    assert_eq!(
        created,
        ForgePull {
            number: 7,
            url: page.to_string()
        }
    );
    gitlab.update(7, &proposal(false)).await.unwrap();
    assert_eq!(gitlab.find_open("kiln/t_abc").await.unwrap(), None);

    let seen = stand_in.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].target,
        "/api/v4/projects/group%2Fsub%2Fapp/merge_requests"
    );
    assert_eq!(
        seen[0].body,
        Some(json!({
            "source_branch": "kiln/t_abc",
            "target_branch": "main",
            "title": "Draft: Fix the rounding in calc.add",
            "description": "## Summary\n\nFixed it.\n",
        }))
    );
    assert_eq!(seen[1].method, "PUT");
    assert_eq!(
        seen[1].target,
        "/api/v4/projects/group%2Fsub%2Fapp/merge_requests/7"
    );
    assert_eq!(
        seen[1].body,
        Some(json!({
            "title": "Fix the rounding in calc.add",
            "description": "## Summary\n\nFixed it.\n",
        }))
    );
    assert_eq!(seen[2].method, "GET");
    assert_eq!(
        seen[2].target,
        "/api/v4/projects/group%2Fsub%2Fapp/merge_requests?source_branch=kiln%2Ft_abc&state=opened"
    );
    for request in &seen {
        assert_eq!(request.header("private-token"), Some(TOKEN));
        assert_eq!(request.header("authorization"), None);
        assert!(request.header("user-agent").unwrap().starts_with("kiln/"));
    }
}

#[tokio::test]
async fn forgejo_create_and_update_send_the_documented_requests() {
    let page = "https://git.example/acme/app/pulls/3";
    let stand_in = StandIn::start(vec![
        ok(201, json!({"number": 3, "html_url": page})),
        ok(201, json!({"number": 3, "html_url": page})),
        ok(
            200,
            json!([
                {"number": 2, "html_url": "https://git.example/acme/app/pulls/2", "head": {"ref": "other"}},
                {"number": 3, "html_url": page, "head": {"ref": "kiln/t_abc"}}
            ]),
        ),
    ])
    .await;
    let forgejo = forge(
        ForgeKind::Forgejo,
        &format!("{}/api/v1", stand_in.url),
        "acme/app",
    );

    let created = forgejo.create(&proposal(true)).await.unwrap();
    assert_eq!(
        created,
        ForgePull {
            number: 3,
            url: page.to_string()
        }
    );
    forgejo.update(3, &proposal(false)).await.unwrap();
    let found = forgejo.find_open("kiln/t_abc").await.unwrap();
    assert_eq!(found.map(|p| p.number), Some(3));

    let seen = stand_in.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/api/v1/repos/acme/app/pulls");
    assert_eq!(
        seen[0].body,
        Some(json!({
            "head": "kiln/t_abc",
            "base": "main",
            "title": "WIP: Fix the rounding in calc.add",
            "body": "## Summary\n\nFixed it.\n",
        }))
    );
    assert_eq!(seen[1].method, "PATCH");
    assert_eq!(seen[1].target, "/api/v1/repos/acme/app/pulls/3");
    assert_eq!(
        seen[1].body,
        Some(json!({"title": "Fix the rounding in calc.add", "body": "## Summary\n\nFixed it.\n"}))
    );
    assert_eq!(seen[2].method, "GET");
    assert_eq!(
        seen[2].target,
        "/api/v1/repos/acme/app/pulls?state=open&limit=50"
    );
    for request in &seen {
        assert_eq!(
            request.header("authorization"),
            Some(format!("token {TOKEN}").as_str())
        );
    }
}

#[tokio::test]
async fn a_refused_token_names_the_secret_and_scopes_but_never_the_token() {
    let stand_in = StandIn::start(vec![
        ok(401, json!({"message": format!("Bad credentials: {TOKEN}")})),
        ok(
            403,
            json!({"message": "Resource not accessible by personal access token"}),
        ),
    ])
    .await;
    let github = forge(ForgeKind::Github, &stand_in.url, "acme/app");
    for _ in 0..2 {
        let err = github.create(&proposal(false)).await.unwrap_err();
        assert!(matches!(err, ForgeError::Denied { .. }), "{err:?}");
        let text = err.to_string();
        assert!(!text.contains(TOKEN), "{text}");
        assert!(text.contains("FORGE_TOKEN"), "{text}");
        assert!(text.contains("Pull requests read/write"), "{text}");
        assert!(text.contains("github"), "{text}");
        let api: crate::ApiError = err.into();
        assert!(!format!("{api:?}").contains(TOKEN));
    }
}

#[tokio::test]
async fn a_rate_limit_says_when_to_try_again() {
    let stand_in = StandIn::start(vec![
        (
            403,
            vec![
                ("x-ratelimit-remaining", "0".to_string()),
                ("retry-after", "60".to_string()),
            ],
            json!({"message": "API rate limit exceeded for user ID 1."}),
        ),
        (
            429,
            vec![("retry-after", "17".to_string())],
            json!({"message": "Too Many Requests"}),
        ),
    ])
    .await;
    let github = forge(ForgeKind::Github, &stand_in.url, "acme/app");
    let err = github.create(&proposal(false)).await.unwrap_err();
    match &err {
        ForgeError::RateLimited {
            status,
            retry_after_secs,
            message,
            ..
        } => {
            assert_eq!((*status, *retry_after_secs), (403, Some(60)));
            assert!(message.contains("API rate limit exceeded"), "{message}");
        }
        other => panic!("not a rate limit: {other:?}"),
    }
    assert!(err.to_string().contains("try again in 60 s"), "{err}");
    let gitlab = forge(ForgeKind::Gitlab, &stand_in.url, "acme/app");
    let err = gitlab.create(&proposal(false)).await.unwrap_err();
    assert!(err.to_string().contains("try again in 17 s"), "{err}");
    let api: crate::ApiError = err.into();
    assert_eq!(
        api.status_and_code(),
        (reqwest::StatusCode::TOO_MANY_REQUESTS, "forge_rate_limited")
    );
}

#[tokio::test]
async fn a_rejected_pull_request_passes_on_the_forges_own_reasons() {
    let stand_in = StandIn::start(vec![
        ok(
            422,
            json!({
                "message": "Validation Failed",
                "errors": [{"resource": "PullRequest", "code": "custom",
                            "message": "A pull request already exists for acme:kiln/t_abc."}],
            }),
        ),
        ok(409, json!({"message": ["Another open merge request already exists for this source branch: !7"]})),
        ok(404, json!({"message": "404 Project Not Found"})),
    ])
    .await;
    let github = forge(ForgeKind::Github, &stand_in.url, "acme/app");
    let err = github.create(&proposal(false)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ForgeError::Rejected { status: 422, .. }),
        "{err:?}"
    );
    assert!(
        text.contains("Validation Failed; A pull request already exists"),
        "{text}"
    );

    let gitlab = forge(ForgeKind::Gitlab, &stand_in.url, "acme/app");
    let err = gitlab.create(&proposal(false)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("HTTP 409: Another open merge request"),
        "{err}"
    );
    let err = gitlab.create(&proposal(false)).await.unwrap_err();
    assert!(matches!(err, ForgeError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("acme/app"), "{err}");
}

#[tokio::test]
async fn a_hostile_answer_cannot_smuggle_a_link_or_flood_the_error() {
    let stand_in = StandIn::start(vec![
        ok(201, json!({"number": 1, "html_url": "javascript:alert(1)"})),
        ok(
            500,
            json!({"message": format!("\u{1b}[31mboom{}", "x".repeat(5000))}),
        ),
    ])
    .await;
    let github = forge(ForgeKind::Github, &stand_in.url, "acme/app");
    let err = github.create(&proposal(false)).await.unwrap_err();
    assert!(matches!(err, ForgeError::Unexpected { .. }), "{err:?}");
    let err = github
        .create(&proposal(false))
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains('\u{1b}'), "{err}");
    assert!(err.len() < 1000, "{} bytes", err.len());
}

#[tokio::test]
async fn a_redirect_is_not_followed_with_the_token() {
    let elsewhere = StandIn::start(vec![ok(
        201,
        json!({"number": 1, "html_url": "https://x.example/1"}),
    )])
    .await;
    let stand_in = StandIn::start(vec![(
        307,
        vec![(
            "location",
            format!("{}/repos/acme/app/pulls", elsewhere.url),
        )],
        json!({}),
    )])
    .await;
    let github = forge(ForgeKind::Github, &stand_in.url, "acme/app");
    let err = github.create(&proposal(false)).await.unwrap_err();
    assert!(
        matches!(err, ForgeError::Unexpected { status: 307, .. }),
        "{err:?}"
    );
    assert!(elsewhere.seen().is_empty(), "the redirect was followed");
}

#[test]
fn a_repository_path_cannot_climb_out_of_its_api_path() {
    for bad in [
        "acme/../admin",
        "acme",
        "acme/app/extra",
        "acme/a?b",
        "/app",
        "acme/ap p",
    ] {
        let config = ForgeConfig {
            kind: ForgeKind::Github,
            api_url: None,
            repo: bad.to_string(),
            token_secret: "T".to_string(),
        };
        let err = Forge::new(&config, TOKEN.into(), reqwest::Client::new()).unwrap_err();
        assert!(matches!(err, ForgeError::Config(_)), "{bad}: {err:?}");
    }
    let config = ForgeConfig {
        kind: ForgeKind::Github,
        api_url: Some("https://user:pw@github.example/api/v3".into()),
        repo: "acme/app".into(),
        token_secret: "T".into(),
    };
    let err = Forge::new(&config, TOKEN.into(), reqwest::Client::new()).unwrap_err();
    assert!(!err.to_string().contains("pw"), "{err}");
    let gitlab = ForgeConfig {
        kind: ForgeKind::Gitlab,
        api_url: None,
        repo: "group/sub/app".into(),
        token_secret: "T".into(),
    };
    assert!(Forge::new(&gitlab, TOKEN.into(), reqwest::Client::new()).is_ok());
}

#[test]
fn the_public_services_are_the_defaults() {
    let config = ForgeConfig {
        kind: ForgeKind::Gitlab,
        api_url: None,
        repo: "g/app".into(),
        token_secret: "T".into(),
    };
    let gitlab = Forge::new(&config, TOKEN.into(), reqwest::Client::new()).unwrap();
    assert_eq!(
        gitlab.endpoint(["projects", "g/app"]).as_str(),
        "https://gitlab.com/api/v4/projects/g%2Fapp"
    );
    assert_eq!(default_api_url(ForgeKind::Github), "https://api.github.com");
    assert_eq!(
        default_api_url(ForgeKind::Forgejo),
        "https://codeberg.org/api/v1"
    );
}

mod proposal_text {
    use chrono::Utc;
    use kiln_protocol::api::{Attempt, AttemptState, Task, TaskStatus};
    use kiln_protocol::{CheckResult, DiffStat, Mode, Usage};

    use super::super::proposal::{body, changed_files, title, MAX_TITLE_CHARS};

    fn task(prompt: &str) -> Task {
        Task {
            id: "t_abc".into(),
            owner_token_id: "tok".into(),
            user_id: None,
            team_id: None,
            shared: false,
            environment_version: None,
            environment_id: "env".into(),
            prompt: prompt.into(),
            mode: Mode::Code,
            attempt_count: 1,
            model: None,
            base_ref: None,
            budget_usd: None,
            preferred_attempt: None,
            status: TaskStatus::Succeeded,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn attempt(message: Option<&str>, checks: Vec<CheckResult>) -> Attempt {
        Attempt {
            task_id: "t_abc".into(),
            n: 2,
            status: AttemptState::Succeeded,
            tries: 1,
            cancel_requested: false,
            worker_id: None,
            lease_expires_at: None,
            started_at: None,
            finished_at: None,
            final_message: message.map(str::to_string),
            diff_stat: Some(DiffStat {
                files_changed: 2,
                insertions: 5,
                deletions: 1,
            }),
            usage: Usage::default(),
            branch: Some("kiln/t_abc/2".into()),
            commit_sha: Some("0123abcd".into()),
            reason: None,
            checks,
            citations_valid: 0,
            citations_invalid: 0,
            cost_usd: None,
            environment_version: None,
            wait_reason: None,
            rank: None,
        }
    }

    fn check(name: &str, command: &str, passed: bool) -> CheckResult {
        CheckResult {
            name: name.into(),
            command: command.into(),
            passed,
            exit_code: Some(if passed { 0 } else { 1 }),
            duration_ms: 1500,
            timed_out: false,
            chunk_id: "t9".into(),
            reason: None,
        }
    }

    #[test]
    fn the_title_is_the_prompts_first_line_cut_to_72_characters() {
        let a = attempt(Some("Fixed the bug.\nDetails."), Vec::new());
        assert_eq!(
            title(&task("\n  Fix calc.add  \nmore words"), &a),
            "Fix calc.add"
        );
        let long = title(&task(&"word ".repeat(40)), &a);
        assert_eq!(long.chars().count(), MAX_TITLE_CHARS);
        assert!(long.ends_with('…'));
        assert_eq!(title(&task("   \n"), &a), "Fixed the bug.");
    }

    #[test]
    fn the_body_has_summary_changes_testing_and_a_link_back() {
        let a = attempt(
            Some("Fixed `add` rounding."),
            vec![
                check("tests", "python3 -m pytest -q", true),
                check("lint", "ruff `x`", false),
            ],
        );
        let diff = "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n\
                    diff --git a/tests/test_calc.py b/tests/test_calc.py\n";
        let text = body(
            &task("fix it"),
            &a,
            Some(diff),
            Some("https://kiln.example/api/tasks/t_abc"),
        );
        for part in [
            "## Summary\n\nFixed `add` rounding.",
            "2 file(s) changed, +5 −1",
            "- `calc.py`",
            "- `tests/test_calc.py`",
            "## Testing",
            "✅ **tests** `python3 -m pytest -q`: passed in 1.5 s",
            "❌ **lint** `` ruff `x` ``: failed (exit 1) in 1.5 s",
            "https://kiln.example/api/tasks/t_abc",
            "Opened by kiln from attempt 2 of task t_abc, commit 0123abcd.",
        ] {
            assert!(text.contains(part), "{part:?} missing from:\n{text}");
        }
        let unlinked = body(&task("fix it"), &attempt(None, Vec::new()), None, None);
        assert!(unlinked.contains("kiln ran no checks"), "{unlinked}");
        assert!(unlinked.contains("`kiln task show t_abc`"), "{unlinked}");
    }

    #[test]
    fn changed_files_come_from_the_diff_headers_once_each() {
        let diff = "diff --git a/a.txt b/a.txt\n+x\ndiff --git a/old.txt b/new.txt\ndiff --git a/a.txt b/a.txt\n";
        assert_eq!(changed_files(diff), vec!["a.txt", "new.txt"]);
    }
}
