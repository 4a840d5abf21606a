-- Matching service, eighth schema step: requests, matches and follow-ups keep one unique index on
-- their id. Each had two, PRIMARY KEY (id) and UNIQUE (agency_id, id) (the one references use),
-- and every row AssignBatch writes paid for both: a match and its follow-up inserted, its request
-- updated (a new row version, entered in every index). UNIQUE (agency_id, id) on NOT NULL columns
-- stays the key: every read runs with the agency (row-level security adds it), so a lookup by id
-- still finds its row by that index.
ALTER TABLE match_requests DROP CONSTRAINT match_requests_pkey;
ALTER TABLE matches DROP CONSTRAINT matches_pkey;
ALTER TABLE follow_ups DROP CONSTRAINT follow_ups_pkey;
