-- Matching service, sixth schema step: a match's explanation is stored as protobuf binary.
-- AssignBatch writes thousands of matches in one statement, and as jsonb their explanations cost
-- more than the rest of the rows together (PostgreSQL builds a jsonb value of about a kilobyte
-- per match; measured at 10,000 × 2,000 about 0.3 s of a 1.4 s batch). The binary form is the
-- serialized `peerpath.matching.v1.Match` holding only its `explanation` lines: the service reads
-- it back by merging it into the match. Matches written before this step keep their jsonb
-- explanation and are read as before; a match holds exactly one of the two.
ALTER TABLE matches
  ADD COLUMN explanation_pb bytea,
  ALTER COLUMN explanation DROP NOT NULL,
  ALTER COLUMN explanation DROP DEFAULT,
  ADD CONSTRAINT matches_one_explanation
    CHECK ((explanation IS NULL) <> (explanation_pb IS NULL));
