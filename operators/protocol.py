"""The messages between ingest and rating: what one input partition tells one subscription.

Ingest (operators/ingest.py) emits, per subscription and in input order, a list of ops; the
subscription's rater (operators/rating.py) applies them in that order. Every op carries the
watermark ingest computed in input order, so whatever the rater decides depends only on this
sequence, never on batching or worker count.

    Usage   contributions of one chunk to one window (pre-aggregated, see Ingestor._accept)
    Tick    the watermark reached the end of some open windows: rate them
    Close   close every period through `through`, billing from `start`
    Retire  forget every period through `through`: its retention horizon has passed
    Terms   the contract terms to rate on from now (stream mode: contracts change live)
    Settle  an adjustment cycle ended: issue one adjustment per period late usage changed
    Idle    this input partition is idle or has ended: stop waiting for its Close

Every input partition closes periods on its own watermark, and each subscription hears from
all of them (a Close goes to every subscription). A rater closes a period only once every input
partition it waits for has sent a Close through it: the minimum of the partitions' watermarks,
as Flink and Beam close windows, so a partition that runs ahead cannot invoice a period while
another still holds usage for it (SubscriptionRater). A partition that has read nothing for the
idle timeout, or has reached the end of a bounded input, sends Idle and is not waited for until
it sends anything again. Windows are still rated on the watermark of the partition whose op
reached the rater: a lagging partition's usage for a rated window is a correction row (the same
totals), and running charges stay current without every partition telling every rater about
every window.

And one message from a rater to the journal step (flows/stream.py):

    PeriodRetired  this subscription will issue nothing more for this period

They are msgspec structs without cyclic-GC tracking (they hold numbers, strings and aggregates,
which hold no references back), laid out as arrays: as cheap to build and to pickle between
workers as the tuples they replace.
"""

from __future__ import annotations

import msgspec

from operators.aggregators import Aggregate
from operators.catalog import SubscriptionTerms


class Usage(msgspec.Struct, array_like=True, gc=False):
    period: str  # YYYY-MM
    meter: str
    window_start: int  # epoch seconds
    partial: Aggregate  # this chunk's contributions to the window (updated while it is built)
    events: int
    watermark: int  # epoch seconds, after the last contribution was accepted


class Tick(msgspec.Struct, array_like=True, gc=False):
    watermark: int


class Close(msgspec.Struct, array_like=True, gc=False):
    through: str  # YYYY-MM: the last period to close
    start: str  # YYYY-MM: the first billed month
    watermark: int


class Retire(msgspec.Struct, array_like=True, gc=False):
    through: str  # YYYY-MM: the last period to forget
    watermark: int


class Terms(msgspec.Struct, array_like=True, gc=False):
    """The contract terms a subscription is rated and invoiced on, sent by ingest in stream mode
    (live contracts) before the first op it sends a rater and whenever they change; `version`
    orders them (the contracts topic offset they came from), so a rater fed by several input
    partitions keeps the newest."""

    version: int
    terms: SubscriptionTerms
    watermark: int


class Settle(msgspec.Struct, array_like=True, gc=False):
    """The watermark crossed the adjustment-cycle boundary after this subscription's first late
    contribution to an issued period (or the bounded input ended): issue, for every period whose
    late usage is not yet on a document, one adjustment with everything since the last."""

    watermark: int


class Idle(msgspec.Struct, array_like=True, gc=False):
    """The input partition that sent it has read nothing for the idle timeout, or has reached
    the end of a bounded input: raters close periods without waiting for it until it sends any
    other op (module docstring)."""

    watermark: int


Op = Usage | Tick | Close | Retire | Terms | Settle | Idle


class PeriodRetired(msgspec.Struct, array_like=True, gc=False):
    subscription_id: str
    legal_entity: str
    currency: str
    period: str  # YYYY-MM
    customer_id: str = ""  # the credits step is keyed by customer (flows/pipeline.py)


class SubscriptionOps(msgspec.Struct, array_like=True, gc=False):
    """One subscription's ops from one ingest batch: the item keyed by subscription. `partition`:
    the input partition that sent them (its Close and Idle ops count for that partition)."""

    subscription_id: str
    ops: list[Op]
    partition: str = ""
