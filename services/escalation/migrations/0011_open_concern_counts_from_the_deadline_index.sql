-- The open/overdue gauges count open concerns by severity every sweep. concerns_next_deadline
-- holds the open concerns but not their severity, so the count read the whole table, resolved
-- history included: ~72 ms per sweep with 100,000 open concerns, and growing with every concern
-- ever raised. The same partial index carrying the severity, and the agency that the row-level
-- security policy reads, in its leaf entries answers the count from the open concerns alone (an
-- index-only scan where the pages are all-visible), and still gives the sweeper its due concerns
-- in deadline order.
CREATE INDEX concerns_open_by_deadline ON concerns (next_deadline) INCLUDE (severity, agency_id)
  WHERE status IN ('open', 'acknowledged');
DROP INDEX concerns_next_deadline;
