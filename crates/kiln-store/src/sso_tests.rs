//! Sign-in state is single-use and expires: a replayed state, a reused
//! device code or an old session gets nothing.

use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::teams::{ServerRole, TeamRole};

use super::*;
use crate::db::query;
use crate::users::{create_team_in, set_member_in};
use crate::{ManualClock, Principal, StoreOptions};

async fn store() -> (Store, ManualClock, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_epoch_2030();
    let store = Store::open(StoreOptions::sqlite_in_dir(dir.path()).clock(Arc::new(clock.clone())))
        .await
        .unwrap();
    (store, clock, dir)
}

fn login() -> PendingLogin {
    PendingLogin {
        nonce: "nonce-1".into(),
        pkce_verifier: "verifier-1".into(),
        return_to: "/tasks".into(),
        device_request: None,
    }
}

#[tokio::test]
async fn a_sign_in_state_is_used_once() {
    let (store, _clock, _dir) = store().await;
    store.begin_sso_login("state-a", &login()).await.unwrap();
    assert_eq!(store.take_sso_login("state-b").await.unwrap(), None);
    assert_eq!(
        store.take_sso_login("state-a").await.unwrap(),
        Some(login())
    );
    assert_eq!(
        store.take_sso_login("state-a").await.unwrap(),
        None,
        "replayed"
    );
}

#[tokio::test]
async fn a_sign_in_state_expires_after_ten_minutes() {
    let (store, clock, _dir) = store().await;
    store.begin_sso_login("state-a", &login()).await.unwrap();
    clock.advance(Duration::from_secs(SSO_LOGIN_TTL_SECS as u64 + 1));
    assert_eq!(store.take_sso_login("state-a").await.unwrap(), None);
}

#[tokio::test]
async fn a_device_request_is_pending_then_redeemed_once() {
    let (store, clock, _dir) = store().await;
    let request = store
        .create_device_request(Some("192.0.2.1"))
        .await
        .unwrap()
        .unwrap();
    let code = &request.user_code;
    assert_eq!(code.len(), 9, "{code}");
    assert_eq!(&code[4..5], "-");
    assert!(code
        .chars()
        .all(|c| c == '-' || USER_CODE_ALPHABET.contains(&(c as u8))));

    assert_eq!(
        store
            .poll_device_request(&request.device_code)
            .await
            .unwrap(),
        DevicePoll::Pending
    );
    assert_eq!(
        store
            .poll_device_request(&request.device_code)
            .await
            .unwrap(),
        DevicePoll::SlowDown
    );
    clock.advance(Duration::from_secs(DEVICE_POLL_INTERVAL_SECS as u64));
    assert_eq!(
        store
            .poll_device_request(&request.device_code)
            .await
            .unwrap(),
        DevicePoll::Pending
    );

    // Typed in lower case without the dash, it is still found.
    let typed = code.replace('-', "").to_lowercase();
    let found = store.device_request(&typed).await.unwrap().unwrap();
    assert!(!found.settled);
    assert!(store
        .settle_device_request(&found.id, Ok("usr_1"))
        .await
        .unwrap());
    assert!(
        !store
            .settle_device_request(&found.id, Ok("usr_2"))
            .await
            .unwrap(),
        "settled once"
    );
    assert!(store.device_request(code).await.unwrap().unwrap().settled);

    assert_eq!(
        store
            .poll_device_request(&request.device_code)
            .await
            .unwrap(),
        DevicePoll::Approved {
            user_id: "usr_1".into()
        }
    );
    assert_eq!(
        store
            .poll_device_request(&request.device_code)
            .await
            .unwrap(),
        DevicePoll::Expired
    );
    assert_eq!(
        store.poll_device_request("kiln_guessed").await.unwrap(),
        DevicePoll::Expired
    );
}

#[tokio::test]
async fn a_denied_or_expired_device_request_gives_no_token() {
    let (store, clock, _dir) = store().await;
    let denied = store
        .create_device_request(Some("192.0.2.1"))
        .await
        .unwrap()
        .unwrap();
    let found = store
        .device_request(&denied.user_code)
        .await
        .unwrap()
        .unwrap();
    store
        .settle_device_request(&found.id, Err("no team"))
        .await
        .unwrap();
    assert_eq!(
        store
            .poll_device_request(&denied.device_code)
            .await
            .unwrap(),
        DevicePoll::Denied("no team".into())
    );

    let late = store
        .create_device_request(Some("192.0.2.1"))
        .await
        .unwrap()
        .unwrap();
    clock.advance(Duration::from_secs(DEVICE_REQUEST_TTL_SECS as u64 + 1));
    assert_eq!(store.device_request(&late.user_code).await.unwrap(), None);
    let id = crate::ids::hash_secret(&late.device_code);
    assert!(!store.settle_device_request(&id, Ok("usr_1")).await.unwrap());
    assert_eq!(
        store.poll_device_request(&late.device_code).await.unwrap(),
        DevicePoll::Expired
    );
}

