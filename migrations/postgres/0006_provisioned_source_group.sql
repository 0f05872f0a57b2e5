-- The source group whose assignment a membership was provisioned for (SPEC §4): after a rename of
-- that assignment's targetDisplayName, a removal still finds the target group the member is in.
-- NULL for memberships provisioned before this column (the cycle moves or removes those).
ALTER TABLE provisioned ADD COLUMN group_id text;
CREATE INDEX provisioned_principal ON provisioned(app_id, principal_id);
