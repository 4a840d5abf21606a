-- Gate results kept on the enrollment, when routine engagement stopped, the routing rules a
-- check-in fired, and who is whose peer supporter (fed by the matching service's events).

ALTER TABLE enrollments
  -- One GateResult (the API message, as JSON) per gate of the pathway version, as checked.
  ADD COLUMN gate_results        jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(gate_results) = 'array'),
  ADD COLUMN consent_gates_held  boolean NOT NULL DEFAULT true,
  ADD COLUMN routine_stopped_at  timestamptz,
  ADD COLUMN acuity_units        smallint NOT NULL DEFAULT 1;

ALTER TABLE check_ins
  -- Ids of the routing rules that fired (each raised a ConcernRaisedEvent in the same transaction).
  ADD COLUMN fired_rule_ids      text[] NOT NULL DEFAULT '{}',
  ADD COLUMN is_reconnection     boolean NOT NULL DEFAULT false;

-- The participant's wellbeing trend across enrollments (three latest scores).
CREATE INDEX check_ins_wellbeing_by_participant
  ON check_ins (agency_id, participant_id, occurred_at DESC) WHERE wellbeing IS NOT NULL;

-- Matches of the matching service (MatchStartedEvent / MatchEndedEvent): a peer supporter may act
-- only for participants in their active matches. Supporter subjects are token `sub`s.
CREATE TABLE supporter_matches (
  agency_id          text NOT NULL CHECK (agency_id <> ''),
  match_id           uuid NOT NULL,
  supporter_id       uuid NOT NULL,
  supporter_subject  text NOT NULL CHECK (supporter_subject <> ''),
  participant_id     text NOT NULL CHECK (participant_id <> ''),
  active             boolean NOT NULL DEFAULT true,
  started_at         timestamptz,
  ended_at           timestamptz,
  PRIMARY KEY (agency_id, match_id),
  CHECK (active = (ended_at IS NULL))
);

CREATE INDEX supporter_matches_active_by_participant
  ON supporter_matches (agency_id, participant_id) WHERE active;
CREATE INDEX supporter_matches_active_by_subject
  ON supporter_matches (agency_id, supporter_subject) WHERE active;

-- The sweeper (missed windows, time without contact) finds the agencies with active enrollments
-- in a maintenance transaction, then works inside each agency's own scoped transaction.
CREATE POLICY maintenance_sweep_read ON enrollments FOR SELECT
  USING (current_setting('app.maintenance', true) = 'on');
