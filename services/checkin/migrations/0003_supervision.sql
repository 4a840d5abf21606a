-- A supervisor sees and records only for the participants of the supporters they supervise
-- (DESIGN.md section 3). The matching service's MatchStartedEvent names the supporter's
-- supervisor; SupporterSupervisionChangedEvent moves the supporter's matches to a new one.
-- Matches recorded before this column existed have no supervisor until such an event arrives
-- (or the event log is replayed): their participants are then visible to no supervisor, only to
-- the agency's other staff roles.
ALTER TABLE supporter_matches ADD COLUMN supervisor_subject text NOT NULL DEFAULT '';

CREATE INDEX supporter_matches_active_by_supervisor
  ON supporter_matches (agency_id, supervisor_subject, participant_id)
  WHERE active AND supervisor_subject <> '';
