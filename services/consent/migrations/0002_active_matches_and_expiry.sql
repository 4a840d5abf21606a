-- Consent service, second schema step: the local view of the matching service's active matches
-- (fed from MatchStartedEvent / MatchEndedEvent, or seeded directly while matching is absent),
-- and the expiry sweeper's right to find, across agencies, which agencies have consents to mark
-- EXPIRED (it then marks them in a transaction scoped to each agency).

-- One row per match the matching service started; ended_at set when it ended. A peer supporter
-- (by token subject) may see a participant's consents only while a row with ended_at IS NULL
-- links them.
CREATE TABLE active_matches (
  agency_id          text NOT NULL CHECK (agency_id <> ''),
  match_id           text NOT NULL CHECK (match_id <> ''),
  supporter_subject  text NOT NULL CHECK (supporter_subject <> ''),
  participant_id     text NOT NULL CHECK (participant_id <> ''),
  started_at         timestamptz NOT NULL DEFAULT now(),
  ended_at           timestamptz,
  PRIMARY KEY (agency_id, match_id)
);

CREATE INDEX active_matches_by_pair
  ON active_matches (agency_id, supporter_subject, participant_id) WHERE ended_at IS NULL;

-- The sweeper reads (never writes) active consents whose period has ended, in every agency, only
-- when it says so with app.maintenance.
CREATE POLICY maintenance_expiry_read ON consents FOR SELECT
  USING (current_setting('app.maintenance', true) = 'on'
         AND status = 'active' AND valid_until IS NOT NULL AND valid_until <= now());
