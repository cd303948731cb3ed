-- 0003_row_kind: rated rows are window rows or correction rows (schemas.records.RatedWindow).
--
-- Before this version a window that received late usage was re-emitted with revision + 1 and
-- its accumulated totals, so the rater had to keep every window it ever rated. Now a window is
-- rated once (row_kind 'window', id "<sub>:<meter>:<window start>") and usage arriving after its
-- end is rated on its own (row_kind 'correction', id "<window row>:c<rating_seq>", carrying only
-- that usage's events, quantity and amount delta). Rows are never re-emitted, so revision is 0
-- for new rows and the table only collapses identical replayed copies; older rows keep their
-- revisions and still collapse as before. Reading stays the same: through rated_windows_final
-- (or FINAL), sum amount_delta and event_count per period, and take the cumulative columns of
-- the row with the highest rating_seq. window_quantity adds up across a window's rows only for
-- sum and count meters.
--
-- The view is created again because a view's `SELECT *` is expanded when it is created.

ALTER TABLE {database}.rated_windows
    ADD COLUMN IF NOT EXISTS row_kind LowCardinality(String) DEFAULT 'window' AFTER after_close;

DROP VIEW IF EXISTS {database}.rated_windows_final;

CREATE VIEW IF NOT EXISTS {database}.rated_windows_final AS
SELECT *
FROM {database}.rated_windows FINAL;
