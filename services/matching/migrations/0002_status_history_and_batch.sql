-- Matching service, second schema step: the supporter status history that SetSupporterStatus
-- appends to (and CreateSupporter starts with JOINED), and what a match records about how it
-- was made (its rank among the proposals, whether a proposal was accepted or AssignBatch
-- started it, the batch run, whether it was the continuity-preferred supporter).

CREATE TABLE supporter_status_history (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agency_id       text NOT NULL CHECK (agency_id <> ''),
  supporter_id    uuid NOT NULL,
  previous_status text CHECK (previous_status IN ('active', 'on_break', 'inactive')),
  status          text NOT NULL CHECK (status IN ('active', 'on_break', 'inactive')),
  reason          text NOT NULL CHECK (reason IN ('joined', 'planned_break', 'wellbeing_break',
                                                  'returned', 'left_program', 'administrative',
                                                  'other')),
  note            text NOT NULL DEFAULT '' CHECK (length(note) <= 1000),
  changed_by      text NOT NULL CHECK (changed_by <> ''),
  changed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
  FOREIGN KEY (agency_id, supporter_id) REFERENCES supporters (agency_id, id)
);

CREATE INDEX supporter_status_history_by_supporter
  ON supporter_status_history (agency_id, supporter_id, changed_at DESC);

ALTER TABLE matches
  ADD COLUMN rank       integer NOT NULL DEFAULT 0 CHECK (rank >= 0),
  ADD COLUMN origin     text CHECK (origin IN ('proposal_accepted', 'batch_assignment')),
  ADD COLUMN batch_id   uuid,
  ADD COLUMN continuity boolean NOT NULL DEFAULT false,
  ADD CONSTRAINT matches_origin_when_started
    CHECK ((origin IS NOT NULL) = (status IN ('active', 'ended')));

CREATE INDEX matches_by_batch ON matches (agency_id, batch_id) WHERE batch_id IS NOT NULL;
