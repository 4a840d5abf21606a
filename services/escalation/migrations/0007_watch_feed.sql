-- Escalation service, seventh step: the watch feed. Every committed change a WatchConcerns
-- stream shows is written here in the transaction of the change, and every replica relays the
-- feed to its own streams in commit order (services/escalation/watch_feed.h), so a dashboard sees
-- changes made through any replica. Positions are handed out after commit by one assigner at a
-- time, as in the event log: a reader that has seen position N never later finds one below N.
-- Rows are kept for an hour: the feed is for live streams, which start from a snapshot.
CREATE SEQUENCE watch_feed_position AS bigint;

CREATE TABLE watch_feed (
  id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  position             bigint UNIQUE,
  agency_id            text NOT NULL CHECK (agency_id <> ''),
  kind                 smallint NOT NULL,  -- peerpath.escalation.v1.ConcernChangeKind
  -- The concern after the change (serialised peerpath.escalation.v1.Concern), without its
  -- description, cancel reason or transitions.
  concern              bytea NOT NULL,
  previous_target_kind smallint NOT NULL,  -- peerpath.escalation.v1.TargetKind
  previous_target_id   text NOT NULL,
  occurred_at          timestamptz NOT NULL,
  created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX watch_feed_unpositioned ON watch_feed (id) WHERE position IS NULL;
CREATE INDEX watch_feed_by_time ON watch_feed (created_at);

-- Rows are written under the tenant policy. The relay reads, positions and prunes every agency's
-- rows, only in a transaction that says so (app.watch_feed).
CREATE POLICY watch_feed_read ON watch_feed FOR SELECT
  USING (current_setting('app.watch_feed', true) = 'on');
CREATE POLICY watch_feed_assign ON watch_feed FOR UPDATE
  USING (current_setting('app.watch_feed', true) = 'on' AND position IS NULL)
  WITH CHECK (current_setting('app.watch_feed', true) = 'on');
CREATE POLICY watch_feed_prune ON watch_feed FOR DELETE
  USING (current_setting('app.watch_feed', true) = 'on'
         AND created_at < now() - interval '1 hour');
