-- record_check_in (0006) also refuses, with serialization_failure, a write whose day's
-- occurrence was created since the read under another id (ListDueCheckIns and the sweeper create
-- occurrences without touching the enrollment): the call then reads and decides again, instead of
-- failing on the check-in's foreign key (INTERNAL). 0006 is left as it was applied; this replaces
-- the function whole.

-- Writes a decided check-in: claims the idempotency key with the response, updates the
-- enrollment's contact state (only if it is still version p_enrollment_version), completes or
-- creates the occurrence, inserts the check-in, cancels the remaining due occurrences when routine
-- engagement stops, appends the events to the outbox and the audit row.
CREATE OR REPLACE FUNCTION record_check_in(
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
    DO UPDATE SET status = 'completed', status_changed_at = recorded
    WHERE scheduled_check_ins.id = p_scheduled::uuid;
    -- The day's occurrence was created meanwhile under another id (ListDueCheckIns, the
    -- sweeper): decide again with it.
    IF NOT FOUND THEN
      RAISE EXCEPTION 'occurrence % of enrollment % created since it was read', p_due_on,
        p_enrollment USING ERRCODE = 'serialization_failure';
    END IF;
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
