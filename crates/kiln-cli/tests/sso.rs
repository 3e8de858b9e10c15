//! Single sign-on end to end: a real OpenID Connect provider (the npm
//! package oidc-provider, `tests/oidc/provider.mjs`, run with node), a real
//! `kiln serve` with the SSO flags, `kiln login` as a child process, and a
//! cookie-keeping HTTP client walking the provider's plain HTML forms in
//! place of a browser.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use kiln_testkit::{Script, ScriptedServer};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CLIENT_SECRET: &str = "kiln-test-client-secret";

/// oidc-provider on a free port, for one kiln redirect URI.
struct Provider {
    _child: Child,
    issuer: String,
}

impl Provider {
    async fn start(redirect_uri: &str) -> Provider {
        Self::start_on(redirect_uri, 0).await
    }

    async fn start_on(redirect_uri: &str, port: u16) -> Provider {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "run `npm ci` in {} first (scripts/test does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .arg(redirect_uri)
            .arg(port.to_string())
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start node (scripts/test installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let issuer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(issuer) = line.strip_prefix("issuer ") {
                    return issuer.to_string();
                }
            }
            panic!("the provider exited before listening");
        })
        .await
        .expect("the provider listens within 30 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Provider {
            _child: child,
            issuer,
        }
    }
}

/// A browser stand-in: keeps cookies per host:port, follows redirects
/// itself so each step can be looked at.
struct Browser {
    http: reqwest::Client,
    cookies: Mutex<HashMap<String, HashMap<String, String>>>,
}

