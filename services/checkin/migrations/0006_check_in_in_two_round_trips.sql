-- RecordCheckIn in two database round trips, neither inside an explicit transaction: one read of
-- everything the check-in is decided on, one write of everything it changes. Each function scopes
-- itself to the agency first (row-level security still applies, under the caller's role), runs as
-- one statement (its own implicit transaction) and keeps its plans per connection.
--
-- No lock is held between the two: the write succeeds only if the enrollment row is still the
-- version the read saw (its xmin; every change of an enrollment writes a new row version), and
-- fails with serialization_failure otherwise, when the caller reads again and decides again. The
-- idempotency key is claimed by a plain INSERT in the write: a concurrent first call with the same
-- key makes it fail with unique_violation, and the caller's second read finds the stored response.

-- The enrollment (as its row), its pathway version (as its row), the row version, the database's
-- time, the participant's active supporter, the program's thresholds, the participant's latest
-- three wellbeing scores ("micros:score,…", newest first), the enrollment's occurrences around
-- p_day or the named one ("id YYYY-MM-DD status window_end_micros,…") and the idempotency key's
-- earlier use (method, request hash hex, response base64), each NULL when absent. Always one row:
-- `en` is NULL when the enrollment is not in the agency. p_lock: lock the enrollment (callers that
-- do run inside a transaction, e.g. RecordContactAttempt).
CREATE FUNCTION check_in_context(p_agency text, p_enrollment uuid, p_scheduled text, p_day date,
                                 p_idempotency_key text, p_lock boolean)
RETURNS TABLE (en enrollments, pw pathway_versions, en_version text, now_us bigint,
               o_supporter_id text, o_supporter_subject text, o_supervisor_subject text,
               o_wellbeing_drop_points integer, o_missed_contact_failed_attempts integer,
               o_latest_wellbeing text, o_occurrences text, o_idempotency_method text,
               o_idempotency_request_hash text, o_idempotency_response text)
LANGUAGE plpgsql AS $$
BEGIN
  IF coalesce(p_agency, '') = '' THEN
    RAISE EXCEPTION 'check_in_context without an agency';
  END IF;
  PERFORM set_config('app.agency_id', p_agency, true);
  IF p_lock THEN
    PERFORM 1 FROM enrollments e WHERE e.id = p_enrollment FOR UPDATE;
  END IF;
  RETURN QUERY
    SELECT e, p, e.xmin::text, (date_part('epoch', now()) * 1000000)::bigint,
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

-- Writes a decided check-in: claims the idempotency key with the response, updates the
-- enrollment's contact state (only if it is still version p_enrollment_version), completes or
-- creates the occurrence, inserts the check-in, cancels the remaining due occurrences when routine
-- engagement stops, appends the events to the outbox and the audit row.
CREATE FUNCTION record_check_in(
    p_agency text, p_check_in uuid, p_enrollment uuid, p_enrollment_version text,
    p_scheduled text, p_participant text, p_supporter text, p_recorded_by text, p_role text,
    p_pathway_key text, p_pathway_version integer, p_answers jsonb, p_wellbeing integer,
    p_contact_mode text, p_occurred_us bigint, p_recorded_us bigint, p_late_us bigint,
    p_fired_rule_ids text[], p_reconnection boolean, p_stops_routine boolean, p_due_on text,
    p_window_start_us bigint, p_window_end_us bigint, p_event_types text[],
    p_event_payloads text[], p_event_ids text[], p_idempotency_key text, p_method text,
    p_request_hash text, p_response text, p_actor text, p_actor_role text, p_action text,
    p_request_id text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  occurred timestamptz := timestamptz 'epoch' + p_occurred_us * interval '1 microsecond';
  recorded timestamptz := timestamptz 'epoch' + p_recorded_us * interval '1 microsecond';
  window_end timestamptz := timestamptz 'epoch' + p_window_end_us * interval '1 microsecond';
BEGIN
  IF coalesce(p_agency, '') = '' THEN
    RAISE EXCEPTION 'record_check_in without an agency';
  END IF;
  PERFORM set_config('app.agency_id', p_agency, true);
  INSERT INTO idempotency_keys (agency_id, idempotency_key, method, request_hash, response)
  VALUES (p_agency, p_idempotency_key, p_method, decode(p_request_hash, 'hex'),
          decode(p_response, 'base64'));
  UPDATE enrollments
     SET last_contact_at = GREATEST(coalesce(last_contact_at, occurred), occurred),
         failed_attempts_in_a_row = 0,
         engagement_stage_changed_at = CASE WHEN engagement_stage <> 'engaged' THEN recorded
                                            ELSE engagement_stage_changed_at END,
         engagement_stage = 'engaged',
         routine_stopped_at = CASE WHEN p_stops_routine AND routine THEN recorded
                                   ELSE routine_stopped_at END,
         routine = routine AND NOT p_stops_routine
   WHERE id = p_enrollment AND xmin = p_enrollment_version::xid;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'enrollment % changed since it was read', p_enrollment
      USING ERRCODE = 'serialization_failure';
  END IF;
  IF p_due_on IS NOT NULL THEN
    INSERT INTO scheduled_check_ins (id, agency_id, enrollment_id, due_on, window_start,
                                     window_end, status, status_changed_at)
    VALUES (p_scheduled::uuid, p_agency, p_enrollment, p_due_on::date,
            timestamptz 'epoch' + p_window_start_us * interval '1 microsecond', window_end,
            'completed', recorded)
    ON CONFLICT (agency_id, enrollment_id, due_on)
    DO UPDATE SET status = 'completed', status_changed_at = recorded;
  END IF;
  INSERT INTO check_ins (id, agency_id, enrollment_id, scheduled_check_in_id, participant_id,
                         supporter_id, recorded_by, recorded_by_role, pathway_key,
                         pathway_version, answers, wellbeing, contact_mode, occurred_at,
                         recorded_at, window_end, late_by, fired_rule_ids, is_reconnection)
  VALUES (p_check_in, p_agency, p_enrollment, NULLIF(p_scheduled, '')::uuid, p_participant,
          NULLIF(p_supporter, '')::uuid, p_recorded_by, p_role, p_pathway_key, p_pathway_version,
          p_answers, NULLIF(p_wellbeing, 0)::smallint, p_contact_mode, occurred, recorded,
          window_end, p_late_us * interval '1 microsecond', p_fired_rule_ids, p_reconnection);
  IF p_stops_routine THEN
    UPDATE scheduled_check_ins SET status = 'cancelled', status_changed_at = recorded
     WHERE enrollment_id = p_enrollment AND status = 'due' AND id::text <> p_scheduled;
  END IF;
  INSERT INTO outbox (event_id, agency_id, event_type, aggregate_id, payload)
  SELECT i::uuid, p_agency, t, p_enrollment::text, decode(p, 'base64')
    FROM unnest(p_event_types, p_event_payloads, p_event_ids) WITH ORDINALITY AS x(t, p, i, n)
   ORDER BY n;
  PERFORM audit_append(p_agency, p_actor, p_actor_role, p_action, 'check_in', p_check_in::text,
                       p_participant, 'allowed', p_request_id);
END $$;

-- The participant's latest three wellbeing scores straight from the index, tie-break included,
-- however long their history (the former index left the tie-break to a sort of every score).
CREATE INDEX check_ins_latest_wellbeing
  ON check_ins (agency_id, participant_id, occurred_at DESC, recorded_at DESC)
  WHERE wellbeing IS NOT NULL;
DROP INDEX check_ins_wellbeing_by_participant;
