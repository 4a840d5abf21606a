-- Escalation service, sixth step: the dispatcher deletes notifications delivered (or given up)
-- more than 30 days ago, in every agency, only in a transaction that says so.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'notifications'
                 AND policyname = 'notification_retention') THEN
    CREATE POLICY notification_retention ON notifications FOR DELETE
      USING (current_setting('app.notification_dispatch', true) = 'on'
             AND coalesce(delivered_at, gave_up_at) < now() - interval '30 days');
  END IF;
END
$$;
