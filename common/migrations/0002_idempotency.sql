-- Idempotency keys: a create/record RPC claims (agency, key) in the same transaction as its write
-- and stores its response there, so a retry with the same key returns the first response and
-- writes nothing (common/idempotency.h).

CREATE TABLE idempotency_keys (
  agency_id       text NOT NULL CHECK (agency_id <> ''),
  idempotency_key text NOT NULL CHECK (idempotency_key ~ '^[A-Za-z0-9_.:-]{1,128}$'),
  -- The RPC that claimed the key ("RecordCheckIn"): a key reused for another RPC is refused.
  method          text NOT NULL CHECK (method <> ''),
  -- SHA-256 of the request's deterministic serialisation: the same key with another request is
  -- refused rather than answered with a response that does not belong to it.
  request_hash    bytea NOT NULL CHECK (length(request_hash) = 32),
  -- The serialised response message of the first call.
  response        bytea NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (agency_id, idempotency_key)
);

-- The clean-up removes keys by age.
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- Besides the tenant policy (added by the migration runner), the clean-up job may see and delete
-- keys of every agency, but only keys older than the promised 24 hours, and only when it says so
-- (a DELETE with a WHERE clause needs both the SELECT and the DELETE policy).
CREATE POLICY maintenance_cleanup_read ON idempotency_keys FOR SELECT
  USING (current_setting('app.maintenance', true) = 'on'
         AND created_at < now() - interval '24 hours');
CREATE POLICY maintenance_cleanup ON idempotency_keys FOR DELETE
  USING (current_setting('app.maintenance', true) = 'on'
         AND created_at < now() - interval '24 hours');
