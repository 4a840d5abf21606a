-- Evaluation read models, as built (replaces the first sketch's fact tables, which no code used).
--
-- Every table below is fed only by the consumers of the check-in, matching, escalation and
-- consent event logs (services/evaluation/read_models.cc), each event in the same transaction as
-- the consumer's position. Rows are keyed by the producer's ids and every change is an upsert
-- that gives the same row whatever order the events of one object arrive in (earliest time
-- wins for "first", latest for "last", flags only ever turn on), and applied_events makes a
-- second delivery of one event change nothing. Check-ins, the bulk of the traffic, are not kept
-- one row each: they are folded into per-person contact days, per-supporter monthly counts and
-- per-enrollment monthly wellbeing rollups, so a report reads rows per person and month, never
-- per event. service_outcomes (0001) is written by RecordServiceOutcome and is not a read model.

DROP TABLE participants_seen, enrollment_facts, contact_facts, concern_facts, match_facts,
  rollups;

-- Where a discharged client had been (DischargeSetting); set only for a discharge.
ALTER TABLE service_outcomes
  ADD COLUMN discharge_setting text
    CHECK (discharge_setting IN ('inpatient_mental_health', 'crisis_stabilization')),
  ADD CONSTRAINT service_outcomes_discharge_setting
    CHECK ((kind = 'discharge') = (discharge_setting IS NOT NULL));

-- Events already applied (by the producer's event id): a redelivered event is a no-op.
CREATE TABLE applied_events (
  agency_id text NOT NULL CHECK (agency_id <> ''),
  event_id  uuid NOT NULL,
  PRIMARY KEY (agency_id, event_id)
);

-- Enrollments (check-in EnrollmentStartedEvent / EnrollmentEndedEvent). program_id stays NULL:
-- the check-in service's events do not carry one yet.
CREATE TABLE enrollments (
  agency_id      text NOT NULL CHECK (agency_id <> ''),
  enrollment_id  uuid NOT NULL,
  participant_id text NOT NULL CHECK (participant_id <> ''),
  pathway_key    text NOT NULL,
  program_id     text,
  started_at     timestamptz NOT NULL,
  ended_at       timestamptz,
  PRIMARY KEY (agency_id, enrollment_id)
);
CREATE INDEX enrollments_by_start ON enrollments (agency_id, started_at);

-- Engagement stage changes (check-in EngagementStageChangedEvent), only the two the measures use.
CREATE TABLE stage_changes (
  agency_id      text NOT NULL CHECK (agency_id <> ''),
  enrollment_id  uuid NOT NULL,
  participant_id text NOT NULL CHECK (participant_id <> ''),
  pathway_key    text NOT NULL,
  to_stage       text NOT NULL CHECK (to_stage IN ('missed_contact', 'lost_to_follow_up')),
  changed_at     timestamptz NOT NULL,
  PRIMARY KEY (agency_id, enrollment_id, to_stage, changed_at)
);
CREATE INDEX stage_changes_by_time ON stage_changes (agency_id, changed_at);

-- Reconnections (check-in ReconnectionRecordedEvent).
CREATE TABLE reconnections (
  agency_id      text NOT NULL CHECK (agency_id <> ''),
  enrollment_id  uuid NOT NULL,
  reconnected_at timestamptz NOT NULL,
  PRIMARY KEY (agency_id, enrollment_id, reconnected_at)
);

-- First-appointment outcomes recorded in the check-in service (AppointmentOutcomeRecordedEvent
-- of kind FIRST_APPOINTMENT) and attended appointments of every kind (qualifying follow-ups).
CREATE TABLE appointments (
  agency_id           text NOT NULL CHECK (agency_id <> ''),
  appointment_id      uuid NOT NULL,
  enrollment_id       uuid NOT NULL,
  participant_id      text NOT NULL CHECK (participant_id <> ''),
  pathway_key         text NOT NULL,
  first_appointment   boolean NOT NULL,
  outcome             text NOT NULL CHECK (outcome IN ('attended', 'missed', 'cancelled',
                                                       'rescheduled')),
  scheduled_at        timestamptz NOT NULL,
  peer_contact_before boolean NOT NULL,
  PRIMARY KEY (agency_id, appointment_id)
);
CREATE INDEX appointments_by_time ON appointments (agency_id, scheduled_at);
CREATE INDEX appointments_by_participant ON appointments (agency_id, participant_id, scheduled_at);

-- Days (UTC) with a peer support contact: a check-in or a REACHED contact attempt.
CREATE TABLE contact_days (
  agency_id      text NOT NULL CHECK (agency_id <> ''),
  participant_id text NOT NULL CHECK (participant_id <> ''),
  day            date NOT NULL,
  PRIMARY KEY (agency_id, participant_id, day)
);

-- Peer support contacts per supporter and month (UTC): check-ins and REACHED attempts.
CREATE TABLE supporter_contacts_month (
  agency_id    text NOT NULL CHECK (agency_id <> ''),
  supporter_id text NOT NULL CHECK (supporter_id <> ''),
  month        date NOT NULL,
  contacts     bigint NOT NULL CHECK (contacts >= 0),
  PRIMARY KEY (agency_id, month, supporter_id)
);

-- Wellbeing scores per enrollment: the first ever, and per month their number and the latest
-- (ties in time broken by the check-in id, so any delivery order gives the same row).
CREATE TABLE wellbeing_first (
  agency_id     text NOT NULL CHECK (agency_id <> ''),
  enrollment_id uuid NOT NULL,
  first_at      timestamptz NOT NULL,
  first_id      uuid NOT NULL,
  first_score   smallint NOT NULL CHECK (first_score BETWEEN 1 AND 5),
  PRIMARY KEY (agency_id, enrollment_id)
);

CREATE TABLE wellbeing_month (
  agency_id      text NOT NULL CHECK (agency_id <> ''),
  enrollment_id  uuid NOT NULL,
  participant_id text NOT NULL CHECK (participant_id <> ''),
  pathway_key    text NOT NULL,
  month          date NOT NULL,
  scores         integer NOT NULL CHECK (scores >= 1),
  last_at        timestamptz NOT NULL,
  last_id        uuid NOT NULL,
  last_score     smallint NOT NULL CHECK (last_score BETWEEN 1 AND 5),
  PRIMARY KEY (agency_id, month, enrollment_id)
);

-- Matches (matching MatchStartedEvent / MatchEndedEvent).
CREATE TABLE matches (
  agency_id          text NOT NULL CHECK (agency_id <> ''),
  match_id           uuid NOT NULL,
  supporter_id       text NOT NULL CHECK (supporter_id <> ''),
  participant_id     text NOT NULL CHECK (participant_id <> ''),
  match_request_id   text NOT NULL DEFAULT '',
  previous_match_id  text NOT NULL DEFAULT '',
  started_at         timestamptz NOT NULL,
  ended_at           timestamptz,
  rematch_request_id text NOT NULL DEFAULT '',
  PRIMARY KEY (agency_id, match_id)
);
CREATE INDEX matches_by_participant ON matches (agency_id, participant_id);

-- Two-week follow-up ratings (matching FollowUpRecordedEvent), one per side and match.
CREATE TABLE follow_up_ratings (
  agency_id      text NOT NULL CHECK (agency_id <> ''),
  follow_up_id   uuid NOT NULL,
  match_id       uuid NOT NULL,
  participant_id text NOT NULL CHECK (participant_id <> ''),
  supporter_id   text NOT NULL CHECK (supporter_id <> ''),
  side           text NOT NULL CHECK (side IN ('participant', 'supporter')),
  rating         smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
  recorded_at    timestamptz NOT NULL,
  PRIMARY KEY (agency_id, follow_up_id, side)
);
CREATE INDEX follow_up_ratings_by_time ON follow_up_ratings (agency_id, recorded_at);

-- Concerns (escalation events). Columns an event of the concern does not carry stay NULL until
-- the event that does arrives; a concern without its ConcernOpenedEvent is left out of reports.
CREATE TABLE concerns (
  agency_id       text NOT NULL CHECK (agency_id <> ''),
  concern_id      uuid NOT NULL,
  participant_id  text,
  enrollment_id   uuid,
  category        smallint,
  severity        smallint,
  opened_at       timestamptz,
  acknowledged_at timestamptz,
  closed_at       timestamptz,  -- Resolved or cancelled.
  ack_deadline    timestamptz,
  breached        boolean NOT NULL DEFAULT false,
  PRIMARY KEY (agency_id, concern_id)
);
CREATE INDEX concerns_by_opened ON concerns (agency_id, opened_at);

-- Emergency (break-glass) accesses (consent EmergencyAccessGrantedEvent).
CREATE TABLE emergency_accesses (
  agency_id           text NOT NULL CHECK (agency_id <> ''),
  emergency_access_id uuid NOT NULL,
  participant_id      text NOT NULL CHECK (participant_id <> ''),
  granted_at          timestamptz NOT NULL,
  PRIMARY KEY (agency_id, emergency_access_id)
);
CREATE INDEX emergency_accesses_by_time ON emergency_accesses (agency_id, granted_at);

-- Operations-wide reads that cross agencies, each only when the transaction says so: the
-- Prometheus gauges (aggregate counts, app.evaluation_gauges) and the replay that empties the
-- read models before re-reading the logs from position 0 (app.evaluation_replay).
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['applied_events', 'enrollments', 'stage_changes', 'reconnections',
                           'appointments', 'contact_days', 'supporter_contacts_month',
                           'wellbeing_first', 'wellbeing_month', 'matches', 'follow_up_ratings',
                           'concerns', 'emergency_accesses'] LOOP
    EXECUTE format('CREATE POLICY evaluation_replay_read ON %I FOR SELECT '
                   'USING (current_setting(''app.evaluation_replay'', true) = ''on'')', t);
    EXECUTE format('CREATE POLICY evaluation_replay ON %I FOR DELETE '
                   'USING (current_setting(''app.evaluation_replay'', true) = ''on'')', t);
  END LOOP;
END
$$;

CREATE POLICY evaluation_gauges ON enrollments FOR SELECT
  USING (current_setting('app.evaluation_gauges', true) = 'on');
CREATE POLICY evaluation_gauges ON concerns FOR SELECT
  USING (current_setting('app.evaluation_gauges', true) = 'on');
