-- The agency's time zone, as the check-in log last told it: a ProgramPolicyChangedEvent, or the
-- time zone an EnrollmentStartedEvent carries (the agency's at enrollment). Contacts are dated in
-- it when they are applied (contact_days, supporter_contacts_month and wellbeing_month hold local
-- days and months from here on), and reports take their periods and local days from it. Until
-- the log names one: UTC. `position` is the log position that named it, so an older event
-- delivered late never replaces a newer zone.
CREATE TABLE IF NOT EXISTS agency_time_zones (
  agency_id text PRIMARY KEY CHECK (agency_id <> ''),
  time_zone text NOT NULL CHECK (time_zone <> ''),
  position  bigint NOT NULL
);

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = current_schema() AND tablename = 'agency_time_zones'
                 AND policyname = 'evaluation_replay') THEN
    CREATE POLICY evaluation_replay_read ON agency_time_zones FOR SELECT
      USING (current_setting('app.evaluation_replay', true) = 'on');
    CREATE POLICY evaluation_replay ON agency_time_zones FOR DELETE
      USING (current_setting('app.evaluation_replay', true) = 'on');
  END IF;
END
$$;
