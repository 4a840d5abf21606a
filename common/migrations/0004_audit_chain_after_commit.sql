-- The audit chain is built after commit. Until now audit_append took a per-agency advisory lock
-- held to commit, so every audited write of one agency ran one at a time (and waited for the
-- previous one's commit). Now a writer inserts its row unchained (seq, prev_hash and row_hash
-- NULL) in the same transaction as its action, with no lock; audit_chain() then gives committed
-- rows their place in the chain, serialised per agency by an advisory lock. Every service runs it
-- a few times a second, and verification chains what is pending before it checks.
--
-- The content of a row is still never changed: the only UPDATE the table accepts is the one that
-- chains an unchained row, leaving every other column as it was. The runtime role still has no
-- UPDATE or DELETE on the table; audit_chain runs as the table's owner.

ALTER TABLE audit_log DROP CONSTRAINT audit_log_pkey;
ALTER TABLE audit_log ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY;
ALTER TABLE audit_log ALTER COLUMN seq DROP NOT NULL,
                      ALTER COLUMN prev_hash DROP NOT NULL,
                      ALTER COLUMN row_hash DROP NOT NULL,
                      ADD CONSTRAINT audit_log_chained_together
                        CHECK ((seq IS NULL) = (prev_hash IS NULL) AND
                               (seq IS NULL) = (row_hash IS NULL));
CREATE UNIQUE INDEX audit_log_chain ON audit_log (agency_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX audit_log_unchained ON audit_log (agency_id, id) WHERE seq IS NULL;

-- The chainer sees every agency's rows (the owner only; the runtime role gains nothing).
CREATE POLICY audit_chainer ON audit_log TO CURRENT_USER
  USING (current_setting('app.audit_chain', true) = 'on');

-- Appends one unchained row; returns its id. No lock: concurrent writers of one agency no longer
-- wait for each other. (PL/pgSQL, not SQL: its plan is cached per session instead of parsed and
-- planned at every call.)
CREATE OR REPLACE FUNCTION audit_append(p_agency text, p_actor text, p_role text, p_action text,
                                        p_object_type text, p_object_id text, p_participant text,
                                        p_decision text, p_request_id text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  v_id bigint;
BEGIN
  INSERT INTO audit_log (agency_id, occurred_at, actor, actor_role, action, object_type,
                         object_id, participant_id, decision, request_id)
  VALUES (p_agency, clock_timestamp(), coalesce(p_actor, ''), coalesce(p_role, ''), p_action,
          coalesce(p_object_type, ''), coalesce(p_object_id, ''), coalesce(p_participant, ''),
          p_decision, coalesce(p_request_id, ''))
  RETURNING id INTO v_id;
  RETURN v_id;
END
$$;

-- Chains up to p_limit committed unchained rows per agency, in id order, after the agency's last
-- chained row: seq is the next number, prev_hash that row's hash, row_hash
-- SHA-256(prev_hash || canonical row). An agency whose chain another session is extending right
-- now is skipped (its rows are chained by that session or the next run). Returns the rows chained.
CREATE FUNCTION audit_chain(p_limit integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
  v_agency text;
  r audit_log;
  v_seq bigint;
  v_hash bytea;
  v_count integer := 0;
BEGIN
  PERFORM set_config('app.audit_chain', 'on', true);
  FOR v_agency IN SELECT DISTINCT a.agency_id FROM audit_log a WHERE a.seq IS NULL LOOP
    CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtextextended('peerpath.audit.' || v_agency, 0));
    SELECT a.seq, a.row_hash INTO v_seq, v_hash
      FROM audit_log a WHERE a.agency_id = v_agency AND a.seq IS NOT NULL
      ORDER BY a.seq DESC LIMIT 1;
    IF NOT FOUND THEN
      v_seq := 0;
      v_hash := decode(repeat('00', 32), 'hex');
    END IF;
    FOR r IN SELECT * FROM audit_log a WHERE a.agency_id = v_agency AND a.seq IS NULL
             ORDER BY a.id LIMIT p_limit LOOP
      v_seq := v_seq + 1;
      r.seq := v_seq;
      r.prev_hash := v_hash;
      r.row_hash := sha256(v_hash || convert_to(audit_canonical(r), 'UTF8'));
      UPDATE audit_log SET seq = r.seq, prev_hash = r.prev_hash, row_hash = r.row_hash
        WHERE id = r.id;
      v_hash := r.row_hash;
      v_count := v_count + 1;
    END LOOP;
  END LOOP;
  PERFORM set_config('app.audit_chain', '', true);
  RETURN v_count;
END
$$;
-- Runs with this schema's search path, whatever the caller's is.
ALTER FUNCTION audit_chain(integer) SET search_path FROM CURRENT;

-- Append-only, except chaining: an unchained row may receive its seq and hashes once, with every
-- other column unchanged.
CREATE OR REPLACE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.seq IS NULL AND NEW.seq IS NOT NULL AND
     (OLD.id, OLD.agency_id, OLD.occurred_at, OLD.actor, OLD.actor_role, OLD.action,
      OLD.object_type, OLD.object_id, OLD.participant_id, OLD.decision, OLD.request_id)
     IS NOT DISTINCT FROM
     (NEW.id, NEW.agency_id, NEW.occurred_at, NEW.actor, NEW.actor_role, NEW.action,
      NEW.object_type, NEW.object_id, NEW.participant_id, NEW.decision, NEW.request_id) THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;
