-- Participants' ratings of the peer support of an enrollment (RecordParticipantFeedback). The
-- comment is the participant's own words: it stays here, never in events or logs.
CREATE TABLE IF NOT EXISTS participant_feedback (
  id               uuid PRIMARY KEY,
  agency_id        text NOT NULL CHECK (agency_id <> ''),
  enrollment_id    uuid NOT NULL,
  participant_id   text NOT NULL CHECK (participant_id <> ''),
  rating           smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
  comment          text NOT NULL DEFAULT '' CHECK (length(comment) <= 2000),
  given_at         timestamptz NOT NULL,
  recorded_at      timestamptz NOT NULL DEFAULT now(),
  recorded_by      text NOT NULL CHECK (recorded_by <> ''),
  recorded_by_role text NOT NULL CHECK (recorded_by_role <> ''),
  FOREIGN KEY (agency_id, enrollment_id) REFERENCES enrollments (agency_id, id)
);
CREATE INDEX IF NOT EXISTS participant_feedback_by_enrollment
  ON participant_feedback (agency_id, enrollment_id, given_at DESC);
