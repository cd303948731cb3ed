"""The HTTP floor of bench/bench_api.py: a bare ASGI app under the same uvicorn, answering
every request with a fixed body the size of a charges answer. No routing, no auth, no data:
what this machine's server and client machinery cost before meterwax does anything."""

from __future__ import annotations

from typing import Any

BODY = (b'{"customer_id":"acme","period":"2026-11","subscriptions":['
        + b'{"line":"x"},' * 60 + b"{}]}")
_HEAD = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEAD})
    await send({"type": "http.response.body", "body": BODY})
