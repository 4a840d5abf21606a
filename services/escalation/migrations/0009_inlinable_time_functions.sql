-- us_from_ts and ts_from_us (0002) were declared IMMUTABLE over operations PostgreSQL marks
-- STABLE (timestamptz arithmetic and extract), so it never inlined them: each call in a statement
-- ran as a function of its own (fmgr_sql, some 7% of the database's time under RaiseConcern).
-- Declared STABLE, which is what their operations are, they inline into the statements that use
-- them. Their results are unchanged: whole microseconds to and from the epoch depend on no zone.
ALTER FUNCTION us_from_ts(timestamptz) STABLE;
ALTER FUNCTION ts_from_us(bigint) STABLE;
