-- Escalation service, seventeenth step: a list read from the viewer's side. A viewer who acts for
-- no team (a peer supporter, a supervisor) may see few of the agency's concerns: those they raised,
-- those routed to them in person and, for a supervisor, those of their supporters and of their
-- supporters' participants. ListConcerns walked concerns_listed and tested every concern of the
-- agency until their page was full: 400 ms a page among 400,000 concerns for one who sees none,
-- growing with the agency's history. It now gathers their concerns from their side, through
-- concerns_by_raiser, concerns_by_participant and this index of the transitions that routed a
-- concern to a person.
--
-- Partial on the person target kinds: routing to a team (most concerns) adds no entry to it.
-- Built while writes wait.
CREATE INDEX IF NOT EXISTS concern_transitions_to_person ON concern_transitions (agency_id, target_id)
  WHERE target_kind IN ('receiving_clinician', 'supervisor');
