-- Consent service, ninth step: the history is kept by the database too, whoever connects (the
-- service, a later migration, an operator by hand). A consent is never deleted and never
-- rewritten: its only change is its one ending, from 'active' to 'revoked' (with the revoked_*
-- columns) or to 'expired' (with expired_at). The accounting of disclosures is append-only.
CREATE FUNCTION consent_history_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% of table "%" refused: %', lower(TG_OP), TG_TABLE_NAME, TG_ARGV[0]
    USING ERRCODE = 'restrict_violation', TABLE = TG_TABLE_NAME;
END $$;

-- Every column but the ending's stays as written (also columns added later); a consent ends once.
CREATE FUNCTION consents_only_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status <> 'active' OR NEW.status NOT IN ('revoked', 'expired')
     OR to_jsonb(OLD) - ARRAY['status', 'revoked_at', 'revoked_by', 'revocation_reason',
                              'expired_at']
        IS DISTINCT FROM
        to_jsonb(NEW) - ARRAY['status', 'revoked_at', 'revoked_by', 'revocation_reason',
                              'expired_at']
     OR (NEW.status = 'expired' AND (NEW.revoked_by IS NOT NULL
                                     OR NEW.revocation_reason IS NOT NULL)) THEN
    RAISE EXCEPTION 'update of table "consents" refused: a consent is never rewritten; an active '
                    'one may only be revoked or expire'
      USING ERRCODE = 'restrict_violation', TABLE = 'consents';
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER consents_only_end BEFORE UPDATE ON consents
  FOR EACH ROW EXECUTE FUNCTION consents_only_end();
CREATE TRIGGER consents_never_deleted BEFORE DELETE OR TRUNCATE ON consents
  FOR EACH STATEMENT EXECUTE FUNCTION consent_history_refuse_change('consents are never deleted');
CREATE TRIGGER disclosures_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON disclosures
  FOR EACH STATEMENT
  EXECUTE FUNCTION consent_history_refuse_change('the accounting of disclosures is append-only');
