-- The PostgreSQL schema: the SQLite schema of migrations/sqlite 0001-0005 as it stands, in native
-- types. Times are `timestamptz`, app ids `uuid`, JSON `jsonb`. The store speaks unix
-- milliseconds; `from_ms` and `to_ms` convert at the boundary, in SQL. Ids that come from outside
-- (event, principal, group and target ids) stay `text`: a source may send any string.

CREATE FUNCTION from_ms(ms bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN timestamptz '1970-01-01 00:00:00+00' + ms * interval '1 millisecond';

CREATE FUNCTION to_ms(t timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN floor(extract(epoch FROM t) * 1000)::bigint;

CREATE TABLE apps (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    scim_base_url     text NOT NULL,
    auth_type         text NOT NULL,
    auth_sealed       bytea NOT NULL,         -- the auth object, encrypted with the encryption key
    settings          jsonb NOT NULL,         -- interval, rate limit, pacing, overflow, ...
    owners            jsonb NOT NULL,         -- array of token names
    status            text NOT NULL,          -- active | paused | quarantined | deleting
    status_reason     text,
    legacy_remove     boolean NOT NULL DEFAULT false, -- target only takes the legacy removal form
    next_sync_at      timestamptz NOT NULL,
    quarantine_level  bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL,
    deleted_at        timestamptz
);

CREATE TABLE group_assignments (
    app_id              uuid NOT NULL REFERENCES apps(id),
    group_id            text NOT NULL,
    target_display_name text NOT NULL,
    created_at          timestamptz NOT NULL,
    PRIMARY KEY (app_id, group_id)
);
CREATE INDEX group_assignments_group ON group_assignments(group_id);

CREATE TABLE tokens (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    role       text NOT NULL,
    hash       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
-- Token names are unique among live tokens (an app's `owners` are names).
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE principals (
    principal_id        text PRIMARY KEY,
    user_principal_name text NOT NULL,
    display_name        text,
    given_name          text,
    surname             text,
    mail                text,
    updated_at          timestamptz NOT NULL,
    -- Field by field, each with the createdDateTime of the newest event that carried it.
    attributes          jsonb
);

-- Every webhook event, once per (id, status).
CREATE TABLE events (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- arrival order
    id             text NOT NULL,
    status         text NOT NULL,
    body           jsonb NOT NULL,
    action         text NOT NULL,
    access_id      text NOT NULL,
    principal_id   text NOT NULL,
    group_id       text NOT NULL,
    created_at     timestamptz NOT NULL,  -- createdDateTime
    received_at    timestamptz NOT NULL,
    start_at       timestamptz,
    end_at         timestamptz,
    outcome        text NOT NULL,
    reason         text,
    UNIQUE (id, status)
);
CREATE INDEX events_principal_group ON events(principal_id, group_id);
CREATE INDEX events_received ON events(received_at);

-- Membership state per (principal, group, access): the newest event wins.
CREATE TABLE memberships (
    principal_id     text NOT NULL,
    group_id         text NOT NULL,
    access_id        text NOT NULL,
    active           boolean NOT NULL,
    source           text NOT NULL,       -- activation | assignment
    start_at         timestamptz,
    end_at           timestamptz,
    event_seq        bigint NOT NULL,
    event_created    timestamptz NOT NULL,
    expired_at       timestamptz,         -- set once the expiry removal was queued
    grant_request_id text,                -- the request whose grant the membership holds
    PRIMARY KEY (principal_id, group_id, access_id)
);
CREATE INDEX memberships_end ON memberships(active, expired_at, end_at);
CREATE INDEX memberships_event_seq ON memberships(event_seq);
CREATE INDEX memberships_group ON memberships(group_id);

-- Standing (non-activation) memberships from the directory feed.
CREATE TABLE standing_members (
    group_id     text NOT NULL,
    principal_id text NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (group_id, principal_id)
);

-- One unit of work for one app: add or remove one principal for one source group.
CREATE TABLE jobs (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text NOT NULL UNIQUE,
    app_id         uuid NOT NULL,
    event_seq      bigint,
    event_id       text,
    principal_id   text NOT NULL,
    group_id       text NOT NULL,
    kind           text NOT NULL,      -- add | remove
    trigger        text NOT NULL,      -- activation | deactivation | expiry | on_demand | ...
    state          text NOT NULL,      -- pending | in_flight | deferred | done | failed | cancelled
    not_before     timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    deferred_until timestamptz,
    attempt        bigint NOT NULL DEFAULT 0,
    flag           text,
    updated_at     timestamptz NOT NULL,
    -- When the window admitted it (R2), committed with the claim before the push is sent.
    admitted_at    timestamptz
);
CREATE INDEX jobs_app_state_seq ON jobs(app_id, state, seq);
CREATE INDEX jobs_pair ON jobs(app_id, principal_id, group_id, seq);
CREATE INDEX jobs_event ON jobs(event_id);
CREATE INDEX jobs_event_seq ON jobs(event_seq);
CREATE INDEX jobs_app_admitted ON jobs(app_id, admitted_at) WHERE admitted_at IS NOT NULL;
CREATE INDEX jobs_finished ON jobs(updated_at) WHERE state IN ('done', 'failed', 'cancelled');

-- What the bridge knows of each target.
CREATE TABLE target_users (
    app_id         uuid NOT NULL,
    principal_id   text NOT NULL,
    target_user_id text NOT NULL,
    fingerprint    text NOT NULL,
    created_by_us  boolean NOT NULL,
    disabled       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (app_id, principal_id)
);

CREATE TABLE target_groups (
    app_id          uuid NOT NULL,
    display_name    text NOT NULL,
    target_group_id text NOT NULL,
    PRIMARY KEY (app_id, display_name)
);

-- Memberships the bridge has pushed: confirmed, or in doubt (sent, outcome unknown).
CREATE TABLE provisioned (
    app_id              uuid NOT NULL,
    target_display_name text NOT NULL,
    principal_id        text NOT NULL,
    added_at            timestamptz NOT NULL,
    confirmed           boolean NOT NULL DEFAULT true,
    PRIMARY KEY (app_id, target_display_name, principal_id)
);

-- The provisioning log and the audit trail are paged newest first by `seq`, which is the order
-- in which entries were committed, not inserted: see `assign_commit_order` below.
CREATE SEQUENCE commit_order AS bigint;

CREATE TABLE provisioning_logs (
    pos             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- insertion order
    seq             bigint UNIQUE,     -- commit order; NULL until `assign_commit_order` ran
    id              text NOT NULL UNIQUE,
    time            timestamptz NOT NULL,
    app_id          uuid NOT NULL,
    app_name        text NOT NULL,
    trigger         text NOT NULL,
    cycle_id        text,
    event_id        text,
    job_id          text,
    principal_id    text,
    user_principal_name text,
    group_id        text,
    action          text NOT NULL,
    status          text NOT NULL,
    reason          text,
    deferred_until  timestamptz,
    target_user_id  text,
    target_group_id text,
    attempt         bigint NOT NULL,
    duration_ms     bigint,
    latency_ms      bigint,
    steps           jsonb NOT NULL
);
CREATE INDEX logs_unordered ON provisioning_logs(pos) WHERE seq IS NULL;
CREATE INDEX logs_app ON provisioning_logs(app_id, seq);
CREATE INDEX logs_event ON provisioning_logs(event_id);
CREATE INDEX logs_time ON provisioning_logs(time);

CREATE TABLE sync_cycles (
    pos         bigint GENERATED ALWAYS AS IDENTITY UNIQUE, -- insertion order, breaks ties
    id          text PRIMARY KEY,
    app_id      uuid NOT NULL,
    trigger     text NOT NULL,
    dry_run     boolean NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    status      text NOT NULL,      -- running | success | failed | quarantined
    counts      jsonb NOT NULL,
    progress    text,
    report      jsonb               -- dry-run plan and drift found
);
CREATE INDEX sync_cycles_app ON sync_cycles(app_id, started_at);

-- Cycles asked for through the API, taken by the app's dispatcher.
CREATE TABLE cycle_requests (
    cycle_id   text PRIMARY KEY,
    app_id     uuid NOT NULL,
    dry_run    boolean NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE audit (
    pos     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- insertion order
    seq     bigint UNIQUE,                                    -- commit order, as for logs
    time    timestamptz NOT NULL,
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text NOT NULL,
    detail  jsonb NOT NULL
);
CREATE INDEX audit_unordered ON audit(pos) WHERE seq IS NULL;
CREATE INDEX audit_time ON audit(time);

-- The paging cursor of the log and the audit trail: `seq`, numbered in commit order.
--
-- An identity column is handed out when a row is inserted, not when it commits: with several
-- writers, a transaction holding seq 100 can commit after one holding 101 has been read, and a
-- reader paging newest first from 101 down would never see 100 (it lands behind the cursor).
-- So rows are inserted without a `seq`, invisible to paging, and this function numbers every
-- committed row that has none. It runs in a transaction of its own, after the writer's commit
-- (and before a page is read, for rows a writer that died could not number), and takes one
-- transaction-scoped advisory lock first: runs are serialized, and each one's statements see
-- every earlier run committed. A run therefore hands out numbers above every number a reader
-- can already have seen; a new entry always appears above the newest one, never behind a
-- cursor, so paging skips and repeats nothing.
CREATE FUNCTION assign_commit_order() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM provisioning_logs WHERE seq IS NULL)
       AND NOT EXISTS (SELECT 1 FROM audit WHERE seq IS NULL) THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('scim-bridge commit order'));
    UPDATE provisioning_logs l SET seq = n.seq
      FROM (SELECT pos, nextval('commit_order') AS seq
              FROM (SELECT pos FROM provisioning_logs WHERE seq IS NULL ORDER BY pos) todo) n
     WHERE l.pos = n.pos;
    UPDATE audit a SET seq = n.seq
      FROM (SELECT pos, nextval('commit_order') AS seq
              FROM (SELECT pos FROM audit WHERE seq IS NULL ORDER BY pos) todo) n
     WHERE a.pos = n.pos;
END;
$$;
