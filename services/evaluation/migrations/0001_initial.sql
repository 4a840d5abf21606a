-- Evaluation service, first schema: read models built from the other services' events, outcomes
-- reported by county systems, and incrementally maintained rollups.
--
-- Conventions of every PeerPath migration (the runner supplies the transaction and search_path):
-- every row carries agency_id (the tenant); ids owned by other services are plain values, never
-- foreign keys. Participant ids are the agency's own client identifiers (text), the same identifier
-- space county systems use, so clients outside the program can be compared with those in it.
-- Closed value sets are lower_snake_case text with CHECK constraints.
--
-- Read models are keyed by the producing service's id (UNIQUE (agency_id, <source id>)) so an
-- event delivered twice upserts the same row; the consumer stores its position in the same
-- transaction (shared track). Facts hold no free text and no contact details.

-- Everyone the agency's data mentions, in the program or not.
CREATE TABLE participants_seen (
  id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id               text NOT NULL CHECK (agency_id <> ''),
  participant_id          text NOT NULL CHECK (participant_id <> ''),
  first_seen_at           timestamptz NOT NULL,
  first_enrolled_at       timestamptz,
  -- When the participant's first active match started: the "with peer support" cohort.
  first_peer_support_at   timestamptz,
  UNIQUE (agency_id, participant_id)
);

-- One row per enrollment (check-in service), with the milestones the measures need.
CREATE TABLE enrollment_facts (
  id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id                 text NOT NULL CHECK (agency_id <> ''),
  enrollment_id             uuid NOT NULL,
  participant_id            text NOT NULL CHECK (participant_id <> ''),
  program_id                text,
  pathway_key               text NOT NULL,
  pathway_version           integer NOT NULL,
  started_at                timestamptz NOT NULL,
  ended_at                  timestamptz,
  end_reason                text,
  first_peer_contact_at     timestamptz,
  first_appointment_at      timestamptz,
  first_appointment_outcome text CHECK (first_appointment_outcome IN ('attended', 'missed', 'cancelled',
                                                                      'rescheduled')),
  missed_contact_at         timestamptz,
  reconnected_at            timestamptz,
  at_risk_at                timestamptz,
  lost_to_follow_up_at      timestamptz,
  -- Routine engagement stopped by a safety rule.
  routine_stopped_at        timestamptz,
  first_wellbeing           smallint CHECK (first_wellbeing BETWEEN 1 AND 5),
  last_wellbeing            smallint CHECK (last_wellbeing BETWEEN 1 AND 5),
  UNIQUE (agency_id, enrollment_id),
  CHECK (ended_at IS NULL OR ended_at >= started_at)
);

CREATE INDEX enrollment_facts_by_start ON enrollment_facts (agency_id, pathway_key, started_at);
CREATE INDEX enrollment_facts_by_participant ON enrollment_facts (agency_id, participant_id);

-- Check-ins, contact attempts and missed check-ins (check-in service), without answers.
CREATE TABLE contact_facts (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id       text NOT NULL CHECK (agency_id <> ''),
  kind            text NOT NULL CHECK (kind IN ('check_in', 'contact_attempt', 'missed_check_in')),
  source_id       uuid NOT NULL,  -- The check-in, contact attempt or scheduled check-in id.
  enrollment_id   uuid NOT NULL,
  participant_id  text NOT NULL CHECK (participant_id <> ''),
  supporter_id    uuid,
  outcome         text CHECK (outcome IN ('reached', 'no_answer', 'left_message', 'wrong_number')),
  is_reconnection boolean NOT NULL DEFAULT false,
  wellbeing       smallint CHECK (wellbeing BETWEEN 1 AND 5),
  late_by         interval,
  occurred_at     timestamptz NOT NULL,
  UNIQUE (agency_id, kind, source_id),
  CHECK (kind <> 'contact_attempt' OR outcome IS NOT NULL)
);

CREATE INDEX contact_facts_by_participant ON contact_facts (agency_id, participant_id, occurred_at);
CREATE INDEX contact_facts_by_supporter
  ON contact_facts (agency_id, supporter_id, occurred_at) WHERE supporter_id IS NOT NULL;

-- Concerns (escalation service): escalation use, time to acknowledge, breaches.
CREATE TABLE concern_facts (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id       text NOT NULL CHECK (agency_id <> ''),
  concern_id      uuid NOT NULL,
  participant_id  text NOT NULL CHECK (participant_id <> ''),
  enrollment_id   uuid,
  category        text NOT NULL,
  severity        text NOT NULL CHECK (severity IN ('routine', 'urgent', 'critical')),
  source          text NOT NULL,
  raised_by_role  text,
  opened_at       timestamptz NOT NULL,
  acknowledged_at timestamptz,
  resolved_at     timestamptz,
  cancelled_at    timestamptz,
  outcome         text,
  breaches        integer NOT NULL DEFAULT 0 CHECK (breaches >= 0),
  escalations     integer NOT NULL DEFAULT 0 CHECK (escalations >= 0),
  UNIQUE (agency_id, concern_id),
  CHECK (acknowledged_at IS NULL OR acknowledged_at >= opened_at)
);

