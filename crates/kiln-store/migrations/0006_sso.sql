-- Single sign-on with OpenID Connect (docs/sso.md): sign-ins in progress,
-- device requests of `kiln login`, and browser sessions. Secrets the
-- browser or the CLI holds (state, device code, session id) are stored only
-- as their hex SHA-256.

-- A sign-in sent to the provider and not back yet: used once, expires
-- after 10 minutes. The nonce and PKCE verifier never leave the server.
CREATE TABLE sso_logins (
    state_sha256 TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    -- where the browser goes afterwards (a same-origin path)
    return_to TEXT NOT NULL,
    -- the device request this sign-in approves (`kiln login`), if any
    device_code_sha256 TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- `kiln login`'s device requests: approved by the user who signs in with
-- the user code, redeemed once for a token by the CLI holding the device code.
CREATE TABLE sso_device_requests (
    device_code_sha256 TEXT PRIMARY KEY,
    user_code TEXT NOT NULL UNIQUE,
    -- the address that asked (requests in progress are capped per address)
    origin TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    last_polled_at BIGINT,
    approved_user_id TEXT,
    denied_reason TEXT,
    redeemed_at BIGINT
);

CREATE INDEX sso_device_requests_by_origin ON sso_device_requests (origin, expires_at);

-- Browser sessions (cookie `kiln_session`), 12 hours each.
CREATE TABLE sessions (
    id_sha256 TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX sessions_by_user ON sessions (user_id);
