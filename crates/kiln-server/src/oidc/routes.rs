//! The SSO routes: web sign-in (`/auth/oidc/*`, `/auth/session`,
//! `/auth/logout`) and the device flow of `kiln login` (`/api/auth/device*`,
//! `/auth/device`). docs/sso.md describes them.

use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use kiln_store::{DevicePoll, PendingLogin, SsoIdentity, SsoOutcome};
use serde::Deserialize;
use serde_json::json;

use super::flow::{safe_return_to, SignInStart, Sso};
use crate::auth::{cookie, Caller, Origin, SESSION_COOKIE};
use crate::error::ApiError;
use crate::routes::ApiJson;
use crate::state::AppState;

/// The cookie that ties the device page's Continue button to the browser
/// that loaded it (a cross-site form cannot send it).
const DEVICE_CSRF_COOKIE: &str = "kiln_device_csrf";

/// The cookie that binds a sign-in's `state` to the browser that started it.
const STATE_COOKIE: &str = "kiln_sso_state";

fn sso(state: &AppState) -> Result<Arc<Sso>, ApiError> {
    state.inner.sso.clone().ok_or_else(|| {
        ApiError::NotFound(
            "single sign-on on this server (it runs without --oidc-issuer; sign in with a token from `kiln token create` instead)"
                .into(),
        )
    })
}

/// A small HTML page for the browser parts of the flows.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title} · kiln</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:34em;margin:4em auto;padding:0 1em}}\
         code.user{{font-size:2em;letter-spacing:.1em}}button{{font-size:1.1em;padding:.4em 1.2em}}</style>\
         </head><body><h1>{title}</h1>{body}</body></html>",
        title = escape(title),
    );
    let mut response = (status, Html(html)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn refusal(message: &str) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Sign-in refused",
        &format!("<p>{}</p>", escape(message)),
    )
}

fn internal(err: impl std::fmt::Display) -> Response {
    tracing::error!("sign-in failed: {err}");
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Sign-in failed",
        "<p>kiln could not finish the sign-in; the server log says why. Try again in a moment.</p>",
    )
}

/// Starts a sign-in: records its secrets and sends the browser to the provider.
async fn start_sign_in(
    state: &AppState,
    sso: &Sso,
    return_to: String,
    device_request: Option<String>,
) -> Response {
    let provider = match sso.provider().await {
        Ok(provider) => provider,
        Err(err) => {
            tracing::warn!("single sign-on: {err}");
            return page(
                StatusCode::BAD_GATEWAY,
                "Sign-in unavailable",
                "<p>kiln cannot reach its sign-in provider right now. Try again in a moment; if it lasts, tell the server's admin (the server log says why).</p>",
            );
        }
    };
    let start = SignInStart::random();
    let pending = PendingLogin {
        nonce: start.nonce.clone(),
        pkce_verifier: start.pkce_verifier.clone(),
        return_to,
        device_request,
    };
    if let Err(err) = state.store().begin_sso_login(&start.state, &pending).await {
        return internal(err);
    }
    let mut response =
        Redirect::to(sso.authorization_url(&provider, &start).as_str()).into_response();
    // The sign-in is bound to this browser: a callback URL someone else
    // finished (to sign this browser in as them) does not match it.
    let bound = cookie(
        STATE_COOKIE,
        &start.state,
        Some(kiln_store::SSO_LOGIN_TTL_SECS),
        sso.secure_cookies,
    );
    if let Ok(value) = HeaderValue::from_str(&bound) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    return_to: Option<String>,
}

