-- 0005_document_amounts: billing_documents.amount as Decimal(76, 18).
--
-- A candidate's subtotal sums its lines, each of which can reach the period limits of
-- operators/limits.py (10^18 of quantity at a price of up to 10^12): a hostile but accepted
-- workload's subtotal passed the 20 integer digits of Decimal(38, 18), and the stream's
-- document sink refused the row, which stopped the flow. Decimal(76, 18) holds 58 integer
-- digits, far above any sum of lines the limits allow. The document's own JSON (`body`) always
-- carried the exact amount; this column is for sums and filters.

ALTER TABLE {database}.billing_documents MODIFY COLUMN amount Decimal(76, 18);
