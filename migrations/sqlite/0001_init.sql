-- Times are integer unix milliseconds: they compare and sort correctly in SQLite.

CREATE TABLE apps (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    scim_base_url     TEXT NOT NULL,
    auth_type         TEXT NOT NULL,
    auth_sealed       BLOB NOT NULL,          -- the auth object, encrypted with the encryption key
    settings          TEXT NOT NULL,          -- JSON: interval, rate limit, pacing, overflow, ...
    owners            TEXT NOT NULL,          -- JSON array of token names
    status            TEXT NOT NULL,          -- active | paused | quarantined
    status_reason     TEXT,
    legacy_remove     INTEGER NOT NULL DEFAULT 0, -- target only takes the legacy removal form
    next_sync_at      INTEGER NOT NULL,
    quarantine_level  INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    deleted_at        INTEGER
);

CREATE TABLE group_assignments (
    app_id              TEXT NOT NULL REFERENCES apps(id),
    group_id            TEXT NOT NULL,
    target_display_name TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    PRIMARY KEY (app_id, group_id)
);
CREATE INDEX group_assignments_group ON group_assignments(group_id);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE principals (
    principal_id        TEXT PRIMARY KEY,
    user_principal_name TEXT NOT NULL,
    display_name        TEXT,
    given_name          TEXT,
    surname             TEXT,
    mail                TEXT,
    updated_at          INTEGER NOT NULL
);

-- Every webhook event, once per (id, status).
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT, -- arrival order
    id             TEXT NOT NULL,
    status         TEXT NOT NULL,
    body           TEXT NOT NULL,
    action         TEXT NOT NULL,
    access_id      TEXT NOT NULL,
    principal_id   TEXT NOT NULL,
    group_id       TEXT NOT NULL,
    created_at     INTEGER NOT NULL,  -- createdDateTime
    received_at    INTEGER NOT NULL,
    start_at       INTEGER,
    end_at         INTEGER,
    outcome        TEXT NOT NULL,     -- what the bridge made of it
    reason         TEXT,
    UNIQUE (id, status)
);
CREATE INDEX events_principal_group ON events(principal_id, group_id);

-- Membership state per (principal, group, access): the newest event wins.
CREATE TABLE memberships (
    principal_id    TEXT NOT NULL,
    group_id        TEXT NOT NULL,
    access_id       TEXT NOT NULL,
    active          INTEGER NOT NULL,    -- 1 while the assignment or activation holds
    source          TEXT NOT NULL,       -- activation | assignment
    start_at        INTEGER,
    end_at          INTEGER,
    event_seq       INTEGER NOT NULL,
    event_created   INTEGER NOT NULL,
    expired_at      INTEGER,             -- set once the expiry removal was queued
    PRIMARY KEY (principal_id, group_id, access_id)
);
CREATE INDEX memberships_end ON memberships(active, expired_at, end_at);

-- Standing (non-activation) memberships from the directory feed.
CREATE TABLE standing_members (
    group_id     TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (group_id, principal_id)
);

-- One unit of work for one app: add or remove one principal for one source group.
CREATE TABLE jobs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    app_id         TEXT NOT NULL,
    event_seq      INTEGER,
    event_id       TEXT,
    principal_id   TEXT NOT NULL,
    group_id       TEXT NOT NULL,
    kind           TEXT NOT NULL,      -- add | remove
    trigger        TEXT NOT NULL,      -- activation | deactivation | expiry | on_demand
    state          TEXT NOT NULL,      -- pending | in_flight | deferred | done | failed | cancelled
    not_before     INTEGER NOT NULL,
    received_at    INTEGER NOT NULL,   -- webhook arrival, for latency
    deferred_until INTEGER,
    attempt        INTEGER NOT NULL DEFAULT 0,
    flag           TEXT,               -- anomaly noted when the event was accepted
    updated_at     INTEGER NOT NULL
);
CREATE INDEX jobs_app_state ON jobs(app_id, state, kind, seq);
CREATE INDEX jobs_event ON jobs(event_id);

-- What the bridge knows of each target.
CREATE TABLE target_users (
    app_id         TEXT NOT NULL,
    principal_id   TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    fingerprint    TEXT NOT NULL,      -- attributes last pushed
    created_by_us  INTEGER NOT NULL,
    disabled       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, principal_id)
);

CREATE TABLE target_groups (
    app_id          TEXT NOT NULL,
    display_name    TEXT NOT NULL,
    target_group_id TEXT NOT NULL,
    PRIMARY KEY (app_id, display_name)
);

-- Memberships the bridge has pushed and the target confirmed.
CREATE TABLE provisioned (
    app_id              TEXT NOT NULL,
    target_display_name TEXT NOT NULL,
    principal_id        TEXT NOT NULL,
    added_at            INTEGER NOT NULL,
    PRIMARY KEY (app_id, target_display_name, principal_id)
);

CREATE TABLE provisioning_logs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    time            INTEGER NOT NULL,
    app_id          TEXT NOT NULL,
    app_name        TEXT NOT NULL,
    trigger         TEXT NOT NULL,
    cycle_id        TEXT,
    event_id        TEXT,
    job_id          TEXT,
    principal_id    TEXT,
    user_principal_name TEXT,
    group_id        TEXT,
    action          TEXT NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT,
    deferred_until  INTEGER,
    target_user_id  TEXT,
    target_group_id TEXT,
    attempt         INTEGER NOT NULL,
    duration_ms     INTEGER,
    latency_ms      INTEGER,
    steps           TEXT NOT NULL
);
CREATE INDEX logs_app ON provisioning_logs(app_id, seq);
CREATE INDEX logs_event ON provisioning_logs(event_id);
CREATE INDEX logs_time ON provisioning_logs(time);

CREATE TABLE sync_cycles (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    dry_run     INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    status      TEXT NOT NULL,      -- running | success | failed | quarantined
    counts      TEXT NOT NULL,      -- JSON
    progress    TEXT,
    report      TEXT                -- JSON: dry-run plan and drift found
);
CREATE INDEX sync_cycles_app ON sync_cycles(app_id, started_at);

-- Cycles asked for through the API, taken by the app's dispatcher.
CREATE TABLE cycle_requests (
    cycle_id   TEXT PRIMARY KEY,
    app_id     TEXT NOT NULL,
    dry_run    INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    time    INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
