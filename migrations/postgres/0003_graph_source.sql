-- Sources besides the webhook (SPEC §7): one row per Graph-polled source group, with what a restart
-- needs to resume (the group delta link) and what GET /v1/sources shows.
CREATE TABLE sources (
    id              TEXT PRIMARY KEY,     -- `graph:<groupId>`
    kind            TEXT NOT NULL,        -- `graph`
    group_id        TEXT NOT NULL,
    delta_link      TEXT,
    group_info      JSONB,                -- GET /groups/{id}?$select=displayName,membershipRule,onPremisesSyncEnabled
    group_info_at   TIMESTAMPTZ,
    last_attempt_at TIMESTAMPTZ,
    last_success_at TIMESTAMPTZ,
    last_error      TEXT,
    next_poll_at    TIMESTAMPTZ
);

-- The (id, status) pairs of PIM requests a Graph poll has taken in, per group, kept for as long as
-- Graph lists the request. Retention does not touch this table.
CREATE TABLE source_seen_requests (
    group_id   TEXT NOT NULL,
    request_id TEXT NOT NULL,
    status     TEXT NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (group_id, request_id, status)
);
