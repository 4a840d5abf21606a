-- Consent service, first schema: consents, the accounting of disclosures, break-glass accesses.
--
-- Conventions of every PeerPath migration (the runner supplies the transaction and search_path):
-- every row carries agency_id (the tenant); a parent table has UNIQUE (agency_id, id) so children
-- reference it by (agency_id, parent_id) and a row can never point into another agency; ids owned
-- by other services (participants, concerns, actors) are plain values, never foreign keys.
-- Participant ids are the agency's own client identifiers (text), as county systems know them;
-- actors are the `sub` of the caller's token.
-- Closed value sets are lower_snake_case text with CHECK constraints; the store maps them to the
-- proto enums. Widening a set is a later migration (drop and re-add the constraint).

-- A participant's (or their legal representative's) decision to share — or, with directive
-- 'deny', never to share — data categories with a recipient for purposes over a period.
-- Rows are never deleted or rewritten: a revocation sets status and the revoked_* columns, an
-- expiry sets status 'expired' once the sweeper has noticed it (and emitted its event).
CREATE TABLE consents (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id         text NOT NULL CHECK (agency_id <> ''),
  participant_id    text NOT NULL CHECK (participant_id <> ''),
  given_by          text NOT NULL DEFAULT 'participant'
                    CHECK (given_by IN ('participant', 'legal_representative')),
  -- Recipient: a role ("clinician"), a team id, a named person (subject) or an external
  -- organisation id.
  recipient_kind    text NOT NULL CHECK (recipient_kind IN ('role', 'team', 'person', 'organization')),
  recipient_id      text NOT NULL CHECK (recipient_id <> ''),
  purposes          text[] NOT NULL CHECK (
                      cardinality(purposes) > 0
                      AND array_position(purposes, NULL) IS NULL
                      AND purposes <@ ARRAY['peer_support', 'care_coordination', 'treatment',
                                            'evaluation', 'billing']::text[]),
  -- 'substance_use_treatment_records' (42 CFR Part 2 style) is only ever covered by a consent
  -- that names it here explicitly; no wildcard exists.
  data_categories   text[] NOT NULL CHECK (
                      cardinality(data_categories) > 0
                      AND array_position(data_categories, NULL) IS NULL
                      AND data_categories <@ ARRAY['check_in_summaries', 'concerns_and_escalations',
                                                   'appointment_status',
                                                   'recovery_goals_and_warning_signs',
                                                   'contact_details',
                                                   'substance_use_treatment_records']::text[]),
  -- An explicit 'deny' ("do not share with X") beats any permit for the same recipient.
  directive         text NOT NULL DEFAULT 'permit' CHECK (directive IN ('permit', 'deny')),
  valid_from        timestamptz NOT NULL,
  valid_until       timestamptz,
  obtained_method   text NOT NULL
                    CHECK (obtained_method IN ('written', 'verbal_witnessed', 'electronic')),
  obtained_by       text NOT NULL CHECK (obtained_by <> ''),
  witnessed_by      text,
  form_reference    text,
  status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'expired')),
  revoked_at        timestamptz,
  revoked_by        text,
  revocation_reason text,
  expired_at        timestamptz,  -- When the expiry was noticed, not valid_until.
  created_at        timestamptz NOT NULL DEFAULT now(),
  created_by        text NOT NULL CHECK (created_by <> ''),
  UNIQUE (agency_id, id),
  CHECK (valid_until IS NULL OR valid_until > valid_from),
  CHECK (obtained_method <> 'verbal_witnessed' OR witnessed_by IS NOT NULL),
  CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)),
  CHECK (status <> 'revoked' OR (revoked_by IS NOT NULL AND revocation_reason IS NOT NULL)),
  CHECK ((status = 'expired') = (expired_at IS NOT NULL)),
  CHECK (status <> 'expired' OR valid_until IS NOT NULL)
);

-- CheckAccess and CheckGates read every consent of one participant (a few dozen at most).
CREATE INDEX consents_by_participant ON consents (agency_id, participant_id);
-- The expiry sweeper: active consents with an end, soonest first.
CREATE INDEX consents_expiring ON consents (valid_until) WHERE status = 'active' AND valid_until IS NOT NULL;

