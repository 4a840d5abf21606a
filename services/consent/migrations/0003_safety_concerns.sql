-- Consent service, third schema step: the local view of the escalation service's concerns, fed
-- from its ConcernOpenedEvent / ConcernResolvedEvent / ConcernCancelledEvent when
-- --escalation_address is set. RequestEmergencyAccess needs an open IMMEDIATE_SAFETY concern
-- about the participant; a concern that closes ends the live grants it justified.
CREATE TABLE safety_concerns (
  agency_id         text NOT NULL CHECK (agency_id <> ''),
  concern_id        text NOT NULL CHECK (concern_id <> ''),
  participant_id    text NOT NULL CHECK (participant_id <> ''),
  immediate_safety  boolean NOT NULL,
  opened_at         timestamptz NOT NULL DEFAULT now(),
  closed_at         timestamptz,
  PRIMARY KEY (agency_id, concern_id)
);
