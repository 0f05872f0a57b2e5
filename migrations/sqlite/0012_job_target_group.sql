-- A removal that a cycle step could not make goes on as a job of its own, retried on the clock
-- until it succeeds (SPEC §8): the target group it removes the member from, which no assignment
-- may name any more (an unassignment, a rename). NULL for jobs of an event (their group's
-- assignment says where).
ALTER TABLE jobs ADD COLUMN target_display_name TEXT;
