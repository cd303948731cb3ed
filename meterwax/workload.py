"""A realistic, deterministic, dirty usage workload for the example catalog (or any catalog).

`generate(catalog, size, seed)` yields about `size` JSON lines (CloudEvents 1.0, structured mode,
no trailing newline) covering two billing months, 2026-10 and 2026-11:

* clean usage for every customer subject, only while that customer has an active subscription,
  for the event types its plan prices, with a daily and weekly rhythm and per-customer volumes
  (acme biggest), in rough time order (each event is jittered inside its time slot);
* injected, in small proportions, everything a real feed does wrong: exact re-sends, re-sends with
  another payload, events a few minutes out of order, October events arriving in November (after
  October closed: they become adjustments), malformed lines (truncated JSON, not JSON, invalid
  UTF-8), invalid envelopes, unknown subjects, usage outside any subscription, invalid meter
  values, unmetered event types, metered types the customer's plan does not price, and a burst on
  both sides of every mid-month plan change.

Everything comes from seeded `random.Random` instances and the catalog: no wall clock, so a seed
gives the same bytes on every run and platform. `Composition` (from `compose`, or
`Workload.composition`) says how many lines of each kind the stream holds, exactly, and which
pipeline bucket each lands in (`expected_buckets`), so tests can check the pipeline against it.

The catalog model lives in meterwax/workload_model.py, the injected faults (one function each, with
the bucket it lands in) in meterwax/workload_faults.py; this module plans the counts and streams the
lines.

Generation streams in chunks of at most one hour of event time; memory stays constant apart from
the re-sends waiting for their slot (hours of duplicates, a few hundred lines at most).
"""

from __future__ import annotations

import bisect
import heapq
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from meterwax.workload_faults import BUCKETS, FAULTS, SECONDARY, Injector
from meterwax.workload_model import (
    DAY,
    DAY0,
    DAYS,
    END,
    HOUR,
    MS,
    NOV,
    SOD,
    START,
    Model,
    Segment,
    Template,
    build_tables,
)
from operators.catalog import Catalog
from schemas.records import REASONS

# Late October events are emitted on 2 November: well after October's close, which happens once
# the watermark passes 2026-11-01T01:00Z (period end + the default 1 h lateness). One day, because
# the common shape of late usage is a backlog replayed after an outage (a collector that was down
# uploads what it buffered), not a uniform month-long trickle; with the default one-day adjustment
# cycle it gives one adjustment per affected period, as finance would expect. The trickle case is
# pinned by tests/test_adjustment_cycles.py.
LATE_EMIT = (NOV + DAY, NOV + 2 * DAY)

# Injected kinds and their share of `size` (each fault's `rate`, in registration order). Below
# MIN_SIZE_ALL_KINDS a kind gets round(rate*size) lines (possibly none); from it on, at least one
# each (plan-change: one per side per boundary).
RATES: dict[str, float] = {kind: fault.rate for kind, fault in FAULTS.items()}
MIN_SIZE_ALL_KINDS = 1000
PLAN_CHANGE_MAX = 2000


