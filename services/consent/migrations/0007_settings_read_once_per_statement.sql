-- Consent service, seventh step: the expiry sweep's policy reads its setting once per statement
-- (in a sub-SELECT, an InitPlan) rather than for every consent the sweep reads, as the shared
-- track's 0007 does for the shared tables. What it admits is unchanged.
ALTER POLICY maintenance_expiry_read ON consents
  USING ((SELECT current_setting('app.maintenance', true)) = 'on'
         AND status = 'active' AND valid_until IS NOT NULL AND valid_until <= now());
