-- Audit log: every read or write of a participant's data, every refusal and every disclosure
-- appends a row in the same transaction as the action. Append-only (UPDATE, DELETE and TRUNCATE
-- raise) and hash-chained per agency: each row stores SHA-256(previous row's hash || canonical
-- text of the row), so changing, removing or reordering a row breaks the chain at that row.

CREATE TABLE audit_log (
  agency_id      text NOT NULL CHECK (agency_id <> ''),
  -- 1, 2, 3, ... per agency, without gaps: a missing number is a removed row.
  seq            bigint NOT NULL CHECK (seq >= 1),
  occurred_at    timestamptz NOT NULL,
  actor          text NOT NULL,            -- The token's `sub` (staff or system id).
  actor_role     text NOT NULL,            -- The role the action was allowed (or refused) under.
  action         text NOT NULL CHECK (action <> ''),  -- e.g. "consent.CheckAccess".
  object_type    text NOT NULL DEFAULT '',
  object_id      text NOT NULL DEFAULT '',
  participant_id text NOT NULL DEFAULT '',
  decision       text NOT NULL CHECK (decision IN ('allowed', 'denied', 'break_glass')),
  request_id     text NOT NULL DEFAULT '',
  prev_hash      bytea NOT NULL CHECK (length(prev_hash) = 32),
  row_hash       bytea NOT NULL CHECK (length(row_hash) = 32),
  PRIMARY KEY (agency_id, seq)
);

CREATE INDEX audit_log_participant ON audit_log (agency_id, participant_id, occurred_at)
  WHERE participant_id <> '';

-- The text that is hashed: a JSON array of the row's fields in a fixed order (jsonb's text form
-- is deterministic), so no separator inside a value can make two rows hash alike.
CREATE FUNCTION audit_canonical(a audit_log) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_array(a.agency_id, a.seq, to_char(a.occurred_at AT TIME ZONE 'UTC',
                           'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), a.actor, a.actor_role, a.action,
                           a.object_type, a.object_id, a.participant_id, a.decision,
                           a.request_id)::text
$$;

-- Appends one row; serialised per agency by an advisory lock held until commit, so the chain
-- has one order. Returns the row's seq.
CREATE FUNCTION audit_append(p_agency text, p_actor text, p_role text, p_action text,
                             p_object_type text, p_object_id text, p_participant text,
                             p_decision text, p_request_id text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  r audit_log;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('peerpath.audit.' || p_agency, 0));
  SELECT a.seq + 1, a.row_hash INTO r.seq, r.prev_hash
    FROM audit_log a WHERE a.agency_id = p_agency ORDER BY a.seq DESC LIMIT 1;
  IF NOT FOUND THEN
    r.seq := 1;
    r.prev_hash := decode(repeat('00', 32), 'hex');
  END IF;
  r.agency_id := p_agency;
  r.occurred_at := clock_timestamp();
  r.actor := coalesce(p_actor, '');
  r.actor_role := coalesce(p_role, '');
  r.action := p_action;
  r.object_type := coalesce(p_object_type, '');
  r.object_id := coalesce(p_object_id, '');
  r.participant_id := coalesce(p_participant, '');
  r.decision := p_decision;
  r.request_id := coalesce(p_request_id, '');
  r.row_hash := sha256(r.prev_hash || convert_to(audit_canonical(r), 'UTF8'));
  INSERT INTO audit_log VALUES (r.*);
  RETURN r.seq;
END
$$;

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
