-- Scale-out (SPEC §6): the replicas alive on this database, and the leases that say which one
-- does each piece of work that must run once in the cluster: `app:<id>` (the app's dispatcher),
-- `timers` (expiry and retention) and `graph` (the Graph source's pollers).
CREATE TABLE replicas (
    id         TEXT PRIMARY KEY,          -- SCIM_BRIDGE_REPLICA_ID
    instance   TEXT NOT NULL,             -- random per process: two live processes with one id show
    started_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL       -- alive while in the future; renewed with its leases
);

-- A token is drawn from one sequence at every grant, so a later holder always has a larger one,
-- even after the row was deleted and created again.
CREATE SEQUENCE lease_tokens;

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    token       BIGINT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,     -- database time; the holder renews it
    released    BOOLEAN NOT NULL DEFAULT FALSE  -- given up by its holder, whose work had stopped
);
CREATE INDEX leases_holder ON leases (holder);
