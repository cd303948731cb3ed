"""The `meterwax` command.

    meterwax run  --catalog FILE --events FILE|- --out DIR [--window 1m] [--allowed-lateness 1h]
    meterwax demo [--size N] [--out DIR]
    meterwax check-catalog FILE
    meterwax sql --out DIR "SELECT ..."      query the embedded ClickHouse store of a run
    meterwax stream [flags; or METERWAX_* environment variables]   Kafka in, production outputs
    meterwax serve-clickhouse --path DIR [--port N]   the embedded store over ClickHouse HTTP

Exit codes: 0 everything balanced; 1 the run finished but reconciliation found a difference;
2 bad usage or a bad catalog (nothing was written).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta

from operators.catalog import CatalogError, load_catalog
from operators.periods import Month

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> timedelta:
    """'90s', '1m', '1h30m', '2d'. A bare number is seconds."""
    if text.isdigit():
        return timedelta(seconds=int(text))
    match = _DURATION.fullmatch(text)
    if not text or not match:
        msg = f"not a duration: {text!r} (use e.g. 30s, 1m, 1h30m, 2d)"
        raise argparse.ArgumentTypeError(msg)
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _month(text: str) -> Month:
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
        msg = f"not a month: {text!r} (use YYYY-MM)"
        raise argparse.ArgumentTypeError(msg)
    return Month.parse(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meterwax", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="rate a JSON-lines file of CloudEvents")
    run.add_argument("--catalog", required=True, help="catalog YAML")
    run.add_argument("--events", required=True, help="JSON-lines file, or - for stdin")
    run.add_argument("--out", required=True, help="output folder")
    _common(run)

    demo = sub.add_parser("demo", help="generate a dirty workload and run it end to end")
    demo.add_argument("--size", type=int, default=200_000, help="events to generate")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--out", default="demo-out", help="output folder")
    demo.add_argument("--catalog", default=None, help="catalog (default: the shipped example)")
    _common(demo)

    check = sub.add_parser("check-catalog", help="validate a catalog and list every problem")
    check.add_argument("catalog")

    stream = sub.add_parser(
        "stream", help="run continuously: Kafka in; ClickHouse, Redis and Kafka out",
        description="Every flag can also come from the environment: METERWAX_CATALOG, "
                    "METERWAX_KAFKA_BOOTSTRAP, METERWAX_INPUT_TOPIC, METERWAX_REDIS_URL, "
                    "METERWAX_CLICKHOUSE, METERWAX_RECOVERY_DIR, METERWAX_TOPIC_PREFIX, "
                    "METERWAX_WORKERS. See k8s/meterwax.env.example.")
    stream.add_argument("--catalog")
    stream.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    stream.add_argument("--input-topic", dest="input_topic")
    stream.add_argument("--redis-url", dest="redis_url")
    stream.add_argument("--clickhouse", help="http://host:8123 for a server, or a chDB path")
    stream.add_argument("--recovery-dir", dest="recovery_dir")
    stream.add_argument("--topic-prefix", dest="topic_prefix")
    stream.add_argument("--redis-namespace", dest="redis_namespace")
    stream.add_argument("--dedup-ttl", dest="dedup_ttl", type=parse_duration, default=None,
                        help="how long an event identity is remembered (default 35d)")
    stream.add_argument("--window", type=_window, default=None)
    stream.add_argument("--allowed-lateness", type=parse_duration, default=None)
    stream.add_argument("-w", "--workers", type=_positive, default=None)
    stream.add_argument("-i", "--process-id", dest="process_id", type=int, default=None)
    stream.add_argument("-a", "--addresses", action="append", default=None,
                        help="host:port of every process, in process-id order (repeat)")
    stream.add_argument("--metrics-port", dest="metrics_port", type=int, default=None,
                        help="serve Prometheus metrics on this port")
    stream.add_argument("--stop-at-end", action="store_true",
                        help="read every partition to its current end, then stop (backfills)")

    serve = sub.add_parser("serve-clickhouse", add_help=False,
                           help="serve an embedded store over ClickHouse's HTTP interface")
    serve.add_argument("rest", nargs=argparse.REMAINDER)

    sql = sub.add_parser("sql", help="run ClickHouse SQL on a run's embedded store")
    sql.add_argument("--out", required=True, help="the output folder of a run or demo")
    sql.add_argument("query", help="SQL; the table is meterwax.rated_windows "
                                   "(meterwax.rated_windows_final: one row per window)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _window(text: str) -> timedelta:
    value = parse_duration(text)
    if value <= timedelta(0):
        msg = "the window must be longer than zero"
        raise argparse.ArgumentTypeError(msg)
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=_window, default=timedelta(minutes=1),
                   help="tumbling event-time window (default 1m)")
    p.add_argument("--allowed-lateness", type=parse_duration, default=timedelta(hours=1),
                   help="how long after a month ends its period stays open (default 1h)")
    p.add_argument("--bill-from", type=_month, default=None,
                   help="first month to bill (default: the month of the earliest rated event)")
    p.add_argument("-w", "--workers", type=_positive, default=1, help="Bytewax worker threads")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-catalog":
            catalog = load_catalog(args.catalog)
            print(f"catalog OK: {len(catalog.legal_entities)} legal entities, "
                  f"{len(catalog.meters)} meters, {len(catalog.plans)} plans, "
                  f"{len(catalog.customers)} customers, "
                  f"{len(catalog.subscriptions)} subscriptions")
            return 0
        if args.command == "sql":
            return _sql(args.out, args.query)
        if args.command == "stream":
            from flows.stream import SettingsError, StreamSettings, run_stream

            try:
                settings = StreamSettings.from_mapping(vars(args))
            except SettingsError as exc:
                print(f"meterwax: {exc}", file=sys.stderr)
                return 2
            from flows import metrics

            if args.metrics_port:
                metrics.serve(args.metrics_port)
            run_stream(settings, on_stats=metrics.record)
            return 0
        if args.command == "serve-clickhouse":
            from sinks.chdb_http import serve_main

            return int(serve_main(args.rest) or 0)
        if args.command == "run":
            from flows.report import print_run_summary
            from flows.runner import RunOptions, run_file

            opts = RunOptions(catalog=args.catalog, events=args.events, out_dir=args.out,
                              window=args.window, allowed_lateness=args.allowed_lateness,
                              bill_from=args.bill_from, workers=args.workers)
            result = run_file(opts)
            print_run_summary(result, sys.stdout, detailed=False)
            return 0 if result.balanced else 1
        from flows.demo import run_demo

        return run_demo(args)
    except CatalogError as exc:
        print(f"meterwax: {exc}", file=sys.stderr)
        return 2


def _sql(out_dir: str, query: str) -> int:
    from pathlib import Path

    from sinks.clickhouse import ChdbStore, ClickHouseStoreError

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
