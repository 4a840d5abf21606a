-- Escalation service, first schema: routing policies, concerns with persisted deadlines, their
-- transitions and deadline breaches.
--
-- Conventions of every PeerPath migration (the runner supplies the transaction and search_path):
-- every row carries agency_id (the tenant); a parent table has UNIQUE (agency_id, id) so children
-- reference it by (agency_id, parent_id) and a row can never point into another agency; ids owned
-- by other services (participants, enrollments, check-ins, actors) are plain values, never foreign
-- keys. Participant ids are the agency's own client identifiers (text); actors are the `sub` of the
-- caller's token, or "system:<component>" for the service itself. Closed value sets are
-- lower_snake_case text with CHECK constraints; the store maps them to the proto enums.

-- A per-agency routing policy. Versions are immutable: an edit publishes the next version, new
-- concerns use the newest, open concerns keep the deadlines they were given.
CREATE TABLE routing_policies (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id      text NOT NULL CHECK (agency_id <> ''),
  version        integer NOT NULL CHECK (version >= 1),
  -- One rule per category × severity: target, acknowledgement deadline, resolution window and the
  -- ordered escalation chain of further targets with their own deadlines (the policy proto
  -- message as JSON; validated by the service).
  rules          jsonb NOT NULL CHECK (jsonb_typeof(rules) = 'array'),
  -- IANA zone and weekly business hours for "routine: 3 business days" and out-of-hours waits:
  -- [{"weekday": 1, "start": "09:00", "end": "17:00"}, ...].
  time_zone      text NOT NULL CHECK (time_zone <> ''),
  business_hours jsonb NOT NULL CHECK (jsonb_typeof(business_hours) = 'array'),
  holidays       date[] NOT NULL DEFAULT '{}',
  created_at     timestamptz NOT NULL DEFAULT now(),
  created_by     text NOT NULL CHECK (created_by <> ''),
  UNIQUE (agency_id, id),
  UNIQUE (agency_id, version)
);

-- A concern about a participant, routed to a target with deadlines. `description` is free text:
-- it stays in this table and never goes into events, logs or metrics.
CREATE TABLE concerns (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id          text NOT NULL CHECK (agency_id <> ''),
  participant_id     text NOT NULL CHECK (participant_id <> ''),
  enrollment_id      uuid,
  category           text NOT NULL CHECK (category IN ('immediate_safety', 'clinical_worsening',
                                                       'housing_or_basic_needs', 'disengagement',
                                                       'role_boundary', 'supporter_wellbeing',
                                                       'wellbeing_decline')),
  severity           text NOT NULL CHECK (severity IN ('routine', 'urgent', 'critical')),
  source             text NOT NULL CHECK (source IN ('check_in_rule', 'manual', 'missed_contact',
                                                     'wellbeing_trend', 'missed_appointment')),
  -- The producing event (for concerns from the check-in service's log): one concern per event,
  -- whatever the delivery count.
  source_event_id    text,
  source_check_in_id uuid,
  description        text,
  raised_by          text NOT NULL CHECK (raised_by <> ''),
  raised_by_role     text NOT NULL CHECK (raised_by_role <> ''),
  status             text NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'acknowledged', 'resolved', 'cancelled')),
  policy_id          uuid NOT NULL,
  -- 0 = the policy's first target; each escalation moves one step along the chain.
  current_level      smallint NOT NULL DEFAULT 0 CHECK (current_level BETWEEN 0 AND 20),
  -- Peer supporters raise concerns but never hold them: there is no peer target kind.
  target_kind        text NOT NULL CHECK (target_kind IN ('clinical_on_call', 'receiving_clinician',
                                                          'case_management_team', 'supervisor')),
  target_id          text NOT NULL CHECK (target_id <> ''),
  ack_deadline       timestamptz NOT NULL,
  resolve_deadline   timestamptz,
  -- The single deadline the sweeper watches: the acknowledgement deadline while open, the
  -- resolution (re-alert, then escalation) deadline while acknowledged, NULL once closed.
  next_deadline      timestamptz,
  opened_at          timestamptz NOT NULL DEFAULT now(),
  acknowledged_at    timestamptz,
  acknowledged_by    text,
  resolved_at        timestamptz,
  resolved_by        text,
  outcome            text CHECK (outcome IN ('clinical_review_done', 'referred', 'no_action_needed',
                                             'participant_safe', 'other')),
  cancelled_at       timestamptz,
  cancelled_by       text,
  cancel_reason      text,
  UNIQUE (agency_id, id),
  FOREIGN KEY (agency_id, policy_id) REFERENCES routing_policies (agency_id, id),
  CHECK (ack_deadline > opened_at),
  CHECK ((acknowledged_at IS NULL) = (acknowledged_by IS NULL)),
  CHECK (status <> 'acknowledged' OR acknowledged_at IS NOT NULL),
  CHECK ((status = 'resolved') = (resolved_at IS NOT NULL)),
  CHECK (status <> 'resolved' OR (resolved_by IS NOT NULL AND outcome IS NOT NULL)),
  CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL)),
  CHECK (status <> 'cancelled' OR (cancelled_by IS NOT NULL AND btrim(cancel_reason) <> '')),
  CHECK ((status IN ('open', 'acknowledged')) = (next_deadline IS NOT NULL))
);

