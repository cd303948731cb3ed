"""Where the API reads from. Two back ends, the same answers:

- `FolderBackend`: the folder of a `meterwax run` or `meterwax demo` (no servers). Its embedded
  ClickHouse store holds the rated windows and, since the run wrote them there at its end, the
  billing documents and rejected events; `catalog.yaml` is the catalog the run rated against;
  `reconciliation.json` its reconciliation; running charges are read from the rated windows.
  The folder does not change until the next run swaps a new one in, so figures are cached per
  folder generation, and a swap (a new `reconciliation.json`) reopens everything.
- `StreamBackend`: a stream deployment. Running charges from Redis (one HGETALL), everything
  else from ClickHouse (the tables stream mode writes), the catalog from the contracts topic
  (re-read every `contracts_every` seconds), retries through the dead-letter topic.

Both answer the SQL of `meterwax/api/queries.py` through their store's `query`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
import msgspec

from operators.catalog import Catalog, CatalogError, load_catalog
from operators.periods import Month
from operators.tokens import TokenRecord
from sinks.redis_dedup import RedisUnavailable
from sinks.running_charges import AsyncHashReader, parse_charges
from sinks.tokens import FileTokenStore, RedisTokenStore, TokenStore


class BackendUnavailable(RuntimeError):
    """A store the API needs did not answer (503)."""


class NotSupported(RuntimeError):
    """What this back end cannot do, with why (409 for a folder asked to retry)."""


@dataclass(frozen=True)
class ChargesInputs:
    period: str
    held: Mapping[str, Mapping[str, Any]]
    updated_at: datetime | None
    closed: frozenset[str]
    # Equal versions mean equal figures: the route may answer from its cache of encoded
    # answers. Compared by equality, never by a hash alone.
    version: Hashable


class Backend(Protocol):
    name: str
    tokens: TokenStore
    database: str

    def catalog(self) -> Catalog: ...

    def query(self, sql: str, params: Mapping[str, Any] | None = None
              ) -> list[dict[str, Any]]: ...

    def current_period(self, customer_id: str | None, now: datetime) -> str: ...

    def held_charges(self, customer_id: str, period: str
                     ) -> tuple[Mapping[str, Mapping[str, Any]], datetime | None]: ...

    async def charges_inputs(self, customer_id: str, period: str | None, now: datetime
                             ) -> ChargesInputs:
        """What the charges route needs, without blocking the event loop on I/O."""
        ...

    def closed(self, customer_id: str, period: str, now: datetime) -> frozenset[str]: ...

    def reconciliation(self, month: str) -> dict[str, Any]: ...

    def retry(self, reason: str | None, subject: str | None, since: datetime | None,
              until: datetime | None, dry_run: bool) -> dict[str, Any]: ...

    async def send_events(self, records: Sequence[tuple[bytes, bytes]]) -> list[str | None]:
        """Write (key, value) events to the input topic: per event None once Kafka
        acknowledged it, else why it was not written (sinks/event_producer.py)."""
        ...

    def problems(self) -> list[str]: ...

    def close(self) -> None: ...


_CHARGES_SQL = """
SELECT subscription_id, meter,
       argMax(cumulative_quantity, rating_seq) AS q,
       argMax(cumulative_amount, rating_seq) AS a,
       max(window_end) AS e
FROM `{db}`.rated_windows_final
WHERE customer_id = {{customer:String}} AND period = {{period:String}}
GROUP BY subscription_id, meter
"""

_LATEST_SQL = """
SELECT max(window_end) AS e FROM `{db}`.rated_windows_final
WHERE customer_id = {{customer:String}}
"""


_LATEST_ALL_SQL = "SELECT max(window_end) AS e FROM `{db}`.rated_windows_final"

_CLOSED_SQL = """
SELECT DISTINCT subscription_id FROM `{db}`.billing_documents FINAL
WHERE kind = 'candidate' AND customer_id = {{customer:String}}
  AND billing_period = {{period:String}}
