"""The `meterwax` command.

    meterwax run  --catalog FILE --events FILE|- --out DIR [--window 1m] [--allowed-lateness 1h]
                  [--max-future 24h] [--now RFC3339]
    meterwax demo [--size N] [--out DIR]
    meterwax check-catalog FILE
    meterwax sql --out DIR "SELECT ..."      query the embedded ClickHouse store of a run
    meterwax stream [flags; or METERWAX_* environment variables]   Kafka in, production outputs
    meterwax serve-clickhouse --path DIR [--port N]   the embedded store over ClickHouse HTTP

Exit codes: 0 everything balanced; 1 the run finished but reconciliation found a difference;
2 bad usage or a bad catalog (nothing was touched); 3 the run failed or was interrupted (the
previous outputs are unchanged).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

# bench/bench_stream.py imports parse_duration from here: it stays importable from this module.
from flows.settings import (
    DEFAULT_DEDUP_TTL,
    DEFAULT_LATENESS,
    DEFAULT_WINDOW,
    MAX_WORKERS,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    ContractsSettings,
    Options,
    SettingsError,
    StreamSettings,
    file_problem,
    inside,
    int_between,
    one_of,
    parse_duration,
    parse_instant,
    parse_positive_duration,
    parse_window,
)
from operators.catalog import Catalog, CatalogError, load_catalog
from operators.limits import DEFAULT_ADJUSTMENT_CYCLE, DEFAULT_MAX_FUTURE

T = TypeVar("T")

EXIT_USAGE = 2
EXIT_FAILED = 3

MAX_DEMO_SIZE = 10**8


class Checks(Options):
    """The options of one command line (flags only), with every problem collected instead of
    stopping at the first."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(vars(args))

    def catalog(self, path: str) -> Catalog | None:
        if not self.readable_file("catalog", path):
            return None
        try:
            return load_catalog(path)
        except CatalogError as exc:
            self.problems.append(str(exc))  # already one line per catalog problem
            return None

    def out_dir(self, out: str, inputs: Mapping[str, str | None]) -> None:
        from flows.runner import out_dir_problems

        for problem in out_dir_problems(out):
            self.add("out", problem)
        for flag, path in inputs.items():
            if path and path != "-" and inside(path, out):
                self.note(flag, f"{path} is inside --out {out}, which a run replaces whole; "
                                "move it or choose another --out")

    def report(self) -> int:
        for problem in self.problems:
            print(f"meterwax: {problem}", file=sys.stderr)
        return EXIT_USAGE


@dataclass(frozen=True)
class Common:
    """The options `run` and `demo` share, validated."""

    window: timedelta
    allowed_lateness: timedelta
    max_future: timedelta
    dedup_ttl: timedelta
    workers: int
    now: datetime | None
    adjustment_cycle: timedelta
    judge_ahead: bool | None  # None: when it pays (flows/runner.py `_helper_pays`)


def _common_values(c: Checks, args: argparse.Namespace) -> Common:
    if args.bill_from is not None:
        # Removed rather than kept as a second way to say it: the first billed month is a
        # contract fact, published with the catalog (and live in stream mode).
        c.add("bill_from", 'was removed: set `billing_start: "YYYY-MM"` at the top of the '
                           "catalog instead")
    return Common(
        window=c.value("window", parse_window, DEFAULT_WINDOW),
        allowed_lateness=c.value("allowed_lateness", parse_duration, DEFAULT_LATENESS),
        max_future=c.value("max_future", parse_duration, DEFAULT_MAX_FUTURE),
        dedup_ttl=c.value("dedup_ttl", parse_positive_duration, DEFAULT_DEDUP_TTL),
        workers=c.value("workers", int_between(1, MAX_WORKERS), 1),
        now=c.value("now", parse_instant, None),
        adjustment_cycle=c.value("adjustment_cycle", parse_positive_duration,
                                 DEFAULT_ADJUSTMENT_CYCLE),
        judge_ahead={"AUTO": None, "ON": True, "OFF": False}[
            c.value("judge_ahead", one_of(("AUTO", "ON", "OFF")), "AUTO")],
    )


