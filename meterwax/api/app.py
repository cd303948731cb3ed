"""The HTTP API: an ASGI app (Litestar) over a back end (meterwax/api/backends.py).

Why Litestar rather than FastAPI: our records are msgspec structs already (schemas/), and
Litestar validates and encodes msgspec structs natively, with the OpenAPI document generated
from those same structs; FastAPI would need a second, pydantic copy of every response shape.
It is also the lighter of the two per request, which counts on a 2-core box that serves
dashboards. Money never reaches its JSON encoder as a number: response structs carry decimal
strings (schemas/api.py), and Decimal is mapped to `str` besides, should one slip through.

Authentication, in this order, on every /v1 route:
- no `Authorization: Bearer <token>`, a malformed one, an unknown, revoked or expired token,
  or a wrong secret: 401, one answer for all (nothing tells which);
- the token's rate limit is spent: 429 with Retry-After;
- a customer token on a finance route: 403;
- a customer token naming another customer: 404, the very answer a customer that does not
  exist gets.
Tokens are never logged: uvicorn's access log is off, and the request log of this module
names the token id, not the token.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from meterwax.api import queries
from meterwax.api.backends import Backend, BackendUnavailable, NotSupported
from meterwax.api.ingest import Refusal, answered, judge_events, read_events
from operators.charges import running_charges
from operators.limits import (
    DEFAULT_INGEST_RATE_BURST,
    DEFAULT_INGEST_RATE_LIMIT,
    DEFAULT_PAGE,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_LIMIT,
    MAX_API_BODY_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENTS_BODY_BYTES,
    MAX_ID_LENGTH,
    MAX_PAGE,
    MAX_USAGE_BUCKETS,
)
from operators.periods import Month
from operators.tokens import Scope as TokenScope
from operators.tokens import TokenBucket, TokenRecord, split_token, verify
from schemas.api import (
    Charges,
    CustomerList,
    DocumentPage,
    ExceptionSummary,
    Health,
    IngestResult,
    Me,
    Problem,
    Reconciliation,
    RejectedPage,
    RetryRequest,
    RetryResult,
    Usage,
)
from schemas.records import REASONS, Reason

Granularity = Literal["minute", "hour", "day"]

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("meterwax.api")
# Months the domain stores (operators/limits.py: event times from 1970 to 2200).
_PERIOD = r"^(19[7-9][0-9]|2[01][0-9][0-9])-(0[1-9]|1[0-2])$"
_MONTH_IN = re.compile(r"\b[0-9]{4}-(0[1-9]|1[0-2])\b")
_GRANULARITY = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1),
                "day": timedelta(days=1)}

REQUESTS = Counter("meterwax_api_requests_total", "API requests by route and status",
                   ["route", "status"])
LATENCY = Histogram("meterwax_api_request_seconds", "API request latency by route and status",
                    ["route", "status"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
# Reconciliation as an alert: the variances named for a month the last time this process
# reconciled it (every `--reconcile-every` for the current and the previous month, and whenever
# /v1/reconciliation is asked), and when. 0 is a balanced month; a stale timestamp is a check
# that stopped running.
RECONCILIATION_VARIANCES = Gauge(
    "meterwax_reconciliation_variances",
    "Variances (problems) named by the last reconciliation of a month", ["month"])
INGESTED = Counter(
    "meterwax_api_events_total",
    "Events sent to POST /v1/events, by what became of them: accepted (acknowledged by "
    "Kafka), rejected, forbidden, unavailable (not written)", ["status"])
RECONCILIATION_CHECKED = Gauge(
    "meterwax_reconciliation_checked_timestamp_seconds",
    "When this process last reconciled a month (Unix time)", ["month"])


class ApiProblem(Exception):
    def __init__(self, status: int, title: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}


def _problem(request: Request[Any, Any, Any], status: int, title: str, detail: str,
             headers: dict[str, str] | None = None) -> Response[Any]:
    body = Problem(type=f"https://meterwax.dev/problems/{status}", title=title, status=status,
                   detail=detail, instance=request.url.path)
    return Response(msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON,
                    headers=headers)


def _handle_problem(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, ApiProblem):
        return _problem(request, exc.status, exc.title, exc.detail, exc.headers)
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        details = "; ".join(f"{e.get('key', '')}: {e.get('message', '')}" for e in extra
                            if isinstance(e, dict)) or str(exc.detail)
        return _problem(request, 400, "Bad Request", details)
    if isinstance(exc, HTTPException):
        # Its headers too: a 405 must say what is Allowed.
        return _problem(request, exc.status_code, _TITLES.get(exc.status_code, "Error"),
                        str(exc.detail), dict(exc.headers or {}))
    if isinstance(exc, BackendUnavailable):
        return _problem(request, 503, "Service Unavailable", str(exc), {"Retry-After": "1"})
    if isinstance(exc, NotSupported):
        return _problem(request, 409, "Conflict", str(exc))
    # Logged with its traceback (the request line only: never its headers, which hold the
    # token).
    log.error("unexpected error answering %s %s", request.method, request.url.path,
              exc_info=exc)
    return _problem(request, 500, "Internal Server Error",
                    f"unexpected {type(exc).__name__}; the error is in the server's log")


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
           415: "Unsupported Media Type",
           429: "Too Many Requests", 503: "Service Unavailable"}


class Auth:
    """Token verification with a short cache of stored records (`cache_seconds`): a
    revocation takes effect within that time on every replica. Rate limits are per process."""

    def __init__(self, backend: Backend, now: Callable[[], datetime],
                 monotonic: Callable[[], float], rate: float, burst: float,
                 cache_seconds: float = 1.0, ingest_rate: float = 2000.0,
                 ingest_burst: float = 4000.0) -> None:
        self.backend = backend
        self.now = now
        self.monotonic = monotonic
        self.rate = rate
        self.burst = burst
        self.ingest_rate = ingest_rate
        self.ingest_burst = ingest_burst
        self.cache_seconds = cache_seconds
        self._records: dict[str, tuple[float, TokenRecord | None]] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def _record(self, token_id: str) -> TokenRecord | None:
        t = self.monotonic()
        hit = self._records.get(token_id)
        if hit is not None and t - hit[0] < self.cache_seconds:
            return hit[1]
        record = self.backend.tokens.get(token_id)
        if len(self._records) > 100_000:
            self._records.clear()
        self._records[token_id] = (t, record)
        return record

    async def prefetch(self, request: Request[Any, Any, Any]) -> None:
        """Load the token's record in a thread unless it is cached, so an async route can
        then call `scope` without blocking the event loop on the token store."""
        _, _, token = request.headers.get("authorization", "").partition(" ")
        parts = split_token(token.strip())
        if parts is None:
            return
        hit = self._records.get(parts[0])
        if hit is None or self.monotonic() - hit[0] >= self.cache_seconds:
            await anyio.to_thread.run_sync(self._record, parts[0])

    def scope(self, request: Request[Any, Any, Any]) -> TokenScope:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        parts = split_token(token.strip()) if scheme.lower() == "bearer" else None
        record = self._record(parts[0]) if parts else None
        scope = verify(token.strip(), None, self.now(), record) if parts else None
        if scope is None or parts is None:
            raise ApiProblem(401, "Unauthorized", "a valid bearer token is required",
                             {"WWW-Authenticate": 'Bearer realm="meterwax"'})
        rate, burst = ((self.ingest_rate, self.ingest_burst) if scope.kind == "producer"
                       else (self.rate, self.burst))
        with self._lock:
            bucket = self._buckets.get(parts[0])
            if bucket is None:
                bucket = self._buckets[parts[0]] = TokenBucket(rate, burst, self.monotonic())
            wait = bucket.take(self.monotonic())
        if wait:
            raise ApiProblem(429, "Too Many Requests",
                             f"this token's rate limit is {rate:g} requests a second",
                             {"Retry-After": str(max(1, math.ceil(wait)))})
        request.scope["meterwax.token_id"] = parts[0]  # type: ignore[typeddict-unknown-key]
        return scope


def _route_of(scope: Scope) -> str:
    handler = scope.get("route_handler")
    paths = getattr(handler, "paths", None)
    return sorted(paths)[0] if paths else "unmatched"


def _metrics_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            route, code = _route_of(scope), str(status[0])
            REQUESTS.labels(route, code).inc()
            LATENCY.labels(route, code).observe(time.perf_counter() - start)

    return middleware


def _problems(*codes: int) -> dict[int, ResponseSpec]:
    """The problem answers a route can give, documented in the OpenAPI document."""
    return {code: ResponseSpec(Problem, description=_WHY[code], media_type=PROBLEM_JSON,
                               generate_examples=False) for code in codes}


_WHY = {400: "A parameter is malformed (the detail says which)",
        401: "No token, or not a valid one (unknown, revoked, expired or wrong)",
        403: "The token's scope does not cover this route",
        404: "No such customer or meter, or not one this token may read",
        409: "Not possible on this back end (the detail says why)",
        413: "The request body is too large, or a batch holds too many events",
        415: "The Content-Type is not one this route reads",
        429: "The token's rate limit is spent: retry after Retry-After seconds",
        503: "A store the API needs does not answer: retry after Retry-After seconds"}
_CUSTOMER = _problems(400, 401, 404, 429, 503)
_FINANCE = _problems(400, 401, 403, 429, 503)


# Query parameters shared by several routes.
Period = Annotated[str | None, QueryParameter(pattern=_PERIOD,
                                              description="YYYY-MM; default the current one")]
Cursor = Annotated[str | None, QueryParameter(max_length=4096,
                                              description="next_cursor of the previous page")]
Limit = Annotated[int | None, QueryParameter(ge=1, le=MAX_PAGE,
                                             description=f"items a page (default {DEFAULT_PAGE})")]
Subject = Annotated[str | None, QueryParameter(max_length=MAX_ID_LENGTH)]


def create_app(backend: Backend, *, now: Callable[[], datetime] = lambda: datetime.now(UTC),
               monotonic: Callable[[], float] = time.monotonic,
               rate: float = DEFAULT_RATE_LIMIT, burst: float = DEFAULT_RATE_BURST,
               ingest_rate: float = DEFAULT_INGEST_RATE_LIMIT,
               ingest_burst: float = DEFAULT_INGEST_RATE_BURST,
               reconcile_every: float = 0.0) -> FastCharges:
    auth = Auth(backend, now, monotonic, rate, burst, ingest_rate=ingest_rate,
                ingest_burst=ingest_burst)
    db = backend.database
    answers: dict[tuple[str, str, Any], bytes] = {}

    def customer(request: Request[Any, Any, Any], customer_id: str) -> TokenScope:
        scope = auth.scope(request)
        # Cross-tenant: the same 404 as a customer that does not exist.
        if not scope.may_read_customer(customer_id) or \
                customer_id not in backend.catalog().customers:
            raise ApiProblem(404, "Not Found", "no such customer")
        return scope

    def finance(request: Request[Any, Any, Any]) -> TokenScope:
        scope = auth.scope(request)
        if not scope.finance:
            raise ApiProblem(403, "Forbidden", "this route needs a finance or admin token")
        return scope

    # Usage in: on the event loop, because every request waits for Kafka's acknowledgements
    # (a thread each would bound the requests in flight by the thread pool, not by Kafka).
    @post("/v1/events", status_code=202,
          summary="Send usage events (CloudEvents: structured, batched or binary mode)",
          description="One event as application/cloudevents+json, a JSON array of events as "
                      "application/cloudevents-batch+json (at most "
                      f"{MAX_BATCH_EVENTS}), or one event in binary mode (ce- headers, the "
                      "body is its data). Answered once Kafka acknowledged the accepted "
                      "events. One event: 202 accepted, 400 rejected (the reason), 403 a "
                      "source the token may not send, 503 not written (send it again after "
                      "Retry-After). A batch: 200 with a result per event (503 if any was "
                      "not written: send those again; sending the whole batch again is safe, "
                      "the flow deduplicates by source and id).",
          tags=["producer"], request_max_body_size=MAX_EVENTS_BODY_BYTES,
          responses=_problems(400, 401, 403, 409, 413, 415, 429, 503))
    async def events(request: Request[Any, Any, Any]) -> Response[IngestResult]:
        await auth.prefetch(request)
        scope = auth.scope(request)
        if scope.kind != "producer":
            raise ApiProblem(403, "Forbidden", "sending events needs a producer token "
                             "(`meterwax tokens create --scope producer`)")
        body = await request.body()
        received = read_events(request.headers.get("content-type"),
                               request.scope["headers"], body)
        if isinstance(received, Refusal):
            raise ApiProblem(received.status, _TITLES.get(received.status, "Error"),
                             received.detail)
        results, records = judge_events(received, scope)
        outcomes = await backend.send_events([(k, v) for _, k, v in records])
        answer = answered(results, records, outcomes)
        for result in answer.results:
            INGESTED.labels(result.status).inc()
        retry_after = {"Retry-After": "1"}
        if not received.batched:
            only = answer.results[0]
            if only.status == "rejected":
                raise ApiProblem(400, "Bad Request", f"{only.reason}: {only.error}")
            if only.status == "forbidden":
                raise ApiProblem(403, "Forbidden", only.error or "")
            if only.status == "unavailable":
                raise ApiProblem(503, "Service Unavailable", only.error or "", retry_after)
        unavailable = answer.unavailable > 0
        status = 503 if unavailable else (200 if received.batched else 202)
        return Response(answer, status_code=status,
                        headers=retry_after if unavailable else None)

    def page(limit: int | None) -> int:
        return DEFAULT_PAGE if limit is None else limit

    # The hot route (dashboards poll it) runs on the event loop: the back end awaits Redis
    # with an asyncio client, and anything else blocking goes to a thread.
    @get("/v1/customers/{customer_id:str}/charges",
         summary="Running charges of one billing period", tags=["customer"],
         responses=_CUSTOMER)
    async def charges(request: Request[Any, Any, Any], customer_id: FromPath[str],
                      period: Period = None) -> Response[Charges]:
        await auth.prefetch(request)
        customer(request, customer_id)
        body = await charges_body(customer_id, period)
        # The body is a Charges already encoded; the annotation gives the OpenAPI its schema.
        return Response(body, media_type=MediaType.JSON)  # type: ignore[arg-type]

    async def charges_body(customer_id: str, period: str | None) -> bytes:
        got = await backend.charges_inputs(customer_id, period, now())
        # Figures change only when the sink writes them: between writes every poll of a
        # customer gets the answer already encoded (keyed by the data itself, not a clock).
        key = (customer_id, got.period, got.version)
        body = answers.get(key)
        if body is None:
            body = msgspec.json.encode(running_charges(
                backend.catalog(), customer_id, got.period, got.held, got.updated_at,
                got.closed))
            if len(answers) >= 50_000:
                answers.clear()
            answers[key] = body
        return body

    @get("/v1/customers/{customer_id:str}/usage", sync_to_thread=True,
         summary="Usage per meter over time", tags=["customer"], responses=_CUSTOMER)
    def usage(request: Request[Any, Any, Any], customer_id: FromPath[str],
              meter: Annotated[str | None, QueryParameter(max_length=MAX_ID_LENGTH)] = None,
              from_: Annotated[datetime | None, QueryParameter(
                  name="from", description="default: start of the period")] = None,
              to: Annotated[datetime | None, QueryParameter(
                  description="default: end of the period")] = None,
              granularity: FromQuery[Granularity] = "hour") -> Usage:
        customer(request, customer_id)
        catalog = backend.catalog()
        if meter is not None and meter not in catalog.meters:
            raise ApiProblem(404, "Not Found", "no such meter")
        month = Month.parse(backend.current_period(customer_id, now()))
        start = _utc(from_, "from") if from_ else month.start
        end = _utc(to, "to") if to else month.end
        if end <= start:
            raise ApiProblem(400, "Bad Request", "`to` must be after `from`")
        if (end - start) / _GRANULARITY[granularity] > MAX_USAGE_BUCKETS:
            raise ApiProblem(400, "Bad Request",
                             f"at most {MAX_USAGE_BUCKETS} {granularity} buckets a request; "
                             "narrow from/to or choose a coarser granularity")
        meters = catalog.meters
        buckets = queries.usage(
            backend.query, db, customer_id, meter, start, end, granularity,
            lambda m: m in meters and meters[m].aggregation in ("sum", "count"))
        return Usage(customer_id=customer_id, granularity=granularity, start=start, end=end,
                     buckets=buckets)

    @get("/v1/customers/{customer_id:str}/invoices", sync_to_thread=True,
         summary="Invoice candidates, adjustments and AR documents", tags=["customer"],
         responses=_CUSTOMER)
    def invoices(request: Request[Any, Any, Any], customer_id: FromPath[str],
                 cursor: Cursor = None, limit: Limit = None) -> DocumentPage:
        customer(request, customer_id)
        return _paged(lambda: queries.documents(backend.query, db, ("candidate", "ar_invoice"),
                                                page(limit), cursor, customer_id))

    @get("/v1/exceptions", sync_to_thread=True, summary="Rejected events", tags=["finance"],
         responses=_FINANCE)
    def exceptions(request: Request[Any, Any, Any],
                   reason: FromQuery[Reason | None] = None, subject: Subject = None,
                   since: FromQuery[datetime | None] = None,
                   until: FromQuery[datetime | None] = None,
                   cursor: Cursor = None, limit: Limit = None) -> RejectedPage:
        finance(request)
        _reason(reason)
        return _paged(lambda: queries.rejected(
            backend.query, db, page(limit), cursor, reason, subject, _opt_utc(since, "since"),
            _opt_utc(until, "until")))

    @get("/v1/exceptions/summary", sync_to_thread=True,
         summary="Rejected events counted by reason and day", tags=["finance"],
         responses=_FINANCE)
    def summary(request: Request[Any, Any, Any],
                reason: FromQuery[Reason | None] = None, subject: Subject = None,
                since: FromQuery[datetime | None] = None,
                until: FromQuery[datetime | None] = None) -> ExceptionSummary:
        finance(request)
        _reason(reason)
        return queries.rejected_summary(backend.query, db, reason, subject,
                                        _opt_utc(since, "since"), _opt_utc(until, "until"))

    @post("/v1/exceptions/retry", sync_to_thread=True, status_code=200,
          summary="Send matching dead letters to the input topic again", tags=["finance"],
          request_max_body_size=MAX_API_BODY_BYTES,
          responses=_problems(400, 401, 403, 409, 413, 429, 503))
    def retry(request: Request[Any, Any, Any], data: JSONBody[RetryRequest]) -> RetryResult:
        finance(request)
        _reason(data.reason)
        if data.reason == "CONTRACT_REFUSED":
            raise ApiProblem(400, "Bad Request", "a refused contracts record is not an event: "
                             "fix the catalog and publish it again")
        result = backend.retry(data.reason, data.subject, _opt_utc(data.since, "since"),
                               _opt_utc(data.until, "until"), data.dry_run)
        return msgspec.convert(result, RetryResult)

    @get("/v1/invoice-exceptions", sync_to_thread=True,
         summary="Held and unpostable invoice candidates, with what to fix", tags=["finance"],
         responses=_FINANCE)
    def invoice_exceptions(request: Request[Any, Any, Any],
                           cursor: Cursor = None, limit: Limit = None) -> DocumentPage:
        finance(request)
        return _paged(lambda: queries.documents(backend.query, db, ("invoice_exception",),
                                                page(limit), cursor))

    @get("/v1/reconciliation", sync_to_thread=True,
         summary="The usage → rated → invoiced → receivable chain of a month",
         tags=["finance"], responses=_problems(400, 401, 403, 409, 429, 503))
    def reconciliation(request: Request[Any, Any, Any],
                       month: Annotated[str, QueryParameter(pattern=_PERIOD,
                                                            description="YYYY-MM")]
                       ) -> Reconciliation:
        finance(request)
        return reconcile_month(month)

    def reconcile_month(month: str) -> Reconciliation:
        report = backend.reconciliation(month)
        chain = [row for row in report.get("erp", {}).get("chain", [])
                 if row.get("period") == month]
        # This month's problems, and those of the whole run that name no month at all (e.g.
        # events read that landed in no bucket): both unbalance the month.
        problems = [p for p in report.get("problems", [])
                    if month in p or not _MONTH_IN.search(p)]
        RECONCILIATION_VARIANCES.labels(month).set(len(problems))
        RECONCILIATION_CHECKED.labels(month).set(now().timestamp())
        return Reconciliation(month=month, balanced=not problems, chain=chain,
                              problems=problems)

    @get("/v1/me", sync_to_thread=True, summary="What this token is", tags=["customer"],
         responses=_problems(401, 429, 503))
    def me(request: Request[Any, Any, Any]) -> Me:
        scope = auth.scope(request)
        current = Month.parse(backend.current_period(scope.customer_id, now()))
        previous = Month.of(current.start - timedelta(microseconds=1))
        return Me(scope=str(scope), token_id=request.scope["meterwax.token_id"],  # type: ignore[typeddict-item]
                  customer_id=scope.customer_id, current_period=str(current),
                  previous_period=str(previous))

    @get("/v1/customers", sync_to_thread=True,
         summary="The customers this token may read", tags=["customer"],
         responses=_problems(401, 429, 503))
    def customers(request: Request[Any, Any, Any]) -> CustomerList:
        scope = auth.scope(request)
        known = backend.catalog().customers
        ids = (sorted(known) if scope.finance
               else [c for c in (scope.customer_id,) if c is not None and c in known])
        return CustomerList(customers=ids)

    @get("/", sync_to_thread=False, include_in_schema=False)
    def workbench() -> Response[Any]:
        return _static("workbench.html", "text/html; charset=utf-8")

    @get("/workbench.js", sync_to_thread=False, include_in_schema=False)
    def workbench_js() -> Response[Any]:
        return _static("workbench.js", "text/javascript; charset=utf-8")

    @get("/workbench.css", sync_to_thread=False, include_in_schema=False)
    def workbench_css() -> Response[Any]:
        return _static("workbench.css", "text/css; charset=utf-8")

    @get("/healthz", sync_to_thread=False, summary="The process is up", tags=["operations"])
    def healthz() -> Health:
        return Health(status="ok", backend=backend.name)

    @get("/readyz", sync_to_thread=True, summary="The back end answers", tags=["operations"],
         responses={503: ResponseSpec(Health, description="Not ready: the problems say why",
                                      generate_examples=False)})
    def readyz(request: Request[Any, Any, Any]) -> Response[Health]:
        problems = backend.problems()
        if problems:
            return Response(Health(status="unavailable", backend=backend.name,
                                   problems=problems), status_code=503)
        return Response(Health(status="ready", backend=backend.name))

    @get("/metrics", sync_to_thread=False, summary="Prometheus metrics", tags=["operations"],
         include_in_schema=False)
    def metrics() -> Response[Any]:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @get("/openapi.json", sync_to_thread=False, include_in_schema=False)
    def openapi(request: Request[Any, Any, Any]) -> Response[Any]:
        return Response(openapi_document(request.app), media_type=MediaType.JSON)

    app = Litestar(
        route_handlers=[events, charges, usage, invoices, exceptions, summary, retry,
                        invoice_exceptions, reconciliation, me, customers, workbench,
                        workbench_js, workbench_css, healthz, readyz, metrics, openapi],
        exception_handlers={Exception: _handle_problem},
        middleware=[_metrics_middleware],
        type_encoders={Decimal: str},
        openapi_config=OpenAPIConfig(
            title="meterwax API", version="1", path="/schema",
            description="Running charges, usage and invoices for customers; exceptions, "
                        "invoice exceptions and reconciliation for finance. Amounts are "
                        "decimal strings.",
            components=Components(security_schemes={"bearer": SecurityScheme(
                type="http", scheme="bearer",
                description="mwx_… token from `meterwax tokens create`")}),
            security=[{"bearer": []}]),
        debug=False,
    )
    app.state.backend = backend
    if reconcile_every > 0:
        checker = _ReconciliationChecker(reconcile_month, now, reconcile_every)
        app.on_startup.append(checker.start)
        app.on_shutdown.append(checker.stop)
    return FastCharges(app, auth, backend, now, charges_body)


class _ReconciliationChecker:
    """Reconciles the current and the previous month every `every` seconds in the background
    (a thread per check: it reads ClickHouse), so the variance gauges say something without
    anyone asking. A failed check is logged and tried again at the next interval: a store that
    is down is what /readyz reports, and it must not stop the API."""

    def __init__(self, reconcile: Callable[[str], Any], now: Callable[[], datetime],
                 every: float) -> None:
        self.reconcile, self.now, self.every = reconcile, now, every
        self.task: asyncio.Task[None] | None = None

    def months(self) -> list[str]:
        current = Month.of(self.now())
        return [Month.of(current.start - timedelta(days=1)).key, current.key]

    async def run(self) -> None:
        while True:
            for month in self.months():
                try:
                    await asyncio.to_thread(self.reconcile, month)
                except Exception as exc:  # logged; the next interval tries again
                    log.warning("reconciliation of %s failed: %s", month, type(exc).__name__)
            await asyncio.sleep(self.every)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


_CHARGES_PATH = re.compile(r"/v1/customers/([^/%]+)/charges")
_CHARGES_QUERY = re.compile(rb"(?:period=((?:19[7-9][0-9]|2[01][0-9][0-9])-(?:0[1-9]|1[0-2])))?")
_CHARGES_ROUTE = "/v1/customers/{customer_id:str}/charges"
_JSON_HEAD = b"application/json"


class FastCharges:
    """The app: Litestar behind a short path for the one route dashboards poll.

    `GET /v1/customers/{id}/charges` is answered here, without Litestar's routing, parameter
    parsing and response machinery, when and only when every rule the route applies holds
    already: the path Litestar would route there (the id one segment of the decoded path), a
    query of at most `period=YYYY-MM`, a bearer
    token whose record `Auth` holds fresh, valid, allowed to read this customer, which exists,
    within its rate limit. The figures come from the route's own `charges_body`. Anything else,
    including every error, goes to Litestar, which decides it the one way it always does; the
    rate limit is only taken here when this path answers. Attributes are Litestar's."""

    def __init__(self, app: Litestar, auth: Auth, backend: Backend,
                 now: Callable[[], datetime],
                 charges_body: Callable[[str, str | None], Any]) -> None:
        self.app = app
        self._auth = auth
        self._backend = backend
        self._now = now
        self._body = charges_body

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            m = _CHARGES_PATH.fullmatch(scope["path"])
            if m is not None and await self._answer(scope, send, m.group(1)):
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Any, send: Any, customer_id: str) -> bool:
        start = time.perf_counter()
        q = _CHARGES_QUERY.fullmatch(scope.get("query_string", b""))
        if q is None:
            return False
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token_bytes = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token_bytes.strip().decode("latin-1")
        parts = split_token(token)
        auth = self._auth
        hit = auth._records.get(parts[0]) if parts else None
        if parts is None or hit is None or auth.monotonic() - hit[0] >= auth.cache_seconds:
            return False
        granted = verify(token, None, self._now(), hit[1])
        try:
            if granted is None or not granted.may_read_customer(customer_id) or \
                    customer_id not in self._backend.catalog().customers:
                return False
        except BackendUnavailable:
            return False
        bucket = auth._buckets.get(parts[0])
        if bucket is None:
            return False
        with auth._lock:
            if bucket.take(auth.monotonic()):
                return False  # Litestar answers the 429
        period = q.group(1).decode() if q.group(1) else None
        try:
            body = await self._body(customer_id, period)
        except Exception:
            return False  # Litestar decides the error (one request counted twice, then)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", _JSON_HEAD),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        REQUESTS.labels(_CHARGES_ROUTE, "200").inc()
        LATENCY.labels(_CHARGES_ROUTE, "200").observe(time.perf_counter() - start)
        return True