@dataclass
class Composition:
    """How many lines of each kind a workload holds (exact, not estimated)."""

    size: int = 0
    total: int = 0
    normal: int = 0
    duplicate_exact: int = 0
    duplicate_conflict: int = 0
    out_of_order: int = 0
    late: int = 0
    malformed_truncated: int = 0
    malformed_not_json: int = 0
    malformed_invalid_utf8: int = 0
    envelope_missing_subject: int = 0
    envelope_naive_time: int = 0
    envelope_bad_specversion: int = 0
    envelope_data_not_object: int = 0
    unknown_subject: int = 0
    no_active_subscription: int = 0
    invalid_value: int = 0
    unmetered_type: int = 0
    not_in_plan: int = 0
    plan_change: int = 0
    # Subscription boundaries inside the two months where one plan ends as the next begins.
    plan_change_boundaries: list[str] = field(default_factory=list)

    KINDS = tuple(RATES)

    @property
    def duplicates(self) -> int:
        return self.duplicate_exact + self.duplicate_conflict

    @property
    def malformed(self) -> int:
        return self.malformed_truncated + self.malformed_not_json + self.malformed_invalid_utf8

    @property
    def invalid_envelope(self) -> int:
        return (self.envelope_missing_subject + self.envelope_naive_time
                + self.envelope_bad_specversion + self.envelope_data_not_object)

    @property
    def injected(self) -> int:
        return sum(getattr(self, k) for k in self.KINDS)

    def kinds(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.KINDS}

    def expected_buckets(self) -> dict[str, Any]:
        """Where each line should land in the ingest buckets (see operators/ingest.py): clean
        usage is rated, each injected kind lands in its fault's bucket (workload_faults.FAULTS)."""
        out: dict[str, Any] = {"read": self.total, "rated": self.normal}
        out |= dict.fromkeys((*BUCKETS[1:], *SECONDARY), 0)
        exceptions = dict.fromkeys(REASONS, 0)
        for kind, fault in FAULTS.items():
            n = getattr(self, kind)
            if fault.bucket in exceptions:
                exceptions[fault.bucket] += n
            else:
                out[fault.bucket] += n
            for counter in fault.also:
                out[counter] += n
        out["exceptions"] = exceptions
        return out

    def summary(self) -> str:
        return (
            f"{self.total} lines: {self.normal} clean usage; injected: "
            f"{self.duplicates} duplicates ({self.duplicate_exact} exact, "
            f"{self.duplicate_conflict} with another payload), "
            f"{self.out_of_order} out of order, {self.late} late (after October closed), "
            f"{self.malformed} malformed ({self.malformed_truncated} truncated, "
            f"{self.malformed_not_json} not JSON, {self.malformed_invalid_utf8} invalid UTF-8), "
            f"{self.invalid_envelope} invalid envelopes, {self.unknown_subject} unknown subject, "
            f"{self.no_active_subscription} outside any subscription, "
            f"{self.invalid_value} invalid values, {self.unmetered_type} unmetered types, "
            f"{self.not_in_plan} not in the plan, {self.plan_change} at plan changes"
        )

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(duplicates=self.duplicates, malformed=self.malformed,
                   invalid_envelope=self.invalid_envelope, injected=self.injected)
        return out


