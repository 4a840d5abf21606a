-- Check-in service, fourteenth step: check_in_contexts (0013) runs its read on the generic plan.
-- Its arrays are parameters of the statement inside the function; PostgreSQL estimates an unnest
-- of a parameter at ten rows in the generic plan and at the true count in a custom one, so it
-- never judged the generic plan cheaper and planned the read afresh at every call (0.64 ms of
-- planning against 0.29 ms of running it, pg_stat_statements under the check-in benchmark). The
-- generic plan reads the same indexes (the enrollments by id, the occurrences, wellbeing and
-- matches by their keys). Setting it again changes nothing.
ALTER FUNCTION check_in_contexts(text, uuid[], text[], date[], text[], uuid[])
  SET plan_cache_mode = force_generic_plan;
