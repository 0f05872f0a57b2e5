-- Retention purges events that no membership points to any more.
CREATE INDEX memberships_event_seq ON memberships(event_seq);
