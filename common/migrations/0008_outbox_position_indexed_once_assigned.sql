-- An event's position is entered in the position index when it is assigned, not before. The
-- UNIQUE constraint indexed every new event's NULL position on insert, an index entry no reader
-- uses (NULLs are neither unique-checked nor looked up), and assigning the position entered the
-- event once more. Every write that emits events paid for it: AssignBatch emits thousands in one
-- statement. The partial index keeps positions unique and serves the same reads: a position above
-- a given one, in order, and the highest (PostgreSQL proves `position > $1` implies NOT NULL).
-- Built without CONCURRENTLY, inside the migration's transaction: writes to the outbox wait while
-- it is built, which is a table scan of the outbox as it stands.
ALTER TABLE outbox DROP CONSTRAINT outbox_position_key;
CREATE UNIQUE INDEX outbox_position ON outbox (position) WHERE position IS NOT NULL;
