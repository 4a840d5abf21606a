-- Consent service, eleventh step: a decision's consents are found through the agency's part of
-- their index. consents has two read policies, the agency's own and the expiry sweep's
-- (maintenance_expiry_read, 0002), and PostgreSQL joins them with OR, so "agency_id = the
-- caller's agency" alone is not a condition an index can start from: the plan ORed the index on
-- (agency_id, participant_id) with the sweep's index of consents past their end, and so read, at
-- every decision, every consent of every agency that had expired and was not yet marked so (after
-- a missed sweep or a date on which many expire: 20,000 rows per decision in the test; with a
-- table analysed while tiny, the whole index for the participant instead). The query now names
-- its agency itself, the one the function scopes itself to; the policies apply as before. Body
-- otherwise as in 0004, with 0010's setting.
CREATE OR REPLACE FUNCTION decision_inputs(p_agency text, p_participant text, p_clinician text)
RETURNS TABLE (kind text, id text, recipient_kind text, recipient_id text, purposes text,
               data_categories text, directive text, valid_from bigint, valid_until bigint,
               status text, revoked_at bigint, ended boolean)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
BEGIN
  IF coalesce(p_agency, '') = '' THEN
    RAISE EXCEPTION 'decision_inputs without an agency';
  END IF;
  -- Local to the statement's own (implicit) transaction.
  PERFORM set_config('app.agency_id', p_agency, true);
  RETURN QUERY
    SELECT 'c'::text, c.id::text, c.recipient_kind, c.recipient_id,
           array_to_string(c.purposes, ','), array_to_string(c.data_categories, ','),
           c.directive, (extract(epoch FROM c.valid_from) * 1000000)::bigint,
           (extract(epoch FROM c.valid_until) * 1000000)::bigint, c.status,
           (extract(epoch FROM c.revoked_at) * 1000000)::bigint, false
    FROM consents c WHERE c.agency_id = p_agency AND c.participant_id = p_participant
    UNION ALL
    SELECT 'e'::text, g.id::text, 'person'::text, g.clinician_id, 'treatment'::text,
           array_to_string(g.data_categories, ','), 'permit'::text,
           (extract(epoch FROM g.granted_at) * 1000000)::bigint,
           (extract(epoch FROM g.expires_at) * 1000000)::bigint, 'active'::text, NULL::bigint,
           g.ended_at IS NOT NULL
    FROM emergency_accesses g
    WHERE g.participant_id = p_participant AND p_clinician <> '' AND g.clinician_id = p_clinician
      AND g.ended_at IS NULL AND g.expires_at > now();
END
$$;
