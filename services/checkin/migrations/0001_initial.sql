-- Check-in service, first schema: program policies, pathway versions, enrollments, scheduled
-- check-ins, check-ins, contact attempts and appointments.
--
-- Conventions of every PeerPath migration (the runner supplies the transaction and search_path):
-- every row carries agency_id (the tenant); a parent table has UNIQUE (agency_id, id) so children
-- reference it by (agency_id, parent_id) and a row can never point into another agency; ids owned
-- by other services (participants, supporters, actors) are plain values, never foreign keys.
-- Participant ids are the agency's own client identifiers (text); supporter ids are the matching
-- service's supporter ids (uuid); actors are the `sub` of the caller's token.
-- Closed value sets are lower_snake_case text with CHECK constraints; the store maps them to the
-- proto enums.

-- Per-agency program settings. One row per agency; an agency without a row uses the defaults
-- below (the service inserts them on first use).
CREATE TABLE program_policies (
  agency_id                       text PRIMARY KEY CHECK (agency_id <> ''),
  -- IANA zone name ("America/Los_Angeles"); schedules and day boundaries use it. Validated by the
  -- service: PostgreSQL's zone list may differ from the one the binary uses.
  time_zone                       text NOT NULL CHECK (time_zone <> ''),
  -- Failed attempts (no answer, left message, wrong number) in a row that make a missed contact.
  missed_contact_failed_attempts  integer NOT NULL DEFAULT 3
                                  CHECK (missed_contact_failed_attempts BETWEEN 1 AND 50),
  at_risk_after                   interval NOT NULL DEFAULT interval '28 days',
  lost_to_follow_up_after         interval NOT NULL DEFAULT interval '90 days',
  -- A fall of this many points over the last three structured check-ins raises a concern.
  wellbeing_drop_points           smallint NOT NULL DEFAULT 2 CHECK (wellbeing_drop_points BETWEEN 1 AND 4),
  updated_at                      timestamptz NOT NULL DEFAULT now(),
  updated_by                      text NOT NULL CHECK (updated_by <> ''),
  CHECK (at_risk_after > interval '0'),
  CHECK (lost_to_follow_up_after > at_risk_after)
);

-- A pathway definition is data: typed fields, gates and routing rules in `definition`. Versions
-- are immutable once published; an enrollment keeps the version it started with.
CREATE TABLE pathway_versions (
  id                       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id                text NOT NULL CHECK (agency_id <> ''),
  pathway_key              text NOT NULL CHECK (pathway_key ~ '^[a-z][a-z0-9_]{0,62}$'),
  version                  integer NOT NULL CHECK (version >= 1),
  display_name             text NOT NULL CHECK (display_name <> ''),
  -- {"fields": [...], "gates": [...], "routing_rules": [...]}; validated by the service when
  -- published (its shape is the pathway proto message, stored as JSON for readability).
  definition               jsonb NOT NULL CHECK (jsonb_typeof(definition) = 'object'),
  -- Step-down style pathways: an enrollment needs an end or a review date.
  requires_end_or_review   boolean NOT NULL DEFAULT false,
  -- Crisis transitions: peer support may not be the only follow-up.
  requires_clinical_owner  boolean NOT NULL DEFAULT false,
  -- Capacity units an enrollment in this pathway weighs in a supporter's caseload (matching).
  acuity_units             smallint NOT NULL DEFAULT 1 CHECK (acuity_units BETWEEN 1 AND 100),
  published_at             timestamptz NOT NULL DEFAULT now(),
  published_by             text NOT NULL CHECK (published_by <> ''),
  UNIQUE (agency_id, id),
  UNIQUE (agency_id, pathway_key, version)
);