-- The accounting of disclosures: one row per disclosure of a participant's data to anyone outside
-- their own peer relationship. Append-only. A denied share writes no row here (only an audit row).
CREATE TABLE disclosures (
  id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id           text NOT NULL CHECK (agency_id <> ''),
  participant_id      text NOT NULL CHECK (participant_id <> ''),
  disclosed_by        text NOT NULL CHECK (disclosed_by <> ''),
  disclosed_by_role   text NOT NULL CHECK (disclosed_by_role <> ''),
  recipient_kind      text NOT NULL CHECK (recipient_kind IN ('role', 'team', 'person', 'organization')),
  recipient_id        text NOT NULL CHECK (recipient_id <> ''),
  purpose             text NOT NULL CHECK (purpose IN ('peer_support', 'care_coordination', 'treatment',
                                                       'evaluation', 'billing')),
  data_categories     text[] NOT NULL CHECK (
                        cardinality(data_categories) > 0
                        AND array_position(data_categories, NULL) IS NULL
                        AND data_categories <@ ARRAY['check_in_summaries', 'concerns_and_escalations',
                                                     'appointment_status',
                                                     'recovery_goals_and_warning_signs',
                                                     'contact_details',
                                                     'substance_use_treatment_records']::text[]),
  -- The consent that permitted it; NULL only for a disclosure under emergency access.
  consent_id          uuid,
  emergency_access_id uuid,
  -- Set whenever substance-use treatment records are disclosed: the recipient must be told that
  -- redisclosure is prohibited.
  redisclosure_notice boolean NOT NULL DEFAULT false,
  disclosed_at        timestamptz NOT NULL DEFAULT now(),
  FOREIGN KEY (agency_id, consent_id) REFERENCES consents (agency_id, id),
  CHECK ((consent_id IS NULL) <> (emergency_access_id IS NULL)),
  CHECK (NOT ('substance_use_treatment_records' = ANY (data_categories)) OR redisclosure_notice)
);

-- ListDisclosures(participant, period).
CREATE INDEX disclosures_by_participant ON disclosures (agency_id, participant_id, disclosed_at);
CREATE INDEX disclosures_by_consent ON disclosures (agency_id, consent_id) WHERE consent_id IS NOT NULL;

-- Break-glass: a clinician reads the safety-relevant data of a participant without a sharing
-- consent, while a safety concern (owned by the escalation service) is open, for a stated reason
-- and a short time. Every grant is reviewed afterwards by a program admin.
CREATE TABLE emergency_accesses (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id       text NOT NULL CHECK (agency_id <> ''),
  participant_id  text NOT NULL CHECK (participant_id <> ''),
  clinician_id    text NOT NULL CHECK (clinician_id <> ''),
  concern_id      uuid NOT NULL,
  reason          text NOT NULL CHECK (btrim(reason) <> ''),
  -- Only safety-relevant categories can ever be opened this way.
  data_categories text[] NOT NULL CHECK (
                    cardinality(data_categories) > 0
                    AND array_position(data_categories, NULL) IS NULL
                    AND data_categories <@ ARRAY['check_in_summaries', 'concerns_and_escalations',
                                                 'appointment_status',
                                                 'recovery_goals_and_warning_signs',
                                                 'contact_details']::text[]),
  granted_at      timestamptz NOT NULL DEFAULT now(),
  expires_at      timestamptz NOT NULL,
  ended_at        timestamptz,  -- Ended early (the concern closed).
  reviewed_at     timestamptz,
  reviewed_by     text,
  review_outcome  text CHECK (review_outcome IN ('appropriate', 'inappropriate', 'needs_follow_up')),
  review_note     text,
  UNIQUE (agency_id, id),
  -- A short time: hours, never days.
  CHECK (expires_at > granted_at AND expires_at <= granted_at + interval '24 hours'),
  CHECK (ended_at IS NULL OR ended_at >= granted_at),
  CHECK ((reviewed_at IS NULL) = (reviewed_by IS NULL)),
  CHECK ((reviewed_at IS NULL) = (review_outcome IS NULL))
);

ALTER TABLE disclosures
  ADD FOREIGN KEY (agency_id, emergency_access_id) REFERENCES emergency_accesses (agency_id, id);

-- Access decisions look up a live grant for (participant, clinician).
CREATE INDEX emergency_accesses_by_participant
  ON emergency_accesses (agency_id, participant_id, clinician_id, expires_at);
-- The program admin's review queue.
CREATE INDEX emergency_accesses_unreviewed
  ON emergency_accesses (agency_id, granted_at) WHERE reviewed_at IS NULL;
