"""Pure domain logic: money, periods, catalog, pricing, aggregation, ingest decisions, rating.

Nothing in this package imports Bytewax, Kafka, Redis or ClickHouse: every function here can be
tested as a plain function. See CONVENTIONS.md.
"""
