//! `kiln login --server URL` and `kiln logout`: a token for a kiln server
//! through its single sign-on, by the device flow the server runs (so it
//! works with every provider, and over SSH: the browser can be on another
//! machine). The token goes to `$KILN_HOME/credentials.toml`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_client::credentials::{self, ServerCredentials};
use crate::run_blocking;

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The kiln server's URL.
    #[arg(long, env = "KILN_SERVER", default_value = "http://127.0.0.1:7878")]
    pub server: String,
    /// Do not try to open the link in a browser.
    #[arg(long)]
    pub no_browser: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The server to sign out of (default: the only one signed in to).
    #[arg(long, env = "KILN_SERVER")]
    pub server: Option<String>,
}

#[derive(Deserialize)]
struct DeviceStart {
    device_code: String,
    user_code: String,
    verification_uri_complete: String,
    expires_in: u64,
    interval: u64,
}

#[derive(Deserialize)]
struct IssuedToken {
    token: String,
    token_id: Option<String>,
    user: IssuedUser,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct IssuedUser {
    name: String,
}

pub fn login(args: LoginArgs) -> ExitCode {
    run_blocking(run_login(args))
}

pub fn logout(args: LogoutArgs) -> ExitCode {
    run_blocking(run_logout(args))
}

fn unreachable(server: &str) -> String {
    format!("cannot reach the kiln server at {server}: check --server / KILN_SERVER")
}

async fn run_login(args: LoginArgs) -> Result<()> {
    let server = credentials::key(&args.server);
    reqwest::Url::parse(&server).with_context(|| {
        format!("--server {server:?} is not a URL: use e.g. https://kiln.example.com")
    })?;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{server}/api/auth/device"))
        .send()
        .await
        .with_context(|| unreachable(&server))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        bail!(
            "{server} does not offer single sign-on (it runs without --oidc-issuer): ask an admin \
             for a token (`kiln token create NAME`) and set KILN_TOKEN to it"
        );
    }
    if !response.status().is_success() {
        bail!(
            "{server} refused to start a sign-in ({})",
            response.status()
        );
    }
    let start: DeviceStart = response.json().await.context(
        "the server's answer to a sign-in is not what this kiln knows (another version?)",
    )?;
    println!(
        "To sign in to {server}, open\n\n    {}\n\nand check that the page shows the code {}.",
        start.verification_uri_complete, start.user_code
    );
    std::io::stdout().flush()?;
    if !args.no_browser && std::io::stdout().is_terminal() {
        open_browser(&start.verification_uri_complete);
    }

    let deadline = Instant::now() + Duration::from_secs(start.expires_in.min(3600));
    let mut interval = Duration::from_secs(start.interval.clamp(1, 60));
    let issued = loop {
        // The server's interval between polls is the protocol, not a guess
        // at when the person will have signed in.
        tokio::time::sleep(interval).await;
        if Instant::now() >= deadline {
            bail!("the code expired before anyone signed in: run `kiln login` again");
        }
        let response = http
            .post(format!("{server}/api/auth/device/token"))
            .json(&json!({ "device_code": start.device_code }))
            .send()
            .await
            .with_context(|| unreachable(&server))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            break serde_json::from_value::<IssuedToken>(body).context(
                "the server's token answer is not what this kiln knows (another version?)",
            )?;
        }
        let description = body["error_description"].as_str().unwrap_or("").to_string();
        match body["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += Duration::from_secs(5),
            Some("expired_token") => {
                bail!("the code expired or was used already: run `kiln login` again")
            }
            Some("access_denied") => bail!("the sign-in was refused: {description}"),
            _ => bail!("the server refused ({status}): {body}"),
        }
    };

    let mut stored = credentials::load()?;
    stored.servers.insert(
        server.clone(),
        ServerCredentials {
            token: issued.token,
            token_id: issued.token_id,
            user: Some(issued.user.name.clone()),
            expires_at: issued.expires_at,
        },
    );
    let path = credentials::save(&stored)?;
    let until = issued
        .expires_at
        .map(|at| format!(" until {}", at.format("%Y-%m-%d")))
        .unwrap_or_default();
    println!(
        "Signed in to {server} as {}{until} (token saved in {}).",
        issued.user.name,
        path.display()
    );
    Ok(())
}

/// Opens `url` in the desktop's browser, quietly: on a machine without one
/// (over SSH) the printed link is enough.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

async fn run_logout(args: LogoutArgs) -> Result<()> {
    let mut stored = credentials::load()?;
    let server = match &args.server {
        Some(server) => credentials::key(server),
        None => {
            let servers: Vec<&String> = stored.servers.keys().collect();
            match servers.as_slice() {
                [] => bail!(
                    "not signed in to any server (no tokens in {})",
                    credentials::path()?.display()
                ),
                [one] => (*one).clone(),
                many => bail!(
                    "signed in to several servers ({}): say which with --server",
                    many.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let Some(entry) = stored.servers.get(&server).cloned() else {
        bail!("not signed in to {server}: nothing to sign out of");
    };
    let response = reqwest::Client::new()
        .post(format!("{server}/api/auth/logout-token"))
        .bearer_auth(&entry.token)
        .send()
        .await
        .with_context(|| {
            format!(
                "{}; the token stays in the credentials file until the server can revoke it",
                unreachable(&server)
            )
        })?;
    let status = response.status();
    // 401: revoked or expired already, which is what logging out wants.
    if !(status.is_success() || status == reqwest::StatusCode::UNAUTHORIZED) {
        bail!("{server} did not revoke the token ({status}); it stays in the credentials file");
    }
    stored.servers.remove(&server);
    credentials::save(&stored)?;
    println!("Signed out of {server}: the token is revoked and removed.");
    Ok(())
}
