-- The mark `scim-bridge migrate-store` leaves on a SQLite store once its copy into PostgreSQL has
-- committed (SPEC §6, "Moving stores"). With the row, migrate-store adds a trigger on every other
-- table that refuses every write, so the mark is read inside every write transaction, whichever
-- bridge process (or release) still runs on the file; a bridge refuses to start on it. There is no
-- PostgreSQL counterpart: a PostgreSQL store is never the source of a move.
CREATE TABLE store_moved (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- The PostgreSQL URL the store was copied into, its password redacted.
    destination TEXT NOT NULL,
    moved_at INTEGER NOT NULL
);
