//! Provider discovery: `{issuer}/.well-known/openid-configuration`, checked
//! before kiln sends anyone there.

use serde::Deserialize;

/// How kiln authenticates to the provider's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` with the client id and secret (the default of
    /// OpenID Connect when the provider lists nothing).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// What kiln uses of a provider's discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: reqwest::Url,
    pub token_endpoint: reqwest::Url,
    pub jwks_uri: reqwest::Url,
    pub client_auth: ClientAuth,
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The provider could not be reached (or answered with a server
    /// error): kiln retries on the next sign-in.
    #[error("cannot reach the OpenID Connect provider at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The provider answered, but not with something kiln can use: the
    /// configuration is wrong and retrying will not help.
    #[error("the discovery document at {url} cannot be used: {message}")]
    Invalid { url: String, message: String },
}

impl DiscoveryError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DiscoveryError::Unreachable { .. })
    }
}

#[derive(Deserialize)]
struct Document {
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    code_challenge_methods_supported: Option<Vec<String>>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// The discovery URL of `issuer` (a trailing slash of the issuer is not
/// doubled).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Fetches and checks the discovery document of `issuer`.
pub async fn discover(
    http: &reqwest::Client,
    issuer: &str,
) -> Result<ProviderMetadata, DiscoveryError> {
    let url = discovery_url(issuer);
    let unreachable = |message: String| DiscoveryError::Unreachable {
        url: url.clone(),
        message,
    };
    let invalid = |message: String| DiscoveryError::Invalid {
        url: url.clone(),
        message,
    };
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    let status = response.status();
    if status.is_server_error() {
        return Err(unreachable(format!("the provider answered {status}")));
    }
    if !status.is_success() {
        return Err(invalid(format!(
            "the provider answered {status}; check --oidc-issuer (it is the issuer URL, without /.well-known/…)"
        )));
    }
    let document: Document = response
        .json()
        .await
        .map_err(|err| invalid(format!("not a discovery document: {err}")))?;
    parse(document, issuer).map_err(invalid)
}

fn parse(document: Document, issuer: &str) -> Result<ProviderMetadata, String> {
    // An exact match: a provider that serves another issuer's document (a
    // mix-up, or a proxy in front of several) must not be trusted for this one.
    let found = document.issuer.unwrap_or_default();
    if found != issuer {
        return Err(format!(
            "its issuer is {found:?}, not the configured {issuer:?}; set --oidc-issuer to exactly the issuer the provider names"
        ));
    }
    let endpoint = |name: &str, value: Option<String>| -> Result<reqwest::Url, String> {
        let value = value.ok_or_else(|| format!("it has no {name}"))?;
        let url = reqwest::Url::parse(&value)
            .map_err(|err| format!("its {name} {value:?} is not a URL: {err}"))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(format!("its {name} {value:?} is not an http(s) URL"));
        }
        Ok(url)
    };
    let authorization_endpoint =
        endpoint("authorization_endpoint", document.authorization_endpoint)?;
    let token_endpoint = endpoint("token_endpoint", document.token_endpoint)?;
    let jwks_uri = endpoint("jwks_uri", document.jwks_uri)?;
    if let Some(methods) = &document.code_challenge_methods_supported {
        if !methods.iter().any(|method| method == "S256") {
            return Err(format!(
                "it does not support PKCE with S256 (code_challenge_methods_supported: {methods:?}), which kiln requires"
            ));
        }
    }
    let client_auth = match &document.token_endpoint_auth_methods_supported {
        None => ClientAuth::Basic,
        Some(methods) if methods.iter().any(|m| m == "client_secret_basic") => ClientAuth::Basic,
        Some(methods) if methods.iter().any(|m| m == "client_secret_post") => ClientAuth::Post,
        Some(methods) => {
            return Err(format!(
                "its token endpoint takes neither client_secret_basic nor client_secret_post ({methods:?}); configure the client with a client secret"
            ))
        }
    };
    Ok(ProviderMetadata {
        issuer: found,
        authorization_endpoint,
        token_endpoint,
        jwks_uri,
        client_auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISSUER: &str = "https://id.example.test/realms/kiln";

    fn document(changes: serde_json::Value) -> Document {
        let mut doc = json!({
            "issuer": ISSUER,
            "authorization_endpoint": "https://id.example.test/auth",
            "token_endpoint": "https://id.example.test/token",
            "jwks_uri": "https://id.example.test/certs",
            "code_challenge_methods_supported": ["plain", "S256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_post"],
        });
        for (key, value) in changes.as_object().unwrap() {
            doc[key] = value.clone();
        }
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn a_complete_document_gives_the_endpoints_and_client_auth() {
        let meta = parse(document(json!({})), ISSUER).unwrap();
        assert_eq!(
            meta.token_endpoint.as_str(),
            "https://id.example.test/token"
        );
        assert_eq!(meta.client_auth, ClientAuth::Post);
        let basic = parse(
            document(json!({"token_endpoint_auth_methods_supported": null})),
            ISSUER,
        )
        .unwrap();
        assert_eq!(basic.client_auth, ClientAuth::Basic);
    }

    #[test]
    fn a_document_of_another_issuer_is_refused() {
        for other in [
            "https://id.example.test/realms/other",
            "https://id.example.test/realms/kiln/",
        ] {
            let err = parse(document(json!({ "issuer": other })), ISSUER).unwrap_err();
            assert!(err.contains("--oidc-issuer"), "{err}");
        }
    }

    #[test]
    fn a_document_without_an_endpoint_or_s256_is_refused() {
        for (key, value, says) in [
            ("jwks_uri", json!(null), "jwks_uri"),
            (
                "token_endpoint",
                json!("javascript:alert(1)"),
                "token_endpoint",
            ),
            ("code_challenge_methods_supported", json!(["plain"]), "S256"),
            (
                "token_endpoint_auth_methods_supported",
                json!(["private_key_jwt"]),
                "client_secret",
            ),
        ] {
            let err = parse(document(json!({ key: value })), ISSUER).unwrap_err();
            assert!(err.contains(says), "{key}: {err}");
        }
    }

    #[test]
    fn the_discovery_url_does_not_double_a_slash() {
        assert_eq!(
            discovery_url("https://accounts.google.com/"),
            "https://accounts.google.com/.well-known/openid-configuration"
        );
    }
}