-- A participant enrolled in one version of a pathway, with owners and a check-in schedule.
CREATE TABLE enrollments (
  id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id                   text NOT NULL CHECK (agency_id <> ''),
  participant_id              text NOT NULL CHECK (participant_id <> ''),
  pathway_key                 text NOT NULL,
  pathway_version             integer NOT NULL,
  -- Owners are staff subjects or team ids; never the peer supporter (role clarity).
  appointment_owner           text,
  receiving_clinician         text,
  receiving_team              text,
  clinical_follow_up_owner    text,
  -- Schedule: 'weekly' on ISO weekdays (1 = Monday … 7 = Sunday), or 'every_n_days' from
  -- starts_on, in time_zone (copied from the program policy at enrollment; a policy change does not
  -- move existing schedules). A check-in is due for check_in_window from local midnight.
  schedule_kind               text NOT NULL CHECK (schedule_kind IN ('weekly', 'every_n_days')),
  schedule_weekdays           smallint[],
  schedule_every_days         integer,
  check_in_window             interval NOT NULL DEFAULT interval '1 day',
  time_zone                   text NOT NULL CHECK (time_zone <> ''),
  starts_on                   date NOT NULL,
  ends_on                     date,
  review_on                   date,
  status                      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
  -- False once a routing rule stopped routine engagement (e.g. an immediate safety disclosure).
  routine                     boolean NOT NULL DEFAULT true,
  -- Staged disengagement: missed contact → at risk (no contact for at_risk_after) → lost to
  -- follow-up (lost_to_follow_up_after). A reached contact returns to 'engaged'.
  engagement_stage            text NOT NULL DEFAULT 'engaged'
                              CHECK (engagement_stage IN ('engaged', 'missed_contact', 'at_risk',
                                                          'lost_to_follow_up')),
  engagement_stage_changed_at timestamptz NOT NULL DEFAULT now(),
  failed_attempts_in_a_row    integer NOT NULL DEFAULT 0 CHECK (failed_attempts_in_a_row >= 0),
  last_contact_at             timestamptz,
  enrolled_at                 timestamptz NOT NULL DEFAULT now(),
  enrolled_by                 text NOT NULL CHECK (enrolled_by <> ''),
  ended_at                    timestamptz,
  ended_by                    text,
  end_reason                  text CHECK (end_reason IN ('completed', 'stepped_up', 'withdrew',
                                                         'lost_to_follow_up', 'moved', 'other')),
  UNIQUE (agency_id, id),
  FOREIGN KEY (agency_id, pathway_key, pathway_version)
    REFERENCES pathway_versions (agency_id, pathway_key, version),
  CHECK (schedule_kind <> 'weekly' OR (
           schedule_every_days IS NULL
           AND cardinality(schedule_weekdays) BETWEEN 1 AND 7
           AND array_position(schedule_weekdays, NULL) IS NULL
           AND schedule_weekdays <@ ARRAY[1, 2, 3, 4, 5, 6, 7]::smallint[])),
  CHECK (schedule_kind <> 'every_n_days' OR (
           schedule_weekdays IS NULL AND schedule_every_days BETWEEN 1 AND 366)),
  CHECK (check_in_window > interval '0' AND check_in_window <= interval '14 days'),
  CHECK (ends_on IS NULL OR ends_on >= starts_on),
  CHECK (review_on IS NULL OR review_on >= starts_on),
  CHECK ((status = 'ended') = (ended_at IS NOT NULL)),
  CHECK (status <> 'ended' OR (ended_by IS NOT NULL AND end_reason IS NOT NULL))
);

-- At most one running enrollment of a participant per pathway.
CREATE UNIQUE INDEX enrollments_one_active_per_pathway
  ON enrollments (agency_id, participant_id, pathway_key) WHERE status = 'active';
CREATE INDEX enrollments_by_participant ON enrollments (agency_id, participant_id);
-- The disengagement sweeper: active enrollments by last contact.
CREATE INDEX enrollments_by_last_contact
  ON enrollments (last_contact_at) WHERE status = 'active';

-- The occurrences a schedule produces. A row is created ahead of time (a rolling horizon) and
-- closed by the check-in that completes it, or marked missed by the sweeper when its window ends.
CREATE TABLE scheduled_check_ins (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id      text NOT NULL CHECK (agency_id <> ''),
  enrollment_id  uuid NOT NULL,
  due_on         date NOT NULL,  -- Local date in the enrollment's time zone.
  window_start   timestamptz NOT NULL,
  window_end     timestamptz NOT NULL,
  status         text NOT NULL DEFAULT 'due' CHECK (status IN ('due', 'completed', 'missed', 'cancelled')),
  status_changed_at timestamptz,
  UNIQUE (agency_id, id),
  UNIQUE (agency_id, enrollment_id, due_on),
  FOREIGN KEY (agency_id, enrollment_id) REFERENCES enrollments (agency_id, id),
  CHECK (window_end > window_start),
  CHECK ((status = 'due') = (status_changed_at IS NULL))
);

-- ListDueCheckIns(day) and the missed-window sweeper.
CREATE INDEX scheduled_check_ins_due_by_day ON scheduled_check_ins (agency_id, due_on) WHERE status = 'due';
CREATE INDEX scheduled_check_ins_window_end ON scheduled_check_ins (window_end) WHERE status = 'due';

