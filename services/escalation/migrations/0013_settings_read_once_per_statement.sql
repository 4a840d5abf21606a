-- Escalation service, thirteenth step: the policies of the cross-agency jobs (the deadline
-- sweeper and its gauges, the notification dispatcher, the watch feed's relay) read their setting
-- once per statement (in a sub-SELECT, an InitPlan) rather than for every row: the gauges count
-- every open concern of every agency every 5 seconds. What each policy admits is unchanged.
ALTER POLICY sweeper_read ON concerns
  USING ((SELECT current_setting('app.escalation_sweeper', true)) = 'on');
ALTER POLICY notification_dispatch_read ON notifications
  USING ((SELECT current_setting('app.notification_dispatch', true)) = 'on');
ALTER POLICY notification_dispatch ON notifications
  USING ((SELECT current_setting('app.notification_dispatch', true)) = 'on')
  WITH CHECK ((SELECT current_setting('app.notification_dispatch', true)) = 'on');
ALTER POLICY notification_retention ON notifications
  USING ((SELECT current_setting('app.notification_dispatch', true)) = 'on'
         AND coalesce(delivered_at, gave_up_at) < now() - interval '30 days');
ALTER POLICY watch_feed_read ON watch_feed
  USING ((SELECT current_setting('app.watch_feed', true)) = 'on');
ALTER POLICY watch_feed_assign ON watch_feed
  USING ((SELECT current_setting('app.watch_feed', true)) = 'on' AND position IS NULL)
  WITH CHECK ((SELECT current_setting('app.watch_feed', true)) = 'on');
ALTER POLICY watch_feed_prune ON watch_feed
  USING ((SELECT current_setting('app.watch_feed', true)) = 'on'
         AND created_at < now() - interval '1 hour');
