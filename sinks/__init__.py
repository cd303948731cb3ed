"""Sinks: the only place output records meet I/O (files, Kafka, ClickHouse)."""

from sinks.clickhouse import ChdbStore, RatedWindowStore

__all__ = ["ChdbStore", "RatedWindowStore"]