def _diurnal(t: int) -> float:
    """Relative traffic for the hour starting at epoch second `t` (UTC): a working-day bump
    centred on 15:00 UTC and quieter weekends."""
    hour = (t // HOUR) % 24
    weekday = ((t // DAY) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    dist = min(abs(hour - 15), 24 - abs(hour - 15))
    level = 0.35 + 0.65 * max(0.0, 1 - dist / 9)
    return level * (0.6 if weekday >= 5 else 1.0)


# --------------------------------------------------------------------------------------------
# The plan: counts per kind, exact.


def _plan_counts(model: Model, size: int) -> dict[str, int]:
    if size < 0:
        msg = "size must not be negative"
        raise ValueError(msg)
    counts: dict[str, int] = {}
    for kind, rate in RATES.items():
        n = round(rate * size)
        if size >= MIN_SIZE_ALL_KINDS:
            n = max(n, 1)
        counts[kind] = n
    # Kinds the catalog makes impossible get nothing.
    if not model.plan_changes:
        counts["plan_change"] = 0
    else:
        per = 2 * len(model.plan_changes)
        n = min(max(counts["plan_change"], per if size >= MIN_SIZE_ALL_KINDS else 0),
                PLAN_CHANGE_MAX)
        counts["plan_change"] = n
    if not any(s.not_charged for s in model.segments):
        counts["not_in_plan"] = 0
    if not any(s.value_templates for s in model.segments):
        counts["invalid_value"] = 0
    if not any(s.templates for s in model.segments):
        for kind in ("duplicate_exact", "duplicate_conflict", "out_of_order", "late",
                     "unmetered_type", "plan_change"):
            counts[kind] = 0
    if not any(s.templates and s.lo < NOV for s in model.segments):
        counts["late"] = 0
    if not model.gaps and not model.catalog.customers:
        counts["no_active_subscription"] = 0
    injected = sum(counts.values())
    if injected > size // 5:  # tiny sizes: keep the stream mostly clean
        scale = (size // 5) / injected if injected else 0
        counts = {k: int(v * scale) for k, v in counts.items()}
    return counts


def compose(catalog: Catalog, size: int, seed: int = 7) -> Composition:
    """The exact composition `generate(catalog, size, seed)` will produce, without generating."""
    return Workload(catalog, size, seed).composition


# --------------------------------------------------------------------------------------------
# The generator.


class Workload:
    """`iter(Workload(...))` yields the lines; `.composition` says what they are."""

    def __init__(self, catalog: Catalog, size: int, seed: int = 7,
                 variants: int | None = None) -> None:
        build_tables()
        self.catalog = catalog
        self.size = size
        self.seed = seed
        self.model = Model(catalog, seed, variants)
        counts = _plan_counts(self.model, size)
        comp = Composition(size=size)
        for kind, n in counts.items():
            setattr(comp, kind, n)
        comp.normal = size - sum(counts.values())
        comp.total = size
        comp.plan_change_boundaries = [
            f"{c.id}: {a.id} -> {b.id} at {b.start.isoformat()}"
            for c, a, b in self.model.plan_changes]
        self.composition = comp

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks():
            yield from chunk

    # -- scheduling -------------------------------------------------------------------------------

    def _chunks_plan(self) -> list[tuple[int, int, Segment, float]]:
        """(lo, hi, segment, weight) per chunk: hours cut at segment boundaries."""
        out = []
        for seg in self.model.segments:
            t = seg.lo
            while t < seg.hi:
                nxt = min((t // HOUR + 1) * HOUR, seg.hi)
                out.append((t, nxt, seg, _diurnal(t) * (nxt - t) / HOUR * seg.rate))
                t = nxt
        return out

    def _occurrences(self, kind: str, count: int) -> Iterator[tuple[float, int, str, Any]]:
        """Emission times of `count` occurrences of `kind`, ascending, spread evenly with jitter
        over the kind's allowed stretches. Yields (time, order, kind, extra)."""
        if count <= 0:
            return
        rng = random.Random(f"{self.seed}:{kind}")
        model = self.model
        order = list(RATES).index(kind)
        if kind == "plan_change":
            # Spread over every boundary, alternating sides: just before it (the old plan) and
            # from it on (the new plan; the first one exactly on the boundary).
            items: list[tuple[float, int, str, Any]] = []
            slots = 2 * len(model.plan_changes)
            for slot in range(slots):
                n = count // slots + (1 if slot < count % slots else 0)
                cust, before, after = model.plan_changes[slot // 2]
                side = slot % 2
                b = int(after.start.timestamp())
                gap = max(1, 240 // max(n, 1))
                for j in range(n):
                    if side:
                        t = b + j * gap + (rng.randrange(gap) if j else 0)
                        items.append((float(t), order, kind, (cust, after, t)))
                    else:
                        t = b - 1 - j * gap - rng.randrange(gap)
                        items.append((float(t), order, kind, (cust, before, t)))
            items.sort(key=lambda x: x[0])
            yield from items
            return
        if kind == "late":
            spans = [LATE_EMIT]
        elif kind == "no_active_subscription":
            spans = [(a, b) for a, b, _ in model.gaps] or [(START, END)]
        elif kind == "not_in_plan":
            spans = [(s.lo, s.hi) for s in model.segments if s.not_charged]
        elif kind == "invalid_value":
            spans = [(s.lo, s.hi) for s in model.segments if s.value_templates]
        else:
            spans = [(s.lo, s.hi) for s in model.segments if s.templates] or [(START, END)]
        spans = _merge_spans(spans)
        total = sum(b - a for a, b in spans)
        si, acc = 0, 0.0
        for j in range(count):
            x = (j + rng.random()) / count * total
            while si < len(spans) - 1 and x >= acc + (spans[si][1] - spans[si][0]):
                acc += spans[si][1] - spans[si][0]
                si += 1
            yield (spans[si][0] + (x - acc), order, kind, None)

    def chunks(self) -> Iterator[list[bytes]]:
        """The lines, a chunk (at most an hour of event time) at a time."""
        comp = self.composition
        plan = self._chunks_plan()
        total_w = sum(w for *_, w in plan) or 1.0
        n_normal = comp.normal
        stream = _Stream(self)
        cum_w = 0.0
        made = 0
        emitted = 0
        for ci, (lo, hi, seg, w) in enumerate(plan):
            last_chunk = ci == len(plan) - 1
            cum_w += w
            target = n_normal if last_chunk else round(n_normal * cum_w / total_w)
            n = target - made
            made = target
            lines = stream.chunk(lo, hi, seg, n, last_chunk)
            emitted += len(lines)
            if lines:
                yield lines
        planned = {k: v for k, v in comp.kinds().items() if v}
        done = stream.inj.done
        if emitted != comp.total or done != planned:  # pragma: no cover - a generator bug
            msg = (f"workload generator emitted {emitted} lines {done}, planned "
                   f"{comp.total} {planned}")
            raise RuntimeError(msg)


# (position among the clean lines, emission time, tiebreak, line)
_Extra = tuple[int, float, int, bytes]


class _Stream:
    """One pass over the chunks: the clean-usage and injection random streams, the injections
    still scheduled, the re-sends waiting for their emission time and the line sequence."""

    def __init__(self, workload: Workload) -> None:
        comp = workload.composition
        self.model = workload.model
        self.schedule = heapq.merge(*(workload._occurrences(k, getattr(comp, k)) for k in RATES))
        self.nxt = next(self.schedule, None)
        self.rng = random.Random(f"{workload.seed}:stream")
        self.inj = Injector(workload.catalog, workload.model,
                            random.Random(f"{workload.seed}:inject"))
        self.pending: list[tuple[float, int, bytes]] = []  # (emit time, tiebreak, line): re-sends
        self.deferred: list[str] = []  # duplicate requests waiting for a chunk with clean lines
        self.seq = 0

    def chunk(self, lo: int, hi: int, seg: Segment, n: int, last: bool) -> list[bytes]:
        """The chunk [lo, hi): `n` clean lines with the injections and re-sends due in it."""
        lines, times, picks = self._clean(lo, hi, seg, n)
        extra: list[_Extra] = []
        self._inject(lo, hi, last, lines, times, picks, extra)
        self._resends(hi, last, times, extra)
        if last:
            self._flush_deferred(len(lines), hi, extra)
        return _interleave(lines, extra)

    def _clean(self, lo: int, hi: int, seg: Segment, n: int
               ) -> tuple[list[bytes], list[float], list[tuple[Template, str | None]]]:
        """Clean usage: each line jittered inside its own slot of the chunk (times ascend)."""
        lines: list[bytes] = []
        times: list[float] = []
        if n <= 0:
            return lines, times, []
        rng = self.rng
        rnd = rng.random
        days, sod, ms_tab = DAYS, SOD, MS
        day0 = DAY0
        dyn = self.model.dynamic_data
        seq = self.seq
        picks = rng.choices(seg.population, cum_weights=seg.cum, k=n)
        step = (hi - lo) / n
        for k, (tp, data) in enumerate(picks):
            tf = lo + (k + rnd()) * step
            times.append(tf)
            t = int(tf)
            if data is None:
                data = dyn(tp, t, rng)
            d, s = divmod(t + tp.offset - day0, 86400)
            ts = days[d] + sod[s]
            if tp.ms:
                ts += ms_tab[int((tf - t) * 1000)]
            seq += 1
            lines.append(
                f"{tp.head}{tp.id_prefix}{seq:x}{tp.mid}{ts}{tp.suffix}{data}}}".encode())
        self.seq = seq
        self.inj.last_clean = (lines[-1], (picks[-1][0], hi - 1))
        return lines, times, picks

    def _inject(self, lo: int, hi: int, last: bool, lines: list[bytes], times: list[float],
                picks: list[tuple[Template, str | None]], extra: list[_Extra]) -> None:
        """The injections scheduled before `hi` (all that remain in the last chunk), and the
        duplicate requests deferred until a chunk had clean lines to copy."""
        inj = self.inj
        due: list[tuple[float, str, Any]] = []
        while self.nxt is not None and (self.nxt[0] < hi or last):
            due.append((self.nxt[0], self.nxt[2], self.nxt[3]))
            self.nxt = next(self.schedule, None)
        if lines:
            due.extend((float(lo), k, None) for k in self.deferred)
            self.deferred = []
        for t_emit, kind, info in due:
            pos = bisect.bisect_right(times, t_emit)
            if FAULTS[kind].resend is not None:
                if not lines:
                    self.deferred.append(kind)
                    continue
                i = inj.rng.randrange(len(lines))
                copy = inj.duplicate(kind, lines[i], (picks[i][0], int(times[i])))
                delay = inj.rng.choice((5, 30, 90, 600, 1800, 3600, 4 * 3600, 6 * 3600))
                emit_at = times[i] + delay * (0.5 + inj.rng.random())
                self.seq += 1
                heapq.heappush(self.pending, (emit_at, self.seq, copy))
                inj.count(kind)
                continue
            line = inj.make(kind, int(t_emit), info)
            self.seq += 1
            extra.append((pos, t_emit, self.seq, line))

    def _resends(self, hi: int, last: bool, times: list[float], extra: list[_Extra]) -> None:
        """The re-sends whose emission time falls before `hi` (all of them in the last chunk)."""
        pending = self.pending
        while pending and (pending[0][0] < hi or last):
            emit_at, tb, line = heapq.heappop(pending)
            extra.append((bisect.bisect_right(times, emit_at), emit_at, tb, line))

    def _flush_deferred(self, n: int, hi: int, extra: list[_Extra]) -> None:
        """No clean line left to copy after the request: copy the last clean line seen."""
        inj = self.inj
        for kind in self.deferred:
            if inj.last_clean is None:
                msg = "no clean line to duplicate"
                raise RuntimeError(msg)
            line, mt = inj.last_clean
            self.seq += 1
            extra.append((n, float(hi), self.seq, inj.duplicate(kind, line, mt)))
            inj.count(kind)
        self.deferred = []


def _interleave(lines: list[bytes], extra: list[_Extra]) -> list[bytes]:
    """The clean lines with each extra line inserted at its position, in (position, time,
    tiebreak) order."""
    if not extra:
        return lines
    extra.sort()
    out: list[bytes] = []
    prev = 0
    for pos, _, _, line in extra:
        if pos > prev:
            out.extend(lines[prev:pos])
            prev = pos
        out.append(line)
    out.extend(lines[prev:])
    return out


def _merge_spans(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out or [(START, END)]



# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# Public API.


def generate(catalog: Catalog, size: int, seed: int = 7) -> Iterator[bytes]:
    """About `size` (exactly `size`) JSON lines, without trailing newlines, for the catalog."""
    return iter(Workload(catalog, size, seed))


def write_workload(path: str | os.PathLike[str], catalog: Catalog, size: int, seed: int = 7,
                   variants: int | None = None) -> int:
    """Write the workload to `path`, one newline-terminated line per event; return the count.
    `variants`: payload variants per template (Model; None: the demo's mix)."""
    count = 0
    with open(path, "wb", buffering=1 << 20) as fh:
        for chunk in Workload(catalog, size, seed, variants).chunks():
            fh.write(b"\n".join(chunk))
            fh.write(b"\n")
            count += len(chunk)
    return count


__all__ = ["Composition", "Workload", "compose", "generate", "write_workload"]

