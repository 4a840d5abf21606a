-- Evaluation service, sixth step: the replay's and the gauges' policies read their setting once
-- per statement (in a sub-SELECT, an InitPlan) rather than for every row: the replay empties and
-- the gauges count every agency's rows. What each policy admits is unchanged.
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['applied_events', 'enrollments', 'stage_changes', 'reconnections',
                           'appointments', 'contact_days', 'supporter_contacts_month',
                           'wellbeing_first', 'wellbeing_month', 'matches', 'follow_up_ratings',
                           'concerns', 'emergency_accesses', 'participant_feedback',
                           'agency_time_zones'] LOOP
    EXECUTE format('ALTER POLICY evaluation_replay_read ON %I '
                   'USING ((SELECT current_setting(''app.evaluation_replay'', true)) = ''on'')', t);
    EXECUTE format('ALTER POLICY evaluation_replay ON %I '
                   'USING ((SELECT current_setting(''app.evaluation_replay'', true)) = ''on'')', t);
  END LOOP;
END
$$;
ALTER POLICY evaluation_gauges ON enrollments
  USING ((SELECT current_setting('app.evaluation_gauges', true)) = 'on');
ALTER POLICY evaluation_gauges ON concerns
  USING ((SELECT current_setting('app.evaluation_gauges', true)) = 'on');
