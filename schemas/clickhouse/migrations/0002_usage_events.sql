-- 0002_usage_events: the immutable ledger of accepted usage events, as received.
-- One row per event identity (source, id), mirroring schemas.records.AcceptedEvent.
--
-- Audit traces every rated amount back to these rows, and re-rating (a corrected catalog)
-- replays them. Only accepted events are here: duplicates never are (dedup decided before),
-- rejected events go to the dead-letter topic with their reason.
--
-- ReplacingMergeTree on the identity: a replay after a crash re-inserts the same event (same
-- identity, same content), and the copies collapse; read with FINAL for exact counts before
-- merges. Partitioned by billing month so old months can be moved or dropped as a whole; the
-- partition key is a function of the event time, which is part of the row's content, so all
-- copies of one event land in the same partition and still collapse.

CREATE TABLE IF NOT EXISTS {database}.usage_events
(
    event_source      String,
    event_id          String,
    event_type        LowCardinality(String),
    subject           String,
    time              DateTime64(6, 'UTC'),
    customer_id       String,
    subscription_id   String,
    period            String,
    origin_source     String,
    origin_partition  UInt32,
    origin_offset     UInt64,
    raw               String,
    inserted_at       DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY period
ORDER BY (customer_id, subscription_id, event_source, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