def _parser() -> argparse.ArgumentParser:
    from sinks.clickhouse.serve import add_serve_arguments
    # Values are taken as text and judged afterwards (`Checks`), so that every bad value is
    # reported at once; argparse itself only stops on a malformed command line.
    parser = argparse.ArgumentParser(prog="meterwax", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="rate a JSON-lines file of CloudEvents")
    run.add_argument("--catalog", required=True, help="catalog YAML")
    run.add_argument("--events", required=True, help="JSON-lines file, or - for stdin")
    run.add_argument("--out", required=True,
                     help="output folder (replaced whole once the run finished)")
    _common(run)

    demo = sub.add_parser("demo", help="generate a dirty workload and run it end to end")
    demo.add_argument("--size", default=None,
                      metavar="N",
                      help=f"events to generate (default 200000, at most {MAX_DEMO_SIZE:,})")
    demo.add_argument("--seed", default=None, help="workload seed (default 7)")
    demo.add_argument("--out", default="demo-out", help="output folder")
    demo.add_argument("--catalog", default=None, help="catalog (default: the shipped example)")
    _common(demo, now_help="judge the events as of this RFC 3339 instant "
                           "(default: the end of the generated data)")

    check = sub.add_parser("check-catalog", help="validate a catalog and list every problem")
    check.add_argument("catalog")

    stream = sub.add_parser(
        "stream", help="run continuously: Kafka in; ClickHouse, Redis and Kafka out",
        description="Every flag can also come from the environment, as METERWAX_ and its name "
                    "in capitals (--kafka-sasl-password: METERWAX_KAFKA_SASL_PASSWORD; "
                    "-a: METERWAX_ADDRESSES, comma-separated); a flag wins over its variable. "
                    "See k8s/meterwax.env.example.")
    stream.add_argument("--catalog")
    stream.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    stream.add_argument("--input-topic", dest="input_topic")
    stream.add_argument("--redis-url", dest="redis_url")
    stream.add_argument("--clickhouse", help="http://host:8123 for a server, or a chDB path")
    stream.add_argument("--recovery-dir", dest="recovery_dir")
    stream.add_argument("--topic-prefix", dest="topic_prefix")
    stream.add_argument("--redis-namespace", dest="redis_namespace")
    stream.add_argument("--dedup-ttl", dest="dedup_ttl", default=None,
                        help="how long an event identity is remembered (default 35d)")
    stream.add_argument("--window", default=None, help="tumbling event-time window (default 1m)")
    stream.add_argument("--allowed-lateness", default=None,
                        help="how long after a month ends its period stays open (default 1h)")
    stream.add_argument("--adjustment-cycle", dest="adjustment_cycle", default=None,
                        help="late usage for an invoiced period is collected this long "
                             "(watermark time) into one adjustment per period (default 1d)")
    stream.add_argument("--max-future", dest="max_future", default=None,
                        help="events dated further ahead of the clock than this are "
                             "quarantined as FUTURE_EVENT (default 24h)")
    stream.add_argument("--idle-timeout", dest="idle_timeout", default=None,
                        help="an input partition that reads nothing this long no longer holds "
                             "back period closes; they close on the other partitions' "
                             "watermarks (default 1m)")
    stream.add_argument("-w", "--workers", default=None)
    stream.add_argument("-i", "--process-id", dest="process_id", default=None,
                        help="this process's id; in a StatefulSet, METERWAX_CLUSTER_REPLICAS "
                             "derives it and -a from the pod (k8s/statefulset.yaml)")
    stream.add_argument("-a", "--addresses", action="append", default=None,
                        help="host:port of every process, in process-id order (repeat)")
    stream.add_argument("--metrics-port", dest="metrics_port", default=None,
                        help="serve Prometheus metrics on this port")
    stream.add_argument("--stop-at-end", action="store_true",
                        help="read every partition to its current end, then stop (backfills)")
    _kafka_security(stream)

    exceptions = sub.add_parser(
        "exceptions", help="work the rejected events (the dead-letter topic)",
        description="Work the rejected events a stream left on its dead-letter topic.")
    actions = exceptions.add_subparsers(dest="action", required=True)
    retry = actions.add_parser(
        "retry", help="send matching dead letters' original bytes to the input topic again",
        description="Re-publish the original bytes of every matching dead letter to the input "
                    "topic, with a meterwax.retry-of header naming the dead letter, and print "
                    "how many were sent. The stream judges them afresh: fix the master data "
                    "first. Retrying twice is safe: an event rated by the first retry is a "
                    "duplicate the second time. Settings are read like `stream`'s (flags, then "
                    "METERWAX_* variables).")
    retry.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    retry.add_argument("--input-topic", dest="input_topic")
    retry.add_argument("--topic-prefix", dest="topic_prefix",
                       help="the stream's output-topic prefix (default meterwax.)")
    retry.add_argument("--reason", help="only dead letters rejected for this reason")
    retry.add_argument("--subject", help="only events with this subject")
    retry.add_argument("--since", metavar="RFC3339", help="only those rejected at or after")
    retry.add_argument("--until", metavar="RFC3339", help="only those rejected before")
    retry.add_argument("--dry-run", dest="dry_run", action="store_true",
                       help="count what would be sent, send nothing")
    _kafka_security(retry)

    contracts = sub.add_parser(
        "contracts", help="publish and show the contracts a running stream rates against",
        description="The catalog as versioned records on the compacted <prefix>contracts "
                    "topic, which `meterwax stream` reads while it runs.")
    c_actions = contracts.add_subparsers(dest="action", required=True)
    c_publish = c_actions.add_parser(
        "publish", help="validate a catalog file and publish the records that changed",
        description="Validate CATALOG as the whole catalog to be in force (every problem, with "
                    "its YAML path), refuse a change that would alter usage already rated or "
                    "invoiced, and publish only the records that changed (a tombstone for each "
                    "one the file no longer has). Nothing is published on any problem.")
    c_publish.add_argument("catalog", metavar="CATALOG.yaml")
    c_publish.add_argument("--dry-run", dest="dry_run", action="store_true",
                           help="check and list the changes, publish nothing")
    c_show = c_actions.add_parser(
        "show", help="print the catalog in force, as a catalog file",
        description="Print the catalog the contracts topic holds, as YAML a `publish` takes "
                    "back, with each record's version.")
    for p in (c_publish, c_show):
        p.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
        p.add_argument("--topic-prefix", dest="topic_prefix",
                       help="the stream's topic prefix (default meterwax.)")
        p.add_argument("--redis-url", dest="redis_url",
                       help="the stream's Redis: its running charges say what is rated")
        p.add_argument("--redis-namespace", dest="redis_namespace")
        _kafka_security(p)

    serve = sub.add_parser(
        "serve-clickhouse", help="serve an embedded store over ClickHouse's HTTP interface",
        description="Serve a run's embedded store over ClickHouse's HTTP interface "
                    "(clickhouse-connect, Grafana's ClickHouse plugin in HTTP mode, curl).")
    add_serve_arguments(serve)

    api = sub.add_parser(
        "api", help="serve the HTTP API (customers' charges, finance's exceptions)",
        description="Serve the HTTP API under uvicorn: running charges, usage and invoices for "
                    "customer tokens; exceptions, invoice exceptions, reconciliation and "
                    "retries for finance. Back end: --out DIR (a run's folder, no servers) or "
                    "a stream deployment (--redis-url, --clickhouse, --kafka-bootstrap; flags, "
                    "then METERWAX_* variables like `stream`). Tokens: `meterwax tokens`.")
    api.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    api.add_argument("--port", default=None, help="port (default 8080)")
    api.add_argument("--out", default=None, help="the folder of a `meterwax run` or demo")
    api.add_argument("--redis-url", dest="redis_url")
    api.add_argument("--clickhouse", help="the stream's ClickHouse: http://host:8123")
    api.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    api.add_argument("--input-topic", dest="input_topic", help="where retries are sent")
    api.add_argument("--topic-prefix", dest="topic_prefix")
    api.add_argument("--redis-namespace", dest="redis_namespace")
    api.add_argument("--rate-limit", dest="rate_limit", default=None,
                     help="requests a second per token, per API process (default 100)")
    api.add_argument("--rate-burst", dest="rate_burst", default=None,
                     help="requests a token may send at once (default twice the rate, "
                          "at least 200)")
    api.add_argument("--ingest-rate-limit", dest="ingest_rate_limit", default=None,
                     help="requests a second per producer token (POST /v1/events), per API "
                          "process (default 2000; a batch counts once)")
    api.add_argument("--ingest-rate-burst", dest="ingest_rate_burst", default=None,
                     help="requests a producer token may send at once (default twice its "
                          "rate)")
    api.add_argument("--ingest-queue", dest="ingest_queue", default=None,
                     help="events waiting for Kafka's acknowledgement, per API process, "
                          "beyond which POST /v1/events answers 503 (default 100000)")
    api.add_argument("--reconcile-every", dest="reconcile_every", default=None,
                     help="reconcile the current and previous month this often for the "
                          "meterwax_reconciliation_variances gauge (default 5m; 0: off)")
    api.add_argument("-w", "--workers", default=None,
                     help="server processes sharing the port (default 1; one per core)")
    _kafka_security(api)

    tokens = sub.add_parser(
        "tokens", help="create, list and revoke API tokens",
        description="API tokens. Only a token's hash is stored: in the run's folder (--out) "
                    "or the deployment's Redis (--redis-url or METERWAX_REDIS_URL).")
    t_actions = tokens.add_subparsers(dest="action", required=True)
    t_create = t_actions.add_parser(
        "create", help="create a token and print it once (the last line of the output)")
    t_create.add_argument("--scope", required=True,
                          help="customer:<id> (that customer's charges, usage and invoices), "
                               "finance (every customer, exceptions, reconciliation, retries), "
                               "admin, producer (sends usage: POST /v1/events, reads nothing) "
                               "or producer:<source> (only events of that CloudEvents source)")
    t_create.add_argument("--expires", default=None, metavar="DURATION",
                          help="e.g. 30d (default: until revoked)")
    t_create.add_argument("--note", default="", help="who or what it is for (shown by list)")
    t_list = t_actions.add_parser("list", help="every token: id, scope, state, dates")
    t_revoke = t_actions.add_parser("revoke", help="revoke a token by its id")
    t_revoke.add_argument("token_id", help="the id `tokens list` shows (16 hex digits)")
    for p in (t_create, t_list, t_revoke):
        p.add_argument("--out", default=None, help="the folder of a run the API serves")
        p.add_argument("--redis-url", dest="redis_url")
        p.add_argument("--redis-namespace", dest="redis_namespace")

    sql = sub.add_parser("sql", help="run ClickHouse SQL on a run's embedded store")
    sql.add_argument("--out", required=True, help="the output folder of a run or demo")
    sql.add_argument("query", help="SQL; the table is meterwax.rated_windows "
                                   "(meterwax.rated_windows_final: one row per window)")
    sql.add_argument("--writable", action="store_true",
                     help="also run statements that change the store (default: reads only)")
    return parser


