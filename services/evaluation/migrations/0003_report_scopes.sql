-- The report's scope lists (KnownPathways, KnownPrograms) walk these indexes one distinct value at
-- a time instead of reading every enrollment of the agency.
CREATE INDEX IF NOT EXISTS enrollments_by_pathway ON enrollments (agency_id, pathway_key);
CREATE INDEX IF NOT EXISTS enrollments_by_program ON enrollments (agency_id, program_id)
  WHERE program_id IS NOT NULL;
