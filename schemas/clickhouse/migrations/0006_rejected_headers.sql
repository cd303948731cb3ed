-- 0006_rejected_headers: rejected_events.headers, the Kafka headers of a rejected message in
-- binary content mode (CloudEvents Kafka binding: the attributes in `ce_` headers, the value
-- only the data), so finance sees the whole event: `raw` alone is its data.
--
-- JSON text of schemas.records.ExceptionRecord.headers, as `position` is of its position: a
-- list of {"name", "value"} (or "value_base64" when the value is not UTF-8), in arrival order,
-- repeated names kept. NULL for every other rejection, and for the rows written before this
-- version, which were all structured.

ALTER TABLE {database}.rejected_events
    ADD COLUMN IF NOT EXISTS headers Nullable(String) AFTER raw_base64;
