-- Escalation service, fourth schema step: the check-in service's enrollments as far as routing
-- needs them (EnrollmentStartedEvent / EnrollmentEndedEvent, when --checkin_address is set). A
-- concern raised by hand for an enrollment goes to that enrollment's receiving clinician, and an
-- enrollment of another participant is refused.
CREATE TABLE IF NOT EXISTS enrollments (
  agency_id           text NOT NULL CHECK (agency_id <> ''),
  enrollment_id       uuid NOT NULL,
  participant_id      text NOT NULL CHECK (participant_id <> ''),
  receiving_clinician text NOT NULL DEFAULT '',
  active              boolean NOT NULL DEFAULT true,
  PRIMARY KEY (agency_id, enrollment_id)
);
