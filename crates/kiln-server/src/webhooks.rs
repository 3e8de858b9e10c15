//! Sends the outgoing webhooks the store queued (its outbox, filled in the
//! transactions that finish attempts or open pull requests): claims due
//! deliveries, POSTs each body signed with HMAC-SHA256 under the
//! environment's secret, and records the answer; a failed try waits for
//! the next of `retry_delays`, and after the last one the delivery is
//! `failed`. docs/webhooks.md is the receiver's side of this.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use kiln_store::{DueWebhook, WebhookTry};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::state::Shared;
use crate::{RepoAccessError, WebhookDelivery};

/// Deliveries one look at the queue takes (sent concurrently).
const BATCH: u32 = 16;
/// The `User-Agent` of every delivery.
const USER_AGENT: &str = concat!("kiln-webhooks/", env!("CARGO_PKG_VERSION"));

/// `sha256=<hex>`: HMAC-SHA256 of `body` under `secret`, the value of
/// `X-Kiln-Signature`.
pub(crate) fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Whether a caller (`admin` or not) may name `url` as a webhook: the rule
/// repository URLs follow ([`crate::RepoAccess`]), because a delivery is a
/// request the server makes with its own network position. Non-admins may
/// name only hosts that are and resolve to public addresses (or URLs an
/// operator allowed with `--allow-repo`); checked again before each
/// delivery with the owner's rights as they are then.
pub(crate) async fn check_url(shared: &Shared, url: &str, admin: bool) -> Result<(), ApiError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ApiError::invalid(
            "webhook",
            format!("webhook.url {url:?} is not an http(s) URL"),
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|err| ApiError::invalid("webhook", format!("webhook.url {url:?}: {err}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // It would be shown by the API and in every delivery listing.
        return Err(ApiError::invalid(
            "webhook",
            "webhook.url carries a user name or password: leave it out; the receiver \
             authenticates kiln by the X-Kiln-Signature header made with the webhook's secret",
        ));
    }
    match shared.config.repo_access.check_async(url, admin).await {
        Ok(_) => Ok(()),
        Err(RepoAccessError::Unsupported(message)) => Err(ApiError::invalid("webhook", message)),
        Err(RepoAccessError::NotAllowed(_)) => Err(ApiError::Forbidden(format!(
            "webhook.url {url:?} is or resolves to a loopback, private, link-local or \
             unspecified address: only admins may send webhooks to such hosts; ask an admin \
             to create the environment, or to allow the URL with `kiln serve --allow-repo PREFIX`"
        ))),
    }
}

/// Delivers due webhooks until `shutdown`.
pub(crate) async fn run_deliveries(shared: Arc<Shared>, shutdown: CancellationToken) {
    let config = shared.config.webhooks.clone();
    // Held past a try's timeout, so a claim outlives the try it is for; a
    // server that dies mid-try leaves the delivery due again after it.
    let hold = config.timeout.saturating_mul(2) + Duration::from_secs(30);
    loop {
        let due = match shared.store.claim_webhook_deliveries(BATCH, hold).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!("cannot read the webhook queue: {err}");
                Vec::new()
            }
        };
        let full = due.len() >= BATCH as usize;
        let tries = due.into_iter().map(|delivery| deliver(&shared, delivery));
        futures::future::join_all(tries).await;
        if full {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.poll) => {}
        }
    }
}

async fn deliver(shared: &Shared, delivery: DueWebhook) {
    let retry_in = shared
        .config
        .webhooks
        .retry_delays
        .get(delivery.tries as usize)
        .copied();
    let outcome = match send(shared, &delivery).await {
        Ok(code) if (200..300).contains(&code) => WebhookTry {
            delivered: true,
            response_code: Some(code),
            error: None,
            retry_in: None,
        },
        Ok(code) => WebhookTry {
            delivered: false,
            response_code: Some(code),
            error: Some(format!("the receiver answered HTTP {code}")),
            retry_in,
        },
        Err(Refused::Permanently(error)) => WebhookTry {
            delivered: false,
            response_code: None,
            error: Some(error),
            retry_in: None,
        },
        Err(Refused::ForNow(error)) => WebhookTry {
            delivered: false,
            response_code: None,
            error: Some(error),
            retry_in,
        },
    };
    if let Err(err) = shared.store.record_webhook_try(delivery.id, &outcome).await {
        tracing::warn!("cannot record webhook delivery {}: {err}", delivery.id);
    }
}

