-- Request ids that PIM has revoked (SPEC §2): a status of such a request that arrives later never
-- grants anything. Kept until the request's scheduled end has passed (end_at NULL: no end known,
-- kept while the (principal, group) has membership state), whatever the retention period says.
CREATE TABLE revoked_requests (
    request_id   text PRIMARY KEY,
    principal_id text NOT NULL,
    group_id     text NOT NULL,
    end_at       timestamptz,
    revoked_at   timestamptz NOT NULL
);
CREATE INDEX revoked_requests_end ON revoked_requests(end_at);
CREATE INDEX revoked_requests_principal ON revoked_requests(principal_id, group_id);

-- Retention looks up who still refers to a principal.
CREATE INDEX IF NOT EXISTS standing_members_principal ON standing_members(principal_id);
CREATE INDEX IF NOT EXISTS provisioned_by_principal ON provisioned(principal_id);
CREATE INDEX IF NOT EXISTS target_users_principal ON target_users(principal_id);
CREATE INDEX IF NOT EXISTS jobs_principal_state ON jobs(principal_id, state);
