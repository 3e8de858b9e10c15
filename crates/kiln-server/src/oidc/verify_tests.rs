//! The attacker's tests of ID token verification: every forged, replayed
//! or misdirected token is refused, against keys served over real HTTP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use serde_json::{json, Value};

use super::{IdTokenVerifier, VerifyError, JWKS_REFRESH_INTERVAL};

const ISSUER: &str = "https://id.example.test/realms/kiln";
const CLIENT: &str = "kiln-web";
const NONCE: &str = "n-0S6_WzA2Mj";

/// A signing key made for the test run, and its public JWK.
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    public: Vec<u8>,
    jwk: Value,
}

impl TestKey {
    fn ed25519(kid: &str) -> TestKey {
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": kid,
                        "x": URL_SAFE_NO_PAD.encode(&public)}),
            public,
        }
    }

    fn es256(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid,
                        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                        "y": URL_SAFE_NO_PAD.encode(&point[33..65])}),
            public: point,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn good_claims() -> Value {
    json!({
        "iss": ISSUER, "aud": CLIENT, "sub": "248289761001",
        "exp": now() + 300, "iat": now(), "nonce": NONCE,
        "preferred_username": "ada", "email": "ada@example.test",
        "groups": ["kiln-devs", "staff"],
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// A JWKS endpoint over real HTTP whose keys a test can switch, counting
/// how often kiln fetches it.
struct KeyServer {
    uri: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl KeyServer {
    async fn start(keys: &[&TestKey]) -> KeyServer {
        let served = Arc::new(Mutex::new(
            keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>(),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (state_keys, state_fetches) = (served.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let keys = state_keys.clone();
                let fetches = state_fetches.clone();
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let keys = keys.lock().unwrap().clone();
                    axum::Json(json!({ "keys": keys }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        KeyServer {
            uri,
            keys: served,
            fetches,
        }
    }

    fn serve_only(&self, keys: &[&TestKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|key| key.jwk.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn verifier(&self) -> IdTokenVerifier {
        IdTokenVerifier::new(ISSUER, CLIENT, &self.uri, reqwest::Client::new())
    }
}

fn replace_part(token: &str, index: usize, part: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[index] = part;
    parts.join(".")
}

#[tokio::test]
async fn a_token_signed_by_the_providers_key_is_accepted_with_its_claims() {
    for key in [TestKey::ed25519("ed-1"), TestKey::es256("ec-1")] {
        let server = KeyServer::start(&[&key]).await;
        let claims = server
            .verifier()
            .verify(&key.sign(&good_claims()), NONCE)
            .await
            .unwrap();
        assert_eq!(claims.issuer, ISSUER);
        assert_eq!(claims.subject, "248289761001");
        assert_eq!(claims.preferred_username.as_deref(), Some("ada"));
        assert_eq!(claims.trusted_email(), Some("ada@example.test"));
        assert_eq!(claims.groups("groups"), ["kiln-devs", "staff"]);
    }
}

#[tokio::test]
async fn a_tampered_payload_is_refused() {
    let key = TestKey::ed25519("ed-1");
    let server = KeyServer::start(&[&key]).await;
    let token = key.sign(&good_claims());
    let forged = with(good_claims(), "groups", json!(["kiln-admins"]));
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
    let err = server
        .verifier()
        .verify(&replace_part(&token, 1, &forged), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature), "{err}");
}

#[tokio::test]
async fn a_tampered_signature_is_refused() {
    let key = TestKey::es256("ec-1");
    let server = KeyServer::start(&[&key]).await;
    let token = key.sign(&good_claims());
    let signature = token.rsplit('.').next().unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    bytes[10] ^= 0x01;
    let err = server
        .verifier()
        .verify(
            &replace_part(&token, 2, &URL_SAFE_NO_PAD.encode(bytes)),
            NONCE,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature), "{err}");
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let key = TestKey::ed25519("ed-1");
    let server = KeyServer::start(&[&key]).await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"ed-1"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good_claims()).unwrap());
    let err = server
        .verifier()
        .verify(&format!("{header}.{payload}."), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::Malformed(_)), "{err}");
    assert_eq!(
        server.fetches(),
        0,
        "no key is looked up for an unsigned token"
    );
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_providers_public_key_is_refused() {
    let key = TestKey::ed25519("ed-1");
    let server = KeyServer::start(&[&key]).await;
    let verifier = server.verifier();
    // The classic confusion attack: the public key (raw, or as the JWK the
    // provider publishes) used as the HMAC secret.
    for secret in [key.public.clone(), key.jwk.to_string().into_bytes()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(&secret))
                .unwrap();
        let err = verifier.verify(&token, NONCE).await.unwrap_err();
        assert!(matches!(err, VerifyError::AlgorithmRefused(_)), "{err}");
    }
}

#[tokio::test]
async fn an_expired_token_is_refused_beyond_the_leeway() {
    let key = TestKey::ed25519("ed-1");
    let server = KeyServer::start(&[&key]).await;
    let verifier = server.verifier();
    let expired = with(
        with(good_claims(), "exp", json!(now() - 120)),
        "iat",
        json!(now() - 900),
    );
    let err = verifier
        .verify(&key.sign(&expired), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::Expired), "{err}");
    // Within the 60 s leeway a slow clock is forgiven.
    let just = with(good_claims(), "exp", json!(now() - 5));
    verifier.verify(&key.sign(&just), NONCE).await.unwrap();
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let key = TestKey::ed25519("ed-1");
    let server = KeyServer::start(&[&key]).await;
    let future = with(
        with(good_claims(), "iat", json!(now() + 600)),
        "exp",
        json!(now() + 900),
    );
    let err = server
        .verifier()
        .verify(&key.sign(&future), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::IssuedInFuture), "{err}");
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let key = TestKey::ed25519("ed-1");
    let server = KeyServer::start(&[&key]).await;
    let verifier = server.verifier();
    let other = with(good_claims(), "aud", json!("another-app"));
    let err = verifier.verify(&key.sign(&other), NONCE).await.unwrap_err();
    assert!(matches!(err, VerifyError::WrongAudience), "{err}");
    // Several audiences: kiln must be the authorized party.
    let shared = with(good_claims(), "aud", json!([CLIENT, "another-app"]));
    let err = verifier
        .verify(&key.sign(&shared), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::WrongAuthorizedParty), "{err}");
    let theirs = with(shared.clone(), "azp", json!("another-app"));
    let err = verifier
        .verify(&key.sign(&theirs), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::WrongAuthorizedParty), "{err}");
    let ours = with(shared, "azp", json!(CLIENT));
    verifier.verify(&key.sign(&ours), NONCE).await.unwrap();
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let key = TestKey::ed25519("ed-1");
    let server = KeyServer::start(&[&key]).await;
    let other = with(
        good_claims(),
        "iss",
        json!("https://id.example.test/realms/other"),
    );
    let err = server
        .verifier()
        .verify(&key.sign(&other), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::WrongIssuer), "{err}");
}

#[tokio::test]
async fn a_token_answering_another_sign_in_is_refused_by_its_nonce() {
    let key = TestKey::ed25519("ed-1");
    let server = KeyServer::start(&[&key]).await;
    let verifier = server.verifier();
    let token = key.sign(&good_claims());
    let err = verifier.verify(&token, "another-nonce").await.unwrap_err();
    assert!(matches!(err, VerifyError::WrongNonce), "{err}");
    let without = key.sign(&{
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("nonce");
        claims
    });
    let err = verifier.verify(&without, NONCE).await.unwrap_err();
    assert!(matches!(err, VerifyError::MissingClaim(_)), "{err}");
}

#[tokio::test]
async fn a_key_of_another_provider_with_a_known_kid_is_refused() {
    let ours = TestKey::ed25519("shared-kid");
    let theirs = TestKey::ed25519("shared-kid");
    let server = KeyServer::start(&[&ours]).await;
    let err = server
        .verifier()
        .verify(&theirs.sign(&good_claims()), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature), "{err}");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_then_verifies() {
    let old = TestKey::ed25519("2026-11");
    let new = TestKey::es256("2026-12");
    let server = KeyServer::start(&[&old]).await;
    let verifier = server.verifier();
    verifier
        .verify(&old.sign(&good_claims()), NONCE)
        .await
        .unwrap();
    assert_eq!(server.fetches(), 1);

    server.serve_only(&[&new]);
    verifier.pretend_keys_fetched(JWKS_REFRESH_INTERVAL).await;
    verifier
        .verify(&new.sign(&good_claims()), NONCE)
        .await
        .unwrap();
    assert_eq!(server.fetches(), 2, "the unknown kid caused one refresh");
    verifier
        .verify(&new.sign(&good_claims()), NONCE)
        .await
        .unwrap();
    assert_eq!(server.fetches(), 2, "the new key is cached");

    // The old key is gone from the provider, and so from kiln.
    let err = verifier
        .verify(&old.sign(&good_claims()), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");
}

#[tokio::test]
async fn unknown_kids_refresh_the_keys_at_most_once_per_interval() {
    let key = TestKey::ed25519("real");
    let server = KeyServer::start(&[&key]).await;
    let verifier = server.verifier();
    verifier
        .verify(&key.sign(&good_claims()), NONCE)
        .await
        .unwrap();
    assert_eq!(server.fetches(), 1);

    // A flood of tokens naming made-up keys right after a fetch: none of
    // them reaches the provider.
    for n in 0..20 {
        let forged = TestKey::ed25519(&format!("made-up-{n}"));
        let err = verifier
            .verify(&forged.sign(&good_claims()), NONCE)
            .await
            .unwrap_err();
        assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");
    }
    assert_eq!(server.fetches(), 1);

    // Once the interval has passed, one unknown kid refreshes once, then fails.
    verifier.pretend_keys_fetched(JWKS_REFRESH_INTERVAL).await;
    let forged = TestKey::ed25519("made-up-again");
    let err = verifier
        .verify(&forged.sign(&good_claims()), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn an_unreachable_key_set_is_an_error_naming_it() {
    let key = TestKey::ed25519("ed-1");
    let verifier = IdTokenVerifier::new(
        ISSUER,
        CLIENT,
        "http://127.0.0.1:9/jwks",
        reqwest::Client::new(),
    );
    let err = verifier
        .verify(&key.sign(&good_claims()), NONCE)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::Jwks { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:9/jwks"), "{err}");
}

#[test]
fn groups_are_an_array_of_strings_or_one_string() {
    let claims = |groups: Value| super::IdClaims {
        issuer: ISSUER.into(),
        subject: "s".into(),
        preferred_username: None,
        email: Some("x@example.test".into()),
        email_verified: Some(false),
        raw: json!({ "g": groups }).as_object().unwrap().clone(),
    };
    assert_eq!(claims(json!("solo")).groups("g"), ["solo"]);
    assert_eq!(claims(json!(["a", 3, "b"])).groups("g"), ["a", "b"]);
    assert!(claims(json!({"a": 1})).groups("g").is_empty());
    assert!(claims(json!("solo")).groups("missing").is_empty());
    assert_eq!(
        claims(json!([])).trusted_email(),
        None,
        "unverified email is not kept"
    );
}
