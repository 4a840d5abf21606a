-- Matching service, seventh schema step: the references of new matches and follow-ups are checked
-- once per statement instead of once per row.
-- AssignBatch inserts thousands of matches and their follow-ups in one statement. Each of their
-- three foreign keys looked up, and share-locked, the referenced request, supporter or match for
-- every inserted row: measured at 10,000 × 2,000, 187 ms of that statement's 746 ms. The same
-- rule now holds by one set-based check per statement over the statement's new rows (a
-- transition table), which raises the error a foreign key raises (SQLSTATE 23503).
-- The share lock kept a referenced row from being deleted, or its key changed, before the
-- referencing row committed. Neither can happen: requests, supporters and matches are never
-- deleted and their agency and id never change, both refused below, as is any change of a match's
-- or a follow-up's references (the service never makes one).

ALTER TABLE matches
  DROP CONSTRAINT matches_agency_id_request_id_fkey,
  DROP CONSTRAINT matches_agency_id_supporter_id_fkey;
ALTER TABLE follow_ups DROP CONSTRAINT follow_ups_agency_id_match_id_fkey;

-- Bound to this schema, like bump_roster_version: rows may be written with another search_path.
CREATE FUNCTION matches_check_references() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
DECLARE
  bad record;
BEGIN
  -- Each request, and each supporter once (a batch gives one several matches), is looked up by
  -- key: LATERAL … LIMIT 1 keeps them index lookups whatever the sizes (the plan is cached for
  -- the session, and a join planned for a batch of thousands could scan the tables, which only
  -- grow).
  SELECT n.agency_id, n.request_id, NULL::uuid AS supporter_id, true AS no_request INTO bad
    FROM new_matches n
    LEFT JOIN LATERAL (SELECT true AS found FROM match_requests
                        WHERE agency_id = n.agency_id AND id = n.request_id LIMIT 1) r ON true
   WHERE r.found IS NULL
   LIMIT 1;
  IF NOT FOUND THEN
    SELECT n.agency_id, NULL::uuid AS request_id, n.supporter_id, false AS no_request INTO bad
      FROM (SELECT DISTINCT agency_id, supporter_id FROM new_matches) n
      LEFT JOIN LATERAL (SELECT true AS found FROM supporters
                          WHERE agency_id = n.agency_id AND id = n.supporter_id LIMIT 1) s ON true
     WHERE s.found IS NULL
     LIMIT 1;
  END IF;
  IF FOUND THEN
    IF bad.no_request THEN
      RAISE foreign_key_violation USING
        MESSAGE = 'insert on table "matches" names a match request that does not exist',
        DETAIL = format('Key (agency_id, request_id)=(%s, %s) is not present in table '
                        '"match_requests".', bad.agency_id, bad.request_id),
        TABLE = 'matches';
    END IF;
    RAISE foreign_key_violation USING
      MESSAGE = 'insert on table "matches" names a supporter that does not exist',
      DETAIL = format('Key (agency_id, supporter_id)=(%s, %s) is not present in table '
                      '"supporters".', bad.agency_id, bad.supporter_id),
      TABLE = 'matches';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER matches_references_exist AFTER INSERT ON matches
  REFERENCING NEW TABLE AS new_matches FOR EACH STATEMENT
  EXECUTE FUNCTION matches_check_references();

CREATE FUNCTION follow_ups_check_references() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
DECLARE
  bad record;
BEGIN
  SELECT n.agency_id, n.match_id INTO bad
    FROM new_follow_ups n
    LEFT JOIN LATERAL (SELECT true AS found FROM matches
                        WHERE agency_id = n.agency_id AND id = n.match_id LIMIT 1) m ON true
   WHERE m.found IS NULL
   LIMIT 1;
  IF FOUND THEN
    RAISE foreign_key_violation USING
      MESSAGE = 'insert on table "follow_ups" names a match that does not exist',
      DETAIL = format('Key (agency_id, match_id)=(%s, %s) is not present in table "matches".',
                      bad.agency_id, bad.match_id),
      TABLE = 'follow_ups';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER follow_ups_references_exist AFTER INSERT ON follow_ups
  REFERENCING NEW TABLE AS new_follow_ups FOR EACH STATEMENT
  EXECUTE FUNCTION follow_ups_check_references();

-- Refuses what would leave a match or follow-up pointing at nothing: TG_ARGV[0] says what.
CREATE FUNCTION refuse_reference_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE foreign_key_violation USING
    MESSAGE = format('%s of table "%s" refused: %s', lower(TG_OP), TG_TABLE_NAME, TG_ARGV[0]),
    TABLE = TG_TABLE_NAME;
END $$;

CREATE TRIGGER match_requests_never_deleted BEFORE DELETE OR TRUNCATE ON match_requests
  FOR EACH STATEMENT EXECUTE FUNCTION refuse_reference_change('requests are never deleted');
CREATE TRIGGER supporters_never_deleted BEFORE DELETE OR TRUNCATE ON supporters
  FOR EACH STATEMENT EXECUTE FUNCTION refuse_reference_change('supporters are never deleted');
CREATE TRIGGER matches_never_deleted BEFORE DELETE OR TRUNCATE ON matches
  FOR EACH STATEMENT EXECUTE FUNCTION refuse_reference_change('matches are never deleted');

-- Fire only when a statement sets one of the columns (the service never does), and refuse only
-- an actual change.
CREATE TRIGGER match_requests_key_fixed BEFORE UPDATE OF agency_id, id ON match_requests
  FOR EACH ROW WHEN (OLD.agency_id IS DISTINCT FROM NEW.agency_id OR OLD.id IS DISTINCT FROM NEW.id)
  EXECUTE FUNCTION refuse_reference_change('a request''s agency and id never change');
CREATE TRIGGER supporters_key_fixed BEFORE UPDATE OF agency_id, id ON supporters
  FOR EACH ROW WHEN (OLD.agency_id IS DISTINCT FROM NEW.agency_id OR OLD.id IS DISTINCT FROM NEW.id)
  EXECUTE FUNCTION refuse_reference_change('a supporter''s agency and id never change');
CREATE TRIGGER matches_references_fixed
  BEFORE UPDATE OF agency_id, id, request_id, supporter_id ON matches
  FOR EACH ROW WHEN (OLD.agency_id IS DISTINCT FROM NEW.agency_id OR OLD.id IS DISTINCT FROM NEW.id
                     OR OLD.request_id IS DISTINCT FROM NEW.request_id
                     OR OLD.supporter_id IS DISTINCT FROM NEW.supporter_id)
  EXECUTE FUNCTION refuse_reference_change('a match''s agency, id, request and supporter never change');
CREATE TRIGGER follow_ups_references_fixed BEFORE UPDATE OF agency_id, match_id ON follow_ups
  FOR EACH ROW WHEN (OLD.agency_id IS DISTINCT FROM NEW.agency_id
                     OR OLD.match_id IS DISTINCT FROM NEW.match_id)
  EXECUTE FUNCTION refuse_reference_change('a follow-up''s agency and match never change');