enum Refused {
    /// Trying again cannot help (the environment no longer names the URL,
    /// or its owner may no longer send there).
    Permanently(String),
    /// No answer this time (connection refused, timeout, the store).
    ForNow(String),
}

/// POSTs one delivery; the answer's status code.
async fn send(shared: &Shared, delivery: &DueWebhook) -> Result<u16, Refused> {
    let target = shared
        .store
        .environment_webhook(&delivery.environment_id)
        .await
        .map_err(|err| Refused::ForNow(format!("cannot read the webhook's secret: {err}")))?;
    // Only ever to the URL the environment names now, with its secret.
    let Some(target) = target.filter(|t| t.url == delivery.url) else {
        return Err(Refused::Permanently(
            "the environment no longer names this URL; nothing was sent".to_string(),
        ));
    };
    let pinned = recheck(shared, delivery).await?;
    let http = client(&shared.config.webhooks, pinned)
        .map_err(|err| Refused::ForNow(format!("cannot set up the request: {err}")))?;
    let response = http
        .post(&delivery.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Kiln-Event", &delivery.event)
        .header("X-Kiln-Delivery", delivery.id.to_string())
        .header(
            "X-Kiln-Signature",
            signature(&target.secret, delivery.body.as_bytes()),
        )
        .body(delivery.body.clone())
        .send()
        .await
        .map_err(|err| Refused::ForNow(describe(&err)))?;
    Ok(response.status().as_u16())
}

/// A host name and the addresses a delivery must connect to.
type Pin = (String, Vec<SocketAddr>);

/// The URL checked again with the environment owner's rights as they are
/// now (a host name may resolve elsewhere since, an owner may have lost
/// admin); for a non-admin's host name, the addresses that passed, so the
/// request goes to exactly those and a second DNS answer cannot redirect it.
async fn recheck(shared: &Shared, delivery: &DueWebhook) -> Result<Option<Pin>, Refused> {
    let system = crate::worker::system_principal();
    let environment = shared
        .store
        .environment(&system, &delivery.environment_id)
        .await
        .map_err(|err| Refused::ForNow(format!("cannot read the environment: {err}")))?;
    let owner_is_admin = match shared
        .store
        .token_holder_is_admin(&environment.owner_token_id)
        .await
    {
        Ok(admin) => admin,
        Err(err) => {
            return Err(Refused::ForNow(format!(
                "cannot read the owner's token: {err}"
            )))
        }
    };
    match shared
        .config
        .repo_access
        .check_async(&delivery.url, owner_is_admin)
        .await
    {
        Ok(checked) => Ok(checked.curl_resolve.as_deref().and_then(parse_pin)),
        Err(RepoAccessError::NotAllowed(_)) => Err(Refused::Permanently(
            "the URL's host is or now resolves to a loopback, private, link-local or \
             unspecified address, where only an admin's environment may send; nothing was sent"
                .to_string(),
        )),
        Err(RepoAccessError::Unsupported(message)) => Err(Refused::Permanently(message)),
    }
}

/// `host:port:addr,[v6addr]` (curl's `--resolve` form) as a [`Pin`].
fn parse_pin(resolve: &str) -> Option<Pin> {
    let (host, rest) = resolve.split_once(':')?;
    let (port, addresses) = rest.split_once(':')?;
    let port: u16 = port.parse().ok()?;
    let addresses: Vec<SocketAddr> = addresses
        .split(',')
        .filter_map(|a| {
            a.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    (!addresses.is_empty()).then(|| (host.to_string(), addresses))
}

fn client(config: &WebhookDelivery, pinned: Option<Pin>) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(config.timeout)
        // A redirect could lead anywhere, including where the environment
        // may not send: it counts as a failed try.
        .redirect(reqwest::redirect::Policy::none());
    if let Some((host, addresses)) = pinned {
        builder = builder.resolve_to_addrs(&host, &addresses);
    }
    builder.build()
}

/// A send error for people, without reqwest's chain of wrappers.
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "no answer within the timeout".to_string()
    } else if err.is_connect() {
        "cannot connect to the receiver".to_string()
    } else {
        format!("the request failed: {err}")
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_pin, signature};

    #[test]
    fn a_pin_is_read_from_curls_resolve_form() {
        let (host, addresses) =
            parse_pin("hooks.example:443:93.184.215.14,[2606:2800::1]").unwrap();
        assert_eq!(host, "hooks.example");
        let shown: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["93.184.215.14:443", "[2606:2800::1]:443"]);
        assert_eq!(parse_pin("hooks.example:443:"), None);
    }

    #[test]
    fn signature_is_rfc_4231_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
