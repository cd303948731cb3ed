"""Bytewax wiring: the dataflow, its sources, and the `meterwax` command."""
