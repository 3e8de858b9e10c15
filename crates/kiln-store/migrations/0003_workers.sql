-- Remote workers (`kiln worker`): worker tokens, per-claim lease tokens and
-- the workers seen. See docs/workers.md and docs/store.md.

-- A worker token claims attempts and nothing else (no user API).
ALTER TABLE tokens ADD COLUMN worker BOOLEAN NOT NULL DEFAULT FALSE;

-- hex SHA-256 of the lease token of the claim that holds the attempt now
-- (NULL for in-process claims): calls about the attempt must present it.
ALTER TABLE attempts ADD COLUMN lease_token_sha256 TEXT;
-- The commit the attempt's first run started from, so that a follow-up on
-- another machine measures its diff against the same base.
ALTER TABLE attempts ADD COLUMN base_commit TEXT;

-- Every lease token handed out, so that an old one is told apart from an
-- unknown one (409 "lease lost" rather than 401) and its attempt is known.
CREATE TABLE worker_leases (
    token_sha256 TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    n BIGINT NOT NULL,
    worker_token_id TEXT NOT NULL REFERENCES tokens (id),
    worker_name TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    FOREIGN KEY (task_id, n) REFERENCES attempts (task_id, n) ON DELETE CASCADE
);

-- The workers seen, one per (worker token, name).
CREATE TABLE workers (
    token_id TEXT NOT NULL REFERENCES tokens (id),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_contact BIGINT NOT NULL,
    PRIMARY KEY (token_id, name)
);
