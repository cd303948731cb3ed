"""Canonical structs (msgspec) and versioned ClickHouse DDL shared by every flow and sink."""
