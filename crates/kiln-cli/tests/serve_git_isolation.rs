//! `kiln serve` against an attacker: a hostile agent's git metadata, a
//! second ordinary user reading the first one's branches, and setup
//! products that must not become the agent's diff. The built binary, real
//! HTTP, the scripted model server, real git and the real sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::time::Duration;

use kiln_testkit::{fixtures, Script, ScriptedServer, ScriptedToolCall, Turn};
use serde_json::{json, Value};
use serve_support::{base64, git, mirror_dirs, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(120);

async fn outputs(server: &KilnServer, token: &str, id: &str) -> String {
    let events = server.events(token, id, None).await.all(LONG).await;
    events
        .iter()
        .filter(|e| e.kind == "exec.output")
        .map(|e| e.data["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn shell(command: &str) -> Turn {
    Turn::tool_calls(vec![ScriptedToolCall::new(
        "shell",
        json!({"command": ["bash", "-c", command]}),
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_sandbox_never_sees_another_users_task_branches() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        shell("echo ALICE-PRIVATE-NOTE-31337 > alice.txt"),
        Turn::message("Wrote a note."),
    ]))
    .await;
    let install = serve_support::Installation::new();
    // Ordinary users may name a host path only where the operator allows it.
    let allowed = repo.path().to_string_lossy().into_owned();
    let server = KilnServer::start_with(&install, &model, 1, &["--allow-repo", &allowed]).await;
    let alice = server.new_user("alice").await;
    let bob = server.new_user("bob").await;
    server.environment(&alice, "calc", repo.path()).await;
    server.environment(&bob, "calc", repo.path()).await;

    let task = server
        .task(&alice, json!({"environment": "calc", "prompt": "note"}))
        .await;
    let alice_task = task["id"].as_str().unwrap().to_string();
    let done = server.wait_finished(&alice, &alice_task, LONG).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let alice_branch = format!("kiln/{alice_task}/1");
    let alice_commit = done["attempts"][0]["commit_sha"]
        .as_str()
        .unwrap()
        .to_string();

    model.push_turn(shell(&format!(
        "git log --all --oneline; git show {alice_branch}:alice.txt; \
         git grep ALICE $(git rev-list --all) ; \
         cat $(git rev-parse --git-common-dir)/packed-refs; \
         ls -R $(git rev-parse --git-common-dir)/refs; true"
    )));
    model.push_turn(Turn::message("Looked around."));
    let task = server
        .task(&bob, json!({"environment": "calc", "prompt": "snoop"}))
        .await;
    let bob_task = task["id"].as_str().unwrap().to_string();
    let done = server.wait_finished(&bob, &bob_task, LONG).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let seen = outputs(&server, &bob, &bob_task).await;
    assert!(
        !seen.contains("ALICE-PRIVATE-NOTE") && !seen.contains(&alice_commit[..7]),
        "bob's sandbox saw alice's task: {seen}"
    );

    // Starting from alice's branch is refused as an unknown ref.
    let task = server
        .task(
            &bob,
            json!({"environment": "calc", "prompt": "x", "base_ref": alice_branch}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let done = server.wait_finished(&bob, &id, LONG).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    let reason = done["attempts"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&alice_branch) && reason.contains("does not exist"),
        "{reason}"
    );
    assert_eq!(
        mirror_dirs(install.data_dir()).len(),
        2,
        "one mirror per user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_that_looks_like_an_option_is_only_ever_a_ref() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![])).await;
    let install = serve_support::Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let marker = install.data_dir().join("option-injected");
    let base_ref = format!("--output={}", marker.display());
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "x", "base_ref": base_ref}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let done = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    let reason = done["attempts"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("does not exist"), "{reason}");
    assert!(!marker.exists(), "the ref was taken as an option");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_products_stay_out_of_the_stored_diff_and_the_branch() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        shell("echo '# the agent was here' >> calc.py"),
        Turn::message("Edited calc.py."),
    ]))
    .await;
    let install = serve_support::Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({
                "name": "calc",
                "repo": repo.path().display().to_string(),
                "setup_script": "echo TOKEN=setup-secret-4242 > .env.local; echo 'changed by setup' >> README.md",
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "edit"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let done = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let attempt = &done["attempts"][0];
    assert_eq!(attempt["diff_stat"]["files_changed"], 1, "{attempt:#}");

    let (status, diff) = server
        .get(&format!("/api/tasks/{id}/attempts/1/diff"), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200);
    let diff = diff.as_str().unwrap_or_default();
    assert!(diff.contains("+# the agent was here"), "{diff}");
    assert!(
        !diff.contains("setup-secret") && !diff.contains(".env.local") && !diff.contains("README"),
        "{diff}"
    );

    let mirror = mirror_dirs(install.data_dir()).remove(0);
    let sha = attempt["commit_sha"].as_str().unwrap();
    let files = git(&mirror, &["ls-tree", "-r", "--name-only", sha]);
    assert!(!files.lines().any(|f| f == ".env.local"), "{files}");
    let calc = git(&mirror, &["show", &format!("{sha}:calc.py")]);
    assert!(calc.contains("# the agent was here"), "{calc}");
    let readme_base = git(repo.path(), &["show", "HEAD:README.md"]);
    let readme = git(&mirror, &["show", &format!("{sha}:README.md")]);
    assert_eq!(readme, readme_base, "setup's change to README.md stays out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_git_never_runs_configuration_the_agent_planted() {
    let repo = fixtures::repo("calc-py");
    let install = serve_support::Installation::new();
    let marker = install.data_dir().join("host-code-ran");
    let config = "[core]\n\tfsmonitor = $PWD/payload.sh\n\thooksPath = $PWD/hooks\n\
                  [diff]\n\texternal = $PWD/payload.sh\n";
    let plant = format!(
        "printf '#!/bin/sh\\ntouch {marker}\\nexit 0\\n' > payload.sh; chmod +x payload.sh; \
         mkdir -p hooks; cp payload.sh hooks/pre-commit; \
         rm -rf .git; git init -q . ; printf \"{config}\" > .git/config; \
         mkdir -p sub && (cd sub && git init -q . ; printf \"{config}\" > .git/config); \
         echo '# the agent was here' >> calc.py; true",
        marker = marker.display(),
    );
    let model =
        ScriptedServer::start(Script::new(vec![shell(&plant), Turn::message("Done.")])).await;
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "edit"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let done: Value = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(
        !marker.exists(),
        "kiln serve's git ran the agent's configuration"
    );
    let mirror = mirror_dirs(install.data_dir()).remove(0);
    let sha = done["attempts"][0]["commit_sha"].as_str().unwrap();
    let calc = git(&mirror, &["show", &format!("{sha}:calc.py")]);
    assert!(calc.contains("# the agent was here"), "{calc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_never_deletes_the_directory_a_planted_git_file_names() {
    let repo = fixtures::repo("calc-py");
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("precious"), "keep me\n").unwrap();
    let model = ScriptedServer::start(Script::new(vec![
        shell(&format!(
            "rm -f .git; echo 'gitdir: {}' > .git; echo '# edit' >> calc.py",
            victim.path().display()
        )),
        Turn::message("Pointed .git elsewhere."),
        Turn::message("Still here."),
    ]))
    .await;
    let install = serve_support::Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "edit"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    server.wait_finished(ADMIN_TOKEN, &id, LONG).await;

    let (status, body) = server
        .post(
            &format!("/api/tasks/{id}/messages"),
            ADMIN_TOKEN,
            json!({"text": "anything else?"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let done = server
        .wait_task(ADMIN_TOKEN, &id, LONG, |t| {
            t["attempts"][0]["final_message"] == "Still here."
                && matches!(t["status"].as_str(), Some("succeeded" | "failed"))
        })
        .await;
    assert!(
        victim.path().join("precious").exists(),
        "the server deleted the directory the agent's .git file named: {done:#}"
    );
    assert_eq!(done["status"], "succeeded", "{done:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_repository_url_reaches_the_clone_and_nothing_a_sandbox_or_the_api_shows() {
    const TOKEN: &str = "ghp_url-token-Zq81mK3v";
    let served = tempfile::tempdir().unwrap();
    kiln_testkit::git_http::bare_repository(served.path());
    let authorization = format!("Basic {}", base64(format!("deploy-bot:{TOKEN}").as_bytes()));
    let base = kiln_testkit::git_http::serve_with_basic_auth(served.path().into(), authorization);
    let clean_url = format!("{base}/app.git");
    let url_with_token = clean_url.replacen("http://", &format!("http://deploy-bot:{TOKEN}@"), 1);

    // The agent looks everywhere git keeps a remote's location.
    let model = ScriptedServer::start(Script::new(vec![
        shell(
            "git remote -v; cat \"$(git rev-parse --git-common-dir)/config\"; \
             git config --list --show-origin; cat README.md",
        ),
        Turn::message("Looked around."),
    ]))
    .await;
    let install = serve_support::Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({"name": "private", "repo": url_with_token}),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    assert_eq!(env["repo"], clean_url.as_str(), "{env}");

    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "private", "prompt": "look"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let done = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let seen = outputs(&server, ADMIN_TOKEN, &id).await;
    // The clone worked (the server refuses git without the token) …
    assert!(seen.contains("hello"), "{seen}");
    assert!(seen.contains(&clean_url), "{seen}");
    // … and the token is nowhere the agent, the events or the API show.
    let events = server.events(ADMIN_TOKEN, &id, None).await.all(LONG).await;
    let everything: String = events.iter().map(|e| e.data.to_string()).collect();
    let (_, listed) = server.get("/api/environments", ADMIN_TOKEN).await;
    for shown in [&seen, &everything, &listed.to_string(), &done.to_string()] {
        assert!(!shown.contains(TOKEN), "{shown}");
    }
    let mirror = mirror_dirs(install.data_dir()).remove(0);
    let config = std::fs::read_to_string(mirror.join(".git/config")).unwrap();
    assert!(!config.contains(TOKEN), "{config}");
}
