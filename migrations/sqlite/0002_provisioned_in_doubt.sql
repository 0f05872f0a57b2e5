-- 0 while an add's outcome is unknown (sent, no answer): the member may or may not be at the
-- target. A removal still goes out for it; the next cycle reads the target and settles it.
ALTER TABLE provisioned ADD COLUMN confirmed INTEGER NOT NULL DEFAULT 1;
