-- Check-in service, sixteenth step: the reads of a check-in's context keep to their indexes as
-- the tables grow. check_in_contexts (0013) runs on its generic plan (0014), made once per
-- connection, and check_in_context_2 (0008) on the one PostgreSQL settles on after five calls.
-- Made while the agency's tables were small, these plans read every idempotency key, check-in,
-- occurrence and match of the agency at every read as the tables grew, until autovacuum analysed
-- them again (reproduced: 20,000 more of each after the plan was cached, 2 sequential scans of
-- each table per read). Every read in them has an index (enrollments and pathway versions by key,
-- the participant's check-ins and active matches, the enrollment's occurrences, the idempotency
-- key), so sequential scans are off inside both; and check_in_contexts looks each item's
-- idempotency key up by itself instead of joining to the keys, which with sequential scans off
-- still hashed every key of the agency. Its answers are unchanged.
CREATE OR REPLACE FUNCTION check_in_contexts(p_agency text, p_enrollments uuid[], p_scheduled text[],
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
      -- Looked up per item (a LIMIT is never hashed): as a join, the plan hashed every key of
      -- the agency, read through the index on the agency alone.
      LEFT JOIN LATERAL (SELECT k1.method, k1.request_hash, k1.response FROM idempotency_keys k1
                          WHERE k1.agency_id = p_agency
                            AND k1.idempotency_key = i.idempotency_key LIMIT 1) k ON true
     ORDER BY i.n;
END $$;

-- CREATE OR REPLACE resets the function's settings: its generic plan (0014), and no sequential
-- scans.
ALTER FUNCTION check_in_contexts(text, uuid[], text[], date[], text[], uuid[])
  SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION check_in_contexts(text, uuid[], text[], date[], text[], uuid[])
  SET enable_seqscan = off;
ALTER FUNCTION check_in_context_2(text, uuid, text, date, text, boolean, uuid[])
  SET enable_seqscan = off;