"""


def charges_from_windows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The running-charges shape (sinks/running_charges.RunningCharges.read) from the rated
    windows: the latest cumulative figures per meter (fees are accrued from their as-of time
    by operators/charges.py, as for Redis)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(r["subscription_id"], {"usage": {}, "fixed_fees": {}})
        entry["usage"][r["meter"]] = {"quantity": r["q"], "amount": r["a"], "as_of": r["e"]}
    return out


@dataclass
class _Generation:
    stamp: tuple[int, int]
    store: Any
    catalog: Catalog
    reconciliation: dict[str, Any]
    written_at: datetime
    cache: dict[tuple[str, ...], Any]


class FolderBackend:
    name = "folder"
    database = "meterwax"
    _CACHE_ENTRIES = 100_000

    def __init__(self, out_dir: str | Path, *, recheck: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # Absolute: chDB changes the process's working directory while it opens a store, so
        # a relative folder read by another thread at that moment (a readiness probe while
        # the reconciliation check opens the store) would not be found.
        self.out = Path(out_dir).absolute()
        self.tokens: TokenStore = FileTokenStore(self.out)
        self._lock = threading.RLock()
        self._gen: _Generation | None = None
        # A swapped-in run is noticed within `recheck` seconds (one stat then, not per call).
        self._recheck = recheck
        self._clock = clock
        self._checked = -1e18

    def _stamp(self) -> tuple[int, int]:
        st = (self.out / "reconciliation.json").stat()
        return st.st_ino, st.st_mtime_ns

    def _current(self) -> _Generation:
        """The folder as it is now: reopened when a new run was swapped in."""
        gen = self._gen
        t = self._clock()
        if gen is not None and t - self._checked < self._recheck:
            return gen
        self._checked = t
        try:
            stamp = self._stamp()
        except OSError as exc:
            msg = f"{self.out} holds no finished run ({exc.strerror})"
            raise BackendUnavailable(msg) from exc
        gen = self._gen
        if gen is not None and gen.stamp == stamp:
            return gen
        with self._lock:
            if self._gen is not None and self._gen.stamp == stamp:
                return self._gen
            from sinks.clickhouse import ChdbStore

            if self._gen is not None:
                self._gen.store.close()
                self._gen = None
            try:
                catalog = load_catalog(str(self.out / "catalog.yaml"))
                report = msgspec.json.decode((self.out / "reconciliation.json").read_bytes())
                store = ChdbStore(str(self.out / "clickhouse"), self.database)
            except (OSError, CatalogError) as exc:
                msg = f"{self.out} cannot be read as a run's folder: {exc}"
                raise BackendUnavailable(msg) from exc
            except RuntimeError as exc:  # chDB: the store is open in another process
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                msg = (f"{self.out}/clickhouse cannot be opened (is another `meterwax api` "
                       f"or `meterwax sql` using it?): {first}")
                raise BackendUnavailable(msg) from exc
            written = datetime.fromtimestamp(stamp[1] / 1e9, UTC)
            self._gen = _Generation(stamp, store, catalog, report, written, {})
            return self._gen

    def catalog(self) -> Catalog:
        return self._current().catalog

    def query(self, sql: str, params: Mapping[str, Any] | None = None
              ) -> list[dict[str, Any]]:
        return self._current().store.query(sql, params)

    def current_period(self, customer_id: str | None, now: datetime) -> str:
        # A folder is a finished run: its "current" period is the one its data reached for
        # this customer (or any, for None; the wall clock would point past the data), else the
        # run's clock.
        gen = self._current()
        key = ("latest", customer_id or "")
        if key not in gen.cache:
            sql = _LATEST_SQL if customer_id is not None else _LATEST_ALL_SQL
            rows = gen.store.query(sql.format(db=self.database), {"customer": customer_id or ""})
            latest = rows[0]["e"] if rows else None
            if latest is None or latest.year < 1971:
                run_now = gen.reconciliation.get("run", {}).get("now")
                latest = datetime.fromisoformat(run_now) if run_now else now
            gen.cache[key] = str(Month.of(latest - timedelta(microseconds=1)))
        return str(gen.cache[key])

    def held_charges(self, customer_id: str, period: str
                     ) -> tuple[Mapping[str, Mapping[str, Any]], datetime | None]:
        gen = self._current()
        key = (customer_id, period)
        got = gen.cache.get(key)
        if got is None:
            rows = gen.store.query(_CHARGES_SQL.format(db=self.database),
                                   {"customer": customer_id, "period": period})
            got = charges_from_windows(rows)
            if len(gen.cache) >= self._CACHE_ENTRIES:
                gen.cache.clear()
            gen.cache[key] = got
        return got, gen.written_at

    async def charges_inputs(self, customer_id: str, period: str | None, now: datetime
                             ) -> ChargesInputs:
        def work() -> ChargesInputs:
            gen = self._current()
            p = period or self.current_period(customer_id, now)
            held, updated = self.held_charges(customer_id, p)
            return ChargesInputs(p, held, updated, self.closed(customer_id, p, now),
                                 ("folder", gen.stamp))

        gen = self._gen
        known = period or (gen.cache.get(("latest", customer_id)) if gen else None)
        if gen is not None and known is not None and (customer_id, known) in gen.cache \
                and ("closed", customer_id, known) in gen.cache:
            return work()  # every figure is cached: no I/O, no thread
        return await anyio.to_thread.run_sync(work)

    def closed(self, customer_id: str, period: str, now: datetime) -> frozenset[str]:
        gen = self._current()
        key = ("closed", customer_id, period)
        if key not in gen.cache:
            rows = gen.store.query(_CLOSED_SQL.format(db=self.database),
                                   {"customer": customer_id, "period": period})
            gen.cache[key] = frozenset(r["subscription_id"] for r in rows)
        return frozenset(gen.cache[key])

    def reconciliation(self, month: str) -> dict[str, Any]:
        return self._current().reconciliation

    def retry(self, reason: str | None, subject: str | None, since: datetime | None,
              until: datetime | None, dry_run: bool) -> dict[str, Any]:
        msg = ("retry needs a stream deployment: a folder is a finished run; fix the catalog "
               "and run it again (the same ids come out)")
        raise NotSupported(msg)

    async def send_events(self, records: Sequence[tuple[bytes, bytes]]) -> list[str | None]:
        msg = ("sending events needs a stream deployment (`meterwax api` with --kafka-bootstrap "
               "and --input-topic): a folder is a finished run")
        raise NotSupported(msg)

    def problems(self) -> list[str]:
        try:
            self._current()
        except BackendUnavailable as exc:
            return [str(exc)]
        return []

    def close(self) -> None:
        with self._lock:
            if self._gen is not None:
                self._gen.store.close()
                self._gen = None


class _AnsweringTokens:
    """The deployment's token store, with Redis down (or restarting) as BackendUnavailable:
    every route asks it first, so an outage is a 503 with Retry-After, never a 500."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def _call(self, what: Callable[[], Any]) -> Any:
        import redis

        try:
            return what()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            msg = f"Redis (tokens): {exc or type(exc).__name__}"
            raise BackendUnavailable(msg) from exc

    def add(self, record: TokenRecord) -> None:
        self._call(lambda: self._store.add(record))

    def get(self, token_id: str) -> TokenRecord | None:
        found: TokenRecord | None = self._call(lambda: self._store.get(token_id))
        return found

    def all(self) -> list[TokenRecord]:
        found: list[TokenRecord] = self._call(self._store.all)
        return found

    def revoke(self, token_id: str, at: datetime) -> TokenRecord | None:
        found: TokenRecord | None = self._call(lambda: self._store.revoke(token_id, at))
        return found


