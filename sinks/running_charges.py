"""Running charges in Redis: what a customer has accrued so far in a billing period, readable in
one round trip by a customer-facing API.

Key layout. One hash per customer and billing period:

    {namespace}:charges:{customer_id}:{period}          period is YYYY-MM

Its fields, one per subscription and meter and one per subscription and fixed fee (`sub` is
written with its length in characters, so ids containing ':' stay unambiguous):

    u:{len(sub)}:{sub}:{meter}   -> "{rating_seq}|{currency}|{quantity}|{amount}|{window_end}"
    f:{len(sub)}:{sub}:{fee_id}  -> "{as_of}|{currency}|{accrued}"

and one field saying when the hash was last written (the sink's clock, epoch milliseconds,
so a customer sees how fresh the figures are; guarded like the others, so it only moves on):

    t                            -> "{epoch ms}|"

e.g. `u:10:sub-acme-1:api_calls` -> `57|USD|123456|246.912|1790812800`: the cumulative period
quantity and amount, as exact decimal text (never floats); window_end and as_of are epoch
seconds. A customer with a plan change mid-month has both subscriptions in the same hash,
possibly in two currencies.

Usage fields hold the subscription's cumulative period quantity and exact, unrounded cumulative
amount from the rated window with the highest `rating_seq` seen (the rater numbers its rating
steps per subscription, so the highest is the latest). A field is overwritten only by a strictly
higher rating_seq: replaying windows, or applying them out of order, leaves the latest state.

Fixed-fee fields hold each plan fee prorated by the subscription's active time in the period up
to the latest window end seen (`accrued_fixed_fees`), rounded half up once to the currency's minor
unit, with the proration of `operators.invoicing`: at the end of the period it equals the
invoice's fee line exactly. They are overwritten only by a strictly later as-of time. A
subscription's fees appear with its first rated window in the period.

Windows rated after their period closed (late usage, adjustments) are applied like any other: the
hash keeps describing the whole period. Each hash expires `retention` after its period ends
(EXPIREAT; an old period replayed after that is not brought back).

One round trip per `apply` batch: a single Lua script (EVALSHA, EVAL after NOSCRIPT) does every
seq-guarded HSET of the batch and the EXPIREATs. Guards make it idempotent, so an unavailable
server retries the whole batch (`sinks.retry`, the policy every sink shares, with the errors
`sinks.redis_dedup` counts as Redis being unavailable), and `ChargesUnavailable` is raised after
the policy's deadline. `read` is one HGETALL and does not retry: an API answering
in milliseconds should fail fast and let its caller decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict

import redis

from operators.catalog import Catalog
from operators.invoicing import accrued_fixed_fees
from operators.money import ZERO, fmt
from operators.periods import Month
from schemas.records import RatedWindow
from sinks.redis_dedup import LuaScript, RedisUnavailable, call_with_retry, connect
from sinks.retry import RetryPolicy


class ChargesUnavailable(RedisUnavailable):
    """The running-charges store could not be written within the retry deadline."""


UPDATED_FIELD = "t"


def usage_field(subscription_id: str, meter: str) -> str:
    return f"u:{len(subscription_id)}:{subscription_id}:{meter}"


def fee_field(subscription_id: str, fee_id: str) -> str:
    return f"f:{len(subscription_id)}:{subscription_id}:{fee_id}"


def _parse_field(name: str) -> tuple[str, str, str]:
    """(kind, subscription id, meter or fee id) of a field name."""
    kind, rest = name[0], name[2:]
    length, _, rest = rest.partition(":")
    n = int(length)
    return kind, rest[:n], rest[n + 1:]


# KEYS: the hashes of the batch. ARGV[1..#KEYS]: the EXPIREAT (epoch seconds) of each hash, or
# "" for none. Then (hash index, field, guard, value) quadruples: a field is written only when
# it is absent or its stored value starts with a smaller guard.
_APPLY = LuaScript("""
local n = #KEYS
local written = 0
for j = n + 1, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[j])]
  local guard = tonumber(ARGV[j + 2])
  local cur = redis.call('HGET', key, ARGV[j + 1])
  if (not cur) or tonumber(string.match(cur, '^[^|]*')) < guard then
    redis.call('HSET', key, ARGV[j + 1], ARGV[j + 3])
    written = written + 1
  end
end
for i = 1, n do
  if ARGV[i] ~= '' then
    redis.call('EXPIREAT', KEYS[i], ARGV[i])
  end
