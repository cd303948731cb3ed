"""`meterwax api`: the back end from the settings, the app, uvicorn."""

from __future__ import annotations

import base64
import os
import pickle
from typing import Any

from flows.settings import ApiSettings
from meterwax.api.app import FastCharges, create_app
from meterwax.api.backends import Backend, FolderBackend, StreamBackend


def backend_of(settings: ApiSettings) -> Backend:
    if settings.out:
        return FolderBackend(settings.out)
    return StreamBackend(settings)


# Worker processes (`--workers N`) import the app by name and read the settings from here.
_WORKER_SETTINGS = "_METERWAX_API_WORKER_SETTINGS"


def worker_app() -> FastCharges:
    """The app of one worker process of `meterwax api --workers N`."""
    settings: ApiSettings = pickle.loads(base64.b64decode(os.environ[_WORKER_SETTINGS]))
    backend = backend_of(settings)
    app = create_app(backend, rate=settings.rate_limit, burst=settings.rate_burst,
                     ingest_rate=settings.ingest_rate_limit,
                     ingest_burst=settings.ingest_rate_burst,
                     reconcile_every=settings.reconcile_every.total_seconds())
    app.on_shutdown.append(backend.close)
    return app


def serve(settings: ApiSettings) -> int:
    import uvicorn

    what = f"the run in {settings.out}" if settings.out else "the stream deployment"
    workers = f", {settings.workers} worker processes" if settings.workers > 1 else ""
    # The access log is off: it would be the one place a request line is written for every
    # call, and nothing in it is needed that the metrics do not give (route, status, latency).
    config: dict[str, Any] = {"host": settings.host, "port": settings.port,
                              "access_log": False, "log_level": "warning",
                              "server_header": False}
    if settings.workers > 1:
        # One event loop is one core: N processes share the port, each with its own back end
        # connections, answer cache and rate-limit buckets (a token's limit is per process).
        os.environ[_WORKER_SETTINGS] = base64.b64encode(pickle.dumps(settings)).decode()
        print(f"meterwax api: serving {what} on http://{settings.host}:{settings.port}"
              f"{workers} (tokens: `meterwax tokens create`; Ctrl-C to stop)", flush=True)
        uvicorn.run("meterwax.api.server:worker_app", factory=True, workers=settings.workers,
                    **config)
        return 0
    backend = backend_of(settings)
    app = create_app(backend, rate=settings.rate_limit, burst=settings.rate_burst,
                     ingest_rate=settings.ingest_rate_limit,
                     ingest_burst=settings.ingest_rate_burst,
                     reconcile_every=settings.reconcile_every.total_seconds())
    print(f"meterwax api: serving {what} on http://{settings.host}:{settings.port} "
          f"(tokens: `meterwax tokens create`; Ctrl-C to stop)", flush=True)
    try:
        uvicorn.run(app, **config)
    finally:
        backend.close()
    return 0


