-- The agency's program an enrollment belongs to (CreateEnrollmentRequest.program_id); NULL when
-- none. Carried on EnrollmentStartedEvent so reports can be scoped to a program.
ALTER TABLE enrollments ADD COLUMN IF NOT EXISTS program_id text
  CHECK (program_id ~ '^[A-Za-z0-9_.:-]{1,64}$');