end
return written
""")


class UsageCharge(TypedDict):
    quantity: Decimal
    amount: Decimal  # exact, unrounded
    rating_seq: int
    as_of: datetime  # end of the window it comes from


class FeeAccrual(TypedDict):
    amount: Decimal  # rounded to minor units
    as_of: datetime


class SubscriptionCharges(TypedDict):
    currency: str
    usage: dict[str, UsageCharge]  # meter -> charge
    fixed_fees: dict[str, FeeAccrual]  # fee id -> accrual


class PeriodCharges(TypedDict):
    customer_id: str
    period: str
    subscriptions: dict[str, SubscriptionCharges]
    totals: dict[str, Decimal]  # currency -> usage amounts + accrued fees (exact)
    updated_at: datetime | None  # when the hash was last written


class RunningCharges:
    """Per customer and billing period, the current running charge (see the module docstring)."""

    def __init__(self, client_or_url: redis.Redis | str, namespace: str = "meterwax", *,
                 retry: RetryPolicy | None = None,
                 retention: timedelta | None = timedelta(days=90),
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if not namespace:
            msg = "namespace must not be empty"
            raise ValueError(msg)
        if retention is not None and retention < timedelta(0):
            msg = "retention must not be negative"
            raise ValueError(msg)
        self.client = connect(client_or_url) if isinstance(client_or_url, str) else client_or_url
        self.namespace = namespace
        self.retry = retry if retry is not None else RetryPolicy()
        self.retention = retention
        self._sleep = sleep
        self._clock = clock
        self._wall = wall

    @classmethod
    def from_url(cls, url: str, namespace: str = "meterwax", *,
                 retry: RetryPolicy | None = None,
                 retention: timedelta | None = timedelta(days=90), **client_options: Any
                 ) -> RunningCharges:
        return cls(connect(url, **client_options), namespace, retry=retry, retention=retention)

    def key(self, customer_id: str, period: str) -> str:
        return f"{self.namespace}:charges:{customer_id}:{period}"

    def apply(self, windows: Sequence[RatedWindow], catalog: Catalog) -> None:
        if not windows:
            return
        # The latest window per (customer, period, subscription, meter), and the latest window
        # end per (customer, period, subscription): the script would drop the rest anyway.
        latest: dict[tuple[str, str, str, str], RatedWindow] = {}
        as_of: dict[tuple[str, str, str], datetime] = {}
        for w in windows:
            k = (w.customer_id, w.period, w.subscription_id, w.meter)
            seen = latest.get(k)
            if seen is None or w.rating_seq > seen.rating_seq:
                latest[k] = w
            s = (w.customer_id, w.period, w.subscription_id)
            seen_end = as_of.get(s)
            if seen_end is None or w.window_end > seen_end:
                as_of[s] = w.window_end

        hashes: dict[tuple[str, str], int] = {}  # (customer, period) -> 1-based KEYS index
        writes: list[str | int] = []

        def index(customer_id: str, period: str) -> int:
            i = hashes.get((customer_id, period))
            if i is None:
                i = hashes[(customer_id, period)] = len(hashes) + 1
            return i

        for (customer_id, period, sub_id, meter), w in latest.items():
            end = int(w.window_end.timestamp())
            writes += (index(customer_id, period), usage_field(sub_id, meter), w.rating_seq,
                       f"{w.rating_seq}|{w.currency}|{fmt(w.cumulative_quantity)}|"
                       f"{fmt(w.cumulative_amount)}|{end}")
        for (customer_id, period, sub_id), end_at in as_of.items():
            sub = catalog.subscriptions[sub_id]
            plan = catalog.plans[sub.plan_id]
            at = int(end_at.timestamp())
            fees = accrued_fixed_fees(plan, sub, Month.parse(period), end_at)
            for fee_id, amount in fees.items():
                writes += (index(customer_id, period), fee_field(sub_id, fee_id), at,
                           f"{at}|{plan.currency}|{fmt(amount)}")

        written_ms = int(self._wall().timestamp() * 1000)
        for i in range(1, len(hashes) + 1):
            writes += (i, UPDATED_FIELD, written_ms, f"{written_ms}|")
        keys = [self.key(c, p) for c, p in hashes]
        expire: list[str | int] = []
        for _, period in hashes:
            if self.retention is None:
                expire.append("")
            else:
                expire.append(int((Month.parse(period).end + self.retention).timestamp()))
        args = [*expire, *writes]
        client = self.client

        def attempt() -> Any:
            return _APPLY(client, keys, args)

        call_with_retry(attempt, self.retry, sleep=self._sleep, clock=self._clock,
                        unavailable=ChargesUnavailable,
                        what=f"running charges of {len(windows)} window(s)")

    def read(self, customer_id: str, period: str) -> PeriodCharges:
        """The period's running charges, one HGETALL. Amounts are exact Decimals; `totals` sums,
        per currency, the exact usage amounts and the accrued fees (round for display)."""
        raw: Mapping[Any, Any] = self.client.hgetall(self.key(customer_id, period))
        return parse_charges(customer_id, period, raw)

    async def read_async(self, client: Any, customer_id: str, period: str) -> PeriodCharges:
        """`read` through an asyncio client (`redis.asyncio.Redis`), for a server that must
        not block its event loop on Redis."""
        raw: Mapping[Any, Any] = await client.hgetall(self.key(customer_id, period))
        return parse_charges(customer_id, period, raw)

    def rated_through(self) -> dict[str, datetime]:
        """Subscription -> the end of its latest rated window, over every period still held
        (`contracts publish` refuses a change that would alter usage before it). One SCAN and
        an HGETALL per hash: an operator's command, not a hot path."""
        out: dict[str, datetime] = {}
        for key in self.client.scan_iter(match=f"{self.namespace}:charges:*", count=1000):
            raw: Mapping[Any, Any] = self.client.hgetall(key)
            for name, value in raw.items():
                field = name.decode() if isinstance(name, bytes) else name
                if not field.startswith("u:"):
                    continue
                text = value.decode() if isinstance(value, bytes) else value
                _, sub_id, _ = _parse_field(field)
                end = datetime.fromtimestamp(int(text.rsplit("|", 1)[1]), UTC)
                if sub_id not in out or end > out[sub_id]:
                    out[sub_id] = end
        return out

    def close(self) -> None:
        self.client.close()


