-- Matching service, fourth schema step: ProposeMatches asks the database for the supporters who
-- may pass a request's hard constraints instead of reading the whole roster; most requests
-- require a region, so the active roster is indexed by it.
CREATE INDEX supporters_active_by_region ON supporters (agency_id, region) WHERE status = 'active';
