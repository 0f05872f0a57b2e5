-- One record per end of an entitlement at an app (SPEC §8, "Access-end records"): born in the
-- commit that decides the end, completed in the commit of the removal's outcome.
CREATE TABLE access_ends (
    id                  text PRIMARY KEY,
    app_id              uuid NOT NULL,
    principal_id        text NOT NULL,
    user_principal_name text,
    group_id            text NOT NULL,
    target_display_name text,
    event_id            text,
    reason              text NOT NULL,   -- expiry | deactivation | revoked | adminRemove | directory | unassigned | appDeprovisioned | outOfScope
    ended_at            timestamptz NOT NULL,
    learned_at          timestamptz NOT NULL,
    removed_at          timestamptz,
    action              text,            -- remove_member | disable_user | delete_user
    status              text NOT NULL,   -- pending | failed | removed | kept | notProvisioned | held | rejected
    waiting_on          text,            -- window | retry | paused | held, while pending
    updated_at          timestamptz NOT NULL
);
-- Pages newest first (by the end), per app or across apps; the open records of a member.
CREATE INDEX access_ends_ended ON access_ends(ended_at, id);
CREATE INDEX access_ends_app ON access_ends(app_id, ended_at);
CREATE INDEX access_ends_open ON access_ends(app_id, principal_id, group_id)
    WHERE status IN ('pending', 'failed', 'held');
CREATE INDEX access_ends_event ON access_ends(event_id);

-- The bridge set `active: true` on this user (a matched account it found disabled): `disableUser`
-- may disable it again (SPEC §8). Accounts it created are `created_by_us`.
ALTER TABLE target_users ADD COLUMN enabled_by_us boolean NOT NULL DEFAULT false;

-- An object link's last push (`GET /v1/apps/{id}/users`): the newest entry of a user at an app.
CREATE INDEX logs_app_principal ON provisioning_logs(app_id, principal_id, time);

-- Removals a cycle planned but the app's deletion guard holds (SPEC §8): one per member and target
-- group, until an operator approves (they go as removal jobs) or rejects them (the bridge forgets
-- the membership), or the member is entitled again.
CREATE TABLE held_removals (
    app_id              uuid NOT NULL,
    target_display_name text NOT NULL,
    principal_id        text NOT NULL,
    cycle_id            text NOT NULL,   -- the cycle that held it
    held_at             timestamptz NOT NULL,
    PRIMARY KEY (app_id, target_display_name, principal_id)
);