#[tokio::test]
async fn a_session_lasts_twelve_hours_or_until_it_ends() {
    let (store, clock, _dir) = store().await;
    let first = store.create_session("usr_1").await.unwrap();
    assert_ne!(first.id, first.session.csrf_token);
    assert_eq!(
        store.session(&first.id).await.unwrap(),
        Some(first.session.clone())
    );
    assert_eq!(store.session("not-a-session").await.unwrap(), None);
    store.end_session(&first.id).await.unwrap();
    assert_eq!(store.session(&first.id).await.unwrap(), None);

    let second = store.create_session("usr_1").await.unwrap();
    clock.advance(Duration::from_secs(SESSION_TTL_SECS as u64 + 1));
    assert_eq!(store.session(&second.id).await.unwrap(), None);
}

#[test]
fn typed_user_codes_are_normalised_and_checked() {
    assert_eq!(
        normalize_user_code("bcdf-ghjk").as_deref(),
        Some("BCDFGHJK")
    );
    assert_eq!(
        normalize_user_code("BCDF GHJK").as_deref(),
        Some("BCDFGHJK")
    );
    assert_eq!(normalize_user_code("BCDF-GHJ"), None);
    assert_eq!(
        normalize_user_code("AEIO-UBCD"),
        None,
        "vowels are not in the alphabet"
    );
}

fn ada() -> SsoIdentity {
    SsoIdentity {
        issuer: "https://id.example.test".into(),
        subject: "sub-ada".into(),
        preferred_name: Some("Ada Lovelace".into()),
        email: Some("ada@example.test".into()),
        teams: vec![("calc".into(), TeamRole::Member)],
        admin: false,
        groups: vec!["kiln-devs".into()],
        via: "web".into(),
        origin: Some("192.0.2.7".into()),
    }
}

fn signed_in(outcome: SsoOutcome) -> SsoUser {
    match outcome {
        SsoOutcome::SignedIn(user) => user,
        SsoOutcome::Refused(message) => panic!("refused: {message}"),
    }
}

