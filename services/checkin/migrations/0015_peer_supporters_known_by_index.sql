-- Check-in service, fifteenth step: whether an owner named for an enrollment or an appointment is
-- a peer supporter (peer support is never the accountable owner) is read by index. The read
-- matched every supporter_matches row of the agency against each owner by subject or by the
-- supporter's id as text (an OR, and a cast of the column), so it read all of the agency's
-- matches, ended ones included, at every enrollment and appointment. Any match counts, active or
-- not: these two indexes hold them all. Built while writes wait: supporter_matches changes only
-- with the matching log (a match started or ended).
CREATE INDEX IF NOT EXISTS supporter_matches_by_subject
  ON supporter_matches (agency_id, supporter_subject);
CREATE INDEX IF NOT EXISTS supporter_matches_by_supporter
  ON supporter_matches (agency_id, supporter_id);
