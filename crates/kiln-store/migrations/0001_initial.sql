-- kiln's schema. This file runs unchanged on SQLite and PostgreSQL, so it only
-- uses types and syntax both accept: TEXT, BIGINT, BOOLEAN, composite keys,
-- partial indexes. Times are BIGINT milliseconds since the Unix epoch (UTC).
-- See docs/store.md for the meaning of every column and the queue protocol.

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- hex SHA-256 of the secret; the secret itself is never stored
    secret_sha256 TEXT NOT NULL UNIQUE,
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE environments (
    id TEXT PRIMARY KEY,
    owner_token_id TEXT NOT NULL REFERENCES tokens (id),
    name TEXT NOT NULL,
    repo TEXT NOT NULL,
    base_branch TEXT,
    setup_script TEXT,
    env_json TEXT NOT NULL,
    secrets_json TEXT NOT NULL,
    network BOOLEAN NOT NULL DEFAULT FALSE,
    image TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (owner_token_id, name)
);

CREATE TABLE tasks (
    -- time-sortable: ordering by id is ordering by creation
    id TEXT PRIMARY KEY,
    owner_token_id TEXT NOT NULL REFERENCES tokens (id),
    environment_id TEXT NOT NULL REFERENCES environments (id),
    prompt TEXT NOT NULL,
    mode TEXT NOT NULL,
    attempt_count BIGINT NOT NULL,
    model TEXT,
    base_ref TEXT,
    -- derived from the attempts in the same transaction as every change to them
    status TEXT NOT NULL,
    -- the last event id handed out for this task (see events.id)
    last_event_id BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX tasks_by_owner ON tasks (owner_token_id, id);
CREATE INDEX tasks_by_status ON tasks (status, id);

CREATE TABLE attempts (
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    n BIGINT NOT NULL,
    status TEXT NOT NULL,
    -- how many times a worker has claimed this attempt since it was (re)queued
    tries BIGINT NOT NULL DEFAULT 0,
    -- set when a follow-up message reopened a finished attempt
    resume BOOLEAN NOT NULL DEFAULT FALSE,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    worker_id TEXT,
    lease_expires_at BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    final_message TEXT,
    diff TEXT,
    files_changed BIGINT,
    insertions BIGINT,
    deletions BIGINT,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    cached_input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    branch TEXT,
    commit_sha TEXT,
    reason TEXT,
    PRIMARY KEY (task_id, n)
);
-- the queue: waiting attempts in FIFO order (task id sorts by creation)
CREATE INDEX attempts_waiting ON attempts (task_id, n) WHERE status IN ('queued', 'interrupted');
CREATE INDEX attempts_running ON attempts (lease_expires_at) WHERE status = 'running';

CREATE TABLE events (
    -- per task, increasing in commit order: allocated from tasks.last_event_id
    -- under the task row's lock; the SSE Last-Event-ID of the task's stream
    id BIGINT NOT NULL,
    task_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (task_id, attempt, seq),
    UNIQUE (task_id, id),
    FOREIGN KEY (task_id, attempt) REFERENCES attempts (task_id, n) ON DELETE CASCADE
);

CREATE TABLE messages (
    id BIGINT PRIMARY KEY,
    task_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT,
    FOREIGN KEY (task_id, attempt) REFERENCES attempts (task_id, n) ON DELETE CASCADE
);
CREATE INDEX messages_undelivered ON messages (task_id, attempt, id) WHERE delivered_at IS NULL;

-- Commit-ordered id allocation that works the same on both databases
-- (sequences and AUTOINCREMENT differ, and PostgreSQL sequences hand out ids
-- in allocation order, not commit order).
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('message_id', 0);
