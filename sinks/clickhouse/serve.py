"""`meterwax serve-clickhouse`: serve a chdb directory over ClickHouse's HTTP interface
(`sinks.clickhouse.http.ChdbHttpServer`) until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from sinks.clickhouse.errors import ClickHouseStoreError
from sinks.clickhouse.http import DEFAULT_PORT, ChdbHttpServer

log = logging.getLogger("meterwax.chdb_http")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `meterwax serve-clickhouse` (the main command line declares them with
    this too, so that both spell them the same)."""
    parser.add_argument("--path", required=True,
                        help="the chdb directory (e.g. OUT/clickhouse), or a run's output folder")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; there is no authentication)")
    parser.add_argument("--writable", action="store_true",
                        help="also run statements that change the store (default: reads only; "
                             "there is no authentication, so anything that reaches the port "
                             "could otherwise drop the tables)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        msg = f"not a TCP port (0 .. 65535): {text[:20]!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def serve_main(argv: Sequence[str] | None = None) -> int:
    """`meterwax serve-clickhouse --path DIR [--port N]`: serve until interrupted (SIGINT or
    SIGTERM). Exit 0 when stopped, 2 on a bad path, 1 when the server cannot start."""
    parser = argparse.ArgumentParser(
        prog="meterwax serve-clickhouse",
        description="Serve an embedded chdb store over ClickHouse's HTTP interface "
                    "(clickhouse-connect, Grafana's ClickHouse plugin in HTTP mode, curl).")
    add_serve_arguments(parser)
    args = parser.parse_args(list(argv) if argv is not None else None)
    return serve(args.path, args.host, args.port, verbose=args.verbose, writable=args.writable)


def serve(store: str, host: str, port: int, *, verbose: bool = False,
          writable: bool = False) -> int:
    """Serve `store` until interrupted; the exit code of `serve_main`."""
    path = Path(store)
    if (path / "clickhouse").is_dir() and not (path / "metadata").exists():
        path = path / "clickhouse"  # a run's output folder
    if not path.is_dir():
        # Not created empty here: a run replaces its --out folder whole when it finishes, and
        # chdb keeps serving the folder it opened, so a server started before the run would
        # never see the run's rows.
        print(f"meterwax: no embedded store at {store} yet: run `meterwax run` first and "
              "serve its --out folder (a store served before the run would not show its rows)",
              file=sys.stderr, flush=True)
        return 2
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
        log.setLevel(logging.DEBUG)
    server = ChdbHttpServer(path, host, port, writable=writable)
    try:
        server.start()
    except (ClickHouseStoreError, OSError) as exc:
        print(f"meterwax: cannot serve {path}: {exc}", flush=True)
        return 1
    stop = threading.Event()
    with contextlib.suppress(ValueError):  # not in the main thread: KeyboardInterrupt stops it
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mode = "read-write" if writable else "read-only"
    print(f"serving {path} over ClickHouse HTTP at {server.url} ({mode}; Ctrl-C to stop)",
          flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