-- A recorded check-in, validated against the enrollment's pathway version. Answers may hold free
-- text: they stay in this table and never go into events or logs.
CREATE TABLE check_ins (
  id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id             text NOT NULL CHECK (agency_id <> ''),
  enrollment_id         uuid NOT NULL,
  scheduled_check_in_id uuid,
  participant_id        text NOT NULL CHECK (participant_id <> ''),
  -- The matching service's supporter; NULL when staff recorded it.
  supporter_id          uuid,
  recorded_by           text NOT NULL CHECK (recorded_by <> ''),
  recorded_by_role      text NOT NULL CHECK (recorded_by_role <> ''),
  pathway_key           text NOT NULL,
  pathway_version       integer NOT NULL,
  answers               jsonb NOT NULL CHECK (jsonb_typeof(answers) = 'object'),
  -- The structured wellbeing answer (1 languishing … 5 flourishing), kept as a column for the
  -- trend rule and the read models.
  wellbeing             smallint CHECK (wellbeing BETWEEN 1 AND 5),
  contact_mode          text CHECK (contact_mode IN ('in_person', 'phone', 'video', 'message')),
  occurred_at           timestamptz NOT NULL,
  recorded_at           timestamptz NOT NULL DEFAULT now(),
  -- Late documentation: recorded after its window closed. Accepted and flagged with the delay.
  window_end            timestamptz,
  late_by               interval,
  UNIQUE (agency_id, id),
  FOREIGN KEY (agency_id, enrollment_id) REFERENCES enrollments (agency_id, id),
  FOREIGN KEY (agency_id, scheduled_check_in_id) REFERENCES scheduled_check_ins (agency_id, id),
  FOREIGN KEY (agency_id, pathway_key, pathway_version)
    REFERENCES pathway_versions (agency_id, pathway_key, version),
  -- Device clocks drift; a check-in a little in the future is a skewed clock, more is a bug.
  CHECK (occurred_at <= recorded_at + interval '10 minutes'),
  CHECK (late_by IS NULL OR (late_by > interval '0' AND window_end IS NOT NULL))
);

-- One check-in completes one scheduled occurrence.
CREATE UNIQUE INDEX check_ins_one_per_occurrence
  ON check_ins (agency_id, scheduled_check_in_id) WHERE scheduled_check_in_id IS NOT NULL;
-- The wellbeing trend (last three of an enrollment) and an enrollment's history.
CREATE INDEX check_ins_by_enrollment ON check_ins (agency_id, enrollment_id, occurred_at DESC);
-- Supporter workload (check-ins in the last 7 days) and a supporter's own list.
CREATE INDEX check_ins_by_supporter
  ON check_ins (agency_id, supporter_id, occurred_at DESC) WHERE supporter_id IS NOT NULL;
CREATE INDEX check_ins_by_participant ON check_ins (agency_id, participant_id, occurred_at DESC);

-- Attempts to reach a participant. Failed attempts in a row (per the program policy) make a
-- missed contact; a reached attempt after a missed contact is a reconnection.
CREATE TABLE contact_attempts (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id        text NOT NULL CHECK (agency_id <> ''),
  enrollment_id    uuid NOT NULL,
  participant_id   text NOT NULL CHECK (participant_id <> ''),
  supporter_id     uuid,
  attempted_by     text NOT NULL CHECK (attempted_by <> ''),
  channel          text NOT NULL CHECK (channel IN ('phone', 'message', 'email', 'video', 'in_person')),
  outcome          text NOT NULL CHECK (outcome IN ('reached', 'no_answer', 'left_message', 'wrong_number')),
  is_reconnection  boolean NOT NULL DEFAULT false,
  attempted_at     timestamptz NOT NULL,
  recorded_at      timestamptz NOT NULL DEFAULT now(),
  FOREIGN KEY (agency_id, enrollment_id) REFERENCES enrollments (agency_id, id),
  CHECK (NOT is_reconnection OR outcome = 'reached'),
  CHECK (attempted_at <= recorded_at + interval '10 minutes')
);

CREATE INDEX contact_attempts_by_enrollment ON contact_attempts (agency_id, enrollment_id, attempted_at DESC);

-- First appointments, clinical review dates and other appointments the pathway tracks.
CREATE TABLE appointments (
  id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id           text NOT NULL CHECK (agency_id <> ''),
  enrollment_id       uuid NOT NULL,
  participant_id      text NOT NULL CHECK (participant_id <> ''),
  kind                text NOT NULL CHECK (kind IN ('first_appointment', 'clinical_review', 'therapy', 'other')),
  scheduled_at        timestamptz NOT NULL,
  owner_id            text NOT NULL CHECK (owner_id <> ''),
  outcome             text NOT NULL DEFAULT 'pending'
                      CHECK (outcome IN ('pending', 'attended', 'missed', 'cancelled', 'rescheduled')),
  outcome_recorded_at timestamptz,
  outcome_recorded_by text,
  -- The appointment that replaced this one when it was rescheduled.
  rescheduled_to      uuid,
  created_at          timestamptz NOT NULL DEFAULT now(),
  created_by          text NOT NULL CHECK (created_by <> ''),
  UNIQUE (agency_id, id),
  FOREIGN KEY (agency_id, enrollment_id) REFERENCES enrollments (agency_id, id),
  FOREIGN KEY (agency_id, rescheduled_to) REFERENCES appointments (agency_id, id),
  CHECK ((outcome = 'pending') = (outcome_recorded_at IS NULL)),
  CHECK (outcome = 'pending' OR outcome_recorded_by IS NOT NULL),
  CHECK (rescheduled_to IS NULL OR outcome = 'rescheduled')
);

CREATE INDEX appointments_by_enrollment ON appointments (agency_id, enrollment_id, scheduled_at);
CREATE INDEX appointments_by_participant ON appointments (agency_id, participant_id, scheduled_at);
-- Appointments past their time with no outcome yet (a reminder to the owner).
CREATE INDEX appointments_pending ON appointments (scheduled_at) WHERE outcome = 'pending';
