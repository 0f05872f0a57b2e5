-- A known value sealed with the encryption key that the stored credentials are written with. A
-- process none of whose keys opens it refuses to start (it could not open the credentials either),
-- instead of starting and failing every push. `rekey` re-seals it with the current key.
CREATE TABLE key_check (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    sealed     BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
