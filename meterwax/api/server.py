"""`meterwax api`: the back end from the settings, the app, uvicorn."""

from __future__ import annotations

from typing import Any

from flows.settings import ApiSettings
from meterwax.api.app import create_app
from meterwax.api.backends import Backend, FolderBackend, StreamBackend


def backend_of(settings: ApiSettings) -> Backend:
    if settings.out:
        return FolderBackend(settings.out)
    return StreamBackend(settings)


def serve(settings: ApiSettings) -> int:
    import uvicorn

    backend = backend_of(settings)
    app = create_app(backend, rate=settings.rate_limit, burst=settings.rate_burst)
    what = f"the run in {settings.out}" if settings.out else "the stream deployment"
    print(f"meterwax api: serving {what} on http://{settings.host}:{settings.port} "
          f"(tokens: `meterwax tokens create`; Ctrl-C to stop)", flush=True)
    # The access log is off: it would be the one place a request line is written for every
    # call, and nothing in it is needed that the metrics do not give (route, status, latency).
    config: dict[str, Any] = {"host": settings.host, "port": settings.port,
                              "access_log": False, "log_level": "warning",
                              "server_header": False}
    try:
        uvicorn.run(app, **config)
    finally:
        backend.close()
    return 0


