//! Provider configuration, with the TOML keys Codex users already write in
//! `[model_providers.NAME]` tables (`name`, `base_url`, `env_key`, `wire_api`,
//! `query_params`, `http_headers`, `env_http_headers`, `request_max_retries`,
//! `stream_max_retries`, `stream_idle_timeout_ms`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION};
use serde::{Deserialize, Serialize};

use crate::{ModelError, RetryPolicy};

/// The OpenAI API, the default when neither the config nor `OPENAI_BASE_URL` says otherwise.
pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
pub(crate) const DEFAULT_REQUEST_MAX_RETRIES: u32 = 4;
pub(crate) const DEFAULT_STREAM_MAX_RETRIES: u32 = 5;
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound for both retry counts, so a typo cannot make a run retry for hours.
const MAX_RETRIES_CAP: u32 = 100;

/// Which HTTP API a provider speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireApi {
    /// The OpenAI Responses API, `POST {base_url}/responses`.
    #[default]
    Responses,
    /// Chat Completions, `POST {base_url}/chat/completions` (Ollama, vLLM,
    /// llama.cpp, LM Studio and most gateways).
    Chat,
}

impl fmt::Display for WireApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireApi::Responses => "responses",
            WireApi::Chat => "chat",
        })
    }
}

/// One model provider: where it is, how to authenticate, which wire API it
/// speaks and how patiently to talk to it.
///
/// Unknown keys are refused: a misspelt `base_url` would otherwise fall back
/// to the OpenAI API and send it the provider's key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The provider's name as the user refers to it (the table key when loaded
    /// from `[model_providers.NAME]` without a `name`).
    #[serde(default)]
    pub name: String,
    /// API root, e.g. `https://api.openai.com/v1` or `http://localhost:11434/v1`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Environment variable holding the API key. `None`: no key, no `Authorization`.
    #[serde(default)]
    pub env_key: Option<String>,
    /// Extra help shown when `env_key` is not set (where to get a key).
    #[serde(default)]
    pub env_key_instructions: Option<String>,
    /// The key itself; normally resolved from `env_key` by [`crate::connect`].
    /// Never serialised, never printed.
    #[serde(default, skip_serializing)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub wire_api: WireApi,
    /// Added to every request URL (e.g. Azure's `api-version`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, String>,
    /// Extra headers sent with every request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub http_headers: BTreeMap<String, String>,
    /// Extra headers whose values come from environment variables (header → variable);
    /// unset variables are skipped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_http_headers: BTreeMap<String, String>,
    /// Retries of a request that fails before its stream starts.
    #[serde(default = "default_request_max_retries")]
    pub request_max_retries: u32,
    /// Retries of a whole turn whose stream broke ([`crate::TurnRetry`]).
    #[serde(default = "default_stream_max_retries")]
    pub stream_max_retries: u32,
    /// How long a stream may stay silent before it is abandoned.
    #[serde(
        rename = "stream_idle_timeout_ms",
        default = "default_stream_idle_timeout",
        with = "duration_millis"
    )]
    pub stream_idle_timeout: Duration,
    /// Waits between retries. Not a configuration key: the defaults suit every provider.
    #[serde(skip)]
    pub retry: RetryPolicy,
    /// Codex's switch for ChatGPT sign-in. kiln has none, so it changes
    /// nothing; accepted so that Codex provider tables load unchanged.
    #[serde(default, skip_serializing)]
    pub requires_openai_auth: bool,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("env_key", &self.env_key)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("wire_api", &self.wire_api)
            .field("query_params", &self.query_params)
            .field(
                "http_headers",
                &self.http_headers.keys().collect::<Vec<_>>(),
            )
            .field("env_http_headers", &self.env_http_headers)
            .field("request_max_retries", &self.request_max_retries)
            .field("stream_max_retries", &self.stream_max_retries)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

fn default_base_url() -> String {
    OPENAI_DEFAULT_BASE_URL.to_string()
}
fn default_request_max_retries() -> u32 {
    DEFAULT_REQUEST_MAX_RETRIES
}
fn default_stream_max_retries() -> u32 {
    DEFAULT_STREAM_MAX_RETRIES
}
fn default_stream_idle_timeout() -> Duration {
    DEFAULT_STREAM_IDLE_TIMEOUT
}

mod duration_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

