"""File mode's second core: a helper process that judges the input's lines a chunk ahead of ingest.

Bytewax runs a process's workers as threads under one GIL, so one file mode run uses one core for
Python while the embedded ClickHouse uses the other only in bursts. What ingest decides from a
line and the catalog alone (decoding, the envelope, the customer, the subscription, the meter
values: `Ingestor.judge_ahead`) needs no state and no clock, so a helper process does it for
chunk k+1 while ingest works through chunk k, and ingest skips it for the lines the helper found
rateable (`Ingestor.process(ahead=...)`). Everything that depends on order, the clock or state
(the future horizon, retention, dedup, the watermark, period limits) stays in the flow, so the
outputs are the same byte for byte, with or without the helper.

The helper is an accelerator, never a dependency: if it cannot start, dies, or does not answer
within `ANSWER_TIMEOUT`, ingest judges every line itself from then on (one warning in the log),
and the run's outputs are unchanged. Only file mode uses it: stream mode's catalog changes while
it runs (live contracts), and its time goes to Kafka, Redis and ClickHouse round trips.

The protocol over one pipe is strictly alternating: the source sends chunk k+1 only after it
received the answer for chunk k, so neither side can block on a full pipe while the other does.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from operators.catalog import Catalog
from operators.dedup import MemoryDedup
from operators.ingest import IngestConfig, Ingestor, Verdict

log = logging.getLogger(__name__)

# Seconds the source waits for one chunk's answer before it gives the helper up; a chunk of a
# few thousand lines takes it milliseconds.
ANSWER_TIMEOUT = 60.0

_ENCODER = msgspec.msgpack.Encoder()  # a chunk's lines one way, its verdicts the other
_LINES_DECODER = msgspec.msgpack.Decoder(list[bytes])
_VERDICTS_DECODER = msgspec.msgpack.Decoder(list[tuple[int, datetime, str, str, str,
                                                        list[tuple[int, str]]]])


def decode_verdicts(blob: bytes) -> list[Verdict]:
    return _VERDICTS_DECODER.decode(blob)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _serve(catalog: Catalog, conn: Connection) -> None:
    """The helper process: judge each chunk of lines received, answer with its verdicts, until
    the source sends an empty message or goes away."""
    # Ctrl-C in a terminal reaches the whole process group: the run decides what an interrupt
    # means (and closes this pipe), so the helper neither dies of it nor prints a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The ingestor is used for its pure judging only (no dedup is asked, no state kept).
    ingestor = Ingestor(catalog, IngestConfig(), MemoryDedup(), "ahead", 0)
    while True:
        try:
            blob = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not blob:
            return
        conn.send_bytes(_ENCODER.encode(ingestor.judge_ahead(_LINES_DECODER.decode(blob))))


class JudgeAhead:
    """The source's handle on the helper process. `submit` a chunk's lines, then `answer` it
    (the encoded verdicts, or None once the helper is given up), strictly in turn."""

    def __init__(self, catalog: Catalog) -> None:
        # Spawned, not forked: the parent already runs Bytewax's and ClickHouse's threads, and a
        # fork copies whatever locks they hold. The catalog travels pickled (a few MB for ten
        # thousand customers, a tenth of a second).
        context = multiprocessing.get_context("spawn")
        self._conn: Connection | None
        self._conn, child = context.Pipe(duplex=True)
        self._process: Any = context.Process(target=_serve, args=(catalog, child),
                                             name="meterwax-judge-ahead", daemon=True)
        self._waiting = False
        self.gave_up: str | None = None  # why the helper was given up, if it was
        try:
            self._process.start()
        except Exception as exc:  # whatever it is (an unpicklable catalog...), ingest judges alone
            self._give_up(f"it could not start: {type(exc).__name__}: {exc}")
        finally:
            child.close()

    @property
    def alive(self) -> bool:
        return self._conn is not None

    def submit(self, lines: Sequence[bytes]) -> None:
        if self._conn is None:
            return
        if self._waiting:
            msg = "a chunk was submitted before the previous one was answered"
            raise RuntimeError(msg)
        try:
            self._conn.send_bytes(_ENCODER.encode(lines))
        except OSError as exc:
            self._give_up(f"sending it a chunk failed: {exc}")
            return
        self._waiting = True

    def answer(self) -> bytes | None:
        """The verdicts of the chunk submitted last, encoded (`decode_verdicts`)."""
        if self._conn is None or not self._waiting:
            return None
        self._waiting = False
        try:
            if not self._conn.poll(ANSWER_TIMEOUT):
                self._give_up(f"it did not answer within {ANSWER_TIMEOUT:.0f} s")
                return None
            return self._conn.recv_bytes()
        except (EOFError, OSError) as exc:
            self._give_up(f"it stopped ({type(exc).__name__}; exit code "
                          f"{self._process.exitcode})")
            return None

    def _give_up(self, why: str) -> None:
        self.gave_up = why
        log.warning("the helper that judges input lines ahead is given up, ingest judges them "
                    "itself (the outputs are the same, only slower): %s", why)
        self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send_bytes(b"")
            conn.close()
        process = self._process
        if process.pid is not None:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
