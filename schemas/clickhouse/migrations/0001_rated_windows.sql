-- 0001_rated_windows: one row per (subscription, meter, window) and revision, mirroring
-- schemas.records.RatedWindow field for field (plus inserted_at).
--
-- Identity and collapsing
--   The rater re-emits a window that receives late usage with revision + 1 and its accumulated
--   totals, and a replay re-emits rows it already wrote. ReplacingMergeTree(revision) keeps, per
--   sorting key, the row with the highest `revision` (on a tie, the last inserted), so both cases
--   collapse to the latest state of the window and nothing is double-counted.
--
--   The sorting key is (subscription_id, meter, window_start, row_id). row_id is built by the
--   rater as "<subscription_id>:<meter>:<window_start epoch>", so it and the three leading
--   columns identify exactly the same rows: every version of one window shares the key and
--   collapses; two different windows never do. The leading columns are there for locality (a
--   subscription's windows contiguous and in time order: the scans invoicing and reconciliation
--   make); row_id is kept at the tail so that, should the two ever disagree, rows stay apart
--   instead of being collapsed silently (a visible duplicate is caught by reconciliation, a
--   silently dropped row is not).
--
--   No PARTITION BY: rows only collapse within a partition, so any partition expression added
--   later must be a function of the sorting key (e.g. toYYYYMM(window_start)), never of
--   revision, inserted_at or after_close.
--
-- Reading
--   Collapsing happens at merge time, at an unspecified moment. Until then the table can hold
--   several revisions of a window (and identical replayed copies), so always read through
--   rated_windows_final below, or with FINAL, or with the equivalent
--       SELECT row_id, max(revision) AS final_revision,
--              argMax(amount_delta, revision) AS final_amount_delta, ...
--       FROM rated_windows GROUP BY row_id
--   (aliases must not reuse column names: ClickHouse resolves `revision` to an alias first.
--   argMax does not break revision ties by insertion order; replays write identical rows, so
--   ties carry identical values.)
--
-- Duplicate inserts
--   Writers set insert_deduplication_token to a hash of each encoded batch. MergeTree honours it
--   only when non_replicated_deduplication_window > 0: a batch retried or replayed verbatim
--   within the last 1000 inserted blocks is then dropped instead of written as a second part.
--   This only saves parts and merge work; correctness rests on the collapsing above.
--
-- Types: amounts and quantities Decimal(38, 18) (20 integer + 18 fractional digits, the scale the
-- domain guarantees: catalog prices and usage values have at most 9 fractional digits each).
-- Writers reject values that do not fit instead of letting ClickHouse truncate them.
-- Caution when aggregating: sum() over Decimal(38, 18) returns Decimal(38, 18) and wraps around
-- silently past about 1.7e20 (`+` raises DECIMAL_OVERFLOW, sum() does not: chdb 4.4 / 26.9).
-- Where a total could come near that, sum(toDecimal256(x, 18)) (Decimal(76, 18)) is exact.

CREATE TABLE IF NOT EXISTS {database}.rated_windows
(
    row_id              String,
    subscription_id     String,
    customer_id         String,
    plan_id             LowCardinality(String),
    legal_entity        LowCardinality(String),
    currency            LowCardinality(String),
    meter               LowCardinality(String),
    period              String,                   -- billing period, 'YYYY-MM'
    window_start        DateTime64(6, 'UTC'),
    window_end          DateTime64(6, 'UTC'),
    revision            UInt32,
    event_count         UInt64,
    window_quantity     Decimal(38, 18),
    cumulative_quantity Decimal(38, 18),
    amount_delta        Decimal(38, 18),
    cumulative_amount   Decimal(38, 18),
    rating_seq          UInt64,
    after_close         Bool,
    inserted_at         DateTime64(6, 'UTC') DEFAULT now64(6),
    CONSTRAINT period_is_year_month CHECK match(period, '^[0-9]{4}-(0[1-9]|1[0-2])$')
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (subscription_id, meter, window_start, row_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- The final state of every window: one row per row_id, its highest revision.
CREATE VIEW IF NOT EXISTS {database}.rated_windows_final AS
SELECT *
FROM {database}.rated_windows FINAL;
