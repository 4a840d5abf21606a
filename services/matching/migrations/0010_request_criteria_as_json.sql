-- Matching service, tenth schema step: a request's hard constraints and preferences are stored as
-- json, their text as the service wrote it, instead of jsonb. The service writes and reads them
-- whole and never queries inside them, and AssignBatch reads every open request of the agency:
-- PostgreSQL printed each jsonb value back as text for it, 25-35 ms of reading 10,000 requests,
-- where json text is copied out (5-9 ms measured). Still checked to be a JSON object.
-- The change rewrites the table (requests wait for it while it runs).
ALTER TABLE match_requests
  DROP CONSTRAINT match_requests_hard_constraints_check,
  DROP CONSTRAINT match_requests_preferences_check,
  ALTER COLUMN hard_constraints DROP DEFAULT,
  ALTER COLUMN preferences DROP DEFAULT,
  ALTER COLUMN hard_constraints TYPE json USING hard_constraints::json,
  ALTER COLUMN preferences TYPE json USING preferences::json,
  ALTER COLUMN hard_constraints SET DEFAULT '{}',
  ALTER COLUMN preferences SET DEFAULT '{}',
  ADD CONSTRAINT match_requests_hard_constraints_check
    CHECK (json_typeof(hard_constraints) = 'object'),
  ADD CONSTRAINT match_requests_preferences_check CHECK (json_typeof(preferences) = 'object');