-- The sweeper's only query: open or acknowledged concerns whose next deadline has passed, oldest
-- first. A partial index keeps it proportional to the concerns due, not to all concerns.
CREATE INDEX concerns_next_deadline ON concerns (next_deadline) WHERE status IN ('open', 'acknowledged');
CREATE UNIQUE INDEX concerns_by_source_event ON concerns (agency_id, source_event_id) WHERE source_event_id IS NOT NULL;
-- WatchConcerns and a team's list: what is currently routed to a target.
CREATE INDEX concerns_open_by_target
  ON concerns (agency_id, target_kind, target_id, opened_at) WHERE status IN ('open', 'acknowledged');
CREATE INDEX concerns_by_participant ON concerns (agency_id, participant_id, opened_at DESC);
-- A supporter's own raised concerns (status only) and workload counts.
CREATE INDEX concerns_by_raiser ON concerns (agency_id, raised_by, opened_at DESC);

-- Every change of a concern, kept forever: who did what and when.
CREATE TABLE concern_transitions (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id    text NOT NULL CHECK (agency_id <> ''),
  concern_id   uuid NOT NULL,
  kind         text NOT NULL CHECK (kind IN ('opened', 'routed', 'acknowledged', 'realerted',
                                             'escalated', 'resolved', 'cancelled')),
  status_after text NOT NULL CHECK (status_after IN ('open', 'acknowledged', 'resolved', 'cancelled')),
  level        smallint NOT NULL CHECK (level BETWEEN 0 AND 20),
  target_kind  text CHECK (target_kind IN ('clinical_on_call', 'receiving_clinician',
                                           'case_management_team', 'supervisor')),
  target_id    text,
  actor        text NOT NULL CHECK (actor <> ''),
  actor_role   text,
  occurred_at  timestamptz NOT NULL DEFAULT now(),
  FOREIGN KEY (agency_id, concern_id) REFERENCES concerns (agency_id, id)
);

CREATE INDEX concern_transitions_by_concern ON concern_transitions (agency_id, concern_id, occurred_at);

-- A missed deadline. The unique key makes the escalation of one level happen exactly once, also
-- when a sweeper restarts mid-sweep or two replicas sweep together.
CREATE TABLE escalation_breaches (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id         text NOT NULL CHECK (agency_id <> ''),
  concern_id        uuid NOT NULL,
  -- 'acknowledgement': not acknowledged in time → escalate one level. 'resolution': acknowledged
  -- but not resolved in the window → re-alert the owner. 'resolution_after_realert': still not
  -- resolved after the re-alert → escalate one level.
  deadline_kind     text NOT NULL CHECK (deadline_kind IN ('acknowledgement', 'resolution',
                                                          'resolution_after_realert')),
  -- The level whose deadline was missed.
  level             smallint NOT NULL CHECK (level BETWEEN 0 AND 20),
  deadline          timestamptz NOT NULL,
  detected_at       timestamptz NOT NULL DEFAULT now(),
  -- The next level notified; NULL when the chain was exhausted (the breach is still recorded).
  escalated_to_kind text CHECK (escalated_to_kind IN ('clinical_on_call', 'receiving_clinician',
                                                      'case_management_team', 'supervisor')),
  escalated_to_id   text,
  FOREIGN KEY (agency_id, concern_id) REFERENCES concerns (agency_id, id),
  UNIQUE (agency_id, concern_id, deadline_kind, level)
);

CREATE INDEX escalation_breaches_by_time ON escalation_breaches (agency_id, detected_at);
