-- audit_chain (0004) gave each row its place with an UPDATE of its own: a statement per audited
-- action, each paying executor start-up and the table's CHECK constraints afresh, some 300 µs of
-- the database's time per row under load, as much as the action's own INSERT. The hashes are
-- still computed one after the other (each row's hash takes the previous one), but the rows of an
-- agency are now written by one UPDATE. Same chain, same locking, same result.
--
-- Each run also found the agency's last chained row with ORDER BY seq DESC LIMIT 1, which
-- PostgreSQL, on statistics older than the table's growth, planned as a sort of every chained row
-- of the agency: a run cost more the longer the chain. The chain's head (its last seq and hash) is
-- now kept per agency in audit_chain_heads, read and moved by the chainer alone; an agency without
-- a head yet (chained before this migration) has it read from the log once. The head outlives a
-- deleted last row too, so the next row leaves a gap that the verifier names.
--
-- audit_canonical was declared IMMUTABLE over STABLE functions (jsonb_build_array, to_char), so
-- PostgreSQL called it as a function of its own for every row it hashed or verified; declared
-- STABLE, which is what it is, it inlines. Its text is unchanged.
ALTER FUNCTION audit_canonical(audit_log) STABLE;

CREATE TABLE audit_chain_heads (
  agency_id text PRIMARY KEY CHECK (agency_id <> ''),
  seq       bigint NOT NULL CHECK (seq >= 1),
  row_hash  bytea NOT NULL CHECK (length(row_hash) = 32)
);
-- Only the chainer (the owner, inside audit_chain) reads or moves a head; the start-up step gives
-- the table the tenant policy too, and revokes the runtime role's rights on it.
ALTER TABLE audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_chainer ON audit_chain_heads TO CURRENT_USER
  USING (current_setting('app.audit_chain', true) = 'on')
  WITH CHECK (current_setting('app.audit_chain', true) = 'on');

CREATE OR REPLACE FUNCTION audit_chain(p_limit integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
  v_agency text;
  r audit_log;
  v_seq bigint;
  v_hash bytea;
  v_count integer := 0;
  v_ids bigint[];
  v_seqs bigint[];
  v_prev bytea[];
  v_hashes bytea[];
  v_n integer;
BEGIN
  PERFORM set_config('app.audit_chain', 'on', true);
  FOR v_agency IN SELECT DISTINCT a.agency_id FROM audit_log a WHERE a.seq IS NULL LOOP
    CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtextextended('peerpath.audit.' || v_agency, 0));
    SELECT h.seq, h.row_hash INTO v_seq, v_hash FROM audit_chain_heads h
     WHERE h.agency_id = v_agency;
    IF NOT FOUND THEN
      SELECT a.seq, a.row_hash INTO v_seq, v_hash
        FROM audit_log a WHERE a.agency_id = v_agency AND a.seq IS NOT NULL
        ORDER BY a.seq DESC LIMIT 1;
      IF NOT FOUND THEN
        v_seq := 0;
        v_hash := decode(repeat('00', 32), 'hex');
      END IF;
    END IF;
    v_ids := '{}';
    v_seqs := '{}';
    v_prev := '{}';
    v_hashes := '{}';
    v_n := 0;
    FOR r IN SELECT * FROM audit_log a WHERE a.agency_id = v_agency AND a.seq IS NULL
             ORDER BY a.id LIMIT p_limit LOOP
      v_n := v_n + 1;
      v_seq := v_seq + 1;
      r.seq := v_seq;
      r.prev_hash := v_hash;
      r.row_hash := sha256(v_hash || convert_to(audit_canonical(r), 'UTF8'));
      v_ids[v_n] := r.id;
      v_seqs[v_n] := r.seq;
      v_prev[v_n] := r.prev_hash;
      v_hashes[v_n] := r.row_hash;
      v_hash := r.row_hash;
    END LOOP;
    IF v_n > 0 THEN
      UPDATE audit_log a
         SET seq = u.seq, prev_hash = u.prev_hash, row_hash = u.row_hash
        FROM unnest(v_ids, v_seqs, v_prev, v_hashes) AS u(id, seq, prev_hash, row_hash)
       WHERE a.id = u.id;
      INSERT INTO audit_chain_heads AS h (agency_id, seq, row_hash)
      VALUES (v_agency, v_seq, v_hash)
      ON CONFLICT (agency_id) DO UPDATE SET seq = excluded.seq, row_hash = excluded.row_hash;
      v_count := v_count + v_n;
    END IF;
  END LOOP;
  PERFORM set_config('app.audit_chain', '', true);
  RETURN v_count;
END
$$;
-- CREATE OR REPLACE resets the function's settings: it keeps running with this schema's search
-- path, whatever the caller's is (as 0004 set).
ALTER FUNCTION audit_chain(integer) SET search_path FROM CURRENT;
