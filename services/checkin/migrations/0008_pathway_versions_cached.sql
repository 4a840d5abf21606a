-- check_in_context (0006) returned the enrollment's pathway version as a whole row, so every
-- check-in shipped the version's definition (1.7 to 3.7 KB of JSON): detoasted, printed, sent and
-- parsed again, although a version never changes once published. check_in_context_2 returns the
-- version's id, and its row only when the caller does not hold it already (p_known_pathways: the
-- versions the service has cached for the agency). Otherwise it is check_in_context, which stays
-- for binaries still calling it during a rolling update.
CREATE FUNCTION check_in_context_2(p_agency text, p_enrollment uuid, p_scheduled text,
                                   p_day date, p_idempotency_key text, p_lock boolean,
                                   p_known_pathways uuid[])
RETURNS TABLE (en enrollments, pw_id uuid, pw pathway_versions, en_version text, now_us bigint,
               o_supporter_id text, o_supporter_subject text, o_supervisor_subject text,
               o_wellbeing_drop_points integer, o_missed_contact_failed_attempts integer,
               o_latest_wellbeing text, o_occurrences text, o_idempotency_method text,
               o_idempotency_request_hash text, o_idempotency_response text)
LANGUAGE plpgsql AS $$
BEGIN
  IF coalesce(p_agency, '') = '' THEN
    RAISE EXCEPTION 'check_in_context_2 without an agency';
  END IF;
  PERFORM set_config('app.agency_id', p_agency, true);
  IF p_lock THEN
    PERFORM 1 FROM enrollments e WHERE e.id = p_enrollment FOR UPDATE;
  END IF;
  RETURN QUERY
    SELECT e, p.id, CASE WHEN p.id = ANY (p_known_pathways) THEN NULL ELSE p END, e.xmin::text,
           (date_part('epoch', now()) * 1000000)::bigint,
           m.supporter_id::text, m.supporter_subject, m.supervisor_subject,
           coalesce((SELECT pp.wellbeing_drop_points FROM program_policies pp), 2),
           coalesce((SELECT pp.missed_contact_failed_attempts FROM program_policies pp), 3),
           (SELECT string_agg(w.us || ':' || w.wellbeing, ',')
              FROM (SELECT (date_part('epoch', c.occurred_at) * 1000000)::bigint AS us,
                           c.wellbeing
                      FROM check_ins c
                     WHERE c.participant_id = e.participant_id AND c.wellbeing IS NOT NULL
                     ORDER BY c.occurred_at DESC, c.recorded_at DESC LIMIT 3) w),
           (SELECT string_agg(s.id::text || ' ' || to_char(s.due_on, 'YYYY-MM-DD') || ' ' ||
                              s.status || ' ' ||
                              (date_part('epoch', s.window_end) * 1000000)::bigint, ',')
              FROM scheduled_check_ins s
             WHERE s.enrollment_id = e.id
               AND (s.id::text = p_scheduled OR s.due_on BETWEEN p_day - 16 AND p_day + 1)),
           k.method, encode(k.request_hash, 'hex'), encode(k.response, 'base64')
      FROM (SELECT 1) AS one
      LEFT JOIN (enrollments e JOIN pathway_versions p
                   ON p.pathway_key = e.pathway_key AND p.version = e.pathway_version)
        ON e.id = p_enrollment
      LEFT JOIN LATERAL (SELECT sm.supporter_id, sm.supporter_subject, sm.supervisor_subject
                           FROM supporter_matches sm
                          WHERE sm.participant_id = e.participant_id AND sm.active
                          ORDER BY sm.started_at DESC NULLS LAST LIMIT 1) m ON true
      LEFT JOIN idempotency_keys k
        ON k.agency_id = p_agency AND k.idempotency_key = p_idempotency_key;
END $$;
