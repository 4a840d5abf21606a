-- Consent service, tenth step: a decision's inputs keep to their indexes as the tables grow.
-- decision_inputs (0004) and peer_decision_inputs (0008) run on the plans PostgreSQL settles on
-- after five calls on a connection; settled while the agency had few consents, they read every
-- consent, emergency access and match of the agency at every decision the replica's cache does
-- not answer, as the tables grew, until autovacuum analysed them again (reproduced: 20,000 more of
-- each after the plans settled). Every read in them has an index (the participant's consents,
-- emergency accesses and active matches), so sequential scans are off inside both.
ALTER FUNCTION decision_inputs(text, text, text) SET enable_seqscan = off;
ALTER FUNCTION peer_decision_inputs(text, text, text) SET enable_seqscan = off;
