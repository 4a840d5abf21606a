-- Participants' ratings of their peer support (check-in FeedbackRecordedEvent): the person
-- feedback measure. Only the rating: the comment stays in the check-in service.
CREATE TABLE IF NOT EXISTS participant_feedback (
  agency_id      text NOT NULL CHECK (agency_id <> ''),
  feedback_id    uuid NOT NULL,
  enrollment_id  uuid NOT NULL,
  participant_id text NOT NULL CHECK (participant_id <> ''),
  pathway_key    text NOT NULL,
  rating         smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
  given_at       timestamptz NOT NULL,
  PRIMARY KEY (agency_id, feedback_id)
);
CREATE INDEX IF NOT EXISTS participant_feedback_by_time ON participant_feedback (agency_id, given_at);

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'participant_feedback'
                 AND policyname = 'evaluation_replay') THEN
    CREATE POLICY evaluation_replay_read ON participant_feedback FOR SELECT
      USING (current_setting('app.evaluation_replay', true) = 'on');
    CREATE POLICY evaluation_replay ON participant_feedback FOR DELETE
      USING (current_setting('app.evaluation_replay', true) = 'on');
  END IF;
END
$$;
