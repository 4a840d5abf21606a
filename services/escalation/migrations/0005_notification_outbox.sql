-- Escalation service, fifth schema step: notifications are written in the transaction of the
-- change they announce (a concern opened, escalated, re-alerted, reassigned, or its business-hours
-- page), and delivered from here by the NotificationOutbox with retries, so a crash between the
-- commit and the page loses no page, and a change that rolled back pages nobody. Delivery is at
-- least once (a crash after the POST and before delivered_at repeats it). Only ids, codes and
-- times: the webhook payload (WebhookPayload).
CREATE TABLE IF NOT EXISTS notifications (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  agency_id       text NOT NULL CHECK (agency_id <> ''),
  concern_id      uuid NOT NULL,
  reason          text NOT NULL CHECK (reason <> ''),
  category        smallint NOT NULL,  -- peerpath.common.v1.ConcernCategory
  severity        smallint NOT NULL,  -- peerpath.common.v1.ConcernSeverity
  level           integer NOT NULL CHECK (level >= 0),
  target_kind     smallint NOT NULL,  -- peerpath.escalation.v1.TargetKind
  target_id       text NOT NULL,
  deadline        timestamptz NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  delivered_at    timestamptz,
  gave_up_at      timestamptz
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at)
  WHERE delivered_at IS NULL AND gave_up_at IS NULL;

-- The dispatcher reads and updates every agency's undelivered notifications, only in a
-- transaction that says so (app.notification_dispatch).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'notifications'
                 AND policyname = 'notification_dispatch_read') THEN
    CREATE POLICY notification_dispatch_read ON notifications FOR SELECT
      USING (current_setting('app.notification_dispatch', true) = 'on');
    CREATE POLICY notification_dispatch ON notifications FOR UPDATE
      USING (current_setting('app.notification_dispatch', true) = 'on')
      WITH CHECK (current_setting('app.notification_dispatch', true) = 'on');
  END IF;
END
$$;
