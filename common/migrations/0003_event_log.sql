-- The event log (DESIGN.md section 4): the transactional outbox of this service and the positions
-- of the event logs it consumes (common/event_log.h, common/event_consumer.h).

-- Positions are handed out after commit, by one assigner at a time, so a reader never sees a
-- position while a smaller one can still appear: transactions commit in any order, but an event
-- gets its position only once its transaction is visible.
CREATE SEQUENCE event_log_position AS bigint;

CREATE TABLE outbox (
  -- Insertion order; NOT the delivery order (ids are taken before commit).
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- Delivery order, assigned after commit (NULL until then).
  position     bigint UNIQUE,
  event_id     uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
  agency_id    text NOT NULL CHECK (agency_id <> ''),
  -- Fully qualified payload message name, e.g. "peerpath.checkin.v1.CheckInRecordedEvent".
  event_type   text NOT NULL CHECK (event_type ~ '^[A-Za-z_][A-Za-z0-9_.]*$'),
  aggregate_id text NOT NULL,
  occurred_at  timestamptz NOT NULL DEFAULT now(),
  -- The serialised payload message. Ids and codes only: never free text or contact details.
  payload      bytea NOT NULL,
  positioned_at timestamptz,
  CHECK ((position IS NULL) = (positioned_at IS NULL))
);

-- The assigner's work list: committed events still without a position.
CREATE INDEX outbox_unpositioned ON outbox (id) WHERE position IS NULL;

-- Events are written under the tenant policy like any row. Reading the log (every agency's
-- events, for consumers holding the service role) and assigning positions are done by the event
-- log reader only, which says so with app.event_log; events are never deleted or rewritten
-- otherwise.
CREATE POLICY event_log_read ON outbox FOR SELECT
  USING (current_setting('app.event_log', true) = 'on');
CREATE POLICY event_log_assign ON outbox FOR UPDATE
  USING (current_setting('app.event_log', true) = 'on' AND position IS NULL)
  WITH CHECK (current_setting('app.event_log', true) = 'on');

CREATE FUNCTION outbox_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.position IS NULL AND NEW.position IS NOT NULL
     AND (NEW.id, NEW.event_id, NEW.agency_id, NEW.event_type, NEW.aggregate_id,
          NEW.occurred_at, NEW.payload)
         IS NOT DISTINCT FROM (OLD.id, OLD.event_id, OLD.agency_id, OLD.event_type,
                               OLD.aggregate_id, OLD.occurred_at, OLD.payload) THEN
    RETURN NEW;  -- The one change allowed: an event receives its position.
  END IF;
  RAISE EXCEPTION 'outbox events are immutable (% refused)', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER outbox_immutable BEFORE UPDATE OR DELETE ON outbox
  FOR EACH ROW EXECUTE FUNCTION outbox_refuse_change();

-- Where this service stands in each event log it consumes. Written in the same transaction as
-- the effects of the events applied, so each event takes effect exactly once. Not tenant data:
-- one row per source log, covering every agency.
CREATE TABLE consumer_positions (
  source        text PRIMARY KEY CHECK (source ~ '^[a-z][a-z0-9_]*$'),
  position      bigint NOT NULL DEFAULT 0 CHECK (position >= 0),
  -- occurred_at of the last event applied, for the lag in seconds.
  last_event_at timestamptz,
  updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Events a consumer could not apply (a payload it cannot read, a rule it refuses), kept for an
-- operator instead of blocking the log behind them. Holds ids only, like the events.
CREATE TABLE consumer_failures (
  source      text NOT NULL,
  position    bigint NOT NULL,
  event_id    uuid NOT NULL,
  event_type  text NOT NULL,
  error       text NOT NULL,
  failed_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (source, position)
);
