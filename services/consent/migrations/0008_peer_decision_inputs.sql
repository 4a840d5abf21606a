-- Consent service, eighth step: a peer supporter's CheckAccess in one database round trip too.
-- "A peer supporter sees only their active matches" (the shared supporter_matches table) and the
-- decision inputs are one statement: no rows at all when the supporter is not actively matched
-- with the participant; otherwise one row of kind 'm' besides decision_inputs' rows.
CREATE FUNCTION peer_decision_inputs(p_agency text, p_participant text, p_supporter text)
RETURNS TABLE (kind text, id text, recipient_kind text, recipient_id text, purposes text,
               data_categories text, directive text, valid_from bigint, valid_until bigint,
               status text, revoked_at bigint, ended boolean)
LANGUAGE plpgsql AS $$
BEGIN
  IF coalesce(p_agency, '') = '' OR coalesce(p_supporter, '') = '' THEN
    RAISE EXCEPTION 'peer_decision_inputs without an agency or a supporter';
  END IF;
  -- Local to the statement's own (implicit) transaction, as in decision_inputs.
  PERFORM set_config('app.agency_id', p_agency, true);
  IF NOT EXISTS (SELECT 1 FROM supporter_matches m
                 WHERE m.participant_id = p_participant AND m.supporter_subject = p_supporter
                   AND m.active) THEN
    RETURN;
  END IF;
  RETURN QUERY
    SELECT 'm'::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
           NULL::bigint, NULL::bigint, NULL::text, NULL::bigint, false
    UNION ALL
    SELECT * FROM decision_inputs(p_agency, p_participant, p_supporter);
END
$$;
