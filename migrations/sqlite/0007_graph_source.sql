-- Sources besides the webhook (SPEC §7): one row per Graph-polled source group, with what a restart
-- needs to resume (the group delta link) and what GET /v1/sources shows.
-- (0006 is taken by the PostgreSQL branch's key check.)
CREATE TABLE sources (
    id              TEXT PRIMARY KEY,     -- `graph:<groupId>`
    kind            TEXT NOT NULL,        -- `graph`
    group_id        TEXT NOT NULL,
    delta_link      TEXT,
    -- GET /groups/{id}?$select=displayName,membershipRule,onPremisesSyncEnabled, as read (JSON)
    group_info      TEXT,
    group_info_at   INTEGER,
    last_attempt_at INTEGER,
    last_success_at INTEGER,
    last_error      TEXT,
    next_poll_at    INTEGER
);

-- The (id, status) pairs of PIM requests a Graph poll has taken in, per group, kept for as long as
-- Graph lists the request: a request is never taken in twice, whatever its age. Retention does
-- not touch this table; a poll forgets the pairs Graph no longer lists.
CREATE TABLE source_seen_requests (
    group_id   TEXT NOT NULL,
    request_id TEXT NOT NULL,
    status     TEXT NOT NULL,
    seen_at    INTEGER NOT NULL,
    PRIMARY KEY (group_id, request_id, status)
);
