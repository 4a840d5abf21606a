-- Group commit of check-ins: record_check_ins writes the decided check-ins of several concurrent
-- RecordCheckIn calls (one agency) in one statement, one transaction and one commit. Each of its
-- statements works on the whole batch, so PostgreSQL's per-statement cost (executor start-up,
-- constraint and index set-up, the commit's WAL flush) is paid once per batch instead of once per
-- check-in, which is where record_check_in (0006/0007) spent most of its time.
--
-- Every item succeeds or leaves no trace, and one item's refusal never fails the others: an item
-- whose enrollment changed since its read (xmin), whose idempotency key was claimed meanwhile or
-- whose day's occurrence was created meanwhile under another id is answered 'stale' or
-- 'key_claimed' and nothing of it is written; its caller reads and decides again. The caller
-- never puts two items of one enrollment or one idempotency key in a batch.
--
-- record_check_in stays, for the locked retry path and for binaries still calling it during a
-- rolling update.

-- One decided check-in, as RecordCheckIn sends it (one JSON object per item).
CREATE TYPE check_in_write AS (
  n                  integer,  -- The item's number in the batch, echoed in the answer.
  check_in           uuid,
  enrollment         uuid,
  enrollment_version text,     -- The enrollment's xmin at the read.
  scheduled          text,     -- The occurrence's id, '' when none.
  participant        text,
  supporter          text,     -- '' when staff recorded it.
  recorded_by        text,
  recorded_by_role   text,
  pathway_key        text,
  pathway_version    integer,
  answers            jsonb,
  wellbeing          integer,  -- 0 when not asked.
  contact_mode       text,
  occurred_us        bigint,
  recorded_us        bigint,
  late_us            bigint,   -- NULL when on time.
  fired_rule_ids     text[],
  reconnection       boolean,
  stops_routine      boolean,
  due_on             date,     -- Set when it completes (or creates) the day's occurrence.
  window_start_us    bigint,
  window_end_us      bigint,
  event_types        text[],
  event_payloads     text[],   -- base64
  event_ids          text[],
  idempotency_key    text,
  method             text,
  request_hash       text,     -- hex
  response           text,     -- base64
  actor              text,
  actor_role         text,
  action             text,
  request_id         text
);

