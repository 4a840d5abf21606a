-- Matching service, first schema: the supporter roster, match requests, matches and the
-- two-week follow-ups.
--
-- Conventions of every PeerPath migration (the runner supplies the transaction and search_path):
-- every row carries agency_id (the tenant); a parent table has UNIQUE (agency_id, id) so children
-- reference it by (agency_id, parent_id) and a row can never point into another agency; ids owned
-- by other services (participants, actors) are plain values, never foreign keys.
-- Participant ids are the agency's own client identifiers (text); actors are the `sub` of the
-- caller's token. Closed value sets are lower_snake_case text with CHECK constraints; the store
-- maps them to the proto enums.

-- A peer supporter's profile. Never deleted: a supporter who leaves becomes 'inactive' and keeps
-- their matches' history; 'on_break' keeps current matches and takes no new ones.
CREATE TABLE supporters (
  id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id             text NOT NULL CHECK (agency_id <> ''),
  -- The supporter's login (`sub` of their token): how "my caseload" and "only my active matches"
  -- find this profile. NULL until the supporter has an account.
  subject               text CHECK (subject <> ''),
  display_name          text NOT NULL CHECK (display_name <> ''),
  lived_experience      text[] NOT NULL DEFAULT '{}' CHECK (array_position(lived_experience, NULL) IS NULL),
  languages             text[] NOT NULL DEFAULT '{}' CHECK (array_position(languages, NULL) IS NULL),
  gender                text,
  age_band              text CHECK (age_band IN ('18_24', '25_34', '35_44', '45_54', '55_64', '65_plus')),
  region                text,
  area_code             text,
  meeting_modes         text[] NOT NULL DEFAULT '{}' CHECK (
                          array_position(meeting_modes, NULL) IS NULL
                          AND meeting_modes <@ ARRAY['in_person', 'phone', 'video']::text[]),
  -- Weekly windows in the agency's time zone:
  -- [{"weekday": 1, "start": "09:00", "end": "12:00"}, ...] (ISO weekday, 1 = Monday).
  availability          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(availability) = 'array'),
  -- Caseload capacity in acuity-weighted units (a crisis transition weighs more than a routine
  -- check-in); the load is the sum of the units of the supporter's active matches.
  capacity_units        integer NOT NULL CHECK (capacity_units BETWEEN 0 AND 1000),
  training_status       text NOT NULL DEFAULT 'in_training'
                        CHECK (training_status IN ('in_training', 'certified', 'lapsed')),
  training_expires_on   date,
  supervisor_id         text,  -- The supervisor's subject.
  status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'on_break', 'inactive')),
  status_changed_at     timestamptz NOT NULL DEFAULT now(),
  last_break_started_at timestamptz,
  -- Optimistic locking: updates say which version they read (AIP-154 etag).
  version               bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at            timestamptz NOT NULL DEFAULT now(),
  created_by            text NOT NULL CHECK (created_by <> ''),
  updated_at            timestamptz NOT NULL DEFAULT now(),
  updated_by            text NOT NULL CHECK (updated_by <> ''),
  UNIQUE (agency_id, id),
  CHECK (training_status <> 'certified' OR training_expires_on IS NOT NULL)
);

CREATE UNIQUE INDEX supporters_by_subject ON supporters (agency_id, subject) WHERE subject IS NOT NULL;
CREATE INDEX supporters_by_supervisor ON supporters (agency_id, supervisor_id) WHERE supervisor_id IS NOT NULL;
-- Candidate loading for proposals and batch assignment reads the active roster of one agency.
CREATE INDEX supporters_active ON supporters (agency_id) WHERE status = 'active';

-- A request to match a participant: hard constraints (never violated) and weighted soft
-- preferences. Shapes are the request proto messages, stored as JSON.
CREATE TABLE match_requests (
  id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id              text NOT NULL CHECK (agency_id <> ''),
  participant_id         text NOT NULL CHECK (participant_id <> ''),
  -- The pathway the participant is on decides the acuity weight.
  pathway_key            text,
  acuity_units           integer NOT NULL DEFAULT 1 CHECK (acuity_units BETWEEN 1 AND 100),
  -- e.g. {"languages": ["es"], "meeting_mode": "in_person", "region": "north"}
  hard_constraints       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(hard_constraints) = 'object'),
  -- e.g. {"lived_experience": {"value": ["postpartum_depression"], "weight": 3}, ...}
  preferences            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(preferences) = 'object'),
  -- Never proposed: a re-match excludes the previous supporter here.
  excluded_supporter_ids uuid[] NOT NULL DEFAULT '{}'
                         CHECK (array_position(excluded_supporter_ids, NULL) IS NULL),
  -- Continuity: a returning participant's previous supporter, preferred when available.
  preferred_supporter_id uuid,
  -- The match this request replaces (re-match).
  previous_match_id      uuid,
  urgency                text NOT NULL DEFAULT 'routine' CHECK (urgency IN ('routine', 'priority', 'urgent')),
  status                 text NOT NULL DEFAULT 'open'
                         CHECK (status IN ('open', 'proposed', 'assigned', 'cancelled')),
  cancel_reason          text,
  requested_at           timestamptz NOT NULL DEFAULT now(),
  requested_by           text NOT NULL CHECK (requested_by <> ''),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  UNIQUE (agency_id, id),
  FOREIGN KEY (agency_id, preferred_supporter_id) REFERENCES supporters (agency_id, id),
  CHECK (status <> 'cancelled' OR cancel_reason IS NOT NULL)
);