impl ProviderConfig {
    /// Every key a `[model_providers.NAME]` table may hold, for callers that
    /// name the closest one when a key is unknown.
    pub const KEYS: &'static [&'static str] = &[
        "name",
        "base_url",
        "env_key",
        "env_key_instructions",
        "api_key",
        "wire_api",
        "query_params",
        "http_headers",
        "env_http_headers",
        "request_max_retries",
        "stream_max_retries",
        "stream_idle_timeout_ms",
        "requires_openai_auth",
    ];

    /// A provider with defaults for everything but its name, URL, key variable and wire API.
    pub fn new(
        name: impl Into<String>,
        base_url: impl Into<String>,
        env_key: Option<&str>,
        wire_api: WireApi,
    ) -> Self {
        ProviderConfig {
            name: name.into(),
            base_url: base_url.into(),
            env_key: env_key.map(str::to_string),
            env_key_instructions: None,
            api_key: None,
            wire_api,
            query_params: BTreeMap::new(),
            http_headers: BTreeMap::new(),
            env_http_headers: BTreeMap::new(),
            request_max_retries: DEFAULT_REQUEST_MAX_RETRIES,
            stream_max_retries: DEFAULT_STREAM_MAX_RETRIES,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            retry: RetryPolicy::default(),
            requires_openai_auth: false,
        }
    }

    /// The built-in `openai` provider as every OpenAI SDK configures it:
    /// `OPENAI_BASE_URL` (default the OpenAI API), key from `OPENAI_API_KEY`,
    /// Responses API.
    pub fn openai() -> Self {
        let base_url = std::env::var("OPENAI_BASE_URL")
            .ok()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(default_base_url);
        let mut config = ProviderConfig::new(
            "openai",
            base_url,
            Some("OPENAI_API_KEY"),
            WireApi::Responses,
        );
        config.env_key_instructions =
            Some("create a key at https://platform.openai.com/api-keys, or point base_url at another provider".into());
        config
    }

    /// A provider kiln knows by name without configuration: `openai`,
    /// `ollama` (`http://localhost:11434/v1`, chat, no key) and `lmstudio`
    /// (`http://localhost:1234/v1`, chat, no key).
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "openai" => Some(ProviderConfig::openai()),
            "ollama" => Some(ProviderConfig::new(
                "ollama",
                "http://localhost:11434/v1",
                None,
                WireApi::Chat,
            )),
            "lmstudio" => Some(ProviderConfig::new(
                "lmstudio",
                "http://localhost:1234/v1",
                None,
                WireApi::Chat,
            )),
            _ => None,
        }
    }

    /// The key to send: `api_key` when set, else the value of `env_key` looked
    /// up with `lookup`; `None` for a provider without `env_key`. An unset or
    /// empty variable is a [`ModelError::MissingApiKey`] naming it.
    pub fn resolve_api_key(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, ModelError> {
        if let Some(key) = self.api_key.as_ref().filter(|key| !key.trim().is_empty()) {
            return Ok(Some(key.clone()));
        }
        let Some(env_key) = self.env_key.as_ref() else {
            return Ok(None);
        };
        match lookup(env_key).filter(|value| !value.trim().is_empty()) {
            Some(value) => Ok(Some(value.trim().to_string())),
            None => Err(ModelError::MissingApiKey {
                provider: self.name.clone(),
                env_key: env_key.clone(),
                instructions: self.env_key_instructions.clone(),
            }),
        }
    }

    /// `base_url` without a trailing slash, once it is known to be an
    /// http(s) URL: the root every endpoint (`/responses`,
    /// `/chat/completions`) is appended to.
    pub fn api_root(&self) -> Result<String, ModelError> {
        let base_url = self.base_url.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base_url).map_err(|error| {
            self.invalid(format!(
                "base_url '{}' is not a URL ({error}); expected e.g. http://localhost:11434/v1",
                self.base_url
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(self.invalid(format!(
                "base_url '{}' must start with http:// or https://",
                self.base_url
            )));
        }
        Ok(base_url)
    }

    /// The headers of every request kiln sends this provider: `Accept:
    /// text/event-stream`, `Authorization: Bearer KEY` (see
    /// [`ProviderConfig::resolve_api_key`]; marked sensitive), then
    /// `http_headers` and the set ones of `env_http_headers`, with variables
    /// read through `lookup`. Anything that talks to the provider on kiln's
    /// behalf (the client, `kiln serve`'s pass-through for remote workers)
    /// sends exactly these.
    pub fn request_headers(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<HeaderMap, ModelError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        if let Some(key) = self.resolve_api_key(&lookup)? {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                self.invalid("the API key contains characters that cannot go in an HTTP header")
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let env_headers = self
            .env_http_headers
            .iter()
            .filter_map(|(name, variable)| Some((name, lookup(variable)?)));
        let static_headers = self
            .http_headers
            .iter()
            .map(|(name, value)| (name, value.clone()));
        for (name, value) in static_headers.chain(env_headers) {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| self.invalid(format!("'{name}' is not a valid HTTP header name")))?;
            let header_value = HeaderValue::from_str(&value).map_err(|_| {
                self.invalid(format!("the value of header '{name}' is not valid in HTTP"))
            })?;
            headers.insert(header_name, header_value);
        }
        Ok(headers)
    }

    /// The retry counts clamped to a sane maximum, and a name for messages
    /// when the configuration gave none.
    pub(crate) fn clamped(mut self) -> Self {
        if self.name.trim().is_empty() {
            self.name = self.base_url.clone();
        }
        self.request_max_retries = self.request_max_retries.min(MAX_RETRIES_CAP);
        self.stream_max_retries = self.stream_max_retries.min(MAX_RETRIES_CAP);
        self
    }

    pub(crate) fn invalid(&self, problem: impl Into<String>) -> ModelError {
        ModelError::InvalidConfig {
            provider: self.name.clone(),
            problem: problem.into(),
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
