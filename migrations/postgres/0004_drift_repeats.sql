-- The truth store, version 4: a drift report identical to the last one stored is not stored
-- again; the pass is counted on it (`repeats`) with when it was last seen (`last_seen_ms`).
-- Retention keeps a report as long as it is still being seen.

ALTER TABLE drift_reports ADD COLUMN repeats BIGINT NOT NULL DEFAULT 0;
ALTER TABLE drift_reports ADD COLUMN last_seen_ms BIGINT;

-- `status NAME` shows a resource's last actions: receipts by resource, newest first.
CREATE INDEX receipts_resource ON receipts (host, kind, name, seq);
