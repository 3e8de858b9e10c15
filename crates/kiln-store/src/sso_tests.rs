//! Sign-in state is single-use and expires: a replayed state, a reused
//! device code or an old session gets nothing.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::{ManualClock, StoreOptions};

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
    let request = store.create_device_request().await.unwrap();
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
    let denied = store.create_device_request().await.unwrap();
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

    let late = store.create_device_request().await.unwrap();
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