def parse_charges(customer_id: str, period: str, raw: Mapping[Any, Any]) -> PeriodCharges:
    """A charges hash (HGETALL's answer) as `PeriodCharges`."""
    subs: dict[str, SubscriptionCharges] = {}
    totals: dict[str, Decimal] = {}
    updated: datetime | None = None
    for name, value in raw.items():
        field = name.decode() if isinstance(name, bytes) else name
        text = value.decode() if isinstance(value, bytes) else value
        if field == UPDATED_FIELD:
            updated = datetime.fromtimestamp(int(text.rstrip("|")) / 1000, UTC)
            continue
        kind, sub_id, ref = _parse_field(field)
        parts = text.split("|")
        currency = parts[1]
        entry = subs.get(sub_id)
        if entry is None:
            entry = subs[sub_id] = {"currency": currency, "usage": {}, "fixed_fees": {}}
        if kind == "u":
            seq, _, q, amount, end = parts
            entry["usage"][ref] = {"quantity": Decimal(q), "amount": Decimal(amount),
                                   "rating_seq": int(seq),
                                   "as_of": datetime.fromtimestamp(int(end), UTC)}
            value_amount = Decimal(amount)
        else:
            at, _, amount = parts
            entry["fixed_fees"][ref] = {"amount": Decimal(amount),
                                        "as_of": datetime.fromtimestamp(int(at), UTC)}
            value_amount = Decimal(amount)
        totals[currency] = totals.get(currency, ZERO) + value_amount
    ordered: dict[str, SubscriptionCharges] = {
        s: {"currency": e["currency"], "usage": dict(sorted(e["usage"].items())),
            "fixed_fees": dict(sorted(e["fixed_fees"].items()))}
        for s, e in sorted(subs.items())}
    return {"customer_id": customer_id, "period": period, "subscriptions": ordered,
            "totals": dict(sorted(totals.items())), "updated_at": updated}


class AsyncHashReader:
    """HGETALL over asyncio streams, replies parsed by hiredis: the one Redis command the
    charges route sends, without redis-py's asyncio client, which costs about 250 µs a call
    (a quarter of the stream back end's time per request). Plain `redis://` URLs only (AUTH
    and SELECT on connect); `of` returns None for anything else (TLS, unix sockets), and the
    caller keeps redis-py. A connection that fails or times out is closed, never reused."""

    def __init__(self, host: str, port: int, *, password: str | None = None,
                 username: str | None = None, db: int = 0, timeout: float = 2.0,
                 pool: int = 32) -> None:
        self.host, self.port = host, port
        self._hello: list[tuple[str, ...]] = []
        if password is not None:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._hello.append(("SELECT", str(db)))
        self.timeout = timeout
        self._idle: list[tuple[Any, Any, Any]] = []
        self._pool = pool

    @classmethod
    def of(cls, url: str, **kwargs: Any) -> AsyncHashReader | None:
        from redis.connection import parse_url

        try:
            parts = parse_url(url)
        except ValueError:
            return None
        if "connection_class" in parts or "path" in parts or not parts.get("host"):
            return None
        return cls(parts["host"], int(parts.get("port", 6379)),
                   password=parts.get("password"), username=parts.get("username"),
                   db=int(parts.get("db", 0)), **kwargs)

    @staticmethod
    def _command(*args: str) -> bytes:
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    async def _reply(self, conn: tuple[Any, Any, Any]) -> Any:
        import hiredis

        reader, _writer, parser = conn
        while True:
            reply = parser.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise RedisUnavailable(str(reply))
                return reply
            data = await reader.read(65536)
            if not data:
                msg = "Redis closed the connection"
                raise RedisUnavailable(msg)
            parser.feed(data)

    async def _connect(self) -> tuple[Any, Any, Any]:
        import asyncio

        import hiredis

        reader, writer = await asyncio.open_connection(self.host, self.port)
        conn = (reader, writer, hiredis.Reader())
        for args in self._hello:
            writer.write(self._command(*args))
            await self._reply(conn)
        return conn

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        import asyncio

        conn = self._idle.pop() if self._idle else None
        try:
            async with asyncio.timeout(self.timeout):
                if conn is None:
                    conn = await self._connect()
                conn[1].write(self._command("HGETALL", key))
                reply = await self._reply(conn)
        except BaseException:
            if conn is not None:
                conn[1].close()
            raise
        if len(self._idle) < self._pool:
            self._idle.append(conn)
        else:
            conn[1].close()
        it = iter(reply)
        return dict(zip(it, it, strict=True))

    def close(self) -> None:
        for _r, writer, _p in self._idle:
            writer.close()
        self._idle.clear()
