-- Escalation service, sixteenth step: ListConcerns reads a page at a time. Its unfiltered page,
-- newest first, read every concern of the agency, tested each for whether it was routed to the
-- viewer, and sorted them: ~1 s per page with 200,000 concerns in the agency, growing with its
-- history. This index holds the agency's concerns in the page's order, so a page is read backwards
-- from its cursor and the scan stops once the page is full.
--
-- Partial on a predicate that always holds (opened_at is NOT NULL), which ListConcerns states and
-- nothing else does: a lookup of one concern by agency and id (the foreign-key check of each
-- transition insert, FindConcern) cannot use it. With agency_id leading, such a lookup's generic
-- plan, made while the table is small and not yet analysed, costs it the same as the unique
-- (agency_id, id) index and took it, reading every concern of the agency on each check: RaiseConcern
-- ran at half its rate. Built while writes wait.
CREATE INDEX IF NOT EXISTS concerns_listed ON concerns (agency_id, opened_at, id)
  WHERE opened_at IS NOT NULL;
