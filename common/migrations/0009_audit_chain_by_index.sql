-- Shared ninth step: the audit chainer keeps to its indexes (audit_log_unchained for the rows to
-- chain, the primary key for their update) as the log grows. audit_log grows with every action of
-- every agency, in bursts faster than autovacuum analyses it, and the chainer runs every 250 ms on
-- the same connection: a plan made while the log was small (its update joined to a sequential
-- scan of audit_log, cheaper on paper) read the whole log at every run until the next analyse
-- (measured under RaiseConcern's load: 3-11 ms per run at 10,850 rows, growing with the log).
-- Every statement of the function has an index to use, so sequential scans are off inside it.
ALTER FUNCTION audit_chain(integer) SET enable_seqscan = off;
