-- When the app's dispatcher admitted a job through the window (R2). Committed with the claim,
-- before the push is sent, so a restart rebuilds the window from what was admitted, sent or not.
ALTER TABLE jobs ADD COLUMN admitted_at INTEGER;
CREATE INDEX jobs_app_admitted ON jobs(app_id, admitted_at) WHERE admitted_at IS NOT NULL;

-- The duplicate-webhook look-up reads a stored event's jobs by its sequence number.
CREATE INDEX jobs_event_seq ON jobs(event_seq);
-- Pending work in arrival order, and the jobs of one (principal, group) in an app.
CREATE INDEX jobs_app_state_seq ON jobs(app_id, state, seq);
CREATE INDEX jobs_pair ON jobs(app_id, principal_id, group_id, seq);

-- The request whose grant a membership holds: a `Revoked` of that request always ends it.
ALTER TABLE memberships ADD COLUMN grant_request_id TEXT;
UPDATE memberships SET grant_request_id = (SELECT e.id FROM events e WHERE e.seq = memberships.event_seq);

-- A principal's attributes field by field, each with the createdDateTime of the newest event that
-- carried it: {"field": {"value": ..., "at": millis}}. NULL for rows written before this column.
ALTER TABLE principals ADD COLUMN attributes TEXT;
