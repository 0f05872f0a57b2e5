-- Configuration as code (SPEC §9). `managed`: an applied document created or matched the app, so
-- a prune may remove it. `name_key`: the app's name while it is its own (unique among apps not
-- deleted). Apps stored before names were unique may share a name: those keep no key until one of
-- them is renamed.
ALTER TABLE apps ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE apps ADD COLUMN name_key TEXT;
UPDATE apps SET name_key = name
WHERE deleted_at IS NULL
  AND name IN (SELECT name FROM apps WHERE deleted_at IS NULL GROUP BY name HAVING COUNT(*) = 1);
CREATE UNIQUE INDEX apps_name_key ON apps (name_key);
