-- Escalation service, twelfth step: concern revisions. A concern is at revision 1 when opened and
-- one more after every change (the UPDATE counts it up under the row's lock, so a concern's
-- revisions follow the order its changes committed in). The watch feed keeps the revision each
-- change left, so WatchConcerns can drop a change that was committed before a stream's snapshot
-- but relayed after it: its revision is not above the one the snapshot showed. Rows written
-- before this step have none (NULL), and are compared by the state they carry.
-- Adding a column with a constant default rewrites neither table.
ALTER TABLE concerns ADD COLUMN revision integer NOT NULL DEFAULT 1;
ALTER TABLE watch_feed ADD COLUMN revision integer;
