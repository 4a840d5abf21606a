-- Check-in service, thirteenth step: the reads of concurrent RecordCheckIn calls (one agency) run
-- together, as their writes do since 0011. check_in_contexts answers, in one statement, what
-- check_in_context_2 (0008) answers for each of several check-ins: one row per item, in the
-- items' order, with the item's number (1, 2, …) in `n`. Measured with pgbench on the bench's
-- data, reads per second: one per statement 8,200–10,500; eight per statement 22,000–31,000.
--
-- Nothing is locked: like the single read outside a transaction, each item's answer is checked by
-- its write (the enrollment's xmin, the idempotency key's INSERT). check_in_context_2 stays for
-- the locked read (RecordCheckIn's last attempt, RecordContactAttempt) and for binaries still
-- calling it during a rolling update.
CREATE FUNCTION check_in_contexts(p_agency text, p_enrollments uuid[], p_scheduled text[],
                                  p_days date[], p_idempotency_keys text[],
                                  p_known_pathways uuid[])
RETURNS TABLE (en enrollments, pw_id uuid, pw pathway_versions, en_version text, now_us bigint,
               o_supporter_id text, o_supporter_subject text, o_supervisor_subject text,
               o_wellbeing_drop_points integer, o_missed_contact_failed_attempts integer,
               o_latest_wellbeing text, o_occurrences text, o_idempotency_method text,
               o_idempotency_request_hash text, o_idempotency_response text, n bigint)
LANGUAGE plpgsql AS $$
BEGIN
  IF coalesce(p_agency, '') = '' THEN
    RAISE EXCEPTION 'check_in_contexts without an agency';
  END IF;
  IF cardinality(p_enrollments) IS DISTINCT FROM cardinality(p_scheduled)
     OR cardinality(p_enrollments) IS DISTINCT FROM cardinality(p_days)
     OR cardinality(p_enrollments) IS DISTINCT FROM cardinality(p_idempotency_keys) THEN
    RAISE EXCEPTION 'check_in_contexts: the item arrays differ in length';
  END IF;
  PERFORM set_config('app.agency_id', p_agency, true);
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
               AND (s.id::text = i.scheduled OR s.due_on BETWEEN i.day - 16 AND i.day + 1)),
           k.method, encode(k.request_hash, 'hex'), encode(k.response, 'base64'), i.n
      FROM unnest(p_enrollments, p_scheduled, p_days, p_idempotency_keys) WITH ORDINALITY
             AS i(enrollment, scheduled, day, idempotency_key, n)
      LEFT JOIN (enrollments e JOIN pathway_versions p
                   ON p.pathway_key = e.pathway_key AND p.version = e.pathway_version)
        ON e.id = i.enrollment
      LEFT JOIN LATERAL (SELECT sm.supporter_id, sm.supporter_subject, sm.supervisor_subject
                           FROM supporter_matches sm
                          WHERE sm.participant_id = e.participant_id AND sm.active
                          ORDER BY sm.started_at DESC NULLS LAST LIMIT 1) m ON true
      LEFT JOIN idempotency_keys k
        ON k.agency_id = p_agency AND k.idempotency_key = i.idempotency_key
     ORDER BY i.n;
END $$;
