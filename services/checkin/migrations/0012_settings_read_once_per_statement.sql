-- Check-in service, twelfth step: the maintenance sweep's policy reads its setting once per
-- statement (in a sub-SELECT, an InitPlan) rather than for every enrollment the sweep reads, as
-- the shared track's 0007 does for the shared tables. What it admits is unchanged.
ALTER POLICY maintenance_sweep_read ON enrollments
  USING ((SELECT current_setting('app.maintenance', true)) = 'on');
