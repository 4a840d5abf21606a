-- Escalation service, fifteenth step: what step 8 meant to do, done. Step 8 flagged the routing
-- policy versions a person had published before it (time_zone_set_by_admin: their zone is kept
-- when the check-in log names another one). It ran as the schema owner, whom the tenant policy
-- binds too (FORCE ROW LEVEL SECURITY) with no agency set: it saw no row and flagged none, so the
-- program's zone could replace a zone an admin had chosen. The migration runner now lifts FORCE
-- while it migrates (common/migrations.cc), so a database still before step 8 gets it right there;
-- this step repairs the databases that ran step 8 before.
--
-- Walked per agency in version order, as the versions were published: a version a person
-- published before step 8 ran is flagged, as step 8 would have; a version a person published
-- after it without naming a zone took its predecessor's flag (escalation_service.cc,
-- UpdateRoutingPolicy), so it is flagged when its predecessor is now. Versions published by the
-- system (created_by 'system:…') keep theirs. A version the system published in place of an
-- admin's zone in the meantime stays as it is: the admin publishes their zone again.
DO $repair$
DECLARE
  v_step_8 timestamptz;
  v_agency text;
  v_previous boolean := false;
  r record;
BEGIN
  SELECT applied_at INTO v_step_8 FROM schema_migrations WHERE track = 'escalation' AND version = 8;
  FOR r IN
    SELECT id, agency_id, created_by, created_at, time_zone_set_by_admin
    FROM routing_policies ORDER BY agency_id, version
  LOOP
    IF r.agency_id IS DISTINCT FROM v_agency THEN
      v_agency := r.agency_id;
      v_previous := false;
    END IF;
    IF NOT r.time_zone_set_by_admin AND r.created_by NOT LIKE 'system:%'
        AND (r.created_at < v_step_8 OR v_previous) THEN
      UPDATE routing_policies SET time_zone_set_by_admin = true WHERE id = r.id;
      v_previous := true;
    ELSE
      v_previous := r.time_zone_set_by_admin;
    END IF;
  END LOOP;
END
$repair$;
