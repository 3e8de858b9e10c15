use std::time::Duration;

use super::*;

#[test]
fn delays_double_and_stop_at_the_cap() {
    let policy = RetryPolicy {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(1000),
        jitter: 0.0,
        max_retry_after: Duration::from_secs(60),
    };
    let delays: Vec<u128> = (0..6)
        .map(|retry| policy.delay_for(retry).as_millis())
        .collect();
    assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    assert_eq!(policy.delay_for(u32::MAX), Duration::from_millis(1000));
}

#[test]
fn jitter_stays_within_its_band() {
    let policy = RetryPolicy {
        initial_delay: Duration::from_millis(1000),
        max_delay: Duration::from_secs(60),
        jitter: 0.1,
        max_retry_after: Duration::from_secs(60),
    };
    let delays: Vec<Duration> = (0..200).map(|_| policy.delay_for(0)).collect();
    assert!(delays
        .iter()
        .all(|d| *d >= Duration::from_millis(900) && *d <= Duration::from_millis(1100)));
    assert!(
        delays.iter().any(|d| *d != delays[0]),
        "jitter varies the waits"
    );
}

#[test]
fn retry_after_ms_wins_over_seconds() {
    assert_eq!(
        parse_retry_after(Some("1500"), Some("2")),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        parse_retry_after(None, Some("3")),
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        parse_retry_after(None, Some(" 0.5 ")),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        parse_retry_after(Some("soon"), Some("Wed, 21 Oct 2015 07:28:00 GMT")),
        None
    );
    assert_eq!(parse_retry_after(Some("-5"), None), None);
}

fn http_error(status: u16, retry_after: Option<Duration>) -> ModelError {
    ModelError::Http {
        provider: "p".into(),
        status,
        message: String::new(),
        code: None,
        retry_after,
        hint: None,
    }
}

#[test]
fn server_requested_wait_is_honoured_up_to_the_cap() {
    let policy = RetryPolicy::immediate();
    let asked = http_error(429, Some(Duration::from_secs(7)));
    assert_eq!(policy.delay_after(0, &asked), Duration::from_secs(7));
    let greedy = http_error(429, Some(Duration::from_secs(3600)));
    assert_eq!(policy.delay_after(0, &greedy), Duration::from_secs(60));
    assert_eq!(
        policy.delay_after(3, &http_error(503, None)),
        Duration::ZERO
    );
}

#[test]
fn turn_retry_stops_at_the_limit_and_on_permanent_errors() {
    let retry = TurnRetry {
        max_retries: 2,
        policy: RetryPolicy::immediate(),
    };
    let dropped = ModelError::StreamDisconnected {
        provider: "p".into(),
        detail: "eof".into(),
    };
    assert_eq!(retry.delay_before_retry(0, &dropped), Some(Duration::ZERO));
    assert_eq!(retry.delay_before_retry(1, &dropped), Some(Duration::ZERO));
    assert_eq!(retry.delay_before_retry(2, &dropped), None);
    assert_eq!(retry.delay_before_retry(0, &http_error(401, None)), None);
}