async fn audit_actions(store: &Store) -> Vec<(String, String)> {
    store
        .inner
        .db
        .fetch_all(query(
            "SELECT action, details FROM audit_events ORDER BY id",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| (row.text("action").unwrap(), row.text("details").unwrap()))
        .collect()
}

async fn principal(store: &Store, user: &SsoUser) -> Principal {
    let session = store.create_session(&user.id).await.unwrap();
    store
        .session_principal(&session.session)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_first_sign_in_creates_the_user_and_their_mapped_teams() {
    let (store, _clock, _dir) = store().await;
    let user = signed_in(store.sso_sign_in(&ada()).await.unwrap());
    assert_eq!(
        user.name, "ada-lovelace",
        "sanitised to the user-name charset"
    );
    let who = principal(&store, &user).await;
    assert_eq!(who.teams.len(), 1);
    assert_eq!(
        (who.teams[0].team_name.as_str(), who.teams[0].role),
        ("calc", TeamRole::Member)
    );
    assert_eq!(who.teams[0].source, "oidc");
    assert!(!who.admin);

    // The same (issuer, subject) is the same user; another subject with the
    // same name gets a unique one.
    assert_eq!(signed_in(store.sso_sign_in(&ada()).await.unwrap()), user);
    let other = SsoIdentity {
        subject: "sub-other".into(),
        ..ada()
    };
    assert_eq!(
        signed_in(store.sso_sign_in(&other).await.unwrap()).name,
        "ada-lovelace-2"
    );

    let actions: Vec<String> = audit_actions(&store)
        .await
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(
        actions,
        [
            "user.created",
            "team.created",
            "user.signed_in",
            "user.signed_in",
            "user.created",
            "user.signed_in"
        ]
    );
    let (_, details) = audit_actions(&store).await.remove(2);
    let details: serde_json::Value = serde_json::from_str(&details).unwrap();
    assert_eq!(details["groups"], serde_json::json!(["kiln-devs"]));
    assert_eq!(details["via"], "web");
}

#[tokio::test]
async fn oidc_memberships_follow_the_groups_and_local_ones_stay() {
    let (store, _clock, _dir) = store().await;
    let user = signed_in(store.sso_sign_in(&ada()).await.unwrap());
    // An admin makes ada a maintainer of `docs` by hand.
    let mut tx = store.begin().await.unwrap();
    let docs = create_team_in(&store, &mut tx, "docs").await.unwrap();
    set_member_in(&mut tx, &docs, &user.id, TeamRole::Maintainer, "local", 0)
        .await
        .unwrap();
    store.commit(tx, Vec::new()).await.unwrap();

    // Next sign-in: ada left kiln-devs and joined a group mapping `web` and `docs`.
    let moved = SsoIdentity {
        teams: vec![
            ("web".into(), TeamRole::Viewer),
            ("docs".into(), TeamRole::Viewer),
        ],
        ..ada()
    };
    signed_in(store.sso_sign_in(&moved).await.unwrap());
    let who = principal(&store, &user).await;
    let teams: Vec<(&str, TeamRole, &str)> = who
        .teams
        .iter()
        .map(|m| (m.team_name.as_str(), m.role, m.source.as_str()))
        .collect();
    assert_eq!(
        teams,
        [
            ("docs", TeamRole::Maintainer, "local"),
            ("web", TeamRole::Viewer, "oidc")
        ]
    );
}

#[tokio::test]
async fn a_group_mapped_to_admin_makes_the_user_an_admin() {
    let (store, _clock, _dir) = store().await;
    let user = signed_in(
        store
            .sso_sign_in(&SsoIdentity {
                admin: true,
                ..ada()
            })
            .await
            .unwrap(),
    );
    let who = principal(&store, &user).await;
    assert!(who.admin);
    assert_eq!(who.role, ServerRole::Admin);
}

#[tokio::test]
async fn a_disabled_user_is_refused_and_their_sessions_stop() {
    let (store, _clock, _dir) = store().await;
    let user = signed_in(store.sso_sign_in(&ada()).await.unwrap());
    let session = store.create_session(&user.id).await.unwrap();
    store
        .inner
        .db
        .fetch_optional(query("UPDATE users SET disabled_at = 1 WHERE id = $1").bind(&user.id))
        .await
        .unwrap();
    let SsoOutcome::Refused(message) = store.sso_sign_in(&ada()).await.unwrap() else {
        panic!("a disabled user signed in");
    };
    assert!(message.contains("disabled"), "{message}");
    assert_eq!(
        store.session_principal(&session.session).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_refused_sign_in_is_audited_with_its_reason_and_no_token() {
    let (store, _clock, _dir) = store().await;
    store
        .sso_sign_in_failed(
            "https://id.example.test",
            None,
            "bad_signature",
            "device",
            Some("192.0.2.9"),
        )
        .await
        .unwrap();
    let events = audit_actions(&store).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "sign_in.failed");
    let details: serde_json::Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(details["reason"], "bad_signature");
    assert_eq!(details["via"], "device");
}

#[tokio::test]
async fn a_kiln_login_token_is_an_expiring_sso_token_of_the_user() {
    let (store, clock, _dir) = store().await;
    let user = signed_in(store.sso_sign_in(&ada()).await.unwrap());
    let issued = store.create_sso_token(&user.id, 30, None).await.unwrap();
    assert_eq!(issued.user_name, user.name);
    let who = store.verify_token(&issued.secret).await.unwrap().unwrap();
    assert_eq!(who.user_id.as_deref(), Some(user.id.as_str()));
    let info = store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == issued.token_id)
        .unwrap();
    assert_eq!(info.source, "sso");
    assert!(audit_actions(&store)
        .await
        .iter()
        .any(|(action, _)| action == "token.created"));
    clock.advance(Duration::from_secs(30 * 86_400 + 1));
    assert_eq!(
        store.verify_token(&issued.secret).await.unwrap(),
        None,
        "expired"
    );
}

#[tokio::test]
async fn one_address_has_a_bounded_number_of_device_requests_in_progress() {
    let (store, clock, _dir) = store().await;
    for _ in 0..MAX_DEVICE_REQUESTS_PER_ORIGIN {
        store
            .create_device_request(Some("192.0.2.1"))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        store
            .create_device_request(Some("192.0.2.1"))
            .await
            .unwrap(),
        None
    );
    assert!(store
        .create_device_request(Some("192.0.2.2"))
        .await
        .unwrap()
        .is_some());
    // Expired requests stop counting.
    clock.advance(Duration::from_secs(DEVICE_REQUEST_TTL_SECS as u64 + 1));
    assert!(store
        .create_device_request(Some("192.0.2.1"))
        .await
        .unwrap()
        .is_some());
}
