-- Every check-in updates its enrollment's contact state (last_contact_at, the engagement stage,
-- failed attempts). enrollments_by_last_contact indexed last_contact_at, so none of those updates
-- could be HOT: each wrote a new row version into all five of the table's indexes (none of 2,384
-- was HOT in the RecordCheckIn benchmark) and left them to bloat. The index served no query: the
-- no-contact sweep filters on coalesce(last_contact_at, enrolled_at), which it cannot use. It is
-- dropped, and the table's pages keep a tenth free so that updates stay on their page.
DROP INDEX IF EXISTS enrollments_by_last_contact;
ALTER TABLE enrollments SET (fillfactor = 90);