def _kafka_security(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("Kafka security (librdkafka security.protocol, sasl.*, ssl.*)")
    group.add_argument("--kafka-security-protocol", metavar="PROTOCOL",
                       help=f"{', '.join(SECURITY_PROTOCOLS)} (default PLAINTEXT)")
    group.add_argument("--kafka-sasl-mechanism", metavar="MECHANISM",
                       help=f"{', '.join(SASL_MECHANISMS)}; required with SASL_*")
    group.add_argument("--kafka-sasl-username", metavar="USER", help="required with SASL_*")
    # A flag shows in `ps` and shell history; the variable (a Kubernetes Secret) does not.
    group.add_argument("--kafka-sasl-password", metavar="PASSWORD",
                       help="required with SASL_*; prefer METERWAX_KAFKA_SASL_PASSWORD")
    group.add_argument("--kafka-ssl-ca-location", metavar="PATH",
                       help="CA certificate file or folder for SSL and SASL_SSL (default: the "
                            "system's)")


def _common(p: argparse.ArgumentParser,
            now_help: str = "judge the events as of this RFC 3339 instant, e.g. "
                            "2026-12-01T00:00:00Z (default: the system clock)") -> None:
    p.add_argument("--window", default=None, metavar="DURATION",
                   help="tumbling event-time window (default 1m)")
    p.add_argument("--allowed-lateness", default=None, metavar="DURATION",
                   help="how long after a month ends its period stays open (default 1h)")
    p.add_argument("--adjustment-cycle", dest="adjustment_cycle", default=None,
                   metavar="DURATION",
                   help="late usage for an invoiced period is collected this long (watermark "
                        "time) into one adjustment per period (default 1d)")
    p.add_argument("--max-future", default=None, metavar="DURATION",
                   help="events dated further ahead of the clock than this are quarantined as "
                        "FUTURE_EVENT (default 24h)")
    p.add_argument("--dedup-ttl", default=None, metavar="DURATION",
                   help="how long after its close a period takes late usage and its event "
                        "identities are remembered (default 35d; later usage is "
                        "LATE_BEYOND_RETENTION)")
    p.add_argument("--now", default=None, metavar="RFC3339", help=now_help)
    p.add_argument("--bill-from", default=None, help=argparse.SUPPRESS)
    p.add_argument("-w", "--workers", default=None, metavar="N",
                   help=f"Bytewax worker threads (default 1, at most {MAX_WORKERS})")
    p.add_argument("--judge-ahead", default=None, metavar="auto|on|off",
                   help="decode and classify the input's lines in a helper process, a chunk "
                        "ahead of ingest (default auto: when more than one CPU is available "
                        "and the input holds at least 16 MiB; the outputs are the same either "
                        "way)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-catalog":
            checks = Checks(args)
            problem = file_problem(args.catalog)
            if problem:
                checks.note("catalog", problem)
                return checks.report()
            catalog = load_catalog(args.catalog)
            print(f"catalog OK: {len(catalog.legal_entities)} legal entities, "
                  f"{len(catalog.meters)} meters, {len(catalog.plans)} plans, "
                  f"{len(catalog.customers)} customers, "
                  f"{len(catalog.subscriptions)} subscriptions")
            return 0
        if args.command == "sql":
            return _sql(args.out, args.query, writable=args.writable)
        if args.command == "exceptions":
            return _exceptions_retry(args)
        if args.command == "contracts":
            return _contracts(args)
        if args.command == "stream":
            return _stream(args)
        if args.command == "api":
            return _api(args)
        if args.command == "tokens":
            return _tokens(args)
        if args.command == "serve-clickhouse":
            from sinks.clickhouse.serve import serve

            return serve(args.path, args.host, args.port, verbose=args.verbose,
                         writable=args.writable)
        if args.command == "run":
            return _run(args)
        return _demo(args)
    except CatalogError as exc:
        print(f"meterwax: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    checks = Checks(args)
    common = _common_values(checks, args)
    if args.events != "-":
        checks.readable_file("events", args.events)
    catalog = checks.catalog(args.catalog)
    checks.out_dir(args.out, {"--events": args.events, "--catalog": args.catalog})
    if checks.problems or catalog is None:
        return checks.report()

    from flows.runner import RunOptions, run_file
    from meterwax.report import print_run_summary

    opts = RunOptions(catalog=args.catalog, events=args.events, out_dir=args.out,
                      window=common.window, allowed_lateness=common.allowed_lateness,
                      workers=common.workers,
                      max_future=common.max_future, retention=common.dedup_ttl,
                      now=common.now, adjustment_cycle=common.adjustment_cycle,
                      judge_ahead=common.judge_ahead)
    result = _finished(args.out, lambda: run_file(opts, catalog=catalog))
    if isinstance(result, int):
        return result
    print_run_summary(result, sys.stdout, detailed=False)
    return 0 if result.balanced else 1


def _demo(args: argparse.Namespace) -> int:
    from meterwax.demo import DemoOptions, example_catalog_path, run_demo

    checks = Checks(args)
    common = _common_values(checks, args)
    size = checks.value("size", int_between(1, MAX_DEMO_SIZE), 200_000)
    seed = checks.value("seed", int_between(-(2**63), 2**63 - 1), 7)
    catalog_path = args.catalog or example_catalog_path()
    catalog = checks.catalog(catalog_path)
    checks.out_dir(args.out, {"--catalog": args.catalog})
    if checks.problems or catalog is None:
        return checks.report()
    opts = DemoOptions(size=size, seed=seed, out=args.out, catalog=catalog_path,
                       window=common.window, allowed_lateness=common.allowed_lateness,
                       max_future=common.max_future, retention=common.dedup_ttl,
                       workers=common.workers, now=common.now,
                       adjustment_cycle=common.adjustment_cycle,
                       judge_ahead=common.judge_ahead)
    return _finished(args.out, lambda: run_demo(opts, catalog=catalog))


def _finished(out: str, work: Callable[[], T]) -> T | int:
    """`work()`, or the exit code of a run that failed: the outputs are swapped in only at the
    end of a finished run (`flows.runner.staged_output`), so say what is left in `out`."""
    kept = (f"the previous outputs in {out} are unchanged" if os.path.isdir(out)
            else f"nothing was written to {out}")
    try:
        return work()
    except KeyboardInterrupt:
        print(f"meterwax: run interrupted; {kept}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # any failure of the run itself: say it in one line, keep no half
        if _caused_by_interrupt(exc):
            print(f"meterwax: run interrupted; {kept}", file=sys.stderr)
            return EXIT_FAILED
        first, _, rest = str(exc).strip().partition("\n")
        print(f"meterwax: run failed: {type(exc).__name__}: {first}; {kept}", file=sys.stderr)
        for line in rest.splitlines():  # details (a Bytewax error nests the Python one)
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAILED


def _caused_by_interrupt(exc: BaseException) -> bool:
    # Ctrl-C lands in whichever operator is running; Bytewax reports it as its own error.
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _settings(read: Callable[[Mapping[str, object]], T], args: argparse.Namespace) -> T | None:
    """Settings read from the flags and METERWAX_* variables, or None once every problem is
    printed (the caller exits with EXIT_USAGE)."""
    try:
        return read(vars(args))
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"meterwax: {problem}", file=sys.stderr)
        return None


def _stream(args: argparse.Namespace) -> int:
    settings = _settings(StreamSettings.from_mapping, args)
    if settings is None:
        return EXIT_USAGE
    # Imported only now: Bytewax and Kafka are not needed to judge the settings.
    from flows import metrics
    from flows.stream import run_stream

    if settings.catalog:
        # `--catalog F`: publish F first (every check of `contracts publish`), then rate
        # against the contracts topic like any stream.
        code = _publish(settings.contracts(), settings.catalog)
        if code:
            return code
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    run_stream(settings, on_stats=metrics.record)
    return 0


def _api(args: argparse.Namespace) -> int:
    from flows.settings import ApiSettings

    settings = _settings(ApiSettings.from_mapping, args)
    if settings is None:
        return EXIT_USAGE
    from meterwax.api.server import serve

    return serve(settings)


def _tokens(args: argparse.Namespace) -> int:
    import secrets
    from datetime import UTC

    from flows.settings import TokensSettings
    from operators.tokens import TokenError, check_token_id, new_token, parse_scope
    from sinks.tokens import FileTokenStore, RedisTokenStore, TokenStore

    settings = _settings(TokensSettings.from_mapping, args)
    if settings is None:
        return EXIT_USAGE
    checks = Checks(args)
    now = datetime.now(UTC)
    if args.action == "create":
        expires = checks.value("expires", parse_positive_duration, None)
        try:
            scope = parse_scope(args.scope)
        except TokenError as exc:
            checks.add("scope", str(exc))
        if checks.problems:
            return checks.report()
    elif args.action == "revoke":
        try:
            check_token_id(args.token_id)
        except TokenError as exc:
            checks.note("token_id", str(exc))
            return checks.report()
    store: TokenStore = (FileTokenStore(settings.out) if settings.out else
                         RedisTokenStore(settings.redis_url or "", settings.redis_namespace))
    where = settings.out or f"Redis namespace {settings.redis_namespace!r}"
    if args.action == "create":
        token, record = new_token(scope, now, secrets.token_bytes(40), expires_in=expires,
                                  note=args.note)
        store.add(record)
        until = record.expires_at.isoformat() if record.expires_at else "until revoked"
        print(f"token {record.token_id} ({record.scope}, valid {until}) stored in {where}")
        print("shown once; only its hash is kept. Send it as: Authorization: Bearer <token>")
        print(token)
        return 0
    if args.action == "revoke":
        revoked = store.revoke(args.token_id, now)
        if revoked is None:
            print(f"meterwax: no token {args.token_id} in {where}", file=sys.stderr)
            return EXIT_USAGE
        print(f"token {revoked.token_id} ({revoked.scope}) revoked at "
              f"{(revoked.revoked_at or now).isoformat()}")
        return 0
    print("token_id          state    scope                         created                    "
          "expires                    note")
    for r in store.all():
        print(f"{r.token_id}  {r.state(now):7}  {r.scope[:28]:28}  "
              f"{r.created_at.isoformat(timespec='seconds'):25}  "
              f"{r.expires_at.isoformat(timespec='seconds') if r.expires_at else '-':25}  "
              f"{r.note}")
    return 0


def _exceptions_retry(args: argparse.Namespace) -> int:
    from flows.settings import RetrySettings

    settings = _settings(RetrySettings.from_mapping, args)
    if settings is None:
        return EXIT_USAGE
    from meterwax.retry import retry_dead_letters

    report = retry_dead_letters(settings)
    sent = (f"would send {report.matched}" if settings.dry_run else f"sent {report.sent}")
    print(f"{report.read} dead letter(s) read from {settings.topics.dead_letter}; "
          f"{report.matched} matched; {sent} to {settings.input_topic}")
    for reason, n in sorted(report.by_reason.items()):
        print(f"  {reason}: {n}")
    return 0


def _contracts(args: argparse.Namespace) -> int:
    from flows.settings import ContractsSettings

    settings = _settings(ContractsSettings.from_mapping, args)
    if settings is None:
        return EXIT_USAGE
    from meterwax import contracts

    topic = settings.topics.contracts
    if args.action == "show":
        import yaml

        from operators.contracts import catalog_of, document_of

        held = contracts.read_contracts(settings.kafka(), topic)
        for problem in held.problems:
            print(f"meterwax: {topic}: not applied: {problem}", file=sys.stderr)
        print(f"# contracts in force on {topic}: {len(held.specs)} record(s), "
              f"{held.end_offset} message(s) read")
        for key in sorted(held.specs):
            print(f"#   {key}  v{held.versions.get(key, 0)}")
        print(yaml.safe_dump(document_of(held.specs), sort_keys=False, allow_unicode=True,
                             width=100), end="")
        try:
            excluded = catalog_of(held.specs).excluded_months()
        except CatalogError as exc:
            print(f"meterwax: {topic}: the records make no valid catalog: {exc}",
                  file=sys.stderr)
            return EXIT_FAILED
        if excluded:
            # What reconciliation lists in file mode: months this deployment does not bill.
            print("# excluded by billing_start (billed before this deployment):")
            for customer_id, sub_id, period in excluded:
                print(f"#   {period}  {sub_id}  (customer {customer_id})")
        return 0
    checks = Checks(args)
    if not checks.readable_file("catalog", args.catalog):
        return checks.report()
    return _publish(settings, args.catalog)


def _publish(settings: ContractsSettings, path: str) -> int:
    from meterwax import contracts

    topic = settings.topics.contracts
    try:
        report = contracts.publish_catalog(settings, path)
    except CatalogError as exc:
        print(f"meterwax: {exc}", file=sys.stderr)
        print("meterwax: nothing was published", file=sys.stderr)
        return EXIT_USAGE
    for key, why in sorted(report.refused.items()):
        print(f"meterwax: {key}: refused: {why}", file=sys.stderr)
    for key, version, what in report.changed:
        print(f"  {what:8} {key}" + (f"  v{version}" if version else ""))
    if report.refused:
        print(f"meterwax: {len(report.refused)} change(s) refused; nothing was published",
              file=sys.stderr)
        return EXIT_FAILED
    done = ("would publish" if settings.dry_run else "published")
    print(f"{done} {len(report.changed)} record(s) to {topic}; {report.unchanged} unchanged")
    return 0


def _sql(out_dir: str, query: str, *, writable: bool = False) -> int:
    from pathlib import Path

    from sinks.clickhouse import ChdbStore, ClickHouseStoreError
    from sinks.clickhouse.http_engine import refused_read_only

    if not writable:
        # A run's outputs are what finance reconciles: a stray DROP must not be one typo away.
        problem = refused_read_only(query)
        if problem is not None:
            print(f"meterwax: {problem}", file=sys.stderr)
            return 2

    store_path = Path(out_dir) / "clickhouse"
    if not store_path.is_dir():
        print(f"meterwax: no embedded store at {store_path} (run `meterwax run` first)",
              file=sys.stderr)
        return 2
    try:
        with ChdbStore(str(store_path)) as store:
            rows = store.query(query)
    except ClickHouseStoreError as exc:
        print(f"meterwax: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # chdb reports SQL errors as RuntimeError
        print(f"meterwax: query failed: {exc}", file=sys.stderr)
        return 2
    if rows:
        print("\t".join(rows[0]))
        for row in rows:
            print("\t".join(str(v) for v in row.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
