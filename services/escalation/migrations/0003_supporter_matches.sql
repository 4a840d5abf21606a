-- Escalation service, third schema step: the peer relationship, kept from the matching service's
-- events (common/supporter_matches.h) when --matching_address is set. It names the supporter's
-- supervisor (routing target SUPPORTER_SUPERVISOR), lets a supervisor see the concerns their
-- supporters raised, and limits who may raise a concern: a peer supporter only for the
-- participants of their active matches, a supervisor only for those of the supporters they
-- supervise.
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
