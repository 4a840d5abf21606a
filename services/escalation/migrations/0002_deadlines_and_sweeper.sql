-- Escalation service, second schema step: what the deadline sweeper needs to act exactly once
-- and to explain each transition, and the sweeper's cross-agency read.

ALTER TABLE concerns
  -- The version of the routing policy, kept beside policy_id for responses and events.
  ADD COLUMN policy_version     integer NOT NULL DEFAULT 1 CHECK (policy_version >= 1),
  -- When the current target is (or was) notified and its clock started: the opening time, or the
  -- next start of business hours for a routine concern of a business-hours-only rule.
  ADD COLUMN notify_at          timestamptz,
  -- When the target was told; NULL while a notification waits for notify_at (a routine concern
  -- raised out of hours is announced when business hours begin).
  ADD COLUMN notified_at        timestamptz,
  -- What happens when next_deadline passes: 'acknowledgement' (escalate), 'resolution' (re-alert
  -- the owner), 'resolution_after_realert' (escalate), 'chain_exhausted' (re-alert the last level
  -- again).
  ADD COLUMN next_deadline_kind text CHECK (next_deadline_kind IN (
                                  'acknowledgement', 'resolution', 'resolution_after_realert',
                                  'chain_exhausted')),
  ADD COLUMN breach_count       integer NOT NULL DEFAULT 0 CHECK (breach_count >= 0),
  -- The level the concern was last acknowledged at (acknowledgement retries are idempotent there).
  ADD COLUMN acknowledged_level smallint,
  ADD CONSTRAINT concerns_deadline_kind_set
    CHECK ((next_deadline IS NULL) = (next_deadline_kind IS NULL));

-- Notifications waiting for business hours, found by the sweeper without a scan.
CREATE INDEX concerns_pending_notification ON concerns (notify_at)
  WHERE notified_at IS NULL AND status IN ('open', 'acknowledged');

ALTER TABLE concern_transitions
  -- The order of transitions written in one transaction (they share occurred_at).
  ADD COLUMN seq                  bigint GENERATED ALWAYS AS IDENTITY,
  ADD COLUMN from_status          text CHECK (from_status IN ('open', 'acknowledged', 'resolved',
                                                              'cancelled')),
  ADD COLUMN missed_deadline_kind text CHECK (missed_deadline_kind IN (
                                    'acknowledgement', 'resolution', 'resolution_after_realert')),
  ADD COLUMN missed_deadline      timestamptz;

-- The deadline sweeper finds due concerns of every agency through the concerns_next_deadline
-- index (read only; each concern is then changed in a transaction scoped to its own agency), and
-- the open/overdue gauges count them. Only transactions that set app.escalation_sweeper see them.
CREATE POLICY sweeper_read ON concerns FOR SELECT
  USING (current_setting('app.escalation_sweeper', true) = 'on');

-- Exact conversions between timestamptz and microseconds since the epoch (the store's wire
-- format for times; NULL ↔ 0).
CREATE FUNCTION us_from_ts(t timestamptz) RETURNS bigint IMMUTABLE LANGUAGE sql
  AS $$ SELECT coalesce((extract(epoch FROM t) * 1000000)::bigint, 0) $$;
CREATE FUNCTION ts_from_us(us bigint) RETURNS timestamptz IMMUTABLE LANGUAGE sql
  AS $$ SELECT 'epoch'::timestamptz + NULLIF(us, 0) * interval '1 microsecond' $$;