class StreamBackend:
    name = "stream"

    def __init__(self, settings: Any, *, contracts_every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from sinks.clickhouse import open_store
        from sinks.running_charges import RunningCharges

        self.settings = settings
        self.store = open_store(settings.clickhouse, migrate=False)
        self.database = self.store.database
        self.charges = RunningCharges(settings.redis_url, namespace=settings.redis_namespace)
        self.tokens: TokenStore = _AnsweringTokens(
            RedisTokenStore(self.charges.client, settings.redis_namespace))
        self._every = contracts_every
        self._clock = clock
        self._catalog: Catalog | None = None
        self._contracts_problem: str | None = "the contracts topic has not been read yet"
        self._closed: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
        self._aredis: Any = None
        self._end: Any = None  # sinks.contracts.ContractsEnd, once the topic was read
        self._read_to = -1
        self._stop = threading.Event()
        self._producer: Any = None  # sinks.event_producer.EventProducer, on the first event
        self._producer_lock = threading.Lock()
        self._topic_checked = -1e18
        self._topic_msg: str | None = None
        self._refresh()
        # Contracts are re-read in the background: a request never waits on Kafka.
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True,
                                           name="meterwax-api-contracts")
        self._refresher.start()

    def _refresh(self) -> None:
        from operators.contracts import catalog_of
        from sinks.contracts import ContractsEnd, read_contracts

        try:
            if self._end is None:
                self._end = ContractsEnd(self.settings.kafka(), self.settings.topics.contracts)
            elif self._catalog is not None and self._end.end() == self._read_to:
                self._contracts_problem = None
                return  # nothing published since the last read
            held = read_contracts(self.settings.kafka(), self.settings.topics.contracts)
            self._catalog = catalog_of(held.specs)
            self._read_to = held.end_offset
            self._contracts_problem = None
        except Exception as exc:  # keep serving the contracts last read; readiness says why
            self._contracts_problem = f"the contracts topic could not be read: {exc}"

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._every):
            self._refresh()

    def catalog(self) -> Catalog:
        if self._catalog is None:
            raise BackendUnavailable(self._contracts_problem or "no contracts")
        return self._catalog

    async def charges_inputs(self, customer_id: str, period: str | None, now: datetime
                             ) -> ChargesInputs:
        import redis
        import redis.asyncio as aredis

        p = period or self.current_period(customer_id, now)
        if self._aredis is None:
            # Created on first use, in the event loop: hiredis over asyncio streams for a
            # plain redis:// URL, redis-py's asyncio client for anything else.
            self._aredis = (AsyncHashReader.of(self.settings.redis_url)
                            or aredis.Redis.from_url(self.settings.redis_url,
                                                     socket_timeout=2.0,
                                                     socket_connect_timeout=2.0))
        try:
            raw = await self._aredis.hgetall(self.charges.key(customer_id, p))
        except (redis.RedisError, RedisUnavailable, OSError, TimeoutError) as exc:
            msg = f"Redis: {exc or type(exc).__name__}"
            raise BackendUnavailable(msg) from exc
        got = parse_charges(customer_id, p, raw)
        closed = (frozenset() if Month.parse(p).end > now
                  else await anyio.to_thread.run_sync(self.closed, customer_id, p, now))
        return ChargesInputs(p, got["subscriptions"], got["updated_at"], closed,
                             ("stream", frozenset(raw.items()), closed, id(self._catalog)))

    def query(self, sql: str, params: Mapping[str, Any] | None = None
              ) -> list[dict[str, Any]]:
        from sinks.clickhouse import ClickHouseStoreError

        try:
            return self.store.query(sql, params)
        except ClickHouseStoreError as exc:
            msg = f"ClickHouse: {exc}"
            raise BackendUnavailable(msg) from exc

    def current_period(self, customer_id: str | None, now: datetime) -> str:
        return str(Month.of(now))

    def held_charges(self, customer_id: str, period: str
                     ) -> tuple[Mapping[str, Mapping[str, Any]], datetime | None]:
        import redis

        try:
            got = self.charges.read(customer_id, period)
        except redis.RedisError as exc:
            msg = f"Redis: {exc}"
            raise BackendUnavailable(msg) from exc
        return got["subscriptions"], got["updated_at"]

    def closed(self, customer_id: str, period: str, now: datetime) -> frozenset[str]:
        """Subscriptions whose candidate for the period is issued. A period not over by the
        wall clock cannot be (no query); others are asked of ClickHouse, and the answer kept
        for `contracts_every` seconds."""
        if Month.parse(period).end > now:
            return frozenset()
        key = (customer_id, period)
        t = self._clock()
        hit = self._closed.get(key)
        if hit is not None and t - hit[0] < self._every:
            return hit[1]
        rows = self.query(_CLOSED_SQL.format(db=self.database),
                          {"customer": customer_id, "period": period})
        got = frozenset(r["subscription_id"] for r in rows)
        if len(self._closed) > 100_000:
            self._closed.clear()
        self._closed[key] = (t, got)
        return got

    def reconciliation(self, month: str) -> dict[str, Any]:
        from meterwax.api.queries import stream_reconciliation

        return stream_reconciliation(self.query, self.database, self.catalog(), month)

    def retry(self, reason: str | None, subject: str | None, since: datetime | None,
              until: datetime | None, dry_run: bool) -> dict[str, Any]:
        from flows.settings import RetrySettings
        from meterwax.retry import retry_dead_letters
        from operators.retry import RetryFilter

        s = self.settings
        if not s.input_topic:
            msg = "retry needs the stream's input topic (--input-topic / METERWAX_INPUT_TOPIC)"
            raise NotSupported(msg)
        rs = RetrySettings(kafka_bootstrap=s.kafka_bootstrap, input_topic=s.input_topic,
                           topics=s.topics, select=RetryFilter(reason=reason, subject=subject,
                                                               since=since, until=until),
                           dry_run=dry_run, kafka_security=s.kafka_security)
        report = retry_dead_letters(rs)
        return {"read": report.read, "matched": report.matched, "sent": report.sent,
                "dry_run": dry_run, "by_reason": dict(sorted(report.by_reason.items()))}

    async def send_events(self, records: Sequence[tuple[bytes, bytes]]) -> list[str | None]:
        producer = self._event_producer()
        problem = await self._topic_problem(producer)
        if problem is not None:
            raise BackendUnavailable(problem)
        return await producer.send(records)

    async def _topic_problem(self, producer: Any) -> str | None:
        """The input topic's problem, checked in a thread: every 30 s while it is fine, every
        2 s while it is not, so a topic created after the API started is found soon."""
        t = self._clock()
        if t - self._topic_checked >= (30.0 if self._topic_msg is None else 2.0):
            self._topic_msg = await anyio.to_thread.run_sync(producer.topic_problem)
            self._topic_checked = t
        msg: str | None = self._topic_msg
        return msg

    def _event_producer(self) -> Any:
        if self._producer is None:
            from sinks.event_producer import EventProducer

            s = self.settings
            if not s.input_topic or not s.kafka_bootstrap:
                msg = ("sending events needs the stream's input topic and Kafka "
                       "(--input-topic and --kafka-bootstrap, or METERWAX_INPUT_TOPIC and "
                       "METERWAX_KAFKA_BOOTSTRAP)")
                raise NotSupported(msg)
            with self._producer_lock:
                if self._producer is None:
                    self._producer = EventProducer(s.kafka(), s.input_topic,
                                                   max_queued=s.ingest_queue)
        return self._producer

    def problems(self) -> list[str]:
        problems = []
        try:
            self.charges.client.ping()
        except Exception as exc:
            problems.append(f"Redis: {exc}")
        try:
            rows = self.store.query(
                "SELECT count() AS n FROM system.tables WHERE database = {db:String} AND "
                "name IN ('rated_windows', 'billing_documents', 'rejected_events')",
                {"db": self.database})
            if int(rows[0]["n"]) < 3:
                problems.append("ClickHouse: the meterwax tables are missing or older than "
                                "this API (start `meterwax stream` once: it migrates them)")
        except Exception as exc:
            problems.append(f"ClickHouse: {exc}")
        if self._contracts_problem:
            problems.append(self._contracts_problem)
        # A missing input topic is not one: it stops sending usage, not the reads, and a
        # readiness failure would take the charges route out of the Service too. POST
        # /v1/events names it in its 503.
        return problems

    def close(self) -> None:
        self._stop.set()
        if self._producer is not None:
            self._producer.close()
        if self._end is not None:
            self._end.close()
        self.charges.close()
        self.store.close()
