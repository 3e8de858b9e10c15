-- Teams (issue 13): people, teams and roles; environments shared by a team
-- with a version history; task authorship and sharing; an append-only audit
-- trail; quotas. See docs/store.md and docs/roles.md.
--
-- Two changes cannot be written the same way on both databases: dropping the
-- per-token unique name of environments (SQLite cannot drop a constraint, so
-- the table is rebuilt) and the triggers that keep audit events append-only.
-- Lines between `-- kiln:sqlite-only` / `-- kiln:postgres-only` and
-- `-- kiln:end` run on that database only (see db.rs).

-- A person. role: owner | admin | user (server-wide; team roles are in
-- team_members). SSO users carry their provider's issuer and subject.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    email TEXT,
    role TEXT NOT NULL DEFAULT 'user',
    oidc_issuer TEXT,
    oidc_subject TEXT,
    -- quotas; NULL: none
    max_concurrent_attempts BIGINT,
    monthly_budget_microusd BIGINT,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT,
    UNIQUE (oidc_issuer, oidc_subject)
);

CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    max_concurrent_attempts BIGINT,
    monthly_budget_microusd BIGINT,
    created_at BIGINT NOT NULL
);

-- role: maintainer | member | viewer. source: local (an admin set it) or
-- oidc (synced from the provider's group claims at each sign-in).
CREATE TABLE team_members (
    team_id TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id),
    role TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'local',
    created_at BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_by_user ON team_members (user_id);

-- Every token belongs to a user, except worker tokens (NULL).
ALTER TABLE tokens ADD COLUMN user_id TEXT REFERENCES users (id);
-- SSO-issued CLI tokens expire; local ones do not (NULL).
ALTER TABLE tokens ADD COLUMN expires_at BIGINT;
-- local | sso
ALTER TABLE tokens ADD COLUMN source TEXT NOT NULL DEFAULT 'local';
CREATE INDEX tokens_by_user ON tokens (user_id);

-- kiln:sqlite-only
-- Rebuilt without UNIQUE (owner_token_id, name): names are unique per team
-- now. Foreign keys from tasks and webhook_deliveries point at the table by
-- name; deferring their check to commit lets the old table go before its
-- copy takes the name.
PRAGMA defer_foreign_keys = ON;
CREATE TABLE environments_rebuilt (
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
    repo_credential TEXT NOT NULL DEFAULT '{}',
    settings_json TEXT NOT NULL DEFAULT '{}',
    webhook_secret TEXT
);
INSERT INTO environments_rebuilt (id, owner_token_id, name, repo, base_branch, setup_script,
    env_json, secrets_json, network, image, created_at, repo_credential, settings_json,
    webhook_secret)
SELECT id, owner_token_id, name, repo, base_branch, setup_script, env_json, secrets_json,
    network, image, created_at, repo_credential, settings_json, webhook_secret
FROM environments;
DROP TABLE environments;
ALTER TABLE environments_rebuilt RENAME TO environments;
-- kiln:end
-- kiln:postgres-only
ALTER TABLE environments DROP CONSTRAINT environments_owner_token_id_name_key;
-- kiln:end

-- owner_token_id stays: the token that created the environment.
ALTER TABLE environments ADD COLUMN team_id TEXT REFERENCES teams (id);
-- +1 on every change; each version is a row of environment_versions
ALTER TABLE environments ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE environments ADD COLUMN updated_at BIGINT;
-- soft delete: tasks keep pointing at a deleted environment
ALTER TABLE environments ADD COLUMN deleted_at BIGINT;
CREATE UNIQUE INDEX environments_team_name ON environments (team_id, name) WHERE deleted_at IS NULL;

-- What each version of an environment was (the API's Environment as JSON:
-- secret names, never values), who made it and what changed.
CREATE TABLE environment_versions (
    environment_id TEXT NOT NULL REFERENCES environments (id),
    version BIGINT NOT NULL,
    snapshot TEXT NOT NULL,
    changed_by TEXT REFERENCES users (id),
    change TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (environment_id, version)
);

-- The author, the team (the environment's), whether the author shared it
-- with the team, and the environment version it was created with.
ALTER TABLE tasks ADD COLUMN user_id TEXT REFERENCES users (id);
ALTER TABLE tasks ADD COLUMN team_id TEXT REFERENCES teams (id);
ALTER TABLE tasks ADD COLUMN shared BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tasks ADD COLUMN environment_version BIGINT;
CREATE INDEX tasks_by_user ON tasks (user_id, id);
CREATE INDEX tasks_by_team ON tasks (team_id, id);

-- The environment version the attempt ran with (set at claim), and why a
-- waiting attempt is not claimed yet (a quota), NULL once claimed.
ALTER TABLE attempts ADD COLUMN environment_version BIGINT;
ALTER TABLE attempts ADD COLUMN wait_reason TEXT;

-- Who sent a follow-up, who opened a pull request.
ALTER TABLE messages ADD COLUMN user_id TEXT;
ALTER TABLE pull_requests ADD COLUMN opened_by TEXT;

-- Append-only: triggers below refuse UPDATE and DELETE. details is a JSON
-- object and never holds a secret value.
CREATE TABLE audit_events (
    id BIGINT PRIMARY KEY,
    ts BIGINT NOT NULL,
    actor_user_id TEXT,
    actor_name TEXT NOT NULL,
    actor_token_id TEXT,
    origin TEXT,
    action TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id TEXT,
    team_id TEXT,
    details TEXT NOT NULL
);
CREATE INDEX audit_events_by_actor ON audit_events (actor_user_id, id);
CREATE INDEX audit_events_by_action ON audit_events (action, id);
CREATE INDEX audit_events_by_team ON audit_events (team_id, id);
CREATE INDEX audit_events_by_ts ON audit_events (ts);
INSERT INTO counters (name, value) VALUES ('audit_id', 0);

-- kiln:sqlite-only
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
-- kiln:end
-- kiln:postgres-only
CREATE FUNCTION kiln_audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END;
$$;
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION kiln_audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_audit_events_append_only();
-- kiln:end
