//! The authorization code flow with PKCE: what kiln sends to the provider
//! and how it redeems the code. The provider is discovered on first use
//! when it was unreachable at startup.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::Rng;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::discovery::{self, ClientAuth, DiscoveryError, ProviderMetadata};
use super::verify::{IdClaims, IdTokenVerifier, VerifyError};
use crate::config::{GroupGrant, OidcConfig};
use kiln_protocol::teams::TeamRole;

/// The path of kiln's redirect URI under `--public-url`.
pub const CALLBACK_PATH: &str = "/auth/oidc/callback";

/// A discovered provider and the verifier of its ID tokens.
pub struct Provider {
    pub metadata: ProviderMetadata,
    pub verifier: IdTokenVerifier,
}

/// Single sign-on as configured, with the provider once discovered.
pub struct Sso {
    pub config: OidcConfig,
    pub redirect_uri: String,
    /// Cookies carry `Secure` when the public URL is https.
    pub secure_cookies: bool,
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Option<Arc<Provider>>>,
}

/// Why a sign-in could not go on.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("the provider refused the authorization code at its token endpoint: {0}")]
    CodeExchange(String),
    #[error(transparent)]
    IdToken(#[from] VerifyError),
}

impl FlowError {
    pub fn reason(&self) -> &'static str {
        match self {
            FlowError::Discovery(_) => "provider_unavailable",
            FlowError::CodeExchange(_) => "code_exchange_failed",
            FlowError::IdToken(err) => err.reason(),
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

impl Sso {
    /// SSO for a server reached at `public_url`.
    pub fn new(config: OidcConfig, public_url: &str) -> Result<Sso, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            // An endpoint that redirects elsewhere is not the one the
            // discovery document named.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| format!("cannot build the HTTP client for the provider: {err}"))?;
        let public_url = public_url.trim_end_matches('/');
        Ok(Sso {
            redirect_uri: format!("{public_url}{CALLBACK_PATH}"),
            secure_cookies: public_url.starts_with("https://"),
            config,
            http,
            provider: tokio::sync::Mutex::new(None),
        })
    }

    /// The provider, discovered now if it has not been yet.
    pub async fn provider(&self) -> Result<Arc<Provider>, DiscoveryError> {
        let mut slot = self.provider.lock().await;
        if let Some(provider) = slot.as_ref() {
            return Ok(provider.clone());
        }
        let metadata = discovery::discover(&self.http, &self.config.issuer).await?;
        let verifier = IdTokenVerifier::new(
            &metadata.issuer,
            &self.config.client_id,
            metadata.jwks_uri.as_str(),
            self.http.clone(),
        );
        let provider = Arc::new(Provider { metadata, verifier });
        *slot = Some(provider.clone());
        Ok(provider)
    }

    /// Where to send the browser for a sign-in with these secrets.
    pub fn authorization_url(&self, provider: &Provider, start: &SignInStart) -> reqwest::Url {
        let mut url = provider.metadata.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", &start.state)
            .append_pair("nonce", &start.nonce)
            .append_pair("code_challenge", &pkce_challenge(&start.pkce_verifier))
            .append_pair("code_challenge_method", "S256");
        url
    }

    /// Redeems `code` at the token endpoint and verifies the ID token.
    pub async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<IdClaims, FlowError> {
        let provider = self.provider().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", pkce_verifier),
        ];
        let mut request = self.http.post(provider.metadata.token_endpoint.clone());
        match provider.metadata.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: both parts are form-encoded first.
                let id = form_encode(&self.config.client_id);
                let secret = form_encode(&self.config.client_secret);
                request = request.basic_auth(id, Some(secret));
            }
            ClientAuth::Post => {
                form.push(("client_id", &self.config.client_id));
                form.push(("client_secret", &self.config.client_secret));
            }
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|err| FlowError::CodeExchange(err.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let detail: String = body.chars().take(300).collect();
            return Err(FlowError::CodeExchange(format!("{status}: {detail}")));
        }
        let tokens: TokenResponse = response
            .json()
            .await
            .map_err(|err| FlowError::CodeExchange(format!("not a token response: {err}")))?;
        let id_token = tokens.id_token.ok_or_else(|| {
            FlowError::CodeExchange(
                "the token response has no id_token: add `openid` to --oidc-scopes".into(),
            )
        })?;
        Ok(provider.verifier.verify(&id_token, nonce).await?)
    }

    /// The groups among `groups` that some `--oidc-map` rule names.
    pub fn mapped_groups(&self, groups: &[String]) -> Vec<String> {
        groups
            .iter()
            .filter(|group| {
                self.config
                    .group_map
                    .iter()
                    .any(|rule| &rule.group == *group)
            })
            .cloned()
            .collect()
    }

    /// What the groups of a user grant under `--oidc-map`.
    pub fn map_groups(&self, groups: &[String]) -> MappedGrants {
        let mut grants = MappedGrants::default();
        for rule in &self.config.group_map {
            if !groups.contains(&rule.group) {
                continue;
            }
            match &rule.grant {
                GroupGrant::Admin => grants.admin = true,
                GroupGrant::Team { team, role } => {
                    match grants.teams.iter_mut().find(|(name, _)| name == team) {
                        // Two groups naming one team: the stronger role wins.
                        Some((_, held)) => {
                            if strength(*role) > strength(*held) {
                                *held = *role;
                            }
                        }
                        None => grants.teams.push((team.clone(), *role)),
                    }
                }
            }
        }
        grants
    }
}