/// `GET /auth/oidc/login?return_to=/path`
pub(crate) async fn login(
    State(state): State<AppState>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let sso = match sso(&state) {
        Ok(sso) => sso,
        Err(err) => return err.into_response(),
    };
    let return_to = query.return_to.unwrap_or_else(|| "/".into());
    if !safe_return_to(&return_to) {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad sign-in link",
            "<p>return_to must be a path on this server, such as <code>/tasks</code>.</p>",
        );
    }
    start_sign_in(&state, &sso, return_to, None).await
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/oidc/callback?code&state`: the provider sends the browser back.
pub(crate) async fn callback(
    State(state): State<AppState>,
    Origin(origin): Origin,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let sso = match sso(&state) {
        Ok(sso) => sso,
        Err(err) => return err.into_response(),
    };
    let store = state.store();
    let expired = || {
        page(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "<p>This sign-in was finished already or took longer than 10 minutes. Start again from kiln.</p>",
        )
    };
    let bound = crate::auth::cookie_value(&headers, STATE_COOKIE);
    let returned = query
        .state
        .as_deref()
        .filter(|returned| crate::auth::same_secret(bound.as_deref(), Some(returned)));
    let pending = match returned {
        Some(returned_state) => match store.take_sso_login(returned_state).await {
            Ok(pending) => pending,
            Err(err) => return internal(err),
        },
        None => None,
    };
    let Some(pending) = pending else {
        // A replayed, forged or stale callback: refused, and audited like
        // every refusal.
        let via = "web";
        if let Err(err) = store
            .sso_sign_in_failed(
                &sso.config.issuer,
                None,
                "unknown_state",
                via,
                origin.as_deref(),
            )
            .await
        {
            return internal(err);
        }
        return expired();
    };
    let via = if pending.device_request.is_some() {
        "device"
    } else {
        "web"
    };
    let issuer = sso.config.issuer.clone();
    // Every refusal is audited, and a waiting `kiln login` is told.
    let refuse = |reason: String, message: String, subject: Option<String>| {
        let device = pending.device_request.clone();
        let issuer = issuer.clone();
        let origin = origin.clone();
        async move {
            if let Err(err) = store
                .sso_sign_in_failed(&issuer, subject.as_deref(), &reason, via, origin.as_deref())
                .await
            {
                return internal(err);
            }
            if let Some(device) = device {
                if let Err(err) = store.settle_device_request(&device, Err(&message)).await {
                    return internal(err);
                }
            }
            refusal(&message)
        }
    };
    if let Some(error) = &query.error {
        let detail = query.error_description.as_deref().unwrap_or("");
        let reason: String = format!("provider_error: {error}")
            .chars()
            .take(200)
            .collect();
        let message = format!("The sign-in provider refused: {error} {detail}");
        return refuse(reason, message.chars().take(500).collect(), None).await;
    }
    let Some(code) = query.code.as_deref() else {
        return refuse(
            "no_code".into(),
            "The provider sent no authorization code.".into(),
            None,
        )
        .await;
    };
    let claims = match sso
        .finish(code, &pending.pkce_verifier, &pending.nonce)
        .await
    {
        Ok(claims) => claims,
        Err(err) => {
            tracing::warn!("single sign-on refused: {err}");
            return refuse(err.reason().into(), format!("{err}."), None).await;
        }
    };
    let groups = claims.groups(&sso.config.groups_claim);
    let grants = sso.map_groups(&groups);
    if grants.is_empty() && !sso.config.allow_unmapped {
        let message = format!(
            "None of your groups ({}) gives access to this kiln server. Ask its admin to map one of them to a team (--oidc-map).",
            if groups.is_empty() { "none".to_string() } else { groups.join(", ") }
        );
        return refuse(
            "unmapped_groups".into(),
            message,
            Some(claims.subject.clone()),
        )
        .await;
    }
    let identity = SsoIdentity {
        issuer: claims.issuer.clone(),
        subject: claims.subject.clone(),
        preferred_name: claims.preferred_username.clone().or_else(|| {
            claims
                .trusted_email()
                .and_then(|e| e.split('@').next())
                .map(String::from)
        }),
        email: claims.trusted_email().map(String::from),
        teams: grants.teams.clone(),
        admin: grants.admin,
        groups: sso.mapped_groups(&groups),
        via: via.into(),
        origin: origin.clone(),
    };
    let user = match store.sso_sign_in(&identity).await {
        Ok(SsoOutcome::SignedIn(user)) => user,
        Ok(SsoOutcome::Refused(message)) => {
            return refuse(
                "user_disabled".into(),
                message,
                Some(claims.subject.clone()),
            )
            .await
        }
        Err(err) => return internal(err),
    };
    if let Some(device) = &pending.device_request {
        return match store.settle_device_request(device, Ok(&user.id)).await {
            Ok(true) => page(
                StatusCode::OK,
                "Signed in",
                &format!(
                    "<p>You are signed in as <b>{}</b>. <code>kiln login</code> on your machine finishes by itself; you can close this tab.</p>",
                    escape(&user.name)
                ),
            ),
            Ok(false) => page(
                StatusCode::BAD_REQUEST,
                "Code expired",
                "<p>The code of this <code>kiln login</code> expired or was used already. Run <code>kiln login</code> again.</p>",
            ),
            Err(err) => internal(err),
        };
    }
    let session = match store.create_session(&user.id).await {
        Ok(session) => session,
        Err(err) => return internal(err),
    };
    let mut response = Redirect::to(&pending.return_to).into_response();
    let cookie = cookie(
        SESSION_COOKIE,
        &session.id,
        Some(kiln_store::SESSION_TTL_SECS),
        sso.secure_cookies,
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    let spent = crate::auth::cookie(STATE_COOKIE, "", Some(0), sso.secure_cookies);
    if let Ok(value) = HeaderValue::from_str(&spent) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// `GET /auth/session`: who the session cookie belongs to, and the CSRF
/// token its changes must carry.
pub(crate) async fn session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (session, who) = crate::auth::session_of(&state, &headers)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("no session: sign in at /auth/oidc/login".into()))?;
    Ok(Json(json!({
        "user": { "id": session.user_id, "name": who.user_name, "role": who.role, "teams": who.teams },
        "csrf_token": session.csrf_token,
        "expires_at": session.expires_at,
    })))
}

/// `POST /auth/logout` (with `X-CSRF-Token`): ends the session.
pub(crate) async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(id) = crate::auth::cookie_value(&headers, SESSION_COOKIE) else {
        return Err(ApiError::Unauthorized("no session to end".into()));
    };
    let Some((session, _)) = crate::auth::session_of(&state, &headers).await? else {
        return Err(ApiError::Unauthorized("no session to end".into()));
    };
    crate::auth::require_csrf(&headers, &session)?;
    state.store().end_session(&id).await?;
    let secure = state
        .inner
        .sso
        .as_ref()
        .is_some_and(|sso| sso.secure_cookies);
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie(SESSION_COOKIE, "", Some(0), secure)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `POST /api/auth/device`: starts `kiln login`'s device flow.
pub(crate) async fn device_start(
    State(state): State<AppState>,
    Origin(origin): Origin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let _sso = sso(&state)?;
    let public_url = state
        .inner
        .config
        .public_url
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    let request = state
        .store()
        .create_device_request(origin.as_deref())
        .await?
        .ok_or_else(|| {
            ApiError::TooManyRequests(format!(
                "{} sign-ins are in progress from your address already: finish one, or wait until they expire (10 minutes)",
                kiln_store::MAX_DEVICE_REQUESTS_PER_ORIGIN
            ))
        })?;
    let verification_uri = format!("{public_url}/auth/device");
    Ok(Json(json!({
        "device_code": request.device_code,
        "user_code": request.user_code,
        "verification_uri": verification_uri,
        "verification_uri_complete": format!("{verification_uri}?user_code={}", request.user_code),
        "expires_in": kiln_store::DEVICE_REQUEST_TTL_SECS,
        "interval": kiln_store::DEVICE_POLL_INTERVAL_SECS,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceTokenBody {
    device_code: String,
}

fn device_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// `POST /api/auth/device/token {device_code}`: `kiln login` polls here.
pub(crate) async fn device_token(
    State(state): State<AppState>,
    Origin(origin): Origin,
    ApiJson(body): ApiJson<DeviceTokenBody>,
) -> Result<Response, ApiError> {
    let sso = sso(&state)?;
    let store = state.store();
    Ok(match store.poll_device_request(&body.device_code).await? {
        DevicePoll::Pending => device_error("authorization_pending", "open the link and sign in"),
        DevicePoll::SlowDown => device_error("slow_down", "poll less often"),
        DevicePoll::Expired => device_error(
            "expired_token",
            "the code expired or was used: run `kiln login` again",
        ),
        DevicePoll::Denied(reason) => device_error("access_denied", &reason),
        DevicePoll::Approved { user_id } => {
            let issued = store
                .create_sso_token(&user_id, sso.config.token_days, origin.as_deref())
                .await?;
            Json(json!({
                "token": issued.secret,
                "token_id": issued.token_id,
                "user": { "id": issued.user_id, "name": issued.user_name },
                "expires_at": issued.expires_at,
            }))
            .into_response()
        }
    })
}

#[derive(Deserialize)]
pub(crate) struct DevicePageQuery {
    user_code: Option<String>,
}

/// `GET /auth/device?user_code=…`: shows the code and a Continue button.
pub(crate) async fn device_page(
    State(state): State<AppState>,
    Query(query): Query<DevicePageQuery>,
) -> Response {
    let sso = match sso(&state) {
        Ok(sso) => sso,
        Err(err) => return err.into_response(),
    };
    let Some(code) = query.user_code.filter(|c| !c.trim().is_empty()) else {
        return page(
            StatusCode::OK,
            "Sign in kiln login",
            "<form method=\"get\" action=\"/auth/device\"><p>Enter the code <code>kiln login</code> shows:</p>\
             <p><input name=\"user_code\" autocomplete=\"off\" autofocus> <button type=\"submit\">Next</button></p></form>",
        );
    };
    let request = match state.store().device_request(&code).await {
        Ok(Some(request)) if !request.settled => request,
        Ok(_) => {
            return page(
                StatusCode::NOT_FOUND,
                "Unknown code",
                "<p>This code is unknown, expired or used already. Run <code>kiln login</code> again for a new one.</p>",
            )
        }
        Err(err) => return internal(err),
    };
    let csrf = super::flow::random_secret();
    let body = format!(
        "<p>A <code>kiln login</code> asks to sign in to this server with the code</p>\
         <p><code class=\"user\">{code}</code></p>\
         <p><b>Only continue if you started <code>kiln login</code> yourself and it shows this code.</b> \
         Whoever holds that terminal gets a token that acts as you.</p>\
         <form method=\"post\" action=\"/auth/device\">\
         <input type=\"hidden\" name=\"user_code\" value=\"{code}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Continue</button></form>",
        code = escape(&request.user_code),
    );
    let mut response = page(StatusCode::OK, "Sign in kiln login", &body);
    let cookie = cookie(DEVICE_CSRF_COOKIE, &csrf, Some(600), sso.secure_cookies);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub(crate) struct DeviceContinue {
    user_code: String,
    csrf: String,
}

/// `POST /auth/device`: the Continue button; signs in bound to the request.
pub(crate) async fn device_continue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<DeviceContinue>,
) -> Response {
    let sso = match sso(&state) {
        Ok(sso) => sso,
        Err(err) => return err.into_response(),
    };
    let cookie_csrf = crate::auth::cookie_value(&headers, DEVICE_CSRF_COOKIE);
    if !crate::auth::same_secret(cookie_csrf.as_deref(), Some(&form.csrf)) {
        return page(
            StatusCode::FORBIDDEN,
            "Open the link again",
            "<p>This form did not come from the page kiln showed this browser. Open the link <code>kiln login</code> printed again.</p>",
        );
    }
    let request = match state.store().device_request(&form.user_code).await {
        Ok(Some(request)) if !request.settled => request,
        Ok(_) => {
            return page(
                StatusCode::NOT_FOUND,
                "Unknown code",
                "<p>This code is unknown, expired or used already. Run <code>kiln login</code> again for a new one.</p>",
            )
        }
        Err(err) => return internal(err),
    };
    start_sign_in(&state, &sso, "/".into(), Some(request.id)).await
}

/// `POST /api/auth/logout-token`: revokes the token the request carries
/// (`kiln logout`).
pub(crate) async fn logout_token(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<StatusCode, ApiError> {
    let Some(token_id) = Some(who.token_id.clone()).filter(|id| !id.is_empty()) else {
        return Err(ApiError::invalid(
            "Authorization",
            "send the token to revoke as `Authorization: Bearer …` (a session ends at POST /auth/logout)",
        ));
    };
    state.store().revoke_token_by(&who, &token_id).await?;
    state
        .inner
        .revocations
        .send_modify(|n| *n = n.wrapping_add(1));
    Ok(StatusCode::NO_CONTENT)
}
