-- Consent service, sixth schema step: every change to what an access decision reads announces
-- itself. Each replica keeps the decision inputs of recently checked participants in memory
-- (services/consent/decision_cache.h) and LISTENs on the channel '<schema>_decision_inputs'; a
-- row written to `consents` or `emergency_accesses` by any path (an RPC, the expiry sweeper, a
-- migration, an administrator's UPDATE) notifies it with the participant's id when its
-- transaction commits; a TRUNCATE notifies an empty payload (every participant). PostgreSQL
-- collapses repeated payloads within a transaction.
CREATE FUNCTION notify_decision_inputs_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_decision_inputs', '');
    RETURN NULL;
  END IF;
  IF TG_OP <> 'INSERT' THEN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_decision_inputs', OLD.participant_id);
  END IF;
  IF TG_OP <> 'DELETE' THEN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_decision_inputs', NEW.participant_id);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER consents_decision_inputs_changed
  AFTER INSERT OR UPDATE OR DELETE ON consents
  FOR EACH ROW EXECUTE FUNCTION notify_decision_inputs_changed();

CREATE TRIGGER emergency_accesses_decision_inputs_changed
  AFTER INSERT OR UPDATE OR DELETE ON emergency_accesses
  FOR EACH ROW EXECUTE FUNCTION notify_decision_inputs_changed();

CREATE TRIGGER consents_truncated
  AFTER TRUNCATE ON consents
  FOR EACH STATEMENT EXECUTE FUNCTION notify_decision_inputs_changed();

CREATE TRIGGER emergency_accesses_truncated
  AFTER TRUNCATE ON emergency_accesses
  FOR EACH STATEMENT EXECUTE FUNCTION notify_decision_inputs_changed();
