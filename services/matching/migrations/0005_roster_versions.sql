-- Matching service, fifth schema step: a version per agency roster, bumped in the same
-- transaction as any change to a supporter (profile, status, a new supporter). A copy of the
-- roster taken at a version is exact while the version stays, so ProposeMatches keeps the parsed
-- roster in memory and reads only the version and the units in use (matches change far more
-- often than profiles, and are always read fresh).
CREATE TABLE roster_versions (
  agency_id text PRIMARY KEY CHECK (agency_id <> ''),
  version   bigint NOT NULL CHECK (version > 0)
);

-- Bound to this schema: supporters may be written by a session with another search_path.
CREATE FUNCTION bump_roster_version() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO roster_versions AS v (agency_id, version)
    SELECT DISTINCT agency_id, 1 FROM changed
  ON CONFLICT (agency_id) DO UPDATE SET version = v.version + 1;
  RETURN NULL;
END $$;

CREATE TRIGGER supporters_inserted_bump_roster AFTER INSERT ON supporters
  REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION bump_roster_version();
CREATE TRIGGER supporters_updated_bump_roster AFTER UPDATE ON supporters
  REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION bump_roster_version();
