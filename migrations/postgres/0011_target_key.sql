-- The target an app provisions: its scimBaseUrl normalized (`store::target_key`), so that the check
-- for two apps on one target (SPEC §8) reads only the apps on that target. Apps stored before this
-- have none until the bridge starts and fills it in (a Rust normalization, not SQL's).
ALTER TABLE apps ADD COLUMN target_key TEXT;
CREATE INDEX apps_target_key ON apps (target_key);