struct Page {
    url: Url,
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Mutex::new(HashMap::new()),
        }
    }

    fn origin(url: &Url) -> String {
        format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        )
    }

    async fn send(
        &self,
        method: Method,
        url: &Url,
        form: Option<&[(String, String)]>,
        headers: &[(&str, &str)],
    ) -> Page {
        let mut request = self.http.request(method, url.clone());
        let jar = self
            .cookies
            .lock()
            .unwrap()
            .get(&Self::origin(url))
            .map(|jar| {
                jar.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        if !jar.is_empty() {
            request = request.header(COOKIE, jar);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(form) = form {
            request = request.form(form);
        }
        let response = request.send().await.unwrap();
        {
            let mut cookies = self.cookies.lock().unwrap();
            let jar = cookies.entry(Self::origin(url)).or_default();
            for set in response.headers().get_all(SET_COOKIE) {
                let pair = set.to_str().unwrap().split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                let expired = set.to_str().unwrap().contains("Max-Age=0")
                    || set.to_str().unwrap().contains("expires=Thu, 01 Jan 1970");
                if value.is_empty() || expired {
                    jar.remove(name.trim());
                } else {
                    jar.insert(name.trim().to_string(), value.to_string());
                }
            }
        }
        Page {
            url: url.clone(),
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&self, url: &Url) -> Page {
        self.send(Method::GET, url, None, &[]).await
    }

    /// Follows redirects and signs in to the provider's dev interaction
    /// forms as `account` (login, then consent), until kiln's callback has
    /// answered: its answer is returned.
    async fn sign_in(&self, page: Page, account: &str) -> Page {
        let callback = self.sign_in_until_callback(page, account).await;
        self.get(&callback).await
    }

    /// [`Browser::sign_in`] up to the redirect to kiln's callback: its URL.
    async fn sign_in_until_callback(&self, mut page: Page, account: &str) -> Url {
        for _ in 0..20 {
            if page.status.is_redirection() {
                let location = page.headers[LOCATION].to_str().unwrap();
                let next = page.url.join(location).unwrap();
                if next.path() == "/auth/oidc/callback" {
                    return next;
                }
                page = self.get(&next).await;
                continue;
            }
            assert_eq!(page.status, StatusCode::OK, "{}: {}", page.url, page.body);
            let action = page.url.join(&form_action(&page.body)).unwrap();
            let fields = if page.body.contains("name=\"login\"") {
                vec![
                    ("prompt".to_string(), "login".to_string()),
                    ("login".to_string(), account.to_string()),
                    ("password".to_string(), "any".to_string()),
                ]
            } else {
                hidden_fields(&page.body)
            };
            page = self.send(Method::POST, &action, Some(&fields), &[]).await;
        }
        panic!("the sign-in did not reach kiln's callback in 20 steps");
    }
}

fn form_action(html: &str) -> String {
    let form = &html[html.find("<form").expect("a form on the page")..];
    let start = form.find("action=\"").unwrap() + 8;
    form[start..start + form[start..].find('"').unwrap()].replace("&amp;", "&")
}

fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| {
        let key = format!("{name}=\"");
        tag.find(&key).map(|at| {
            let rest = &tag[at + key.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
    };
    html.split("<input")
        .skip(1)
        .filter(|tag| tag.contains("type=\"hidden\""))
        .filter_map(|tag| Some((attr(tag, "name")?, attr(tag, "value")?)))
        .collect()
}

/// A free port for kiln, so its redirect URI is known before it starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Sso {
    kiln: KilnServer,
    provider: Provider,
    _model: ScriptedServer,
    _install: Installation,
}

async fn start() -> Sso {
    let model = ScriptedServer::start(Script::new(Vec::new())).await;
    let install = Installation::new();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let provider = Provider::start(&format!("{public}/auth/oidc/callback")).await;
    let addr = format!("127.0.0.1:{port}");
    let kiln = KilnServer::start_with_env(
        &install,
        &model,
        1,
        &[
            "--addr",
            &addr,
            "--public-url",
            &public,
            "--oidc-issuer",
            &provider.issuer,
            "--oidc-client-id",
            "kiln",
            "--oidc-scopes",
            "openid profile email groups",
            "--oidc-map",
            "kiln-devs=calc:member",
            "--oidc-map",
            "kiln-admins=admin",
            "--oidc-map",
            "kiln-viewers=docs:viewer",
        ],
        &[("KILN_OIDC_CLIENT_SECRET", CLIENT_SECRET)],
    )
    .await;
    Sso {
        kiln,
        provider,
        _model: model,
        _install: install,
    }
}

/// `kiln login` running, and the link it printed.
struct Login {
    child: Child,
    link: Url,
    stdout: Vec<String>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn kiln_login(server: &str, home: &Path) -> Login {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["login", "--server", server])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KILN_HOME", home)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = Vec::new();
    let link = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stdout.push(line.clone());
            if let Some(link) = line.trim().strip_prefix("http") {
                return Url::parse(&format!("http{link}")).unwrap();
            }
        }
        panic!("kiln login printed no link: {stdout:?}");
    })
    .await
    .expect("kiln login prints its link");
    Login {
        child,
        link,
        stdout,
        lines,
    }
}

impl Login {
    /// Waits for `kiln login` to exit: its success and everything it printed.
    async fn finish(mut self) -> (bool, String, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("kiln login ends within 60 s")
            .unwrap();
        while let Some(line) = self.lines.next_line().await.unwrap() {
            self.stdout.push(line);
        }
        let mut stderr = String::new();
        tokio::io::AsyncReadExt::read_to_string(
            &mut self.child.stderr.take().unwrap(),
            &mut stderr,
        )
        .await
        .unwrap();
        (status.success(), self.stdout.join("\n"), stderr)
    }
}

/// The device page's Continue button, then the provider's sign-in as `account`.
async fn approve(browser: &Browser, link: &Url, account: &str) -> Page {
    let page = browser.get(link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let action = link.join(&form_action(&page.body)).unwrap();
    let continued = browser
        .send(Method::POST, &action, Some(&hidden_fields(&page.body)), &[])
        .await;
    assert!(
        continued.status.is_redirection(),
        "{}: {}",
        continued.status,
        continued.body
    );
    browser.sign_in(continued, account).await
}

async fn kiln_cli(server: &str, home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KILN_HOME", home)
        .env("KILN_SERVER", server)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap()
}

fn credentials_file(home: &Path) -> PathBuf {
    home.join("credentials.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_login_signs_in_through_the_provider_and_its_token_works() {
    let sso = start().await;
    let home = tempfile::tempdir().unwrap();
    let login = kiln_login(&sso.kiln.url, home.path()).await;
    assert!(login
        .link
        .as_str()
        .starts_with(&format!("{}/auth/device?user_code=", sso.kiln.url)));

    let browser = Browser::new();
    let link = login.link.clone();
    let done = approve(&browser, &link, "ada").await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("signed in as <b>ada</b>"),
        "{}",
        done.body
    );

    let (ok, stdout, stderr) = login.finish().await;
    assert!(ok, "kiln login failed: {stdout}\n{stderr}");
    assert!(stdout.contains("as ada"), "{stdout}");

    let file = credentials_file(home.path());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stored: toml::Value = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = stored["servers"][&sso.kiln.url]["token"]
        .as_str()
        .unwrap()
        .to_string();

    // Without KILN_TOKEN the stored token is used.
    let listed = kiln_cli(&sso.kiln.url, home.path(), &["task", "list"]).await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // The user exists with the team role their group maps to (read from
    // the server's database, as the token's principal).
    let store = kiln_store::Store::open(kiln_store::StoreOptions::sqlite_in_dir(
        sso._install.data_dir(),
    ))
    .await
    .unwrap();
    let me = store
        .verify_token(&token)
        .await
        .unwrap()
        .expect("a live token");
    assert_eq!(me.user_name, "ada");
    assert!(!me.admin);
    assert_eq!(me.teams.len(), 1, "{me:?}");
    assert_eq!(me.teams[0].team_name, "calc");
    assert_eq!(me.teams[0].role, kiln_protocol::teams::TeamRole::Member);
    assert_eq!(me.teams[0].source, "oidc");
    let tokens = store.list_tokens().await.unwrap();
    let issued = tokens.iter().find(|t| t.id == me.token_id).unwrap();
    assert_eq!(issued.source, "sso");
    let lifetime = (issued.expires_at.unwrap() - issued.created_at).num_minutes();
    assert!(
        (30 * 24 * 60 - 1..=30 * 24 * 60).contains(&lifetime),
        "--sso-token-days defaults to 30: {lifetime} minutes"
    );
    store.close().await;

    // The same link cannot be used again.
    let again = browser.get(&link).await;
    assert_eq!(again.status, 404, "{}", again.body);

    let out = kiln_cli(&sso.kiln.url, home.path(), &["logout"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = sso.kiln.get("/api/tasks", &token).await;
    assert_eq!(status, 401, "the token was revoked");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&token), "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_sign_in_gives_a_session_that_reads_and_changes_only_with_its_csrf_token() {
    let sso = start().await;
    let browser = Browser::new();
    let kiln = Url::parse(&sso.kiln.url).unwrap();

    let outside = browser
        .get(
            &kiln
                .join("/auth/oidc/login?return_to=https://evil.example/")
                .unwrap(),
        )
        .await;
    assert_eq!(outside.status, 400, "{}", outside.body);

    let start = browser
        .get(&kiln.join("/auth/oidc/login?return_to=/tasks").unwrap())
        .await;
    assert_eq!(start.status, 303);
    assert!(start.headers[LOCATION]
        .to_str()
        .unwrap()
        .starts_with(&sso.provider.issuer));
    let callback_url = browser.sign_in_until_callback(start, "grace").await;
    // Login CSRF: another browser sent to this finished sign-in's callback
    // (to be signed in as grace) gets nothing, and the sign-in stays usable.
    let lured = Browser::new().get(&callback_url).await;
    assert_eq!(lured.status, 400, "{}", lured.body);
    assert!(lured.headers.get(SET_COOKIE).is_none());
    let callback = browser.get(&callback_url).await;
    assert_eq!(callback.status, 303, "{}", callback.body);
    assert_eq!(callback.headers[LOCATION], "/tasks");
    let set_cookie = callback.headers[SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.starts_with("kiln_session="), "{set_cookie}");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );

    // A replayed callback (same code and state) gets nothing.
    let replay = browser.get(&callback.url).await;
    assert_eq!(replay.status, 400, "{}", replay.body);

    let session = browser.get(&kiln.join("/auth/session").unwrap()).await;
    assert_eq!(session.status, 200, "{}", session.body);
    let session: Value = serde_json::from_str(&session.body).unwrap();
    assert_eq!(session["user"]["name"], "grace");
    assert_eq!(
        session["user"]["role"], "admin",
        "kiln-admins maps to admin"
    );
    let csrf = session["csrf_token"].as_str().unwrap().to_string();

    let tasks = browser.get(&kiln.join("/api/tasks").unwrap()).await;
    assert_eq!(tasks.status, 200, "{}", tasks.body);
    // The event stream takes the session too: grace (an admin) reads a
    // task the admin token created.
    let repo = kiln_testkit::fixtures::repo("calc-py");
    sso.kiln.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = sso
        .kiln
        .task(
            ADMIN_TOKEN,
            serde_json::json!({"environment": "calc", "prompt": "look around"}),
        )
        .await;
    let events = kiln
        .join(&format!(
            "/api/tasks/{}/events?follow=false",
            task["id"].as_str().unwrap()
        ))
        .unwrap();
    let stream = browser.get(&events).await;
    assert_eq!(stream.status, 200, "{}", stream.body);
    assert!(stream.body.contains("task.status"), "{}", stream.body);
    // A bearer token wins over the cookie sent along with it.
    let bearer = browser
        .send(
            Method::GET,
            &kiln.join("/api/tasks").unwrap(),
            None,
            &[("Authorization", "Bearer kiln_not_a_token")],
        )
        .await;
    assert_eq!(bearer.status, 401, "{}", bearer.body);

    // A change with the cookie alone (what a cross-site form would send) is refused.
    let body = [("x".to_string(), "y".to_string())];
    let forged = browser
        .send(
            Method::POST,
            &kiln.join("/api/tokens").unwrap(),
            Some(&body),
            &[],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let wrong = browser
        .send(
            Method::POST,
            &kiln.join("/api/tokens").unwrap(),
            Some(&body),
            &[("X-CSRF-Token", "guess")],
        )
        .await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    let with_token = browser
        .send(
            Method::POST,
            &kiln.join("/api/tokens").unwrap(),
            Some(&body),
            &[("X-CSRF-Token", &csrf)],
        )
        .await;
    assert_ne!(with_token.status, 403, "{}", with_token.body);
    assert_ne!(with_token.status, 401, "{}", with_token.body);

    let logout = browser
        .send(Method::POST, &kiln.join("/auth/logout").unwrap(), None, &[])
        .await;
    assert_eq!(logout.status, 403, "{}", logout.body);
    let logout = browser
        .send(
            Method::POST,
            &kiln.join("/auth/logout").unwrap(),
            None,
            &[("X-CSRF-Token", &csrf)],
        )
        .await;
    assert_eq!(logout.status, 204, "{}", logout.body);
    let after = browser.get(&kiln.join("/api/tasks").unwrap()).await;
    assert_eq!(after.status, 401, "{}", after.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_groups_map_to_no_team_is_refused_on_the_web_and_in_kiln_login() {
    let sso = start().await;
    let kiln = Url::parse(&sso.kiln.url).unwrap();

    let browser = Browser::new();
    let start = browser.get(&kiln.join("/auth/oidc/login").unwrap()).await;
    let refused = browser.sign_in(start, "mallory").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("outsiders"), "{}", refused.body);
    assert!(
        refused.headers.get(SET_COOKIE).is_none(),
        "no session for a refused user"
    );

    let home = tempfile::tempdir().unwrap();
    let login = kiln_login(&sso.kiln.url, home.path()).await;
    let refused = approve(&Browser::new(), &login.link, "mallory").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let (ok, stdout, stderr) = login.finish().await;
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("refused") && stderr.contains("--oidc-map"),
        "{stderr}"
    );
    assert!(!credentials_file(home.path()).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_login_without_sso_says_to_use_a_token() {
    let model = ScriptedServer::start(Script::new(Vec::new())).await;
    let install = Installation::new();
    let kiln = KilnServer::start(&install, &model, 1).await;
    let home = tempfile::tempdir().unwrap();
    let out = kiln_cli(&kiln.url, home.path(), &["login", "--server", &kiln.url]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("KILN_TOKEN") && stderr.contains("kiln token create"),
        "{stderr}"
    );
}

/// `kiln serve ARGS` that must stop before listening: its stderr.
async fn serve_refuses(args: &[&str], env: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KILN_HOME", data.path())
            .env("OPENAI_API_KEY", "sk-test-key")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("kiln serve stops at once")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "kiln serve started: {stdout}");
    assert!(!stdout.contains("listening"), "{stdout}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_settings_that_cannot_work_stop_kiln_serve_naming_the_fix() {
    let secret = [("KILN_OIDC_CLIENT_SECRET", CLIENT_SECRET)];
    let public = ["--public-url", "http://127.0.0.1:9"];
    let issuer = [
        "--oidc-issuer",
        "https://id.example.test",
        "--oidc-client-id",
        "kiln",
    ];

    let err = serve_refuses(&issuer, &secret).await;
    assert!(err.contains("--public-url"), "{err}");
    let err = serve_refuses(&[&public[..], &issuer[..]].concat(), &[]).await;
    assert!(err.contains("KILN_OIDC_CLIENT_SECRET"), "{err}");
    let err = serve_refuses(
        &[&public[..], &issuer[..], &["--oidc-map", "devs=calc:owner"]].concat(),
        &secret,
    )
    .await;
    assert!(
        err.contains("--oidc-map") && err.contains("GROUP=TEAM:ROLE"),
        "{err}"
    );

    // A provider whose discovery document names another issuer (here: the
    // configured one has a trailing slash) is not trusted.
    let provider = Provider::start("http://127.0.0.1:9/auth/oidc/callback").await;
    let slashed = format!("{}/", provider.issuer);
    let err = serve_refuses(
        &[
            &public[..],
            &["--oidc-issuer", &slashed, "--oidc-client-id", "kiln"],
        ]
        .concat(),
        &secret,
    )
    .await;
    assert!(
        err.contains("--oidc-issuer") && err.contains(&provider.issuer),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_at_startup_is_discovered_at_the_first_sign_in() {
    let model = ScriptedServer::start(Script::new(Vec::new())).await;
    let install = Installation::new();
    let (kiln_port, provider_port) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{kiln_port}");
    let issuer = format!("http://127.0.0.1:{provider_port}");
    let addr = format!("127.0.0.1:{kiln_port}");
    let kiln = KilnServer::start_with_env(
        &install,
        &model,
        1,
        &[
            "--addr",
            &addr,
            "--public-url",
            &public,
            "--oidc-issuer",
            &issuer,
            "--oidc-client-id",
            "kiln",
            "--oidc-allow-unmapped",
        ],
        &[("KILN_OIDC_CLIENT_SECRET", CLIENT_SECRET)],
    )
    .await;
    let browser = Browser::new();
    let login = Url::parse(&format!("{}/auth/oidc/login", kiln.url)).unwrap();
    let down = browser.get(&login).await;
    assert_eq!(down.status, 502, "{}", down.body);

    let provider = Provider::start_on(&format!("{public}/auth/oidc/callback"), provider_port).await;
    assert_eq!(provider.issuer, issuer);
    let up = browser.get(&login).await;
    assert_eq!(up.status, 303, "{}", up.body);
    assert!(up.headers[LOCATION].to_str().unwrap().starts_with(&issuer));
    // Unmapped users are let in when the server says so.
    let callback = browser.sign_in(up, "mallory").await;
    assert_eq!(callback.status, 303, "{}", callback.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_pages_continue_needs_the_cookie_of_the_page_that_showed_it() {
    let sso = start().await;
    let home = tempfile::tempdir().unwrap();
    let login = kiln_login(&sso.kiln.url, home.path()).await;
    let victim = Browser::new();
    let page = victim.get(&login.link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let action = login.link.join(&form_action(&page.body)).unwrap();
    let fields = hidden_fields(&page.body);

    // A form on another site posts the same fields, but the browser does
    // not send the SameSite cookie of kiln's page with it.
    let cross_site = Browser::new();
    let forged = cross_site
        .send(Method::POST, &action, Some(&fields), &[])
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);

    // The request is still usable by the person who opened the link.
    let done = victim
        .sign_in(
            victim.send(Method::POST, &action, Some(&fields), &[]).await,
            "linus",
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let (ok, stdout, stderr) = login.finish().await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("as linus"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_saved_sign_in_says_to_sign_in_again() {
    let home = tempfile::tempdir().unwrap();
    let server = "http://127.0.0.1:9";
    std::fs::write(
        credentials_file(home.path()),
        format!(
            "[servers.\"{server}\"]\ntoken = \"kiln_old\"\nexpires_at = \"2020-01-01T00:00:00Z\"\n"
        ),
    )
    .unwrap();
    let out = kiln_cli(server, home.path(), &["task", "list"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("expired") && stderr.contains(&format!("kiln login --server {server}")),
        "{stderr}"
    );
}