CREATE INDEX concern_facts_by_opened ON concern_facts (agency_id, opened_at);
CREATE INDEX concern_facts_by_participant ON concern_facts (agency_id, participant_id, opened_at);

-- Matches (matching service): satisfaction, re-match rate, supporter caseload.
CREATE TABLE match_facts (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id          text NOT NULL CHECK (agency_id <> ''),
  match_id           uuid NOT NULL,
  supporter_id       uuid NOT NULL,
  participant_id     text NOT NULL CHECK (participant_id <> ''),
  units              integer CHECK (units >= 1),
  is_rematch         boolean NOT NULL DEFAULT false,
  started_at         timestamptz NOT NULL,
  ended_at           timestamptz,
  end_reason         text,
  participant_rating smallint CHECK (participant_rating BETWEEN 1 AND 5),
  supporter_rating   smallint CHECK (supporter_rating BETWEEN 1 AND 5),
  followed_up_at     timestamptz,
  UNIQUE (agency_id, match_id),
  CHECK (ended_at IS NULL OR ended_at >= started_at)
);

CREATE INDEX match_facts_by_start ON match_facts (agency_id, started_at);
CREATE INDEX match_facts_by_supporter ON match_facts (agency_id, supporter_id, started_at);
CREATE INDEX match_facts_by_participant ON match_facts (agency_id, participant_id, started_at);

-- Outcomes county systems report with RecordServiceOutcome, for any client of the agency — with
-- or without peer support — so cohorts can be compared. Whether a client had peer support at the
-- time is derived from the facts above when a report is computed, not stored here.
CREATE TABLE service_outcomes (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id          text NOT NULL CHECK (agency_id <> ''),
  participant_id     text NOT NULL CHECK (participant_id <> ''),
  kind               text NOT NULL CHECK (kind IN ('first_appointment_attended', 'first_appointment_missed',
                                                   'crisis_contact', 'emergency_visit', 'hospitalization',
                                                   'discharge', 'outpatient_follow_up')),
  -- HEDIS FUM/FUH count only emergency visits and hospitalisations for mental illness.
  for_mental_illness boolean NOT NULL DEFAULT true,
  occurred_at        timestamptz NOT NULL,
  -- The reporting system and its own record id, when it has one.
  source_system      text,
  source_reference   text,
  reported_by        text NOT NULL CHECK (reported_by <> ''),
  reported_at        timestamptz NOT NULL DEFAULT now(),
  CHECK ((source_system IS NULL) = (source_reference IS NULL))
);

-- The same county record reported twice is one outcome (besides the idempotency key).
CREATE UNIQUE INDEX service_outcomes_by_source
  ON service_outcomes (agency_id, source_system, source_reference) WHERE source_reference IS NOT NULL;
CREATE INDEX service_outcomes_by_participant ON service_outcomes (agency_id, participant_id, occurred_at);
CREATE INDEX service_outcomes_by_kind ON service_outcomes (agency_id, kind, occurred_at);

-- Counters maintained as events are applied (in the same transaction), so a report reads a few
-- rows instead of scanning facts. They hold event counts and sums (numerator/denominator);
-- distinct-people counts that cannot be added across periods are computed from the facts.
-- dimension 'all' with dimension_value '' is the total; otherwise e.g. ('pathway', 'step_down'),
-- ('severity', 'critical').
CREATE TABLE rollups (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id       text NOT NULL CHECK (agency_id <> ''),
  period_kind     text NOT NULL CHECK (period_kind IN ('day', 'week', 'month', 'quarter', 'year')),
  period_start    date NOT NULL,
  measure         text NOT NULL CHECK (measure ~ '^[a-z][a-z0-9_]*$'),
  dimension       text NOT NULL DEFAULT 'all' CHECK (dimension ~ '^[a-z][a-z0-9_]*$'),
  dimension_value text NOT NULL DEFAULT '',
  numerator       bigint NOT NULL DEFAULT 0 CHECK (numerator >= 0),
  denominator     bigint NOT NULL DEFAULT 0 CHECK (denominator >= 0),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE (agency_id, period_kind, period_start, measure, dimension, dimension_value),
  CHECK (dimension <> 'all' OR dimension_value = '')
);
