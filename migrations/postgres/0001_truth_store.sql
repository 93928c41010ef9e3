-- The truth store, version 1 (PostgreSQL; the same schema as migrations/sqlite). Timestamps are Unix milliseconds (BIGINT), JSON is TEXT.
-- Every appended row has a client-made id, so a record replayed from the spool is written once.

CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    commit_id   TEXT,
    trigger     TEXT NOT NULL,
    started_ms  BIGINT NOT NULL,
    ended_ms    BIGINT,
    outcome     TEXT,
    summary     TEXT
);
CREATE INDEX runs_host_started ON runs (host, started_ms);

-- Receipts: one per action, hash-chained per host (seq 1, 2, ...; prev_hash of seq 1 is 64 zeros).
CREATE TABLE receipts (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    run_id      TEXT,
    commit_id   TEXT,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    action      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    UNIQUE (host, seq)
);

CREATE TABLE drift_reports (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    commit_id     TEXT,
    run_id        TEXT,
    started_ms    BIGINT NOT NULL,
    observe_only  BOOLEAN NOT NULL,
    item_count    BIGINT NOT NULL
);
CREATE INDEX drift_reports_started ON drift_reports (started_ms);

CREATE TABLE drift_items (
    report_id   TEXT NOT NULL REFERENCES drift_reports (id) ON DELETE CASCADE,
    position    BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    drift       TEXT NOT NULL,
    corrective  BOOLEAN NOT NULL,
    severity    TEXT NOT NULL,
    detail      TEXT NOT NULL,
    PRIMARY KEY (report_id, position)
);

-- What this controller owns, per host. last_applied is the spec with secrets redacted.
CREATE TABLE inventory (
    host          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    spec_hash     TEXT NOT NULL,
    last_applied  TEXT NOT NULL,
    process       TEXT,
    updated_ms    BIGINT NOT NULL,
    PRIMARY KEY (host, kind, name)
);

CREATE TABLE status_history (
    id       TEXT PRIMARY KEY,
    host     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    name     TEXT NOT NULL,
    sync     TEXT NOT NULL,
    health   TEXT NOT NULL,
    detail   TEXT NOT NULL,
    at_ms    BIGINT NOT NULL
);
CREATE INDEX status_history_resource ON status_history (host, kind, name, at_ms);

-- Route state: the current route per agent, and every switch.
CREATE TABLE routes (
    host        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    provider    TEXT NOT NULL,
    model       TEXT NOT NULL,
    since_ms    BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (host, agent)
);
CREATE TABLE route_history (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    provider    TEXT NOT NULL,
    model       TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    reason      TEXT NOT NULL
);

CREATE TABLE enrollments (
    host          TEXT NOT NULL,
    agent         TEXT NOT NULL,
    token_hash    TEXT NOT NULL,
    policy        TEXT NOT NULL,
    policy_hash   TEXT NOT NULL,
    sandbox       TEXT NOT NULL,
    enrolled_ms   BIGINT NOT NULL,
    revoked_ms    BIGINT,
    PRIMARY KEY (host, agent)
);

CREATE TABLE policy_versions (
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    compiled    TEXT NOT NULL,
    diff        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (name, hash)
);

CREATE TABLE memory_items (
    id            TEXT PRIMARY KEY,
    namespace     TEXT NOT NULL,
    tier          TEXT NOT NULL,
    content       TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    source_agent  TEXT,
    created_ms    BIGINT NOT NULL,
    last_used_ms  BIGINT NOT NULL,
    uses          BIGINT NOT NULL,
    confidence    DOUBLE PRECISION NOT NULL,
    verified      BOOLEAN NOT NULL,
    UNIQUE (namespace, content_hash)
);
CREATE INDEX memory_items_tier ON memory_items (tier, namespace);
CREATE TABLE memory_item_tags (
    item_id  TEXT NOT NULL REFERENCES memory_items (id) ON DELETE CASCADE,
    tag      TEXT NOT NULL,
    PRIMARY KEY (item_id, tag)
);
CREATE TABLE memory_transitions (
    id         TEXT PRIMARY KEY,
    item_id    TEXT NOT NULL,
    from_tier  TEXT NOT NULL,
    to_tier    TEXT NOT NULL,
    rule       TEXT,
    run_id     TEXT,
    at_ms      BIGINT NOT NULL
);
CREATE INDEX memory_transitions_item ON memory_transitions (item_id, at_ms);

CREATE TABLE usage (
    id                 TEXT PRIMARY KEY,
    host               TEXT NOT NULL,
    agent              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    model              TEXT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    cost_usd           DOUBLE PRECISION NOT NULL,
    at_ms              BIGINT NOT NULL
);
CREATE INDEX usage_agent_day ON usage (agent, at_ms);
