-- Check-in service, eighteenth step: ListEnrollments reads a page at a time. It lists an agency's
-- enrollments newest first (enrolled_at, id), from a cursor, a page at a time; no index had that
-- order, so every page read and sorted all of the agency's enrollments (20,000 rows per page in
-- the test), and paging through them all was quadratic. Walked backwards from the cursor, this
-- index gives the pages in order; the filters (participant, pathway, status, supporter) are
-- checked on the way, and a participant's list still uses enrollments_by_participant.
CREATE INDEX enrollments_by_enrolled_at ON enrollments (agency_id, enrolled_at, id);
