-- The truth store, version 2: launch-agent runs. One row per run of a LaunchAgent, skipped runs
-- included; the id is client-made (UUID v7), so a record replayed from the spool is written once.

CREATE TABLE job_runs (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    name         TEXT NOT NULL,
    label        TEXT NOT NULL,
    commit_id    TEXT,
    trigger      TEXT NOT NULL,
    started_ms   BIGINT NOT NULL,
    ended_ms     BIGINT NOT NULL,
    exit_code    BIGINT,
    signal       BIGINT,
    outcome      TEXT NOT NULL,
    detail       TEXT NOT NULL,
    output_tail  TEXT NOT NULL
);
CREATE INDEX job_runs_host_name_started ON job_runs (host, name, started_ms);
