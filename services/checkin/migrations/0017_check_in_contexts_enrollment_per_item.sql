-- Check-in service, seventeenth step: check_in_contexts looks each item's enrollment up by its
-- key in the agency as the tables grow. enrollments has two read policies, the agency's and the
-- maintenance sweep's (0002), which PostgreSQL ORs, so the agency alone is no index condition;
-- the function's generic plan (0014), made once per connection while the agency had few
-- enrollments, joined the items to all of them, read through the primary key's index whole and
-- kept (sequential scans are off since 0016): every RecordCheckIn batch read every enrollment of
-- every agency (reproduced: 20,061 rows and about 100 index pages per read after 20,000 more
-- enrollments). Each item's enrollment, with its pathway version, is now looked up by itself
-- (LATERAL ... LIMIT 1, as the idempotency key since 0016), naming the agency. Answers are
-- unchanged; body otherwise as in 0016, with its settings.
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
    SELECT ep.e, ep.pathway_id,
           CASE WHEN ep.pathway_id = ANY (p_known_pathways) THEN NULL ELSE ep.p END, ep.xmin,
           (date_part('epoch', now()) * 1000000)::bigint,
           m.supporter_id::text, m.supporter_subject, m.supervisor_subject,
           coalesce((SELECT pp.wellbeing_drop_points FROM program_policies pp), 2),
           coalesce((SELECT pp.missed_contact_failed_attempts FROM program_policies pp), 3),
           (SELECT string_agg(w.us || ':' || w.wellbeing, ',')
              FROM (SELECT (date_part('epoch', c.occurred_at) * 1000000)::bigint AS us,
                           c.wellbeing
                      FROM check_ins c
                     WHERE c.participant_id = ep.participant_id AND c.wellbeing IS NOT NULL
                     ORDER BY c.occurred_at DESC, c.recorded_at DESC LIMIT 3) w),
           (SELECT string_agg(s.id::text || ' ' || to_char(s.due_on, 'YYYY-MM-DD') || ' ' ||
                              s.status || ' ' ||
                              (date_part('epoch', s.window_end) * 1000000)::bigint, ',')
              FROM scheduled_check_ins s
             WHERE s.enrollment_id = ep.id
               AND (s.id::text = i.scheduled OR s.due_on BETWEEN i.day - 16 AND i.day + 1)),
           k.method, encode(k.request_hash, 'hex'), encode(k.response, 'base64'), i.n
      FROM unnest(p_enrollments, p_scheduled, p_days, p_idempotency_keys) WITH ORDINALITY
             AS i(enrollment, scheduled, day, idempotency_key, n)
      -- Looked up per item by its key, in this agency: as a join, the plan read every enrollment
      -- (the maintenance sweep's read policy, ORed with the agency's, leaves the agency no index
      -- condition unless the query names it).
      LEFT JOIN LATERAL (SELECT e1 AS e, e1.id, e1.participant_id, e1.xmin::text AS xmin,
                                p1 AS p, p1.id AS pathway_id
                           FROM enrollments e1 JOIN pathway_versions p1
                             ON p1.pathway_key = e1.pathway_key AND p1.version = e1.pathway_version
                          WHERE e1.agency_id = p_agency AND e1.id = i.enrollment LIMIT 1) ep ON true
      LEFT JOIN LATERAL (SELECT sm.supporter_id, sm.supporter_subject, sm.supervisor_subject
                           FROM supporter_matches sm
                          WHERE sm.participant_id = ep.participant_id AND sm.active
                          ORDER BY sm.started_at DESC NULLS LAST LIMIT 1) m ON true
      -- Looked up per item (a LIMIT is never hashed): as a join, the plan hashed every key of
      -- the agency, read through the index on the agency alone.
      LEFT JOIN LATERAL (SELECT k1.method, k1.request_hash, k1.response FROM idempotency_keys k1
                          WHERE k1.agency_id = p_agency
                            AND k1.idempotency_key = i.idempotency_key LIMIT 1) k ON true
     ORDER BY i.n;
END $$;

-- CREATE OR REPLACE resets the function's settings: its generic plan (0014), and no sequential
-- scans (0016).
ALTER FUNCTION check_in_contexts(text, uuid[], text[], date[], text[], uuid[])
  SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION check_in_contexts(text, uuid[], text[], date[], text[], uuid[])
  SET enable_seqscan = off;
