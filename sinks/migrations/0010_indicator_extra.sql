-- IndicatorSet v2 carries the user indicators' outputs (INDICATORS) in its `extra` map,
-- by name: one jsonb column, so a new user indicator needs no migration. v1 sets have
-- none: an empty object.
ALTER TABLE indicators ADD COLUMN IF NOT EXISTS extra jsonb NOT NULL DEFAULT '{}'::jsonb;