_STATIC = Path(__file__).with_name("static")
# The page loads only what this server serves (no CDN, no inline script): a strict policy.
_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                            "frame-ancestors 'none'",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                 "Cache-Control": "no-cache"}


def _static(name: str, media_type: str) -> Response[Any]:
    return Response((_STATIC / name).read_bytes(), media_type=media_type,
                    headers=_PAGE_HEADERS)


def openapi_document(app: Litestar | FastCharges) -> bytes:
    """The OpenAPI document, with sorted keys so the committed copy diffs cleanly."""
    schema = app.openapi_schema.to_schema()
    # The probes take no token (Litestar drops an empty `security` list, which is how
    # OpenAPI says so).
    for path in ("/healthz", "/readyz"):
        schema["paths"][path]["get"]["security"] = []
    return msgspec.json.format(msgspec.json.encode(_sorted(schema)), indent=2) + b"\n"


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _paged(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except queries.BadCursor as exc:
        raise ApiProblem(400, "Bad Request", str(exc)) from exc


def _reason(reason: str | None) -> None:
    if reason is not None and reason not in REASONS:
        raise ApiProblem(400, "Bad Request", f"reason: one of {', '.join(REASONS)}")


def _utc(at: datetime, name: str) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ApiProblem(400, "Bad Request", f"{name}: give a time zone (e.g. a trailing Z)")
    return at.astimezone(UTC)


def _opt_utc(at: datetime | None, name: str) -> datetime | None:
    return _utc(at, name) if at is not None else None
