-- Evidence and delivery (issue 12): checks, citations and cost per attempt,
-- ranking preference and budget per task, checks/forge/webhook/budget per
-- environment, pull requests and outgoing webhook deliveries.
-- See docs/store.md.

-- JSON array of CheckResult; NULL when no check ran.
ALTER TABLE attempts ADD COLUMN checks_json TEXT;
ALTER TABLE attempts ADD COLUMN citations_valid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN citations_invalid BIGINT NOT NULL DEFAULT 0;
-- micro-dollars; NULL when the model's price is unknown
ALTER TABLE attempts ADD COLUMN cost_microusd BIGINT;

-- the attempt a user marked preferred (ranks first)
ALTER TABLE tasks ADD COLUMN preferred_attempt BIGINT;
-- micro-dollars per attempt; NULL: the environment's budget
ALTER TABLE tasks ADD COLUMN budget_microusd BIGINT;

-- JSON object: {checks: [CheckSpec], forge: ForgeConfig?, webhook_url?, budget_microusd?}
ALTER TABLE environments ADD COLUMN settings_json TEXT NOT NULL DEFAULT '{}';
-- the outgoing webhook's signing secret, sealed like the environment's secrets
ALTER TABLE environments ADD COLUMN webhook_secret TEXT;

-- One pull request per task; updated in place by later pushes.
CREATE TABLE pull_requests (
    task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    forge TEXT NOT NULL,
    number BIGINT NOT NULL,
    url TEXT NOT NULL,
    branch TEXT NOT NULL,
    draft BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Every outgoing webhook delivery and its fate.
CREATE TABLE webhook_deliveries (
    id BIGINT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments (id),
    task_id TEXT,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    -- pending, delivered, failed
    status TEXT NOT NULL,
    tries BIGINT NOT NULL DEFAULT 0,
    response_code BIGINT,
    error TEXT,
    next_try_at BIGINT,
    created_at BIGINT NOT NULL,
    last_try_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_try_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_environment ON webhook_deliveries (environment_id, id);
INSERT INTO counters (name, value) VALUES ('webhook_delivery_id', 0);
