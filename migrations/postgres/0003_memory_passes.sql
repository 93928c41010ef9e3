-- The truth store, version 3: memory rule passes. A pass writes its transitions with its run id
-- and then moves the items they name (`UPDATE ... FROM memory_transitions WHERE run_id = ...`),
-- and reports per rule from them: both look transitions up by run.
--
-- No index holds `tier`, and pages keep room (fillfactor 85): a move then changes no index at
-- all and the new row version stays on its page (a HOT update). With `memory_items_tier`, moving
-- 157,000 of 1,000,000 items took 5.5 s; without it, 2.0 s. A pass reads every item of its
-- source tiers anyway (a scan); `memory list --tier` scans too.

CREATE INDEX memory_transitions_run ON memory_transitions (run_id);
DROP INDEX memory_items_tier;
ALTER TABLE memory_items SET (fillfactor = 85);
