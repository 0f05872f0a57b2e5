-- Token names are unique among live tokens, and `admin` is the bootstrap admin token's name: an
-- app's `owners` are names, so one name must mean one holder.
-- Live tokens that break this are renamed `<name>#<token id>` (the oldest holder of a shared name
-- keeps it); a renamed token no longer owns the apps that list the old name.
UPDATE tokens
SET name = name || '#' || id
WHERE revoked_at IS NULL
  AND (
    lower(name) = 'admin'
    OR EXISTS (
      SELECT 1 FROM tokens AS older
      WHERE older.revoked_at IS NULL
        AND older.name = tokens.name
        AND (older.created_at < tokens.created_at
             OR (older.created_at = tokens.created_at AND older.id < tokens.id))
    )
  );

CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
