-- Matching service, third schema step: what the check-in and escalation services' events say
-- about a supporter's activity, for GetSupporterWorkload (check-ins recorded in the last 7 days,
-- concerns raised and still open). Kept by this service's event consumers; ids and times only.

-- One row per check-in a supporter recorded (CheckInRecordedEvent). `supporter_ref` is the
-- event's supporter (the matching supporter id, or a subject: both are matched on read).
CREATE TABLE supporter_check_ins (
  agency_id     text NOT NULL CHECK (agency_id <> ''),
  check_in_id   text NOT NULL CHECK (check_in_id <> ''),
  supporter_ref text NOT NULL CHECK (supporter_ref <> ''),
  occurred_at   timestamptz NOT NULL,
  PRIMARY KEY (agency_id, check_in_id)
);

CREATE INDEX supporter_check_ins_by_supporter
  ON supporter_check_ins (agency_id, supporter_ref, occurred_at);

-- One row per concern raised by a staff member (ConcernOpenedEvent), closed by
-- ConcernResolvedEvent / ConcernCancelledEvent.
CREATE TABLE supporter_concerns (
  agency_id  text NOT NULL CHECK (agency_id <> ''),
  concern_id text NOT NULL CHECK (concern_id <> ''),
  raised_by  text NOT NULL CHECK (raised_by <> ''),
  open       boolean NOT NULL DEFAULT true,
  PRIMARY KEY (agency_id, concern_id)
);

CREATE INDEX supporter_concerns_open ON supporter_concerns (agency_id, raised_by) WHERE open;

-- Up to when each source's events were applied for the agency (`occurred_at` of the last one).
CREATE TABLE activity_as_of (
  agency_id text NOT NULL CHECK (agency_id <> ''),
  source    text NOT NULL CHECK (source IN ('checkin', 'escalation')),
  as_of     timestamptz NOT NULL,
  PRIMARY KEY (agency_id, source)
);
