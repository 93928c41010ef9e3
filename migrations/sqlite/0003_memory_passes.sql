-- The truth store, version 3: memory rule passes. A pass writes its transitions with its run id
-- and then moves the items they name (`UPDATE ... FROM memory_transitions WHERE run_id = ...`),
-- and reports per rule from them: both look transitions up by run.
--
-- No index holds `tier`: a pass reads every item of its source tiers anyway (a scan), and each
-- move would otherwise rewrite an index entry too. `memory list --tier` scans.

CREATE INDEX memory_transitions_run ON memory_transitions (run_id);
DROP INDEX memory_items_tier;