-- At most one request in progress per participant.
CREATE UNIQUE INDEX match_requests_one_open_per_participant
  ON match_requests (agency_id, participant_id) WHERE status IN ('open', 'proposed');
-- AssignBatch loads every open request of an agency, oldest first.
CREATE INDEX match_requests_open ON match_requests (agency_id, requested_at) WHERE status IN ('open', 'proposed');

-- Proposed → active (accepted) → ended with a reason; a proposal not taken is 'declined'.
CREATE TABLE matches (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id       text NOT NULL CHECK (agency_id <> ''),
  request_id      uuid NOT NULL,
  supporter_id    uuid NOT NULL,
  participant_id  text NOT NULL CHECK (participant_id <> ''),
  -- Acuity-weighted units this match takes from the supporter's capacity.
  units           integer NOT NULL CHECK (units BETWEEN 1 AND 100),
  score           double precision,
  -- The per-criterion explanation shown to the coordinator when it was proposed.
  explanation     jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(explanation) = 'array'),
  status          text NOT NULL DEFAULT 'proposed' CHECK (status IN ('proposed', 'active', 'ended', 'declined')),
  proposed_at     timestamptz NOT NULL DEFAULT now(),
  proposed_by     text NOT NULL CHECK (proposed_by <> ''),
  started_at      timestamptz,
  started_by      text,
  ended_at        timestamptz,
  ended_by        text,
  end_reason      text CHECK (end_reason IN ('completed', 'poor_fit', 'supporter_unavailable',
                                             'participant_withdrew', 'moved_to_clinical_care')),
  declined_at     timestamptz,
  UNIQUE (agency_id, id),
  FOREIGN KEY (agency_id, request_id) REFERENCES match_requests (agency_id, id),
  FOREIGN KEY (agency_id, supporter_id) REFERENCES supporters (agency_id, id),
  CHECK (status NOT IN ('active', 'ended') OR (started_at IS NOT NULL AND started_by IS NOT NULL)),
  CHECK ((status = 'ended') = (ended_at IS NOT NULL)),
  CHECK (status <> 'ended' OR (ended_by IS NOT NULL AND end_reason IS NOT NULL)),
  CHECK (ended_at IS NULL OR ended_at >= started_at),
  CHECK ((status = 'declined') = (declined_at IS NOT NULL))
);

ALTER TABLE match_requests
  ADD FOREIGN KEY (agency_id, previous_match_id) REFERENCES matches (agency_id, id);

-- A participant has at most one active match.
CREATE UNIQUE INDEX matches_one_active_per_participant ON matches (agency_id, participant_id) WHERE status = 'active';
-- A supporter's caseload and load (sum of units), locked with the supporter row on accept.
CREATE INDEX matches_active_by_supporter ON matches (agency_id, supporter_id) WHERE status = 'active';
-- History per participant (continuity) and per request.
CREATE INDEX matches_by_participant ON matches (agency_id, participant_id, proposed_at DESC);
CREATE INDEX matches_by_request ON matches (agency_id, request_id);

-- The follow-up due fourteen days after a match starts: both sides rate satisfaction 1–5.
-- A rating of 2 or less opens a re-match suggestion for the supervisor.
CREATE TABLE follow_ups (
  id                       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id                text NOT NULL CHECK (agency_id <> ''),
  match_id                 uuid NOT NULL,
  due_on                   date NOT NULL,
  participant_rating       smallint CHECK (participant_rating BETWEEN 1 AND 5),
  participant_comments     text,
  participant_recorded_at  timestamptz,
  participant_recorded_by  text,  -- The participant, or staff on their behalf.
  supporter_rating         smallint CHECK (supporter_rating BETWEEN 1 AND 5),
  supporter_comments       text,
  supporter_recorded_at    timestamptz,
  supporter_recorded_by    text,
  rematch_suggested_at     timestamptz,
  created_at               timestamptz NOT NULL DEFAULT now(),
  UNIQUE (agency_id, id),
  UNIQUE (agency_id, match_id),
  FOREIGN KEY (agency_id, match_id) REFERENCES matches (agency_id, id),
  CHECK ((participant_rating IS NULL) = (participant_recorded_at IS NULL)),
  CHECK ((participant_rating IS NULL) = (participant_recorded_by IS NULL)),
  CHECK ((supporter_rating IS NULL) = (supporter_recorded_at IS NULL)),
  CHECK ((supporter_rating IS NULL) = (supporter_recorded_by IS NULL))
);

-- Follow-ups still waiting for a side's rating, by due date.
CREATE INDEX follow_ups_pending ON follow_ups (agency_id, due_on)
  WHERE participant_rating IS NULL OR supporter_rating IS NULL;
