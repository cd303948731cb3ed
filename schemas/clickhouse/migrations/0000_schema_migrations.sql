-- 0000_schema_migrations: the migration ledger itself.
--
-- `{database}` is replaced by the configured database name (quoted) when the migration is
-- rendered; the checksum is taken over this unrendered text, so it does not depend on the name.
--
-- The runner executes this migration on every open, before it reads the ledger (it cannot read
-- which versions are applied until the ledger exists), so every statement here must be
-- idempotent. After that it is checked and recorded like any other migration: editing this file
-- once it is applied is a checksum error, as for every other file in this directory.
--
-- Rules for every migration file:
--   * named NNNN_snake_case.sql; applied in ascending NNNN, each once, recorded below;
--   * never edited after it has been applied anywhere (add a new file instead);
--   * every statement re-runnable (IF NOT EXISTS ...): ClickHouse DDL is not transactional, so a
--     crash between a statement and the ledger row re-runs the whole file on the next open.

CREATE DATABASE IF NOT EXISTS {database};

CREATE TABLE IF NOT EXISTS {database}.schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,                    -- sha256 hex of the unrendered file, LF line endings
    applied_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY version;
