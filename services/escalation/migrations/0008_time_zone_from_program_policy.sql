-- The agency's time zone as the check-in log names it (ProgramPolicyChangedEvent, or the zone an
-- EnrollmentStartedEvent carries), with the log position that named it: an older event delivered
-- late never brings an old zone back. Routing policies follow it until a program admin sets a
-- time zone in the routing policy itself (time_zone_set_by_admin): the built-in version 1 takes
-- it when it is materialized, and a change of zone publishes a new version (created_by
-- 'system:program_policy'), so open concerns keep the deadlines they were given.
CREATE TABLE IF NOT EXISTS agency_time_zones (
  agency_id text PRIMARY KEY CHECK (agency_id <> ''),
  time_zone text NOT NULL CHECK (time_zone <> ''),
  position  bigint NOT NULL
);

ALTER TABLE routing_policies
  ADD COLUMN IF NOT EXISTS time_zone_set_by_admin boolean NOT NULL DEFAULT false;
-- Versions published before this column by a person may have set the zone: keep theirs.
UPDATE routing_policies SET time_zone_set_by_admin = true
  WHERE created_by NOT LIKE 'system:%' AND NOT time_zone_set_by_admin;
