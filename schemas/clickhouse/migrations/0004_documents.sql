-- 0004_documents: what the HTTP API lists, in the same store as the rated windows, so the API
-- answers from one place in both deployments (file mode writes these into its embedded store at
-- the end of a run; stream mode writes them as it goes).
--
-- billing_documents: one row per document id and kind, mirroring schemas.records.StoredDocument:
--   kind 'candidate'          invoice candidates and adjustments (id: the candidate id)
--   kind 'ar_invoice'         AR invoices and credit memos (id: the AR invoice id)
--   kind 'invoice_exception'  candidates kept out of the ERP (id: the candidate id)
-- `body` is the document exactly as the JSON-lines file or Kafka topic carries it (amounts as
-- decimal strings), so the API returns it byte for byte and never re-renders money. `amount` is
-- the subtotal or total, for sums and filters. ReplacingMergeTree(written_at): a replay writes
-- identical copies, which collapse; a candidate released from hold is written again with a
-- later written_at and replaces the held one.
--
-- rejected_events: one row per exception id (source:partition:offset), mirroring
-- schemas.records.StoredRejection: the reason, the error, where it came from, and the original
-- bytes (`raw`, or `raw_base64` when they are not UTF-8). `rejected_at` is when it was judged:
-- the dead letter's time in stream mode, the end of the run in file mode.

CREATE TABLE IF NOT EXISTS {database}.billing_documents
(
    kind              LowCardinality(String),
    id                String,
    customer_id       String,
    subscription_id   String,
    billing_period    String,
    status            LowCardinality(String),
    currency          LowCardinality(String),
    amount            Decimal(38, 18),
    body              String,
    written_at        DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (kind, customer_id, id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {database}.rejected_events
(
    exception_id      String,
    reason            LowCardinality(String),
    error             String,
    subject           Nullable(String),
    event_id          Nullable(String),
    event_source      Nullable(String),
    position          String,
    raw               Nullable(String),
    raw_base64        Nullable(String),
    rejected_at       DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY exception_id
SETTINGS non_replicated_deduplication_window = 1000;
