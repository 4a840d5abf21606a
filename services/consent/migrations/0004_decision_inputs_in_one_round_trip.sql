-- What an access decision reads, in one statement that scopes itself to the agency: CheckAccess
-- calls it outside an explicit transaction, so a decision costs one database round trip (no
-- BEGIN, set_config or COMMIT of their own) and its plan is cached per connection. Row-level
-- security still applies: the rows are read after app.agency_id is set, under the caller's role.
-- Same columns as store::LoadDecisionInputs: 'c' rows are consents (every status: revoked and
-- expired ones are reasons), 'e' rows the clinician's open emergency accesses.
CREATE FUNCTION decision_inputs(p_agency text, p_participant text, p_clinician text)
RETURNS TABLE (kind text, id text, recipient_kind text, recipient_id text, purposes text,
               data_categories text, directive text, valid_from bigint, valid_until bigint,
               status text, revoked_at bigint, ended boolean)
LANGUAGE plpgsql AS $$
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
    FROM consents c WHERE c.participant_id = p_participant
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
