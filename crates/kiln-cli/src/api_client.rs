//! The HTTP client the `kiln task|env|token` subcommands share: where the
//! server is, the bearer token, and errors that say what to do.

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Server and credentials, from flags or the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The kiln server's URL.
    #[arg(
        long,
        global = true,
        env = "KILN_SERVER",
        default_value = "http://127.0.0.1:7878"
    )]
    pub server: String,
    /// API token (prefer the KILN_TOKEN variable: flags show up in `ps`).
    #[arg(long, global = true, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the server's JSON instead of the readable view.
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ApiClient {
    pub fn new(args: &ServerArgs) -> Result<Self> {
        let Some(token) = args.token.clone().filter(|t| !t.trim().is_empty()) else {
            bail!(
                "no API token: set KILN_TOKEN (the admin token is printed at the first start \
                 of `kiln serve`; `kiln token create NAME` makes more)"
            );
        };
        Ok(ApiClient {
            http: reqwest::Client::new(),
            base: args.server.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    pub async fn send(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = builder.send().await.with_context(|| {
            format!(
                "cannot reach the kiln server at {}: start `kiln serve` or set --server / KILN_SERVER",
                self.base
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("the server refused ({status}): {message}")
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let response = self.send(self.request(reqwest::Method::GET, path)).await?;
        Ok(response.json().await?)
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        let response = self.send(self.request(reqwest::Method::GET, path)).await?;
        Ok(response.text().await?)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        Ok(response.json().await?)
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        let response = self
            .send(self.request(reqwest::Method::DELETE, path))
            .await?;
        Ok(response.json().await?)
    }

    /// Opens an SSE stream (`GET` with `Accept: text/event-stream`).
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response> {
        self.send(
            self.request(reqwest::Method::GET, path)
                .header("accept", "text/event-stream"),
        )
        .await
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}
