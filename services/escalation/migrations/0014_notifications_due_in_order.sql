-- Escalation service, fourteenth step: the dispatcher takes the due notifications in
-- (next_attempt_at, id) order, a transaction's worth at a time. Its index held next_attempt_at
-- alone, so each pass had to sort: incrementally when the table's statistics were fresh, but
-- wholly (every due notification read and sorted for each pass of 16) when they were not, as when
-- a backlog builds up faster than autovacuum analyses the table (a paging endpoint down). The index
-- now holds the order itself, and a pass reads its notifications from the front either way. Built
-- while writes wait (the index holds only the notifications not yet delivered).
CREATE INDEX IF NOT EXISTS notifications_due_in_order ON notifications (next_attempt_at, id)
  WHERE delivered_at IS NULL AND gave_up_at IS NULL;
DROP INDEX IF EXISTS notifications_due;