-- Writes the items of p_items (a JSON array of check_in_write objects) for p_agency; answers
-- each item's n with 'recorded', 'stale' or 'key_claimed'.
CREATE FUNCTION record_check_ins(p_agency text, p_items jsonb)
RETURNS TABLE (n integer, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
  v_items check_in_write[];
  v_locked integer[];   -- Enrollment unchanged since the read, and now locked.
  v_claimed integer[];  -- ... and the idempotency key claimed.
  v_lost integer[];     -- ... but the day's occurrence exists under another id.
  v_ok integer[];       -- Written.
BEGIN
  IF coalesce(p_agency, '') = '' THEN
    RAISE EXCEPTION 'record_check_ins without an agency';
  END IF;
  PERFORM set_config('app.agency_id', p_agency, true);
  v_items := ARRAY(SELECT x FROM jsonb_populate_recordset(NULL::check_in_write, p_items) x);

  -- Locked in id order (no deadlock with another batch); a row changed meanwhile fails the xmin
  -- test when PostgreSQL rechecks it after the lock.
  SELECT coalesce(array_agg(l.n), '{}') INTO v_locked
    FROM (SELECT i.n
            FROM unnest(v_items) i
            JOIN enrollments e ON e.id = i.enrollment AND e.xmin = i.enrollment_version::xid
           ORDER BY e.id
             FOR UPDATE OF e) l;

  WITH claimed AS (
    INSERT INTO idempotency_keys (agency_id, idempotency_key, method, request_hash, response)
    SELECT p_agency, i.idempotency_key, i.method, decode(i.request_hash, 'hex'),
           decode(i.response, 'base64')
      FROM unnest(v_items) i
     WHERE i.n = ANY (v_locked)
    ON CONFLICT DO NOTHING
    RETURNING idempotency_key)
  SELECT coalesce(array_agg(i.n), '{}') INTO v_claimed
    FROM unnest(v_items) i JOIN claimed c ON c.idempotency_key = i.idempotency_key
   WHERE i.n = ANY (v_locked);

  -- The occurrence it completes: created completed, or an existing one (this id) completed.
  WITH occurrence AS (
    INSERT INTO scheduled_check_ins AS s (id, agency_id, enrollment_id, due_on, window_start,
                                          window_end, status, status_changed_at)
    SELECT i.scheduled::uuid, p_agency, i.enrollment, i.due_on,
           timestamptz 'epoch' + i.window_start_us * interval '1 microsecond',
           timestamptz 'epoch' + i.window_end_us * interval '1 microsecond', 'completed',
           timestamptz 'epoch' + i.recorded_us * interval '1 microsecond'
      FROM unnest(v_items) i
     WHERE i.n = ANY (v_claimed) AND i.due_on IS NOT NULL
    ON CONFLICT (agency_id, enrollment_id, due_on)
    DO UPDATE SET status = 'completed', status_changed_at = excluded.status_changed_at
    WHERE s.id = excluded.id
    RETURNING s.id)
  SELECT coalesce(array_agg(i.n), '{}') INTO v_lost
    FROM unnest(v_items) i
   WHERE i.n = ANY (v_claimed) AND i.due_on IS NOT NULL
     AND i.scheduled::uuid NOT IN (SELECT o.id FROM occurrence o);
  IF cardinality(v_lost) > 0 THEN
    -- Its key was claimed by this very transaction: release it.
    DELETE FROM idempotency_keys k
     USING unnest(v_items) i
     WHERE i.n = ANY (v_lost) AND k.agency_id = p_agency
       AND k.idempotency_key = i.idempotency_key;
  END IF;
  v_ok := ARRAY(SELECT c FROM unnest(v_claimed) c WHERE c <> ALL (v_lost));

  UPDATE enrollments e
     SET last_contact_at = GREATEST(coalesce(e.last_contact_at, w.occurred), w.occurred),
         failed_attempts_in_a_row = 0,
         engagement_stage_changed_at = CASE WHEN e.engagement_stage <> 'engaged' THEN w.recorded
                                            ELSE e.engagement_stage_changed_at END,
         engagement_stage = 'engaged',
         routine_stopped_at = CASE WHEN w.stops_routine AND e.routine THEN w.recorded
                                   ELSE e.routine_stopped_at END,
         routine = e.routine AND NOT w.stops_routine
    FROM (SELECT i.enrollment, i.stops_routine,
                 timestamptz 'epoch' + i.occurred_us * interval '1 microsecond' AS occurred,
                 timestamptz 'epoch' + i.recorded_us * interval '1 microsecond' AS recorded
            FROM unnest(v_items) i WHERE i.n = ANY (v_ok)) w
   WHERE e.id = w.enrollment;

  INSERT INTO check_ins (id, agency_id, enrollment_id, scheduled_check_in_id, participant_id,
                         supporter_id, recorded_by, recorded_by_role, pathway_key,
                         pathway_version, answers, wellbeing, contact_mode, occurred_at,
                         recorded_at, window_end, late_by, fired_rule_ids, is_reconnection)
  SELECT i.check_in, p_agency, i.enrollment, NULLIF(i.scheduled, '')::uuid, i.participant,
         NULLIF(i.supporter, '')::uuid, i.recorded_by, i.recorded_by_role, i.pathway_key,
         i.pathway_version, i.answers, NULLIF(i.wellbeing, 0)::smallint, i.contact_mode,
         timestamptz 'epoch' + i.occurred_us * interval '1 microsecond',
         timestamptz 'epoch' + i.recorded_us * interval '1 microsecond',
         timestamptz 'epoch' + i.window_end_us * interval '1 microsecond',
         i.late_us * interval '1 microsecond', i.fired_rule_ids, i.reconnection
    FROM unnest(v_items) i
   WHERE i.n = ANY (v_ok)
   ORDER BY i.n;

  -- Routine engagement stopped: the remaining due occurrences are cancelled.
  UPDATE scheduled_check_ins s SET status = 'cancelled',
         status_changed_at = timestamptz 'epoch' + i.recorded_us * interval '1 microsecond'
    FROM unnest(v_items) i
   WHERE i.n = ANY (v_ok) AND i.stops_routine AND s.enrollment_id = i.enrollment
     AND s.status = 'due' AND s.id::text <> i.scheduled;

  INSERT INTO outbox (event_id, agency_id, event_type, aggregate_id, payload)
  SELECT x.id::uuid, p_agency, x.t, i.enrollment::text, decode(x.p, 'base64')
    FROM unnest(v_items) i,
         unnest(i.event_types, i.event_payloads, i.event_ids) WITH ORDINALITY AS x(t, p, id, k)
   WHERE i.n = ANY (v_ok)
   ORDER BY i.n, x.k;

  -- audit_append's row, for each item.
  INSERT INTO audit_log (agency_id, occurred_at, actor, actor_role, action, object_type,
                         object_id, participant_id, decision, request_id)
  SELECT p_agency, clock_timestamp(), coalesce(i.actor, ''), coalesce(i.actor_role, ''),
         i.action, 'check_in', i.check_in::text, coalesce(i.participant, ''), 'allowed',
         coalesce(i.request_id, '')
    FROM unnest(v_items) i
   WHERE i.n = ANY (v_ok)
   ORDER BY i.n;

  RETURN QUERY
    SELECT i.n, CASE WHEN i.n = ANY (v_ok) THEN 'recorded'
                     WHEN i.n = ANY (v_locked) AND i.n <> ALL (v_claimed) THEN 'key_claimed'
                     ELSE 'stale' END
      FROM unnest(v_items) i
     ORDER BY i.n;
END $$;
