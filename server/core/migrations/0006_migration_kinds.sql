-- kind: expand
-- Rolling upgrades (docs/architecture.md "Migrations"): each applied migration keeps its kind, so a
-- release that meets a migration it does not know can tell whether it may still serve (expand) or
-- not (contract). Every migration applied before this one was an expand migration.
ALTER TABLE schema_migrations ADD COLUMN kind text NOT NULL DEFAULT 'expand';

-- The highest migration the beating code knows, so the contract step can tell that an older release
-- still runs; a clean stop marks its rows, so the step need not wait for them to go stale.
ALTER TABLE instances ADD COLUMN schema_known integer;
ALTER TABLE instances ADD COLUMN stopped_at timestamptz;
