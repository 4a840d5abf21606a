-- Matching service, ninth schema step: a match is entered in two indexes fewer. AssignBatch
-- inserts thousands of matches in one statement, and each entry in matches_by_request and
-- matches_by_batch cost about 25 ms per 7,341 matches measured at 10,000 × 2,000.
-- - Lookups by request also name the request's participant (a request is for one participant),
--   and find the participant's few matches by matches_by_participant.
-- - A batch is one row holding its matches' ids, which listing a batch's matches looks up by key.
--   Written in the statement that inserts the batch's matches.
CREATE TABLE match_batches (
  agency_id  text NOT NULL CHECK (agency_id <> ''),
  id         uuid NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  created_by text NOT NULL CHECK (created_by <> ''),
  match_ids  uuid[] NOT NULL CHECK (array_position(match_ids, NULL) IS NULL),
  UNIQUE (agency_id, id)
);

-- The batches assigned before this step, from their matches of every agency. Migrations run as
-- the schema owner, whom the tenant policy binds too (FORCE ROW LEVEL SECURITY, and no agency is
-- set here): lifted for this read only, in this transaction, and forced again before it commits
-- (the migration runner also forces it on every table after the last migration).
ALTER TABLE matches NO FORCE ROW LEVEL SECURITY;
INSERT INTO match_batches (agency_id, id, created_at, created_by, match_ids)
SELECT agency_id, batch_id, min(started_at), min(started_by), array_agg(id ORDER BY id)
  FROM matches WHERE batch_id IS NOT NULL GROUP BY agency_id, batch_id;
ALTER TABLE matches FORCE ROW LEVEL SECURITY;

CREATE TRIGGER match_batches_never_deleted BEFORE DELETE OR TRUNCATE ON match_batches
  FOR EACH STATEMENT EXECUTE FUNCTION refuse_reference_change('batches are never deleted');

DROP INDEX matches_by_batch;
DROP INDEX matches_by_request;