fn strength(role: TeamRole) -> u8 {
    match role {
        TeamRole::Viewer => 1,
        TeamRole::Member => 2,
        TeamRole::Maintainer => 3,
    }
}

/// Memberships and the server role a user's groups grant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappedGrants {
    pub teams: Vec<(String, TeamRole)>,
    pub admin: bool,
}

impl MappedGrants {
    pub fn is_empty(&self) -> bool {
        self.teams.is_empty() && !self.admin
    }
}

/// The secrets of one sign-in: `state` goes to the browser, the others
/// stay on the server until the callback.
#[derive(Debug, Clone)]
pub struct SignInStart {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

impl SignInStart {
    pub fn random() -> SignInStart {
        SignInStart {
            state: random_secret(),
            nonce: random_secret(),
            pkce_verifier: random_secret(),
        }
    }
}

/// 256 random bits, base64url: 43 characters, a valid PKCE verifier.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7636 S256: base64url(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn form_encode(value: &str) -> String {
    reqwest::Url::parse_with_params("x:", [("v", value)])
        .ok()
        .and_then(|url| url.query().map(|q| q.trim_start_matches("v=").to_string()))
        .unwrap_or_else(|| value.to_string())
}

/// Whether `path` may be a `return_to`: a path on this server, never
/// another origin (`//evil.example`, `/\evil.example`, `https://…`).
pub fn safe_return_to(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && path.len() <= 2048
        && !path.chars().any(|c| c.is_control() || c == '\\')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GroupMapping;

    #[test]
    fn the_pkce_challenge_is_rfc_7636_s256() {
        // The example of RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let start = SignInStart::random();
        assert_eq!(start.state.len(), 43);
        assert_ne!(start.state, start.nonce);
    }

    #[test]
    fn return_to_must_stay_on_this_server() {
        for good in [
            "/",
            "/tasks/t_1?tab=diff",
            "/auth/device?user_code=BCDF-GHJK",
        ] {
            assert!(safe_return_to(good), "{good}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example",
            "evil",
            "/x\r\nSet-Cookie: a=b",
            "",
        ] {
            assert!(!safe_return_to(bad), "{bad:?}");
        }
    }

    #[test]
    fn groups_map_to_teams_with_the_strongest_role_and_to_admin() {
        let mut config = OidcConfig::new("https://id.example.test", "kiln", "s");
        config.group_map = [
            "devs=calc:member",
            "leads=calc:maintainer",
            "ops=admin",
            "qa=web:viewer",
        ]
        .iter()
        .map(|rule| rule.parse::<GroupMapping>().unwrap())
        .collect();
        let sso = Sso::new(config, "https://kiln.example.test/").unwrap();
        assert_eq!(
            sso.redirect_uri,
            "https://kiln.example.test/auth/oidc/callback"
        );
        assert!(sso.secure_cookies);
        let grants = sso.map_groups(&["leads".into(), "devs".into(), "other".into()]);
        assert_eq!(grants.teams, [("calc".to_string(), TeamRole::Maintainer)]);
        assert!(!grants.admin);
        assert!(sso.map_groups(&["ops".into()]).admin);
        assert!(sso.map_groups(&["nobody".into()]).is_empty());
    }

    #[test]
    fn bad_map_rules_say_what_to_write() {
        for bad in [
            "devs",
            "=calc:member",
            "devs=calc",
            "devs=calc:owner",
            "devs=Calc Team:member",
        ] {
            let err = bad.parse::<GroupMapping>().unwrap_err();
            assert!(
                err.contains("GROUP=TEAM:ROLE") || err.contains("team name"),
                "{bad}: {err}"
            );
        }
        let group_with_equals: GroupMapping = "cn=devs,ou=x=calc:member".parse().unwrap();
        assert_eq!(group_with_equals.group, "cn=devs,ou=x");
    }
}
