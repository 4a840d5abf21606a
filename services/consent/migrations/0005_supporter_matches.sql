-- Consent service, fifth schema step: the peer relationship in the shape every consuming service
-- keeps (common/supporter_matches.h, fed by the shared ApplySupporterMatchEvent), replacing the
-- consent-only `active_matches` of step 2. Its rows move over: matches whose id is not a UUID
-- (seeded by hand) keep a fresh one; their supporter id is unknown (the nil UUID) and their
-- supervisor empty until the matching log names them again (a replay fills both).
CREATE TABLE supporter_matches (
  agency_id          text NOT NULL CHECK (agency_id <> ''),
  match_id           uuid NOT NULL,
  supporter_id       uuid NOT NULL,
  supporter_subject  text NOT NULL CHECK (supporter_subject <> ''),
  participant_id     text NOT NULL CHECK (participant_id <> ''),
  active             boolean NOT NULL DEFAULT true,
  started_at         timestamptz,
  ended_at           timestamptz,
  supervisor_subject text NOT NULL DEFAULT '',
  PRIMARY KEY (agency_id, match_id),
  CHECK (active = (ended_at IS NULL))
);

CREATE INDEX supporter_matches_active_by_participant
  ON supporter_matches (agency_id, participant_id) WHERE active;
CREATE INDEX supporter_matches_by_supervisor
  ON supporter_matches (agency_id, supervisor_subject, supporter_subject)
  WHERE supervisor_subject <> '';

INSERT INTO supporter_matches (agency_id, match_id, supporter_id, supporter_subject,
                               participant_id, active, started_at, ended_at)
SELECT agency_id,
       CASE WHEN match_id ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
            THEN match_id::uuid ELSE gen_random_uuid() END,
       '00000000-0000-0000-0000-000000000000', supporter_subject, participant_id,
       ended_at IS NULL, started_at, ended_at
FROM active_matches;

DROP TABLE active_matches;
